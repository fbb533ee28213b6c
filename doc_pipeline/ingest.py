"""`doc-pipeline ingest`: register files and materialize them through the Dagster instance.

Each document runs as two runs of the document job, so both appear in the UI: source to
embeddings first (the document is then usable), connections second, once every document of the
batch has its vectors, so that a batch connects the same way whatever order its files came in.
With `jobs` above 1, that many documents' runs go at once, on worker processes
(`doc_pipeline.document_runs`); each is recorded here as it ends.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path

import sqlalchemy.exc
from dagster import AssetKey, DagsterInstance
from sqlalchemy.engine import Engine

from doc_pipeline.blob_store import BlobStoreError
from doc_pipeline.core.atomic_write import StorageWriteError
from doc_pipeline.core.failures import TRANSIENT
from doc_pipeline.core.reaper import Verdict
from doc_pipeline.db import store
from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.db.failures import classify, describe
from doc_pipeline.db.registration import register_file
from doc_pipeline.document_runs import DocumentRunner, RunReport, worker_pool
from doc_pipeline.instance import open_instance
from doc_pipeline.jobs import UP_TO_EMBEDDINGS
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.liveness import Liveness
from doc_pipeline.run_recovery import reap_dead_runs
from doc_pipeline.settings import Settings

CONNECTIONS = [AssetKey("connections")]
# Dagster's step logs, failures with their traces included, go to the run's event log (and the
# UI); the terminal shows progress and one line per failed document. `--verbose` shows them.
QUIET_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "CRITICAL"}}}}
VERBOSE_RUN_CONFIG = {"loggers": {"console": {"config": {"log_level": "INFO"}}}}


@dataclass
class IngestOutcome:
    source_file: str
    document_id: str | None = None
    version: int = 1  # of the document: a new version of a known one is 2 or more
    title: str | None = None
    stage: str = "pending"
    chunks: int = 0
    connections: int = 0
    seconds: float = 0.0
    ai_cost_usd: float = 0.0  # paid by this ingest's runs
    ai_saved_usd: float = 0.0  # answered from the AI ledger instead of paid again
    error_class: str | None = None
    error_message: str | None = None
    # What extraction skipped or repaired, and what registration decided against (an
    # identifier shared with a different book).
    warnings: list[str] = field(default_factory=list)
    run_ids: list[str] = field(default_factory=list)
    # The trace of a failure that was not expected (a bug), from the run's event log.
    unexpected_error: str | None = None

    @property
    def failed(self) -> bool:
        return self.stage == "failed"

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class Ingestion:
    """One `ingest` call: what it found, and callbacks for progress."""

    settings: Settings
    # Dagster run config for every run, e.g. {"resources": {"provider": {"config": {...}}}}.
    run_config: dict = field(default_factory=dict)
    verbose: bool = False  # Dagster's own log lines in the terminal, traces included
    # Documents processed at once, each run on a worker process of its own (1: in this one).
    jobs: int = 1
    # The document that the (one) file is a new version of, as the user said.
    version_of: str | None = None
    on_registered: Callable[[IngestOutcome], None] = lambda outcome: None
    on_run_finished: Callable[[IngestOutcome], None] = lambda outcome: None
    # Runs of earlier, killed ingests that this one found dead and failed before it started.
    reaped: list[Verdict] = field(default_factory=list)
    # Why runs cannot be carried out at the moment (the database is down), once one could not.
    outage: str | None = None
    # Documents whose failure is known here but may not be in the database (it was down).
    failed_here: dict[str, tuple[str, str]] = field(default_factory=dict)
    registration_warnings: dict[str, list[str]] = field(default_factory=dict)

    def run(self, files: list[Path]) -> list[IngestOutcome]:
        """Process the files (see `find_book_files`), each document once."""
        with worker_pool(self.settings, self.jobs, len(files)) as workers:
            engine = prepare_app_database(self.settings)
            outcomes = self._register(engine, files)
            by_document = {o.document_id: o for o in outcomes if o.document_id}
            with open_instance(self.settings) as instance:
                self._reap(instance, engine)
                known = set(instance.get_dynamic_partitions(documents_partitions.name))
                instance.add_dynamic_partitions(
                    documents_partitions.name, [d for d in by_document if d not in known]
                )
                documents = list(by_document.values())
                runner = DocumentRunner(instance, workers)
                self._execute_all(runner, engine, documents, UP_TO_EMBEDDINGS)
                embedded = [o for o in documents if o.stage == "embedded"]
                self._execute_all(runner, engine, embedded, CONNECTIONS)
        self._fill_summaries(engine, outcomes)
        return outcomes

    def _reap(self, instance: DagsterInstance, engine: Engine) -> None:
        """Fail the dead runs of earlier ingests first: a killed ingest leaves its run STARTED,
        holding its AI pool slot."""
        stale_after = timedelta(minutes=Liveness().stale_after_minutes)
        self.reaped = reap_dead_runs(instance, engine, stale_after)[1]

    def rerun(self, document_ids: list[str], assets: list[AssetKey]) -> list[IngestOutcome]:
        """Materialize the assets again for registered documents (`doc-pipeline backfill`):
        one run per document; the AI ledger answers every request whose input is unchanged."""
        outcomes = []
        with worker_pool(self.settings, self.jobs, len(document_ids)) as workers:
            engine = prepare_app_database(self.settings)
            with open_instance(self.settings) as instance:
                self._reap(instance, engine)
                for document_id in document_ids:
                    document = store.get_document(engine, document_id)
                    outcome = IngestOutcome(
                        source_file=document["source_file"], document_id=document_id
                    )
                    self.on_registered(outcome)
                    outcomes.append(outcome)
                runner = DocumentRunner(instance, workers)
                self._execute_all(runner, engine, outcomes, assets)
        self._fill_summaries(engine, outcomes)
        return outcomes

    def _register(self, engine: Engine, files: list[Path]) -> list[IngestOutcome]:
        outcomes = []
        for path in files:
            outcome = IngestOutcome(source_file=str(path))
            try:
                registered = register_file(
                    engine, self.settings.blob_url, path, version_of=self.version_of
                )
                outcome.document_id = registered.document_id
                outcome.version = registered.version
                self.registration_warnings[registered.document_id] = list(registered.warnings)
            except (StorageWriteError, BlobStoreError) as error:  # the blob store, not the file
                outcome.stage = "failed"
                outcome.error_class = classify(error)
                outcome.error_message = f"{path}: {error}"
            except OSError as error:
                outcome.stage = "failed"
                outcome.error_class = classify(error)
                outcome.error_message = f"{path}: cannot read the file ({error.strerror or error})"
            outcomes.append(outcome)
            self.on_registered(outcome)
        # The same content under two names is one document (and two versions of one document
        # are processed as its newest): keep the first name's outcome.
        seen: set[str] = set()
        unique = []
        for outcome in outcomes:
            if outcome.document_id is None or outcome.document_id not in seen:
                unique.append(outcome)
                seen.add(outcome.document_id or "")
        return unique

    def _execute_all(
        self,
        runner: DocumentRunner,
        engine: Engine,
        outcomes: list[IngestOutcome],
        assets: list[AssetKey],
    ) -> None:
        """One run per document, up to `runner.width` at once, each recorded as it ends."""
        run_config = _merged(
            VERBOSE_RUN_CONFIG if self.verbose else QUIET_RUN_CONFIG, self.run_config
        )
        waiting = deque(outcomes)
        running: dict[Future, tuple[IngestOutcome, float, datetime]] = {}
        while waiting or running:
            while waiting and len(running) < runner.width:
                outcome = waiting.popleft()
                if self.outage is not None:
                    # Each run would wait out Dagster's connection retries and fail the same way.
                    self._failed(outcome, TRANSIENT, f"not run: {self.outage}")
                    self.on_run_finished(outcome)
                    continue
                started, started_at = time.perf_counter(), datetime.now(UTC)
                future = runner.submit(outcome.document_id, assets, run_config)
                running[future] = (outcome, started, started_at)
            if not running:
                break
            finished, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in finished:
                outcome, started, started_at = running.pop(future)
                try:
                    self._record(engine, outcome, future.result(), started_at)
                finally:
                    outcome.seconds += time.perf_counter() - started
                self.on_run_finished(outcome)

    def _record(
        self, engine: Engine, outcome: IngestOutcome, report: RunReport, started_at: datetime
    ) -> None:
        """What the run did to the document: its stage, or why it failed."""
        if report.outage is not None:
            self._outage(engine, outcome, report.outage)
            return
        outcome.run_ids.append(report.run_id)
        try:
            if not report.success:
                outcome.unexpected_error = outcome.unexpected_error or report.unexpected_error
                document = store.get_document(engine, outcome.document_id) or {}
                if document.get("stage") != "failed" or document["failed_at"] < started_at:
                    # The run failed outside any stage (e.g. a resource could not start, or its
                    # output could not be stored).
                    store.mark_failed(engine, outcome.document_id, TRANSIENT, report.failure)
            outcome.stage = (store.get_document(engine, outcome.document_id) or {}).get(
                "stage", "failed"
            )
        except Exception as error:
            if classify(error) != TRANSIENT:
                raise
            self._outage(engine, outcome, describe(error))

    def _outage(self, engine: Engine, outcome: IngestOutcome, reason: str) -> None:
        """Dagster's database (or the app's) is down: the document failed for that reason."""
        self.outage = self.outage or reason
        self._failed(outcome, TRANSIENT, reason)
        with contextlib.suppress(sqlalchemy.exc.SQLAlchemyError):  # if it is back already
            store.mark_failed(engine, outcome.document_id, TRANSIENT, reason)

    def _failed(self, outcome: IngestOutcome, error_class: str, message: str) -> None:
        outcome.stage, outcome.error_class, outcome.error_message = "failed", error_class, message
        self.failed_here[outcome.document_id] = (error_class, message)

    def _fill_summaries(self, engine: Engine, outcomes: list[IngestOutcome]) -> None:
        ids = [o.document_id for o in outcomes if o.document_id]
        run_ids = [run_id for o in outcomes for run_id in o.run_ids]
        for outcome in outcomes:
            outcome.seconds = round(outcome.seconds, 2)
        try:
            summaries = {row["id"]: row for row in store.document_summaries(engine, ids)}
            costs = store.ai_costs(engine, ids, run_ids)
        except sqlalchemy.exc.OperationalError:
            if self.outage is None:
                raise
            return  # still down: the outcomes say what is known
        for outcome in outcomes:
            row = summaries.get(outcome.document_id)
            if row is None:
                continue
            outcome.title = row["title"]
            outcome.stage = row["stage"]
            outcome.chunks = row["chunks"]
            outcome.connections = row["connections"]
            outcome.error_class = row["error_class"]
            outcome.error_message = row["error_message"]
            outcome.warnings = [
                *self.registration_warnings.get(outcome.document_id, []),
                *row["extraction_warnings"],
            ]
            outcome.ai_cost_usd, outcome.ai_saved_usd = costs.get(outcome.document_id, (0.0, 0.0))
            if outcome.document_id in self.failed_here:
                # The database may still show the stage that the outage interrupted.
                outcome.stage = "failed"
                outcome.error_class, outcome.error_message = self.failed_here[outcome.document_id]


def _merged(base: dict, override: dict) -> dict:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merged(merged[key], value)
        else:
            merged[key] = value
    return merged
