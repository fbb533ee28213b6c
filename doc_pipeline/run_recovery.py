"""The reaper's work on a Dagster instance (the rules are in core/reaper.py and core/resume.py):
fail runs that are dead, give back their pool slots, and find failed documents to resume.

A dead run is first terminated through its run launcher, so that a worker that is only hung
(on another host, say) stops paying for AI requests; then it is failed, so that Dagster's run
retries (and the reaper's own) resume it. A worker that reacts to the termination marks its run
canceled; a run the reaper failed that ends canceled is failed again at the next look.

Used by the `stale_run_reaper` sensor and, for runs of this host, by `doc-pipeline ingest`
before it starts (a CLI run killed earlier must not hold its AI pool slot forever).
"""

from __future__ import annotations

import os
import socket
import threading
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter
from dagster._core.execution.stats import StepEventStatus
from dagster._core.storage.tags import AUTO_RETRY_RUN_ID_TAG, WILL_RETRY_TAG
from sqlalchemy.engine import Engine

from doc_pipeline.assets import document_assets
from doc_pipeline.concurrency import PARTITION_TAG
from doc_pipeline.core.failures import TRANSIENT
from doc_pipeline.core.processes import pid_alive
from doc_pipeline.core.reaper import StartedRun, Verdict, dead_runs
from doc_pipeline.core.resume import DocumentState, GiveUp, RecoveryPolicy, RunOutcome, decide
from doc_pipeline.db import store
from doc_pipeline.db.heartbeats import newest_beats

# Failed runs older than this are not looked at again: the reaper has decided about them.
LOOKBACK = timedelta(days=1)
# A job's (or run's) own stale limit, in minutes, instead of `liveness.stale_after_minutes`.
STALE_AFTER_TAG = "doc_pipeline/stale_after_minutes"
# Where a run will run, set by a launcher that runs it in its own process (the CLI), so that a
# run killed before its first heartbeat is known dead at once.
WORKER_HOST_TAG = "doc_pipeline/worker_host"
WORKER_PID_TAG = "doc_pipeline/worker_pid"
# Why the reaper failed a run: its failure is reported again if the run ends up canceled.
REAPED_TAG = "doc_pipeline/reaped"
TERMINATE_WAIT_SECONDS = 5.0
ASSET_ORDER = [key for asset in document_assets for key in asset.keys]


def reap_dead_runs(
    instance: DagsterInstance, engine: Engine, stale_after: timedelta, *, log=None
) -> tuple[int, list[Verdict]]:
    """Fail the started runs that are dead, mark their documents failed (transient) and free
    their pool slots. Returns how many started runs were checked, and the verdicts."""
    _fail_reaped_runs_that_ended_canceled(instance)
    records = instance.get_run_records(RunsFilter(statuses=[DagsterRunStatus.STARTED]))
    beats = newest_beats(engine, [record.dagster_run.run_id for record in records])
    launcher_checks_health = (
        instance.run_monitoring_enabled and instance.run_launcher.supports_check_run_worker_health
    )
    runs = []
    for record in records:
        run = record.dagster_run
        beat = beats.get(run.run_id)
        started = datetime.fromtimestamp(record.start_time, UTC) if record.start_time else None
        worker_pid = _pid_tag(run.tags.get(WORKER_PID_TAG))
        runs.append(
            StartedRun(
                run_id=run.run_id,
                document_id=run.tags.get(PARTITION_TAG),
                started_at=started,
                last_beat=beat.beat_at if beat else None,
                beat_host=beat.host if beat else None,
                beat_pid=beat.pid if beat else None,
                stale_after=_stale_after_tag(run.tags.get(STALE_AFTER_TAG)),
                worker_host=run.tags.get(WORKER_HOST_TAG),
                worker_pid=worker_pid,
                # The CLI's runs are carried out by the CLI, not by the launcher.
                health_checked=launcher_checks_health and worker_pid is None,
            )
        )
    verdicts = dead_runs(
        runs,
        now=datetime.now(UTC),
        stale_after=stale_after,
        this_host=socket.gethostname(),
        pid_alive=pid_alive,
    )
    for verdict in verdicts:
        message = f"doc_pipeline reaper: run {verdict.run_id[:8]} failed because {verdict.reason}"
        if log:
            log.warning(message)
        run = instance.get_run_by_id(verdict.run_id)
        instance.add_run_tags(run.run_id, {REAPED_TAG: message[:1000]})
        # A worker that may be alive (hung, or on another host), launched by the launcher (not
        # the CLI): the launcher can stop it.
        if not verdict.worker_gone and WORKER_PID_TAG not in run.tags:
            _terminate(instance, run.run_id, log)
        instance.report_run_failed(instance.get_run_by_id(verdict.run_id), message=message)
        if instance.event_log_storage.supports_global_concurrency_limits:
            instance.event_log_storage.free_concurrency_slots_for_run(verdict.run_id)
        if verdict.document_id and store.get_document(engine, verdict.document_id):
            store.mark_failed(
                engine, verdict.document_id, TRANSIENT, f"{message}; a retry resumes it"
            )
    return len(runs), verdicts


