"""Sensors: the stale-run reaper, and the automation that connects embedded documents."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

from doc_pipeline.jobs import MAX_RUNTIME_SECONDS, document_job
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.liveness import Liveness
from doc_pipeline.resources.recovery import Recovery
from doc_pipeline.run_recovery import failed_documents, reap_dead_runs

REAPER_INTERVAL_ENV = "DOC_PIPELINE_REAPER_INTERVAL_SECONDS"
AUTOMATION_INTERVAL_ENV = "DOC_PIPELINE_AUTOMATION_INTERVAL_SECONDS"
RESUME_OF_TAG = "doc_pipeline/resume_of"
ATTEMPT_TAG = "doc_pipeline/attempt"


@sensor(
    name="stale_run_reaper",
    job=document_job,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get(REAPER_INTERVAL_ENV, "60")),
    description=(
        "Fails started runs whose run worker is gone or whose newest heartbeat is older than "
        "`liveness.stale_after_minutes`, and marks their documents failed (transient). Failed "
        "documents that Dagster's run retries do not retry are resumed from the failed step with "
        "backoff, up to `recovery.max_attempts` runs in a row; then the document is given up."
    ),
)
def stale_run_reaper(
    context: SensorEvaluationContext,
    app_database: AppDatabase,
    liveness: Liveness,
    recovery: Recovery,
) -> SensorResult | SkipReason:
    instance = context.instance
    engine = app_database.engine
    checked, verdicts = reap_dead_runs(
        instance, engine, timedelta(minutes=liveness.stale_after_minutes), log=context.log
    )
    resumes, give_ups = failed_documents(instance, engine, recovery.policy(), datetime.now(UTC))
    for document_id, give_up in give_ups:
        context.log.warning(f"document {document_id}: {give_up.message}")
    summary = (
        f"{checked} started run(s) checked, {len(verdicts)} failed as dead; "
        f"{len(resumes)} failed document(s) resumed, {len(give_ups)} given up"
    )
    if not resumes:
        return SkipReason(summary)
    context.log.info(summary)
    return SensorResult(
        run_requests=[
            RunRequest(
                # One resume per failed run, however often the sensor sees it.
                run_key=f"resume-{resume.failed_run_id}",
                partition_key=resume.document_id,
                asset_selection=resume.asset_keys,
                run_config=resume.run_config,
                tags={RESUME_OF_TAG: resume.failed_run_id, ATTEMPT_TAG: str(resume.attempt)},
            )
            for resume in resumes
        ]
    )


# Dagster's default automation sensor starts STOPPED; this one runs from the start.
connections_automation = AutomationConditionSensorDefinition(
    "connections_automation",
    target=AssetSelection.assets("connections"),
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get(AUTOMATION_INTERVAL_ENV, "30")),
    run_tags={"dagster/max_runtime": str(MAX_RUNTIME_SECONDS)},
    description=(
        "Connects a document to the others once its embeddings are new (the `connections` "
        "asset's eager condition): one run per document, never while one is queued or running."
    ),
)
