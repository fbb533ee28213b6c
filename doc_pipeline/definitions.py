"""The Definitions object: assets, resources and jobs of doc_pipeline."""

from dagster import AssetSelection, Definitions, define_asset_job, in_process_executor

from doc_pipeline.assets import document_assets
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.blob_io_manager import BlobIOManager
from doc_pipeline.resources.gemini_provider import GeminiProvider
from doc_pipeline.resources.liveness import Liveness
from doc_pipeline.resources.local_provider import LocalProvider
from doc_pipeline.resources.source_store import SourceStore
from doc_pipeline.sensors import stale_run_reaper
from doc_pipeline.settings import Settings

DOCUMENT_JOB = "document_job"
MAX_RUNTIME_SECONDS = 6 * 60 * 60

# In-process: a killed run worker must not leave a step process behind that finishes an AI call
# the retry then pays for again, and it saves seconds of process start per step.
document_job = define_asset_job(
    DOCUMENT_JOB,
    selection=AssetSelection.assets(*document_assets),
    partitions_def=documents_partitions,
    executor_def=in_process_executor,
    description="Process one document: source → markdown → chunks → embeddings → connections.",
    # A backstop longer than any legitimate run; stale runs are caught sooner by the reaper.
    tags={"dagster/max_runtime": str(MAX_RUNTIME_SECONDS)},
)

PROVIDERS = {"local": LocalProvider, "gemini": GeminiProvider}

defs = Definitions(
    assets=document_assets,
    jobs=[document_job],
    sensors=[stale_run_reaper],
    resources={
        "app_database": AppDatabase(),
        "source_store": SourceStore(),
        "io_manager": BlobIOManager(),
        "provider": PROVIDERS[Settings.provider()](),
        "liveness": Liveness(),
    },
)