def _terminate(instance: DagsterInstance, run_id: str, log) -> None:
    """Ask the run launcher to stop the run's worker, waiting at most TERMINATE_WAIT_SECONDS; a
    launcher that cannot reach it (its code server or host is gone too) is no reason not to
    fail the run. The request goes on in the background past that: the default launcher asks
    the code server that launched the run, which is where this sensor runs, and `dagster dev`'s
    code server answers it only once the sensor's evaluation has ended."""
    outcome: dict = {}

    def request() -> None:
        try:
            outcome["stopped"] = instance.run_launcher.terminate(run_id)
        except Exception as error:  # the launcher's own errors: gRPC, Kubernetes API, ...
            outcome["error"] = " ".join(str(error).split())[:300]

    thread = threading.Thread(target=request, name=f"terminate-{run_id[:8]}", daemon=True)
    thread.start()
    thread.join(TERMINATE_WAIT_SECONDS)
    if not log:
        return
    if outcome.get("stopped"):
        log.info(f"run {run_id[:8]}: terminated through the run launcher")
    elif "error" in outcome:
        log.info(f"run {run_id[:8]}: the run launcher could not terminate it: {outcome['error']}")
    elif thread.is_alive():
        log.info(f"run {run_id[:8]}: termination requested through the run launcher")


def _fail_reaped_runs_that_ended_canceled(instance: DagsterInstance) -> None:
    """A hung worker that the termination woke up marks its run canceled, which Dagster does
    not retry, possibly after the reaper failed it: fail such a run again."""
    canceled = instance.get_run_records(
        RunsFilter(
            statuses=[DagsterRunStatus.CANCELED],
            updated_after=datetime.now(UTC) - LOOKBACK,
        )
    )
    for record in canceled:
        run = record.dagster_run
        if REAPED_TAG in run.tags:
            instance.report_run_failed(run, message=run.tags[REAPED_TAG])


def this_process_tags() -> dict[str, str]:
    """Tags for a run that this process runs itself (`execute_job`)."""
    return {WORKER_HOST_TAG: socket.gethostname(), WORKER_PID_TAG: str(os.getpid())}


def _pid_tag(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None


def _stale_after_tag(value: str | None) -> timedelta | None:
    try:
        minutes = float(value) if value else 0.0
    except ValueError:
        return None  # a malformed tag falls back to the default rather than stopping the reaper
    return timedelta(minutes=minutes) if minutes > 0 else None


@dataclass(frozen=True)
class ResumeRequest:
    document_id: str
    failed_run_id: str
    attempt: int
    asset_keys: list[AssetKey]  # what the failed run selected and did not finish
    run_config: dict


def failed_documents(
    instance: DagsterInstance, engine: Engine, policy: RecoveryPolicy, now: datetime
) -> tuple[list[ResumeRequest], list[tuple[str, GiveUp]]]:
    """Documents whose newest run failed: those to resume now, and those given up on."""
    # Any job: the document job, and the runs the connections automation starts.
    failed = instance.get_run_records(
        RunsFilter(statuses=[DagsterRunStatus.FAILURE], updated_after=now - LOOKBACK)
    )
    documents = {
        r.dagster_run.tags[PARTITION_TAG] for r in failed if PARTITION_TAG in r.dagster_run.tags
    }
    resumes, give_ups = [], []
    for document_id in sorted(documents):
        row = store.get_document(engine, document_id)
        if row is None:
            continue
        records = instance.get_run_records(
            RunsFilter(tags={PARTITION_TAG: document_id}),
            limit=policy.max_attempts + 1,
        )
        decision = decide(
            [_outcome(record) for record in records],
            DocumentState(row["stage"], row["error_class"], row["error_message"]),
            now=now,
            policy=policy,
        )
        if isinstance(decision, GiveUp):
            store.mark_failed(
                engine, document_id, row["error_class"] or TRANSIENT, decision.message
            )
            give_ups.append((document_id, decision))
        elif decision is not None:
            failed_run = records[0].dagster_run
            remaining = _unfinished_assets(instance, failed_run)
            if remaining:
                resumes.append(
                    ResumeRequest(
                        document_id,
                        decision.failed_run_id,
                        decision.attempt,
                        remaining,
                        dict(failed_run.run_config),
                    )
                )
    return resumes, give_ups


def _outcome(record) -> RunOutcome:
    run = record.dagster_run
    return RunOutcome(
        run_id=run.run_id,
        failed=run.status == DagsterRunStatus.FAILURE,
        ended_at=datetime.fromtimestamp(record.end_time, UTC) if record.end_time else None,
        # Dagster can only re-execute a run launched from a code location (not the CLI's).
        dagster_will_retry=run.remote_job_origin is not None
        and run.tags.get(WILL_RETRY_TAG) != "false",
        dagster_retried=AUTO_RETRY_RUN_ID_TAG in run.tags,
    )


def _unfinished_assets(instance: DagsterInstance, run) -> list[AssetKey]:
    """The failed run's assets that did not succeed in it, in pipeline order (from failure)."""
    selected = set(run.asset_selection) if run.asset_selection else set(ASSET_ORDER)
    succeeded = {
        stats.step_key
        for stats in instance.get_run_step_stats(run.run_id)
        if stats.status == StepEventStatus.SUCCESS
    }
    return [
        key
        for key in ASSET_ORDER
        if key in selected and key.to_python_identifier() not in succeeded
    ]


def document_runs(instance: DagsterInstance, document_id: str, limit: int) -> list[RunOutcome]:
    """The document's newest runs of any job, newest first, as the reaper sees them (the
    failure alerts judge a run on the same history)."""
    records = instance.get_run_records(RunsFilter(tags={PARTITION_TAG: document_id}), limit=limit)
    return [_outcome(record) for record in records]
