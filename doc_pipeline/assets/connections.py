import time

from dagster import AssetExecutionContext, AutomationCondition, MetadataValue, asset

from doc_pipeline.core.semantic import CONNECTION_TYPE
from doc_pipeline.core.stages import tracked_stage
from doc_pipeline.db.connecting import connect_document
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.liveness import Liveness
from doc_pipeline.resources.provider import Provider


# Materialized by the `connections_automation` sensor once the document's embeddings are new, in
# a run of its own: the document is usable (`embedded`) before its connections exist, and a
# failure here never fails the document run. Eager never starts one while another is in flight.
@asset(
    partitions_def=documents_partitions,
    group_name="documents",
    automation_condition=AutomationCondition.eager(),
)
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
    ):
        connected = connect_document(
            engine, document_id, embeddings["model"], provider.semantic_config
        )
    edges, counts = connected.edges, connected.counts
    strongest = sorted(edges, key=lambda edge: edge.strength, reverse=True)[:10]
    table = "\n".join(
        ["| source chunk | target chunk | strength |", "|---|---|---|"]
        + [f"| {e.source_chunk_id} | {e.target_chunk_id} | {e.strength:.3f} |" for e in strongest]
    )
    context.add_output_metadata(
        {
            "connections": MetadataValue.int(len(edges)),
            **{f"rows_{k}": MetadataValue.int(v) for k, v in counts.as_dict().items()},
            # Edges to chunks another document's re-processing removed while this step ran.
            "rows_skipped": MetadataValue.int(counts.skipped),
            "strongest": MetadataValue.md(table),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
        }
    )
    return {"document_id": document_id, "type": CONNECTION_TYPE, "connections": len(edges)}
