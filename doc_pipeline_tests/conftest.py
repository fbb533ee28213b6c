"""Shared fixtures: one embedded Postgres for the session, a fresh database per use.

Every server a fixture starts is stopped by its own pid at teardown, also when tests fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from doc_pipeline.db import migrate
from doc_pipeline.db.server import database_urls, stop_embedded
from doc_pipeline.settings import Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CORPUS = PROJECT_ROOT.parent / "shared" / "corpus"
GOOD_BOOKS = sorted((CORPUS / "epub").glob("*.epub"))
GOOD_PDFS = sorted((CORPUS / "pdf").glob("*.pdf"))
MALFORMED_BOOKS = sorted((CORPUS / "malformed").glob("*.epub"))
# Modules with tests of a minute and more (dagster dev, killed workers and hosts). They are run
# first, so that the workers of `-n auto` end together instead of one finishing a long test,
# collected last, while the other waits.
LONGEST_FIRST = {
    "test_uploads_end_to_end",
    "test_backfill",
    "test_crash_recovery",
    "test_across_hosts",
    "test_run_concurrency",
    "test_reaper_resume",
    "test_parallel_ingest",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: item.module.__name__.rsplit(".", 1)[-1] not in LONGEST_FIRST)


@pytest.fixture(scope="session")
def corpus() -> Path:
    assert GOOD_BOOKS, f"the test corpus is missing: {CORPUS}"
    return CORPUS


@pytest.fixture(scope="session")
def postgres_server(tmp_path_factory) -> Iterator[str]:
    """An embedded Postgres 18 + pgvector for the whole session; yields its server URL."""
    home = tmp_path_factory.mktemp("pg-home")
    settings = Settings(home=home, database_url=None)
    try:
        urls = database_urls(settings)
        yield make_url(urls.app).set(database="postgres").render_as_string(hide_password=False)
    finally:
        stop_embedded(settings.pgdata)


def create_database(server_url: str, prefix: str = "test") -> str:
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(server_url).set(database=name).render_as_string(hide_password=False)


@pytest.fixture
def empty_database_url(postgres_server) -> str:
    """A new, empty database (no migrations applied)."""
    return create_database(postgres_server)


@pytest.fixture
def app_database_url(empty_database_url) -> str:
    """A new database migrated to the newest schema."""
    migrate.upgrade(empty_database_url)
    return empty_database_url


def use_home(monkeypatch: pytest.MonkeyPatch, home: Path, database_url: str) -> None:
    """Point this process at a home folder whose app database is `database_url`. The variables
    the CLI sets for Dagster are registered too, so that they are restored afterwards."""
    monkeypatch.setenv("DOC_PIPELINE_HOME", str(home))
    monkeypatch.setenv("DATABASE_URL", database_url)
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))
    monkeypatch.setenv("DOC_PIPELINE_DAGSTER_DATABASE_URL", "")


@pytest.fixture(scope="module")
def fake():
    """The fake Gemini server, one per test module (tests clear its requests and faults)."""
    from doc_pipeline_tests.fakes import FakeGemini

    with FakeGemini() as server:
        yield server


@pytest.fixture
def start_host(tmp_path):
    """Starts programs on other hosts (hosts.py); every host is killed at the end, also when
    the test fails. `start_host(name, argv, env, pid=None)` returns the Host."""
    from doc_pipeline_tests.hosts import start_on_host

    started = []

    def start(name: str, argv, env: dict[str, str], pid: int | None = None):
        log = tmp_path / f"host-{name}-{len(started)}.log"
        host = start_on_host(name, [str(a) for a in argv], env, log, cwd=PROJECT_ROOT, pid=pid)
        started.append(host)
        return host

    try:
        yield start
    finally:
        for host in started:
            host.kill()


@pytest.fixture
def s3():
    """An S3-compatible server (moto's) with the test bucket, stopped by the test."""
    from doc_pipeline_tests.object_store import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture(scope="module")
def s3_module():
    """As `s3`, one for a test module (its tests keep their blobs under prefixes of their own:
    a new server starts with no buckets)."""
    from doc_pipeline_tests.object_store import s3_server

    with s3_server() as server:
        yield server


@pytest.fixture
def pipeline(postgres_server, tmp_path, fake):
    """The gemini provider through the CLI, in a fresh home and database."""
    from doc_pipeline_tests.gemini_pipeline import GeminiPipeline

    fake.clear_requests()
    fake.clear_faults()
    pipeline = GeminiPipeline(tmp_path / "home", create_database(postgres_server), fake)
    yield pipeline
    pipeline.engine.dispose()
