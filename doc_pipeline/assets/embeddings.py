import time

from dagster import AssetExecutionContext, MetadataValue, asset

from doc_pipeline.assets import catalog, versions
from doc_pipeline.assets.ai_usage import ai_usage_metadata, ledger_scope
from doc_pipeline.concurrency import AI_POOL
from doc_pipeline.core.parallel import BoundedRequests
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
    all have vectors is skipped. Batches are sent concurrently (the provider's
    `max_concurrent_requests`), and each is committed as its answer arrives."""
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
        batches = [ordered[offset : offset + size] for offset in range(0, len(ordered), size)]
        with BoundedRequests[list](provider.max_concurrent_requests, name="embedding") as sent:
            for batch in batches:
                if any(chunk_id in missing for chunk_id, _ in batch):
                    sent.submit(batch, provider.embed, [content for _, content in batch], scope)
            for batch, vectors in sent.completed():  # each batch written as it arrives
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
