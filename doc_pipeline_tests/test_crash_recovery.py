"""A real crash on a real instance with its daemon: the run worker is killed with SIGKILL in
the middle of AI chunking or of embedding; the reaper fails the run, Dagster's run retry resumes
it from the failed step, and the document ends as a clean run would, with no AI request paid
twice (but for the one in flight at the kill)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest

from doc_pipeline.core.registration import register_file
from doc_pipeline.db import store
from doc_pipeline.ingest import prepare_app_database
from doc_pipeline.instance import open_instance
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home
from doc_pipeline_tests.dagster_ui import launch_document_run, running_step_pid
from doc_pipeline_tests.fakes import FakeGemini
from doc_pipeline_tests.processes import free_port, start_ui, stop_process_group, wait_until

BOOK = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
PAID = ("generateContent", "batchEmbedContents")


def _paid_bodies(fake: FakeGemini) -> list[str]:
    return [
        r["body_sha256"]
        for r in fake.requests
        if r.get("api_method") in PAID and r.get("status") == 200
    ]


def _clean_chunk_ids(postgres_server, tmp_path, fake: FakeGemini) -> set[str]:
    """The chunk ids of one clean run of the book, through the CLI, in another database."""
    database_url = create_database(postgres_server)
    env = {
        **os.environ,
        "DOC_PIPELINE_HOME": str(tmp_path / "clean"),
        "DATABASE_URL": database_url,
        "GEMINI_API_KEY": "test-key",
        "GOOGLE_GEMINI_BASE_URL": fake.base_url,
    }
    env.pop("DAGSTER_HOME", None)
    result = subprocess.run(
        [sys.executable, "-m", "doc_pipeline", "ingest", "--json", str(BOOK)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    document_id = json.loads(result.stdout)[0]["document_id"]
    engine = store.engine_for(database_url)
    ids = {chunk["id"] for chunk in store.load_chunks(engine, document_id)}
    engine.dispose()
    return ids


# (stage to crash in, the AI method slowed down so the kill lands inside it, requests answered
# before the kill)
CRASH_POINTS = [("chunking", "generateContent", 3), ("embedding", "batchEmbedContents", 12)]


@pytest.mark.parametrize(
    ("stage", "slowed", "answered"), CRASH_POINTS, ids=[c[0] for c in CRASH_POINTS]
)
def test_a_killed_run_worker_is_reaped_and_the_retry_completes_the_document(
    postgres_server, tmp_path, monkeypatch, stage, slowed, answered
):
    with FakeGemini() as fake:
        clean_ids = _clean_chunk_ids(postgres_server, tmp_path, fake)
        fake.clear_requests()

        use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
        monkeypatch.setenv("DOC_PIPELINE_REAPER_INTERVAL_SECONDS", "3")
        settings = Settings.from_env()
        engine = prepare_app_database(settings)
        document_id = register_file(engine, settings.blob_dir, BOOK).document_id
        with open_instance(settings) as instance:
            instance.add_dynamic_partitions(documents_partitions.name, [document_id])

        fake.add_fault(slowed, delay_seconds=0.5)  # slow enough to be caught mid-way
        port = free_port()
        ui = start_ui(port, tmp_path / "ui.log")
        try:
            run_id = launch_document_run(port, ui, document_id)

            def worker_mid_stage():
                document = store.get_document(engine, document_id)
                if document["stage"] != stage or len(_paid_bodies(fake)) < answered:
                    return None
                return running_step_pid(engine, run_id)

            pid = wait_until(worker_mid_stage, 180, f"the run to be {stage}", interval=0.05)
            os.kill(pid, signal.SIGKILL)
            paid_before_kill = len(_paid_bodies(fake))

            def connected():
                return store.get_document(engine, document_id)["stage"] == "connected"

            wait_until(connected, 300, "the retry to complete the document", interval=1)
        finally:
            stop_process_group(ui)

        with open_instance(settings) as instance:
            original = instance.get_run_by_id(run_id)
            retries = [
                run
                for run in instance.get_runs()
                if run.tags.get("dagster/parent_run_id") == run_id
            ]
        assert original.status.value == "FAILURE"
        assert len(retries) == 1 and retries[0].status.value == "SUCCESS"
        ids = {chunk["id"] for chunk in store.load_chunks(engine, document_id)}
        assert ids == clean_ids
        bodies = _paid_bodies(fake)
        assert paid_before_kill >= answered
        # At most the one request in flight at the kill is paid twice.
        assert len(bodies) - len(set(bodies)) <= 1
        engine.dispose()
