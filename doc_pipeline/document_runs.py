"""Carrying out document runs for `ingest` and `backfill`: in this process, or on N worker
processes at once (`--jobs N`).

Each run is `execute_job` of the document job in the process that carries it out, tagged with
that process's host and pid (so that the reaper and the next `ingest` can tell when it is dead).
Workers are spawned, not forked: a forked child would share its parent's open database
connections. They are started before `ingest` registers its files, so that their start (about
2.5 s of imports each) overlaps with it; each opens the Dagster instance at its first run and
carries out runs until the pool shuts down; one that finds its parent gone (the ingest was
killed) finishes the run it has and exits.
"""

from __future__ import annotations

import multiprocessing
import os
import threading
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

from dagster import AssetKey, DagsterInstance, JobDefinition, execute_job, reconstructable

from doc_pipeline.core.failures import TRANSIENT, redact
from doc_pipeline.db.failures import classify, describe
from doc_pipeline.instance import open_instance
from doc_pipeline.run_recovery import this_process_tags
from doc_pipeline.settings import Settings
from doc_pipeline.step_failures import unexpected_error

ORPHAN_CHECK_SECONDS = 1.0


def document_job() -> JobDefinition:
    from doc_pipeline.definitions import defs
    from doc_pipeline.jobs import DOCUMENT_JOB

    return defs.resolve_job_def(DOCUMENT_JOB)


@dataclass(frozen=True)
class RunReport:
    """What a document run came to, as the process that carried it out saw it."""

    run_id: str | None
    success: bool
    failure: str | None = None  # the run's first failure, as a user should read it
    unexpected_error: str | None = None  # the trace of a failure that was not expected (a bug)
    outage: str | None = None  # Dagster could not run or record it: its database is down


def execute_document_run(
    instance: DagsterInstance, document_id: str, assets: list[AssetKey], run_config: dict
) -> RunReport:
    """One run of the document job for the document's partition, in this process."""
    try:
        result = execute_job(
            reconstructable(document_job),
            instance=instance,
            tags={
                "dagster/partition": document_id,
                "doc_pipeline/source": "cli",
                **this_process_tags(),
            },
            run_config=run_config,
            asset_selection=assets,
            raise_on_error=False,
        )
    except Exception as error:
        # The run stays STARTED there until the reaper or the next ingest finds it dead.
        if classify(error) != TRANSIENT:
            raise
        return RunReport(run_id=None, success=False, outage=describe(error))
    if result.success:
        return RunReport(run_id=result.run_id, success=True)
    trace = unexpected_error(result.all_events)
    return RunReport(
        run_id=result.run_id,
        success=False,
        failure=run_failure(result),
        unexpected_error=trace and redact(trace),
    )


class DocumentRunner:
    """Carries out document runs, at most `width` at once; `submit` returns a future."""

    def __init__(self, instance: DagsterInstance, workers: WorkerPool | None):
        self._instance, self._workers = instance, workers
        self.width = workers.width if workers is not None else 1

    def submit(self, document_id: str, assets: list[AssetKey], run_config: dict) -> Future:
        if self._workers is not None:
            return self._workers.pool.submit(_run_on_worker, document_id, assets, run_config)
        future: Future = Future()
        try:
            future.set_result(execute_document_run(self._instance, document_id, assets, run_config))
        except Exception as error:
            future.set_exception(error)
        return future


@dataclass(frozen=True)
class WorkerPool:
    pool: ProcessPoolExecutor
    width: int


@contextmanager
def worker_pool(settings: Settings, jobs: int, documents: int) -> Iterator[WorkerPool | None]:
    """Up to `jobs` worker processes for `documents` documents, started now (None for one at a
    time: runs then go in this process); stopped when the block ends."""
    width = max(1, min(jobs, documents))
    if width == 1:
        yield None
        return
    pool = ProcessPoolExecutor(
        max_workers=width,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_start_worker,
        initargs=(settings, os.getpid()),
    )
    try:
        # One task per worker makes the pool start them all at once (it starts a process for a
        # task that no idle worker can take).
        for _ in range(width):
            pool.submit(_started)
        yield WorkerPool(pool, width)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


_worker_settings: Settings | None = None
_worker_instance: DagsterInstance | None = None
_busy = threading.Event()


def _start_worker(settings: Settings, parent_pid: int) -> None:
    """Import what runs need while the parent registers the files; the instance is opened at
    the first run, once the parent has made sure its database exists."""
    global _worker_settings
    _worker_settings = settings
    document_job()
    if Settings.provider() == "local":
        from doc_pipeline.core.local_embedding import embed_texts

        embed_texts(["load the model"])
    threading.Thread(
        target=_exit_when_orphaned, args=(parent_pid,), name="orphan-check", daemon=True
    ).start()


def _started() -> int:
    return os.getpid()


def _exit_when_orphaned(parent_pid: int) -> None:
    """A worker's parent that was killed sends no more runs and reads no more reports: the
    run in hand is finished (it is alive and heartbeating, so nothing reaps it), then the
    worker exits instead of waiting forever."""
    event = threading.Event()
    while not event.wait(ORPHAN_CHECK_SECONDS):
        if os.getppid() != parent_pid and not _busy.is_set():
            os._exit(0)


def _run_on_worker(document_id: str, assets: list[AssetKey], run_config: dict) -> RunReport:
    global _worker_instance
    assert _worker_settings is not None, "the worker was not started"
    _busy.set()
    try:
        if _worker_instance is None:
            _worker_instance = open_instance(_worker_settings)
        return execute_document_run(_worker_instance, document_id, assets, run_config)
    finally:
        _busy.clear()


def run_failure(result) -> str:
    """The run's first failure, as a user should read it: Dagster wraps errors of IO managers
    and resources in its own ("Error occurred while handling output ..."), so the first error
    in the chain that is not Dagster's says what went wrong; it follows the step's name."""
    for event in result.all_events:
        if event.is_step_failure or event.is_failure:
            error = getattr(event.event_specific_data, "error", None)
            if error is None:
                return event.message or "the run failed"
            own = error
            while own.cause is not None and own.message.startswith("dagster."):
                own = own.cause
            if own.message.startswith("dagster."):
                own = error
            # "package.module.Class: text" -> "Class: text"
            message = own.message.strip().split(": ", 1)
            message[0] = message[0].rsplit(".", 1)[-1]
            where = f"{event.step_key}: " if event.step_key else ""
            return redact(where + ": ".join(message))
    return "the run failed"
