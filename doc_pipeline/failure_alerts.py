"""What the `final_failure_alerts` sensor does with one failed run: decide (core/resume.py's
`final_failure`) whether nothing will retry its document, and if so tell the webhook."""

from __future__ import annotations

import logging

from dagster import DagsterInstance, DagsterRun
from dagster._core.storage.tags import WILL_RETRY_TAG
from sqlalchemy.engine import Engine

from doc_pipeline.concurrency import PARTITION_TAG
from doc_pipeline.core.alerts import alert_text, slack_body
from doc_pipeline.core.resume import DocumentState, RecoveryPolicy, final_failure
from doc_pipeline.db import store
from doc_pipeline.resources.alerts import AlertNotSent, Alerts
from doc_pipeline.run_recovery import document_runs


def report_final_failure(
    instance: DagsterInstance,
    run: DagsterRun,
    engine: Engine,
    policy: RecoveryPolicy,
    alerts: Alerts,
    log: logging.Logger,
) -> str | None:
    """Report the failed `run` if its document will not be retried; returns the alert's text
    (also when it is only logged, or the webhook refused it), None when there is none."""
    document_id = run.tags.get(PARTITION_TAG)
    if not document_id:
        return None  # not a document's run
    row = store.get_document(engine, document_id)
    if row is None:
        return None
    # Read again: Dagster writes `dagster/will_retry` just after the failure event.
    current = instance.get_run_by_id(run.run_id) or run
    failure = final_failure(
        document_runs(instance, document_id, limit=policy.max_attempts + 1),
        DocumentState(row["stage"], row["error_class"], row["error_message"]),
        policy,
        run_id=run.run_id,
        dagster_will_retry=current.tags.get(WILL_RETRY_TAG) == "true"
        and current.remote_job_origin is not None,
    )
    if failure is None:
        log.info(f"run {run.run_id[:8]} of document {document_id}: retried or to be retried")
        return None
    text = alert_text(
        document_id=document_id,
        source_file=row["source_file"],
        title=row["title"],
        run_id=run.run_id,
        failure=failure,
    )
    destination = alerts.destination()
    if destination is None:
        log.info(f"no alert webhook (${alerts.webhook_url_env} is not set); would report: {text}")
        return text
    try:
        alerts.post(slack_body(text))
    except AlertNotSent as error:
        # Not raised: the alert is in this log, and a raise would only fail the tick (Dagster
        # does not evaluate a run status sensor again for the same run).
        log.warning(f"{error}; the alert was: {text}")
        return text
    log.info(f"reported to {destination}: {text}")
    return text
