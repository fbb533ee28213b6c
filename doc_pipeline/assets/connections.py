import time

from dagster import AssetExecutionContext, MetadataValue, asset

from doc_pipeline.core.semantic import CONNECTION_TYPE, find_semantic_edges
from doc_pipeline.core.stages import tracked_stage
from doc_pipeline.db import store
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.liveness import Liveness
from doc_pipeline.resources.provider import Provider


@asset(partitions_def=documents_partitions, group_name="documents")
def connections(
    context: AssetExecutionContext,
    embeddings: dict,
    app_database: AppDatabase,
    liveness: Liveness,
    provider: Provider,
) -> dict:
    """Semantic connections from this document's chunks to the nearest chunks of other
    documents, found and written in one transaction so they only point at chunks that exist."""
    document_id = context.partition_key
    engine = app_database.engine
    started = time.perf_counter()
    with (
        liveness.heartbeat(context, app_database),
        tracked_stage(engine, document_id, "connecting", "connected"),
        engine.begin() as conn,
    ):
        store.lock_document(conn, document_id)
        edges = find_semantic_edges(
            conn, document_id, embeddings["model"], provider.semantic_config
        )
        counts = store.write_connections(conn, document_id, CONNECTION_TYPE, edges)
    strongest = sorted(edges, key=lambda edge: edge.strength, reverse=True)[:10]
    table = "\n".join(
        ["| source chunk | target chunk | strength |", "|---|---|---|"]
        + [f"| {e.source_chunk_id} | {e.target_chunk_id} | {e.strength:.3f} |" for e in strongest]
    )
    context.add_output_metadata(
        {
            "connections": MetadataValue.int(len(edges)),
            **{f"rows_{k}": MetadataValue.int(v) for k, v in counts.as_dict().items()},
            "strongest": MetadataValue.md(table),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
        }
    )
    return {"document_id": document_id, "type": CONNECTION_TYPE, "connections": len(edges)}
