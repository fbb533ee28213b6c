import time

from dagster import AssetExecutionContext, MetadataValue, asset

from doc_pipeline.assets import catalog, versions
from doc_pipeline.assets.ai_usage import ai_usage_metadata, ledger_scope
from doc_pipeline.concurrency import AI_POOL
from doc_pipeline.core.parallel import BoundedRequests
from doc_pipeline.core.vectors import text_key
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
    """One vector per chunk and model, kept under its text's key: a text that has a vector for
    the model already (in any chunk of any document) is reused, not sent; the texts that have
    none are sent in batches of at most `embedding_batch_size`, concurrently (the provider's
    `max_concurrent_requests`), and each batch is written as its answer arrives, so a retry
    sends only texts still without a vector.

    For a new version of a document (its chunks not written yet, `pending_rows`), the texts
    without a vector are embedded the same way (each answer kept in the AI ledger as it
    arrives), then the version supersedes the current one in one transaction: its chunks by
    difference, with the new chunks' vectors."""
    document_id = context.partition_key
    engine = app_database.engine
    model = provider.embedding_model
    scope = ledger_scope(context, app_database, "embeddings")
    started = time.perf_counter()
    pending = chunks.get("pending_rows")
    superseded: dict[str, MetadataValue] = {}
    inserted = reused = 0
    with (
        liveness.heartbeat(context, app_database),
        expected_failures(),
        tracked_stage(engine, document_id, "embedding", "embedded"),
    ):
        if pending is not None:
            # A new version: vectors for its texts, then it supersedes the current one.
            missing = [(row["id"], row["content"]) for row in pending]
        else:
            missing = store.chunks_missing_embeddings(engine, document_id, model)
        keys = {chunk_id: text_key(content) for chunk_id, content in missing}
        chunks_of: dict[str, list[str]] = {}
        for chunk_id, key in keys.items():
            chunks_of.setdefault(key, []).append(chunk_id)
        known = store.vectors_of_texts(engine, model, provider.embedding_dimensions, chunks_of)
        vectors = {
            c: known[k] for k, chunk_ids in chunks_of.items() if k in known for c in chunk_ids
        }
        if known and pending is None:
            reused = store.write_embeddings(engine, document_id, model, vectors, keys).inserted
        texts = list(
            {
                key: content
                for chunk_id, content in missing
                if (key := keys[chunk_id]) not in known
            }.items()
        )
        size = provider.embedding_batch_size
        batches = [texts[i : i + size] for i in range(0, len(texts), size)]
        with BoundedRequests[list](provider.max_concurrent_requests, name="embedding") as sent:
            for batch in batches:
                sent.submit(batch, provider.embed, [text for _, text in batch], scope)
            # Each answer is in the ledger as it arrives; a chunk's vector is written with it,
            # or (a new version) with the version's chunks when it supersedes.
            for batch, answer in sent.completed():
                answered = {
                    chunk_id: vector
                    for (key, _), vector in zip(batch, answer, strict=True)
                    for chunk_id in chunks_of[key]
                }
                if pending is None:
                    inserted += store.write_embeddings(
                        engine, document_id, model, answered, keys
                    ).inserted
                else:
                    vectors |= answered
                    inserted += len(answered)
        if pending is not None:
            reused = len(pending) - inserted
            try:
                counts = store.supersede(
                    engine, document_id, chunks["version"], pending, model, vectors, keys
                )
                superseded = {
                    "chunks_kept": MetadataValue.int(counts.kept),
                    "chunks_added": MetadataValue.int(counts.inserted),
                    "chunks_removed": MetadataValue.int(counts.deleted),
                }
            except store.SupersededError as newer:  # a newer version's run finished first
                context.log.warning(str(newer))
                superseded = {"not_made_current": MetadataValue.text(str(newer))}
        total = store.count_embeddings(engine, document_id, model)
    context.add_output_metadata(
        {
            "model": model,
            "version": MetadataValue.int(chunks.get("version", 1)),
            **superseded,
            "dimensions": MetadataValue.int(provider.embedding_dimensions),
            "embedded_now": MetadataValue.int(inserted),
            # Texts that had a vector already (another chunk, document or version): not paid.
            "reused_vectors": MetadataValue.int(reused),
            "already_embedded": MetadataValue.int(total - inserted - reused),
            "vectors": MetadataValue.int(total),
            "dagster/row_count": MetadataValue.int(total),
            "chunks": MetadataValue.int(len(chunks["chunk_ids"])),
            **ai_usage_metadata(scope),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
        }
    )
    return {"document_id": document_id, "model": model, "vectors": total}
