"""The database server goes down while a stage is inside its write transaction.

The pipeline gets a Postgres server of the test's own (app database and Dagster instance on
it, as with the embedded default; password authentication over TCP). The test holds the chunks
write of a real `doc-pipeline ingest` inside its transaction, after it has inserted all the
book's chunks but the last, with an uncommitted row of its own that has the last chunk's id,
and crashes the server there (immediate shutdown, what `pg_ctl stop -m immediate` sends).
Then it starts the server on the same data directory, lets the reaper judge the dead run (as
the next `ingest` or `doc-pipeline ui` does) and runs the same `ingest` again, as a user would.
"""

from __future__ import annotations

import contextlib
from datetime import timedelta

import pytest
import sqlalchemy as sa

from doc_pipeline.db import store
from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.db.registration import register_file
from doc_pipeline.instance import open_instance
from doc_pipeline.run_recovery import reap_dead_runs
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import use_home
from doc_pipeline_tests.document_data import DocumentData
from doc_pipeline_tests.outages import (
    BOOKS,
    RABBIT,
    SHERLOCK,
    LocalPipeline,
    assert_completed_like_clean,
    clean_data,
)
from doc_pipeline_tests.private_postgres import PrivatePostgres
from doc_pipeline_tests.processes import stop_process_group, wait_until

# The worker's INSERT waiting for the test's transaction, and how large the table is by then.
BLOCKED_WRITER = """
SELECT a.pid, pg_total_relation_size('chunks') AS size FROM pg_stat_activity a
WHERE a.datname = current_database() AND a.wait_event_type = 'Lock'
  AND a.query LIKE 'INSERT INTO chunks%' AND :holder = ANY(pg_blocking_pids(a.pid))
"""
HOLD = """
INSERT INTO chunks (id, document_id, chunk_index, content, start_offset, end_offset,
                    word_count, char_count, heading_path, metadata)
VALUES (:id, :doc, 1000000, 'held by the test', 0, 16, 4, 16, '{}', '{}')
"""


@pytest.fixture(scope="module")
def clean(postgres_server, tmp_path_factory) -> dict[str, DocumentData]:
    return clean_data(postgres_server, tmp_path_factory)


@pytest.fixture
def server(tmp_path):
    server = PrivatePostgres(tmp_path / "pg")
    try:
        server.start()
        yield server
    finally:
        server.stop()  # by its postmaster's pid, also when the test failed


def _count(engine, table: str) -> int:
    with engine.connect() as conn:
        return conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one()


def test_the_database_going_down_inside_the_chunks_write_leaves_nothing_and_a_retry_completes(
    server, tmp_path, monkeypatch, clean
):
    admin = sa.create_engine(server.url(), isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text("CREATE DATABASE app"))
    admin.dispose()
    pipeline = LocalPipeline(tmp_path / "home", server.url("app"))
    use_home(monkeypatch, pipeline.home, pipeline.database_url)
    settings = Settings.from_env()
    engine = prepare_app_database(settings)
    book_id = register_file(engine, settings.blob_dir, SHERLOCK).document_id
    *_, last = clean[SHERLOCK.name].chunks  # in chunk order: the last one is inserted last

    holder = engine.connect()
    holder.execute(sa.text(HOLD), {"id": last, "doc": book_id})
    holder_pid = holder.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
    size_before = holder.execute(sa.text("SELECT pg_total_relation_size('chunks')")).scalar_one()
    # One at a time, Sherlock first: nothing else writes chunks.
    ingest = pipeline.start_ingest(*BOOKS, "--jobs", "1")
    try:
        watcher = sa.create_engine(pipeline.database_url, poolclass=sa.NullPool)

        def blocked():
            with watcher.connect() as conn:
                return conn.execute(sa.text(BLOCKED_WRITER), {"holder": holder_pid}).first()

        writer = wait_until(blocked, 120, "the chunks write to wait for the test's row", 0.1)
        watcher.dispose()
        assert store.get_document(engine, book_id)["stage"] == "chunking"
        # Inside its transaction the worker has written the other 96 chunks (the table grew by
        # them), which no one else can see.
        assert writer.size >= size_before + 64 * 1024, (writer.size, size_before)
        assert _count(engine, "chunks") == 0
        server.crash()
        with contextlib.suppress(sa.exc.DBAPIError):
            holder.close()
        engine.dispose()
        failed = pipeline.finish(ingest, timeout=180)
    finally:
        stop_process_group(ingest)

    # The ingest ends on its own, reporting the outage for the document it was processing and
    # not running the next one; the password of the database URL is nowhere in what it says.
    assert failed.returncode == 1, failed.stderr[-3000:]
    sherlock, rabbit = failed.outcomes[SHERLOCK.name], failed.outcomes[RABBIT.name]
    assert (sherlock["stage"], sherlock["error_class"]) == ("failed", "transient")
    assert sherlock["error_message"].startswith("database unavailable (OperationalError): ")
    # The driver's line: the server gone from under a pooled connection used within the last
    # second (not pinged again before use), or refused to a new one, naming the server.
    assert (
        "server closed the connection unexpectedly" in sherlock["error_message"]
        or "127.0.0.1" in sherlock["error_message"]
    ), sherlock["error_message"]
    assert (rabbit["stage"], rabbit["error_class"]) == ("failed", "transient")
    assert rabbit["error_message"] == f"not run: {sherlock['error_message']}"
    assert server.password not in failed.stderr + str(failed.outcomes)

    server.start()  # crash recovery rolls the open transactions back
    assert _count(engine, "chunks") == _count(engine, "embeddings") == 0
    # The failure could not be recorded while the server was down: the document still says
    # chunking, and its run is still STARTED. The reaper (of `ui`, or the next ingest) finds
    # the run's worker gone and marks both failed, transient.
    assert store.get_document(engine, book_id)["stage"] == "chunking"
    with open_instance(settings) as instance:
        _, verdicts = reap_dead_runs(instance, engine, timedelta(minutes=30))
        (verdict,) = verdicts
        assert verdict.document_id == book_id and "is gone" in verdict.reason
        assert instance.get_run_by_id(verdict.run_id).status.value == "FAILURE"
    document = store.get_document(engine, book_id)
    assert (document["stage"], document["error_class"]) == ("failed", "transient")
    assert "is gone" in document["error_message"] and server.password not in str(document)

    retried = pipeline.ingest(*BOOKS)
    assert_completed_like_clean(retried, engine, clean)
    engine.dispose()
