"""How steps show they are alive, and when silence means a run is stale."""

from __future__ import annotations

import os
from contextlib import AbstractContextManager

from dagster import AssetExecutionContext, ConfigurableResource

from doc_pipeline.core.reaper import DEFAULT_STALE_AFTER
from doc_pipeline.db.heartbeats import DEFAULT_INTERVAL_SECONDS, Heartbeat
from doc_pipeline.resources.app_database import AppDatabase

HEARTBEAT_INTERVAL_ENV = "DOC_PIPELINE_HEARTBEAT_INTERVAL_SECONDS"
STALE_AFTER_ENV = "DOC_PIPELINE_STALE_AFTER_MINUTES"


class Liveness(ConfigurableResource):
    """`heartbeat_interval_seconds` (default from DOC_PIPELINE_HEARTBEAT_INTERVAL_SECONDS, else
    60): how often a long step writes a heartbeat. `stale_after_minutes` (default from
    DOC_PIPELINE_STALE_AFTER_MINUTES, else 30): how old the newest heartbeat of a run may be
    before it is stale. The environment sets them for every process of a deployment at once
    (the reaper's sensor and the run workers read the same)."""

    heartbeat_interval_seconds: float = float(
        os.environ.get(HEARTBEAT_INTERVAL_ENV, DEFAULT_INTERVAL_SECONDS)
    )
    stale_after_minutes: float = float(
        os.environ.get(STALE_AFTER_ENV, DEFAULT_STALE_AFTER.total_seconds() / 60)
    )

    def heartbeat(
        self, context: AssetExecutionContext, app_database: AppDatabase
    ) -> AbstractContextManager[Heartbeat]:
        return Heartbeat(
            app_database.engine,
            run_id=context.run_id,
            step_key=context.asset_key.to_user_string(),
            document_id=context.partition_key,
            interval_seconds=self.heartbeat_interval_seconds,
        )
