import time

from dagster import AssetExecutionContext, MetadataValue, asset

from doc_pipeline.core.stages import tracked_stage
from doc_pipeline.db import store
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.local_provider import LocalProvider

BATCH_SIZE = 100


@asset(partitions_def=documents_partitions, group_name="documents")
def embeddings(
    context: AssetExecutionContext,
    chunks: dict,
    app_database: AppDatabase,
    provider: LocalProvider,
) -> dict:
    """One vector per chunk and model. Only chunks without one are embedded, so a retry or a
    re-ingest embeds nothing twice; each batch is committed before the next is computed."""
    document_id = context.partition_key
    engine = app_database.engine
    model = provider.embedding_model
    started = time.perf_counter()
    inserted = 0
    with tracked_stage(engine, document_id, "embedding", "embedded"):
        missing = store.chunks_missing_embeddings(engine, document_id, model)
        for offset in range(0, len(missing), BATCH_SIZE):
            batch = missing[offset : offset + BATCH_SIZE]
            vectors = provider.embed([content for _, content in batch])
            written = store.write_embeddings(
                engine,
                document_id,
                model,
                dict(zip((cid for cid, _ in batch), vectors, strict=True)),
            )
            inserted += written.inserted
        total = store.count_embeddings(engine, document_id, model)
    context.add_output_metadata(
        {
            "model": model,
            "dimensions": MetadataValue.int(provider.embedding_dimensions),
            "embedded_now": MetadataValue.int(inserted),
            "already_embedded": MetadataValue.int(total - inserted),
            "vectors": MetadataValue.int(total),
            "chunks": MetadataValue.int(len(chunks["chunk_ids"])),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
        }
    )
    return {"document_id": document_id, "model": model, "vectors": total}
