"""The project's Dagster instance class (`PooledInstance`, dagster.yaml's `instance_class`): its
storage holds pooled connections, so a run opens a few database sessions instead of one per
event; disposing the instance closes them. It relies on `optimize_for_webserver`, which is not
documented API, and it remembers the schema checks of Dagster's storages: these tests pin what
both must do."""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import sqlalchemy as sa
from sqlalchemy import event

from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.db.registration import register_file
from doc_pipeline.db.server import database_urls
from doc_pipeline.document_runs import execute_document_run
from doc_pipeline.instance import open_instance
from doc_pipeline.jobs import UP_TO_EMBEDDINGS
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.pooled_instance import PooledInstance
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home

BOOK = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
# Without the pooled storage a run of the document job up to embeddings opened about 200.
MOST_SESSIONS_PER_RUN = 25


def _sessions(server: sa.Engine, database: str) -> tuple[int, int]:
    """Sessions ever opened on the database, and those open now."""
    with server.connect() as conn:
        opened = conn.execute(
            sa.text("SELECT sessions FROM pg_stat_database WHERE datname = :name"),
            {"name": database},
        ).scalar_one()
        now = conn.execute(
            sa.text("SELECT count(*) FROM pg_stat_activity WHERE datname = :name"),
            {"name": database},
        ).scalar_one()
    return opened, now


@dataclass
class Home:
    instance: PooledInstance
    document_id: str  # registered, its partition added
    dagster_database: str
    server: sa.Engine  # the server's `postgres` database, for pg_stat_* (no pool)


@pytest.fixture
def home(postgres_server, tmp_path, monkeypatch) -> Iterator[Home]:
    """A home with the book registered and the instance open; everything closed after."""
    use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
    monkeypatch.setenv("DOC_PIPELINE_PROVIDER", "local")
    settings = Settings.from_env()
    engine = prepare_app_database(settings)
    document_id = register_file(engine, settings.blob_dir, BOOK).document_id
    dagster_url = sa.engine.make_url(database_urls(settings).dagster)
    server = sa.create_engine(dagster_url.set(database="postgres"), poolclass=sa.NullPool)
    instance = open_instance(settings)
    try:
        instance.add_dynamic_partitions(documents_partitions.name, [document_id])
        yield Home(instance, document_id, dagster_url.database, server)
    finally:
        instance.dispose()
        server.dispose()
        engine.dispose()


def test_runs_share_pooled_sessions_and_dispose_closes_them(home):
    instance, document_id = home.instance, home.document_id
    assert isinstance(instance, PooledInstance)
    engines = instance.storage_engines()
    assert len(engines) == 3 and all(type(e.pool).__name__ == "QueuePool" for e in engines)
    catalog_queries: list[str] = []

    def count_catalog_queries(conn, cursor, statement, *args) -> None:
        if "pg_catalog" in statement:
            catalog_queries.append(statement)

    for storage_engine in engines:
        event.listen(storage_engine, "before_cursor_execute", count_catalog_queries)
    before, _ = _sessions(home.server, home.dagster_database)
    reports = [execute_document_run(instance, document_id, UP_TO_EMBEDDINGS, {})]
    first_run_catalog_queries = len(catalog_queries)
    reports.append(execute_document_run(instance, document_id, UP_TO_EMBEDDINGS, {}))
    after, open_now = _sessions(home.server, home.dagster_database)
    assert [r.success for r in reports] == [True, True]
    assert after - before <= 2 * MOST_SESSIONS_PER_RUN, after - before
    assert open_now >= 1  # the pooled connections, kept for the next run
    # Each schema check asked the catalog once (Dagster alone asks about 40 times a run).
    assert 0 < first_run_catalog_queries <= 15, catalog_queries
    assert len(catalog_queries) == first_run_catalog_queries, catalog_queries
    # Dagster's own events are stored whatever their level, debug log lines are not (its IO
    # manager writes three a step).
    records = instance.all_logs(reports[0].run_id)
    stored = {r.dagster_event.event_type_value for r in records if r.dagster_event}
    assert {"STEP_START", "LOADED_INPUT", "HANDLED_OUTPUT"} <= stored
    debug_lines = [r.user_message for r in records if not r.dagster_event and r.level < 20]
    assert debug_lines == []
    instance.dispose()
    assert _sessions(home.server, home.dagster_database)[1] == 0


def test_a_connection_idle_since_the_server_dropped_it_is_replaced(home, monkeypatch):
    """A pooled connection is pinged before use only when it was idle (pinging every checkout
    was two in five of a run's statements); one the server closed meanwhile (a restart, an idle
    timeout) is replaced then, and the run's writes go through."""
    monkeypatch.setattr("doc_pipeline.pooled_instance.PING_AFTER_IDLE_SECONDS", 0.2)
    instance, document_id = home.instance, home.document_id
    first = execute_document_run(instance, document_id, UP_TO_EMBEDDINGS, {})
    with home.server.connect() as conn:
        dropped = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = :name AND pid <> pg_backend_pid()"
            ),
            {"name": home.dagster_database},
        ).scalar_one()
    assert dropped >= 1  # the pool's idle connections
    time.sleep(0.3)
    second = execute_document_run(instance, document_id, UP_TO_EMBEDDINGS, {})
    assert (first.success, second.success) == (True, True), second.failure
    assert len(instance.get_runs()) == 2
