"""Sensors: the stale-run reaper."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

from dagster import (
    DagsterRunStatus,
    DefaultSensorStatus,
    RunsFilter,
    SensorEvaluationContext,
    SkipReason,
    sensor,
)

from doc_pipeline.core.heartbeat import newest_beats
from doc_pipeline.core.reaper import StartedRun, dead_runs
from doc_pipeline.core.stages import TRANSIENT
from doc_pipeline.db import store
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.liveness import Liveness

REAPER_INTERVAL_ENV = "DOC_PIPELINE_REAPER_INTERVAL_SECONDS"
PARTITION_TAG = "dagster/partition"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@sensor(
    name="stale_run_reaper",
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get(REAPER_INTERVAL_ENV, "60")),
    description=(
        "Fails started runs whose run worker is gone or whose newest heartbeat is older than "
        "`liveness.stale_after_minutes`, and marks their documents failed (transient) with the "
        "reason; the instance's run retries then resume them from the failed step."
    ),
)
def stale_run_reaper(
    context: SensorEvaluationContext, app_database: AppDatabase, liveness: Liveness
) -> SkipReason:
    instance = context.instance
    records = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    engine = app_database.engine
    beats = newest_beats(engine, [record.dagster_run.run_id for record in records])
    runs = []
    for record in records:
        run = record.dagster_run
        beat = beats.get(run.run_id)
        started = datetime.fromtimestamp(record.start_time, UTC) if record.start_time else None
        runs.append(
            StartedRun(
                run_id=run.run_id,
                document_id=run.tags.get(PARTITION_TAG),
                started_at=started,
                last_beat=beat.beat_at if beat else None,
                beat_host=beat.host if beat else None,
                beat_pid=beat.pid if beat else None,
            )
        )
    verdicts = dead_runs(
        runs,
        now=datetime.now(UTC),
        stale_after=timedelta(minutes=liveness.stale_after_minutes),
        this_host=socket.gethostname(),
        pid_alive=_pid_alive,
    )
    for verdict in verdicts:
        run = instance.get_run_by_id(verdict.run_id)
        message = f"doc_pipeline reaper: run {verdict.run_id[:8]} failed because {verdict.reason}"
        context.log.warning(message)
        instance.report_run_failed(run, message=message)
        if verdict.document_id and store.get_document(engine, verdict.document_id):
            store.mark_failed(
                engine, verdict.document_id, TRANSIENT, f"{message}; a retry resumes it"
            )
    return SkipReason(f"{len(runs)} started run(s) checked, {len(verdicts)} failed as dead")
