import statistics
import time

from dagster import AssetExecutionContext, MetadataValue, asset

from doc_pipeline.assets import catalog, versions
from doc_pipeline.assets.ai_usage import ai_usage_metadata, ledger_scope
from doc_pipeline.concurrency import AI_POOL
from doc_pipeline.core.books import InvalidBookError
from doc_pipeline.core.chunk_rows import chunk_rows
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
    metadata=catalog.table_metadata("chunks"),
    pool=AI_POOL,
    code_version=versions.CHUNKS,
)
def chunks(
    context: AssetExecutionContext,
    extracted_markdown: dict,
    app_database: AppDatabase,
    liveness: Liveness,
    provider: Provider,
) -> dict:
    """Chunks of the markdown with stable ids and metadata, written by difference in one
    transaction. AI requests go through the ledger, so a retry pays only for what is new.

    A new version of a document with a current one is not written here: its rows go to the
    embeddings step, which supersedes the current version in one transaction once they have
    vectors, so that until then the current version stays whole."""
    document_id = context.partition_key
    engine = app_database.engine
    scope = ledger_scope(context, app_database, "chunks")
    started = time.perf_counter()
    with (
        liveness.heartbeat(context, app_database),
        expected_failures(),
        tracked_stage(engine, document_id, "chunking", "chunked"),
    ):
        pieces = provider.chunk(extracted_markdown["markdown"], scope)
        if not pieces:
            raise InvalidBookError(f"{extracted_markdown['title']}: no text to chunk")
        rows = chunk_rows(document_id, pieces, extracted_markdown.get("page_starts", ()))
        version = extracted_markdown.get("version", 1)
        current = store.current_version(engine, document_id)
        pending = current is not None and current != version
        if pending:
            counts = store.compare_chunks(engine, document_id, rows)
        else:
            try:
                counts = store.write_chunks(engine, document_id, rows, version)
            except store.SupersededError as newer:  # a newer version's run finished first
                context.log.warning(str(newer))
                counts = store.WriteCounts()
    sizes = [row["word_count"] for row in rows]
    context.add_output_metadata(
        {
            "provider": provider.name,
            "version": MetadataValue.int(version),
            # A new version: what it changes, applied when the embeddings step supersedes.
            **({"supersedes_version": MetadataValue.int(current)} if pending else {}),
            "chunks": MetadataValue.int(len(rows)),
            "dagster/row_count": MetadataValue.int(len(rows)),
            **{f"rows_{k}": MetadataValue.int(v) for k, v in counts.as_dict().items()},
            "words_min": MetadataValue.int(min(sizes)),
            "words_median": MetadataValue.int(int(statistics.median(sizes))),
            "words_max": MetadataValue.int(max(sizes)),
            **ai_usage_metadata(scope),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
        }
    )
    return {
        "document_id": document_id,
        "version": version,
        "chunk_ids": [row["id"] for row in rows],
        # The rows of a version that is not current yet, for the embeddings step to write.
        "pending_rows": rows if pending else None,
    }
