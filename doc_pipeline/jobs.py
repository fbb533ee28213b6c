"""The document job: every stage of one document partition, in one run worker process."""

from dagster import AssetKey, AssetSelection, define_asset_job, in_process_executor

from doc_pipeline.assets import document_assets

DOCUMENT_JOB = "document_job"
MAX_RUNTIME_SECONDS = 6 * 60 * 60
# What a new document's run materializes: its connections follow in a run of their own (by
# `ingest` once its batch is embedded, or by the connections automation).
UP_TO_EMBEDDINGS = [
    AssetKey(name) for name in ("source_document", "extracted_markdown", "chunks", "embeddings")
]

# In-process: a killed run worker must not leave a step process behind that finishes an AI call
# the retry then pays for again, and it saves seconds of process start per step.
document_job = define_asset_job(
    DOCUMENT_JOB,
    selection=AssetSelection.assets(*document_assets),  # partitioned like them, by document
    executor_def=in_process_executor,
    description="Process one document: source → markdown → chunks → embeddings → connections.",
    # A backstop longer than any legitimate run; stale runs are caught sooner by the reaper.
    tags={"dagster/max_runtime": str(MAX_RUNTIME_SECONDS)},
)
