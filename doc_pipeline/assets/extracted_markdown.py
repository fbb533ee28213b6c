import time

from dagster import AssetExecutionContext, MetadataValue, asset

from doc_pipeline import blob_store
from doc_pipeline.assets import catalog, versions
from doc_pipeline.assets.ai_usage import ai_usage_metadata, ledger_scope
from doc_pipeline.concurrency import AI_POOL
from doc_pipeline.core.chunking import count_words
from doc_pipeline.core.markdown_stats import preview
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
    kinds=catalog.kinds(ai=True),  # scanned PDF pages are transcribed by the provider's model
    owners=catalog.OWNERS,
    metadata=catalog.table_metadata("documents"),
    pool=AI_POOL,
    code_version=versions.EXTRACTION,
)
def extracted_markdown(
    context: AssetExecutionContext,
    source_document: dict,
    app_database: AppDatabase,
    liveness: Liveness,
    provider: Provider,
) -> dict:
    """The book as markdown (EPUB: spine order, chapter headings, footnotes; PDF: the text layer's
    paragraphs and headings, and where each page begins); no licence boilerplate."""
    document_id = context.partition_key
    engine = app_database.engine
    scope = ledger_scope(context, app_database, "transcription")
    started = time.perf_counter()
    with (
        liveness.heartbeat(context, app_database),
        expected_failures(),
        tracked_stage(engine, document_id, "extracting", "extracted"),
    ):
        # The EPUB and PDF readers need a local file: in an object store, a temporary copy.
        with blob_store.local_copy(source_document["stored_path"]) as local:
            book = provider.extract(local, source_document["source_file"], scope)
        store.update_document_fields(
            engine,
            document_id,
            title=book.title,
            author=book.author,
            language=book.language,
            extraction_warnings=list(book.warnings),
            markup_errors=book.markup_errors,
        )
    for warning in book.warnings:
        context.log.warning(f"{source_document['source_file']}: {warning}")
    context.add_output_metadata(
        {
            "title": book.title,
            "words": MetadataValue.int(count_words(book.markdown)),
            "characters": MetadataValue.int(len(book.markdown)),
            "chapters": MetadataValue.int(book.chapter_count),
            **({"pages": MetadataValue.int(book.pages)} if book.pages else {}),
            "warnings": MetadataValue.int(len(book.warnings)),
            "markup_errors_recovered": MetadataValue.int(book.markup_errors),
            "what was skipped": MetadataValue.md(_bullets(book.warnings) or "nothing"),
            **ai_usage_metadata(scope),
            "seconds": MetadataValue.float(round(time.perf_counter() - started, 3)),
            "preview": MetadataValue.md(preview(book.markdown)),
        }
    )
    return {
        "document_id": document_id,
        "version": source_document.get("version", 1),
        "title": book.title,
        "author": book.author,
        "language": book.language,
        "chapter_count": book.chapter_count,
        "warnings": list(book.warnings),
        "markup_errors": book.markup_errors,
        "markdown": book.markdown,
        "page_starts": [list(start) for start in book.page_starts],
    }


def _bullets(lines: tuple[str, ...]) -> str:
    return "\n".join(f"- {line}" for line in lines)
