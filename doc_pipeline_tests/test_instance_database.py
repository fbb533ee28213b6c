"""The Dagster instance's database is made whole or not at all: an `ingest` killed while Dagster
creates its tables leaves no half-made database that later runs take for made (Dagster creates
them one autocommitted statement at a time, and once `event_logs` exists it never looks again)."""

from __future__ import annotations

import json
import os
import signal

import sqlalchemy as sa

from doc_pipeline.db.store import engine_for
from doc_pipeline_tests.conftest import CORPUS, create_database
from doc_pipeline_tests.processes import start_ingest, stop_process_group, wait_until

BOOK = CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub"


def _env(home, database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "GOOGLE_API_KEY")}
    env.pop("GEMINI_API_KEY", None)
    return env | {"DOC_PIPELINE_HOME": str(home), "DATABASE_URL": database_url}


def _databases(server: sa.Engine, prefix: str) -> set[str]:
    with server.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT datname FROM pg_database WHERE datname LIKE :p"), {"p": f"{prefix}%"}
        )
        return {name for (name,) in rows}


def _ingest(env: dict[str, str]) -> dict:
    process = start_ingest(env, BOOK)
    try:
        stdout, stderr = process.communicate(timeout=300)
    finally:
        stop_process_group(process)
    assert process.returncode == 0, stderr[-3000:]
    (outcome,) = json.loads(stdout)
    return outcome


def _has_table(url: str, table: str) -> bool:
    engine = engine_for(url)
    try:
        return sa.inspect(engine).has_table(table)
    finally:
        engine.dispose()


def test_an_ingest_killed_while_the_instance_database_is_made_leaves_none_behind(
    postgres_server, tmp_path
):
    server = engine_for(postgres_server)
    try:
        for attempt in range(5):  # until a kill lands while Dagster creates its tables
            database_url = create_database(postgres_server)
            name = f"{sa.engine.make_url(database_url).database}_dagster"
            env = _env(tmp_path / f"home{attempt}", database_url)
            process = start_ingest(env, BOOK)
            try:
                seen = wait_until(
                    lambda n=name: _databases(server, n), 120, "the instance's database", 0.01
                )
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
            finally:
                stop_process_group(process)
            if seen == {f"{name}_creating"}:
                break
        else:
            raise AssertionError("no kill landed while the instance's database was being made")
        assert _databases(server, name) <= {f"{name}_creating"}  # never the half-made one

        outcome = _ingest(env)
        assert outcome["stage"] == "connected" and outcome["chunks"] > 0
        assert _databases(server, name) == {name}
        url = sa.engine.make_url(database_url).set(database=name)
        assert _has_table(url.render_as_string(hide_password=False), "asset_check_executions")
    finally:
        server.dispose()
