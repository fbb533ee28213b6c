import time

from dagster import AssetExecutionContext, MetadataValue, asset

from doc_pipeline.assets import catalog, versions
from doc_pipeline.assets.ai_usage import ai_usage_metadata, ledger_scope
from doc_pipeline.concurrency import AI_POOL
from doc_pipeline.db import store
from doc_pipeline.db.stage_tracking import tracked_stage
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.liveness import Liveness
from doc_pipeline.resources.provider import Provider
from doc_pipeline.step_failures import expected_failures


@asset(
    partitions_def=documents_partitions,
    group_name="documents",
    kinds=catalog.kinds(ai=True),
    owners=catalog.OWNERS,
    metadata=catalog.table_metadata("embeddings"),
    pool=AI_POOL,
    code_version=versions.EMBEDDINGS,
)
def embeddings(
    context: AssetExecutionContext,
    chunks: dict,
    app_database: AppDatabase,
    liveness: Liveness,
    provider: Provider,
) -> dict:
    """One vector per chunk and model. Batches are cut the same way every time (by chunk order),
    so a retried batch is the same ledger request and is not paid again; a batch whose chunks
    all have vectors is skipped, and each batch is committed before the next one starts."""
    document_id = context.partition_key
    engine = app_database.engine
    model = provider.embedding_model
    scope = ledger_scope(context, app_database, provider, "embeddings")
    started = time.perf_counter()
    inserted = 0
    with (
        liveness.heartbeat(context, app_database),
        expected_failures(),
        tracked_stage(engine, document_id, "embedding", "embedded"),
    ):
        missing = store.chunks_missing_embeddings(engine, document_id, model)
        ordered = store.chunk_texts(engine, document_id)
        size = provider.embedding_batch_size
        for offset in range(0, len(ordered), size):
            batch = ordered[offset : offset + size]
            if not any(chunk_id in missing for chunk_id, _ in batch):
                continue
            vectors = provider.embed([content for _, content in batch], scope)
            wanted = {
                chunk_id: vector
                for (chunk_id, _), vector in zip(batch, vectors, strict=True)
                if chunk_id in missing
            }
            inserted += store.write_embeddings(engine, document_id, model, wanted).inserted
        total = store.count_embeddings(engine, document_id, model)
    context.add_output_metadata(
        {
            "model": model,
            "dimensions": MetadataValue.int(provider.embedding_dimensions),
            "embedded_now": MetadataValue.int(inserted),
            "already_embedded": MetadataValue.int(total - inserted),
            "vectors": MetadataValue.int(total),
            "dagster/row_count": MetadataValue.int(total),
            "chunks": MetadataValue.int(len(chunks["chunk_ids"])),
            **ai_usage_metadata(scope),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
        }
    )
    return {"document_id": document_id, "model": model, "vectors": total}
