"""Real crashes on a real instance with its daemon (`doc-pipeline ui`): the run worker is killed
with SIGKILL inside connecting. The reaper fails the dead run, a retry
resumes it from the failed step, and the document ends with the data of a clean run (chunk ids,
vectors, connections), no AI request paid twice but those in flight at the kill (several:
requests are concurrent), and no foreign-key error. Also a new version dropped into `uploads/`,
killed inside embedding, before it supersedes the current one. (A kill inside chunking, with
several requests in flight, is in test_across_hosts.py: every Dagster process killed at once,
daemon and code server included, and started again.)"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml

from doc_pipeline.db import store
from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.db.registration import register_file
from doc_pipeline.instance import open_instance
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.gemini_provider import GeminiProvider
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home
from doc_pipeline_tests.crash_points import (
    paid_bodies,
    requests_in_flight,
    slow_down,
    worker_inside,
)
from doc_pipeline_tests.dagster_ui import document_settled, launch_document_run, running_step_pid
from doc_pipeline_tests.document_data import CONNECT_EVERYTHING, DocumentData, document_data
from doc_pipeline_tests.fakes import FakeGemini
from doc_pipeline_tests.ledger_counts import ai_call_counts, keys_paid_twice
from doc_pipeline_tests.processes import free_port, start_ui, stop_process_group, wait_until

BOOK = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
OTHER_BOOK = CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub"  # what BOOK connects to


def _gemini_env(fake: FakeGemini) -> dict[str, str]:
    return {"GEMINI_API_KEY": "test-key", "GOOGLE_GEMINI_BASE_URL": fake.base_url}


def _cli_ingest(env: dict, book: Path, config: Path) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "doc_pipeline", "ingest", "--json", "--config", str(config), book],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)[0]["document_id"]


@pytest.fixture(scope="module")
def run_config_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("config") / "run_config.yaml"
    path.write_text(yaml.safe_dump(CONNECT_EVERYTHING))
    return path


@pytest.fixture(scope="module")
def clean(postgres_server, tmp_path_factory, fake, run_config_file) -> DocumentData:
    """One clean run through the CLI, in its own home and database: the other book, then BOOK."""
    database_url = create_database(postgres_server)
    env = {
        **os.environ,
        **_gemini_env(fake),
        "DOC_PIPELINE_HOME": str(tmp_path_factory.mktemp("clean")),
        "DATABASE_URL": database_url,
    }
    env.pop("DAGSTER_HOME", None)
    _cli_ingest(env, OTHER_BOOK, run_config_file)
    document_id = _cli_ingest(env, BOOK, run_config_file)
    engine = store.engine_for(database_url)
    data = document_data(engine, document_id)
    engine.dispose()
    assert data.connections, "the clean run found no connections to compare"
    return data


@pytest.fixture
def crash_home(postgres_server, tmp_path, monkeypatch, fake, run_config_file, clean):
    """A home holding the other book, processed, and BOOK registered: (engine, BOOK's id)."""
    fake.clear_faults()
    use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
    for name, value in _gemini_env(fake).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("DOC_PIPELINE_REAPER_INTERVAL_SECONDS", "3")
    # The document job connects the book itself, with CONNECT_EVERYTHING; the connections automation
    # (default config) must not race it between the kill and the retry.
    monkeypatch.setenv("DOC_PIPELINE_AUTOMATION_INTERVAL_SECONDS", "86400")
    _cli_ingest(dict(os.environ), OTHER_BOOK, run_config_file)
    settings = Settings.from_env()
    engine = prepare_app_database(settings)
    document_id = register_file(engine, settings.blob_dir, BOOK).document_id
    with open_instance(settings) as instance:
        instance.add_dynamic_partitions(documents_partitions.name, [document_id])
    fake.clear_requests()
    yield engine, document_id
    fake.clear_faults()
    engine.dispose()


def _assert_recovered_like_a_clean_run(engine, document_id, run_id, fake, clean, in_flight):
    with open_instance(Settings.from_env()) as instance:
        original = instance.get_run_by_id(run_id)
        runs = instance.get_runs()
        retries = [r for r in runs if r.tags.get("dagster/parent_run_id") == run_id]
        logs = [event.message or "" for run in runs for event in instance.all_logs(run.run_id)]
        failures = [
            f"{event.run_id[:8]} {event.step_key}: {event.dagster_event.event_specific_data}"
            for run in retries
            for event in instance.all_logs(run.run_id)
            if event.dagster_event and event.dagster_event.is_failure
        ]
    assert original.status.value == "FAILURE"
    assert len(retries) == 1 and retries[0].status.value == "SUCCESS", failures
    assert not [m for m in logs if "ForeignKeyViolation" in m or "foreign key" in m.lower()]
    assert document_data(engine, document_id) == clean
    # The fake server's log: at most the requests in flight at the kill were answered twice.
    bodies = paid_bodies(fake)
    assert len(bodies) - len(set(bodies)) <= in_flight
    # The ledger: no request was paid twice.
    assert keys_paid_twice(engine) == []


# Extracting is left to bench/recovery.py (it has no AI request and no row but the document's
# to lose); the suite's time goes to the stages that write chunks, vectors and connections.
# Embedding's kill is the new version's below (its embedding request in flight); chunking's is
# test_across_hosts.py's (the whole host killed, the retry on another).
def test_a_killed_run_worker_is_reaped_and_the_retry_completes_the_document(
    crash_home, fake, clean, tmp_path
):
    engine, document_id = crash_home
    stage = "connecting"
    slow_down(fake, stage)
    port = free_port()
    ui = start_ui(port, tmp_path / "ui.log")
    try:
        run_id = launch_document_run(port, ui, document_id, CONNECT_EVERYTHING)
        with worker_inside(stage, engine, fake, document_id, run_id) as pid:
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
        in_flight = requests_in_flight(fake, engine, run_id, stage, killed_at)
        wait_until(
            document_settled(engine, document_id, "connected"),
            300,
            "the retry to complete the document",
            1,
        )
    finally:
        stop_process_group(ui)
    # Requests go out concurrently: several can be in flight at the kill, never more than
    # the limit.
    assert in_flight <= GeminiProvider().max_concurrent_requests
    _assert_recovered_like_a_clean_run(engine, document_id, run_id, fake, clean, in_flight)
    # Killed at its write, the worker had paid for every bridge judgement and committed it: the
    # retry found them all in the ledger.
    paid = ai_call_counts(
        engine, "run_id", outcome="paid", document_id=document_id, stage="connections"
    )
    assert list(paid) == [run_id]


def test_a_new_version_from_uploads_killed_before_it_supersedes_is_retried_to_current(
    crash_home, fake, run_config_file, tmp_path, monkeypatch
):
    """An edited copy of a processed book dropped into `uploads/`: the uploads sensor starts
    its run, whose worker is SIGKILLed with its embedding request in flight (the version's
    chunks made, not written). Until the retry supersedes, the document serves version 1 whole;
    the reaper fails the dead run, Dagster's retry makes version 2 current, keeping the
    unchanged chunks' ids, with no request paid twice and no foreign-key error."""
    from doc_pipeline_tests.test_edited_copies import edited_copy

    engine, document_id = crash_home
    _cli_ingest(dict(os.environ), BOOK, run_config_file)
    before = document_data(engine, document_id)
    edited = tmp_path / "flatland-edited.epub"
    edited_copy(BOOK, edited, " the ", " the very ")
    monkeypatch.setenv("DOC_PIPELINE_UPLOADS_INTERVAL_SECONDS", "2")
    monkeypatch.setenv("DOC_PIPELINE_UPLOADS_SETTLE_SECONDS", "2")
    settings = Settings.from_env()
    settings.uploads_dir.mkdir(parents=True, exist_ok=True)
    fake.add_fault("batchEmbedContents", times=1, delay_seconds=60)
    with open_instance(settings) as instance:
        earlier = {run.run_id for run in instance.get_runs()}

    def version_run() -> str | None:
        with open_instance(settings) as instance:
            runs = [r.run_id for r in instance.get_runs() if r.run_id not in earlier]
        return runs[0] if len(runs) == 1 else None

    ui = start_ui(free_port(), tmp_path / "ui.log")
    try:
        shutil.copy(edited, settings.uploads_dir / BOOK.name)
        run_id = wait_until(version_run, 300, "the uploads sensor to start a run", 1)
        pid = wait_until(
            lambda: fake.in_flight("batchEmbedContents") and running_step_pid(engine, run_id),
            300,
            "the version's embedding request",
            0.05,
        )
        os.kill(pid, signal.SIGKILL)
        with engine.connect() as conn:  # read before the retry could supersede (checked below)
            killed_at = conn.execute(sa.text("SELECT now()")).scalar_one()
        during = document_data(engine, document_id)
        during_summary = store.document_summaries(engine, [document_id])[0]

        def superseded() -> bool:
            summary = store.document_summaries(engine, [document_id])[0]
            if summary["current_version"] != 2:
                return False
            with open_instance(settings) as instance:
                return all(run.is_finished for run in instance.get_runs())

        wait_until(superseded, 300, "the retry to make version 2 current", 1)
    finally:
        stop_process_group(ui)

    (version_2,) = [v for v in store.versions_of(engine, document_id) if v["version"] == 2]
    assert version_2["current_since"] > killed_at, "the retry superseded before the check"
    assert (during_summary["current_version"], during_summary["versions"]) == (1, 2)
    assert during == before
    with open_instance(settings) as instance:
        original = instance.get_run_by_id(run_id)
        retries = [r for r in instance.get_runs() if r.tags.get("dagster/parent_run_id") == run_id]
        logs = [e.message or "" for r in instance.get_runs() for e in instance.all_logs(r.run_id)]
    assert original.status.value == "FAILURE"
    assert [r.status.value for r in retries] == ["SUCCESS"]
    assert not [m for m in logs if "ForeignKeyViolation" in m or "foreign key" in m.lower()]
    after = document_data(engine, document_id)
    assert after.chunks != before.chunks
    assert len(set(before.chunks) & set(after.chunks)) >= 0.9 * len(after.chunks)
    assert set(after.vectors) == set(after.chunks)
    assert keys_paid_twice(engine) == []
