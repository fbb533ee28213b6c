"""`ingest --jobs N`: documents processed at once, each run on a worker process of its own, end
with the same data as one after another; a parallel ingest killed (its parent alone, or its
whole process group) leaves nothing that the next `ingest` does not recover."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import sqlalchemy as sa

from doc_pipeline.core.processes import pid_alive
from doc_pipeline.db import store
from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.instance import open_instance
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home
from doc_pipeline_tests.document_data import document_data
from doc_pipeline_tests.gemini_pipeline import GeminiPipeline
from doc_pipeline_tests.ledger_counts import ai_call_counts, keys_paid_twice
from doc_pipeline_tests.processes import run_cli, stop_process_group, wait_until

BOOKS = sorted((CORPUS / "epub").glob("*.epub"))
FLATLAND = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
KEYNES = CORPUS / "epub" / "se-keynes-economic-consequences-of-the-peace.epub3.epub"
LATENCY = {"first_token_seconds": 0.3, "output_tokens_per_second": 4_000, "embedding_seconds": 0.3}


def _local_env(home: Path, database_url: str) -> dict[str, str]:
    environment = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DAGSTER_HOME", "GEMINI_API_KEY", "GOOGLE_API_KEY")
    }
    return environment | {
        "DOC_PIPELINE_HOME": str(home),
        "DATABASE_URL": database_url,
        "DOC_PIPELINE_PROVIDER": "local",
    }


def _run_records(monkeypatch, env: dict[str, str]) -> list:
    use_home(monkeypatch, Path(env["DOC_PIPELINE_HOME"]), env["DATABASE_URL"])
    with open_instance(Settings.from_env()) as instance:
        return list(instance.get_run_records())


def test_documents_in_parallel_end_like_one_after_another(postgres_server, tmp_path, monkeypatch):
    data = {}
    records = {}
    for jobs in (1, 2):
        url = create_database(postgres_server)
        env = _local_env(tmp_path / f"jobs-{jobs}", url)
        result = run_cli(env, "ingest", "--jobs", jobs, *BOOKS, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        engine = store.engine_for(url)
        summaries = store.document_summaries(engine)
        assert sorted(d["stage"] for d in summaries) == ["connected"] * len(BOOKS)
        data[jobs] = {d["id"]: document_data(engine, d["id"]) for d in summaries}
        engine.dispose()
        records[jobs] = _run_records(monkeypatch, env)
        assert "connected" in result.stdout  # the summary table, as with one at a time

    # The same chunks, vectors and connections, whatever order the documents ran in.
    assert data[2] == data[1]
    # Every book but Peter Rabbit connects (its one chunk is closer to no chunk of the others
    # than the local embedder's threshold).
    assert sum(1 for d in data[2].values() if d.connections) == len(BOOKS) - 1
    # Each document's two runs, on two worker processes (not the CLI's), some at once.
    runs = records[2]
    assert len(runs) == 2 * len(BOOKS) and all(
        r.dagster_run.status.value == "SUCCESS" for r in runs
    )
    workers = {r.dagster_run.tags["doc_pipeline/worker_pid"] for r in runs}
    assert len(workers) == 2
    spans = sorted((r.start_time, r.end_time) for r in runs)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:], strict=False))
    assert len({r.dagster_run.tags["doc_pipeline/worker_pid"] for r in records[1]}) == 1


def _running_workers(pipeline: GeminiPipeline) -> dict[int, str]:
    """The pids beating for a step that has not ended, with their run ids."""
    with pipeline.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT pid, run_id FROM heartbeats WHERE ended_at IS NULL")
        ).all()
    return dict(rows)


def test_a_killed_parallel_ingest_is_recovered_by_the_next(
    postgres_server, tmp_path, fake, monkeypatch
):
    """First the ingest's own process is SIGKILLed: its workers finish the runs they have and
    exit. Then a second ingest's whole process group is SIGKILLed mid-run. A third ingest ends
    with a clean run's data, no run left STARTED and no request paid twice in the ledger."""
    fake.clear_requests()
    fake.clear_faults()
    fake.set_latency(**LATENCY)
    try:
        clean = GeminiPipeline(tmp_path / "clean", create_database(postgres_server), fake)
        expected = {
            o["document_id"]: document_data(clean.engine, o["document_id"])
            for o in clean.ingest(FLATLAND, KEYNES, extra_args=["--jobs", "2"]).values()
        }
        clean.engine.dispose()

        pipeline = GeminiPipeline(tmp_path / "killed", create_database(postgres_server), fake)
        use_home(monkeypatch, pipeline.home, pipeline.database_url)
        prepare_app_database(Settings.from_env()).dispose()  # its tables, to watch the workers
        fake.clear_requests()
        process = pipeline.start_ingest(FLATLAND, KEYNES, "--jobs", "2")
        try:
            workers = wait_until(
                lambda: _running_workers(pipeline), 300, "a worker to be running a step", 0.05
            )
            os.kill(process.pid, signal.SIGKILL)  # the ingest alone, not its workers
            process.wait(30)
            # Orphaned, each worker finishes the run in hand, then exits.
            wait_until(
                lambda: not any(pid_alive(pid) for pid in workers),
                300,
                "the orphaned workers to exit",
                0.5,
            )
        finally:
            stop_process_group(process)
        with open_instance(Settings.from_env()) as instance:
            finished = {
                run_id: instance.get_run_by_id(run_id).status.value for run_id in workers.values()
            }
        assert set(finished.values()) == {"SUCCESS"}, finished

        process = pipeline.start_ingest(FLATLAND, KEYNES, "--jobs", "2")
        try:
            wait_until(lambda: fake.in_flight("*"), 300, "a request in flight", 0.05)
            lost = fake.in_flight("*")
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        finally:
            stop_process_group(process)
        time.sleep(0.5)

        outcomes = pipeline.ingest(FLATLAND, KEYNES, extra_args=["--jobs", "2"])
        assert {o["stage"] for o in outcomes.values()} == {"connected"}
        assert {
            o["document_id"]: document_data(pipeline.engine, o["document_id"])
            for o in outcomes.values()
        } == expected
        assert keys_paid_twice(pipeline.engine) == []
        with open_instance(Settings.from_env()) as instance:
            assert not [r for r in instance.get_runs() if not r.is_finished]
        bodies = [r["body_sha256"] for r in fake.requests if r.get("status") == 200]
        answered_uncommitted = len(bodies) - _paid(pipeline)
        assert len(bodies) - len(set(bodies)) <= lost + max(answered_uncommitted, 0)
        pipeline.engine.dispose()
    finally:
        fake.set_latency()


def _paid(pipeline: GeminiPipeline) -> int:
    return ai_call_counts(pipeline.engine, "outcome", outcome="paid").get("paid", 0)
