"""Sensors: uploads, the stale-run reaper, and the automation that connects embedded documents."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath

from dagster import (
    AssetSelection,
    AutomationConditionSensorDefinition,
    DefaultSensorStatus,
    RunFailureSensorContext,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    run_failure_sensor,
    sensor,
)

from doc_pipeline.core.uploads import look
from doc_pipeline.db import store
from doc_pipeline.db.registration import register_file
from doc_pipeline.failure_alerts import report_final_failure
from doc_pipeline.jobs import MAX_RUNTIME_SECONDS, UP_TO_EMBEDDINGS, document_job
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.alerts import Alerts
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.liveness import Liveness
from doc_pipeline.resources.recovery import Recovery
from doc_pipeline.resources.source_store import SourceStore
from doc_pipeline.resources.uploads import Uploads
from doc_pipeline.run_recovery import failed_documents, reap_dead_runs

REAPER_INTERVAL_ENV = "DOC_PIPELINE_REAPER_INTERVAL_SECONDS"
AUTOMATION_INTERVAL_ENV = "DOC_PIPELINE_AUTOMATION_INTERVAL_SECONDS"
UPLOADS_INTERVAL_ENV = "DOC_PIPELINE_UPLOADS_INTERVAL_SECONDS"
RESUME_OF_TAG = "doc_pipeline/resume_of"
ATTEMPT_TAG = "doc_pipeline/attempt"
UPLOAD_TAG = "doc_pipeline/upload"  # the uploaded file's name


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


@sensor(
    name="uploads",
    job=document_job,
    default_status=DefaultSensorStatus.RUNNING,
    minimum_interval_seconds=int(os.environ.get(UPLOADS_INTERVAL_ENV, "15")),
    description=(
        "Registers files dropped into the uploads location (`uploads.url`, by default "
        "$DOC_PIPELINE_HOME/uploads) once they are completely written, by content hash: the "
        "same file twice is one version; a changed file under the same name, or with the same "
        "book identifier, is a new version of its document, otherwise a new document. Requests "
        "one run per new version (run key = content hash); a file that is not a book fails that "
        "run as invalid input, once."
    ),
)
def uploads_sensor(
    context: SensorEvaluationContext,
    app_database: AppDatabase,
    source_store: SourceStore,
    uploads: Uploads,
) -> SensorResult | SkipReason:
    seen = look(
        uploads.listing(),
        json.loads(context.cursor) if context.cursor else {},
        now=datetime.now(UTC),
        settle=timedelta(seconds=uploads.settle_seconds),
    )
    engine = app_database.engine
    requests, new_partitions = [], []
    for file in seen.ready:
        try:
            with uploads.local_copy(file.path) as local:
                # Its name there is an identity: the same name again is a new version.
                registered = register_file(engine, source_store.url, local, upload_name=file.path)
        except FileNotFoundError:
            context.log.info(f"{file.path}: removed before it could be read")
            seen.state.pop(file.path, None)
            continue
        document = store.get_document(engine, registered.document_id)
        if not registered.is_new and document["stage"] != "pending":
            context.log.info(
                f"{file.path}: the same content as document {registered.document_id} "
                f"({document['source_file']}, {document['stage']}); nothing to do"
            )
            continue
        for warning in registered.warnings:
            context.log.warning(f"{file.path}: {warning}")
        if registered.version > 1:
            context.log.info(
                f"{file.path}: version {registered.version} of document {registered.document_id}"
            )
        else:
            context.log.info(f"{file.path}: document {registered.document_id}")
            new_partitions.append(registered.document_id)
        requests.append(
            RunRequest(
                run_key=f"upload-{registered.content_sha256}",
                partition_key=registered.document_id,
                asset_selection=UP_TO_EMBEDDINGS,
                tags={UPLOAD_TAG: PurePosixPath(file.path).name[:200]},
            )
        )
    cursor = json.dumps(seen.state, sort_keys=True)
    if not requests:
        waiting = f", {len(seen.waiting)} still being written" if seen.waiting else ""
        context.update_cursor(cursor)
        return SkipReason(f"no new books in {uploads.location()}{waiting}")
    return SensorResult(
        run_requests=requests,
        cursor=cursor,
        dynamic_partitions_requests=[documents_partitions.build_add_request(new_partitions)]
        if new_partitions
        else [],
    )


ALERTS_INTERVAL_ENV = "DOC_PIPELINE_ALERTS_INTERVAL_SECONDS"


@run_failure_sensor(
    name="final_failure_alerts",
    default_status=DefaultSensorStatus.RUNNING,
    # Also the runs of `doc-pipeline ingest`, which belong to no code location.
    monitor_all_code_locations=True,
    minimum_interval_seconds=int(os.environ.get(ALERTS_INTERVAL_ENV, "30")),
    description=(
        "Reports a failed document run that nothing will retry to the webhook in "
        "$DOC_PIPELINE_ALERT_WEBHOOK_URL (`alerts.webhook_url_env`), as Slack's {\"text\": ...}: "
        "bad input (`invalid_input`), a bug or a failed blocking check (`permanent`), or a "
        "document the reaper gives up on after `recovery.max_attempts` failed runs in a row. "
        "Without a URL it only logs the alert."
    ),
)
def final_failure_alerts(
    context: RunFailureSensorContext,
    alerts: Alerts,
    app_database: AppDatabase,
    recovery: Recovery,
) -> None:
    # None, not a SkipReason: Dagster then goes on to the next failed run in the same tick.
    report_final_failure(
        context.instance,
        context.dagster_run,
        app_database.engine,
        recovery.policy(),
        alerts,
        context.log,
    )
