"""The Definitions object: assets, resources and jobs of doc_pipeline."""

from dagster import Definitions, in_process_executor

from doc_pipeline.assets import document_assets
from doc_pipeline.checks import AIBudget, asset_checks
from doc_pipeline.jobs import document_job
from doc_pipeline.resources.alerts import Alerts
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.blob_io_manager import BlobIOManager
from doc_pipeline.resources.gemini_provider import GeminiProvider
from doc_pipeline.resources.liveness import Liveness
from doc_pipeline.resources.local_provider import LocalProvider
from doc_pipeline.resources.recovery import Recovery
from doc_pipeline.resources.source_store import SourceStore
from doc_pipeline.resources.uploads import Uploads
from doc_pipeline.sensors import (
    connections_automation,
    final_failure_alerts,
    stale_run_reaper,
    uploads_sensor,
)
from doc_pipeline.settings import Settings

PROVIDERS = {"local": LocalProvider, "gemini": GeminiProvider}

defs = Definitions(
    assets=document_assets,
    asset_checks=asset_checks,
    jobs=[document_job],
    sensors=[uploads_sensor, stale_run_reaper, connections_automation, final_failure_alerts],
    # Runs the automation sensor starts use it too (see jobs.py for why in-process).
    executor=in_process_executor,
    resources={
        "app_database": AppDatabase(),
        "source_store": SourceStore(),
        "io_manager": BlobIOManager(),
        "provider": PROVIDERS[Settings.provider()](),
        "liveness": Liveness(),
        "recovery": Recovery(),
        "uploads": Uploads(),
        "ai_budget": AIBudget(),
        "alerts": Alerts(),
    },
)
