"""The README's first command on a fresh home: no DATABASE_URL, nothing running beforehand."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import sqlalchemy as sa

from doc_pipeline.db.server import (
    SHARED_BUFFERS_ENV,
    embedded_server_pid,
    embedded_settings,
    stop_embedded,
)
from doc_pipeline_tests.conftest import PROJECT_ROOT


def _run(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "doc_pipeline", *args]
    return subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)


def test_ingest_samples_on_the_embedded_default(tmp_path):
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "DAGSTER_HOME")}
    env["DOC_PIPELINE_HOME"] = str(home)
    samples = tmp_path / "samples"
    shutil.copytree(PROJECT_ROOT / "samples", samples)
    try:
        result = _run("ingest", str(samples), "--json", env=env)
        assert result.returncode == 0, result.stderr[-3000:]
        outcomes = json.loads(result.stdout)
        assert len(outcomes) == 3
        assert any(o["source_file"].endswith(".pdf") for o in outcomes)  # every format
        assert all(o["stage"] == "connected" and o["chunks"] > 0 for o in outcomes)
        assert all(o["connections"] > 0 for o in outcomes)
        first_pid = embedded_server_pid(home / "pgdata")
        assert first_pid is not None, "the embedded server keeps running for later commands"
        assert {p.name for p in home.iterdir()} >= {"pgdata", "blobs", "dagster", "uploads"}

        table = _run("status", env=env)
        assert table.returncode == 0 and "connected" in table.stdout
        assert table.stdout.count("4/4") == 3  # every stage done, for every book
        rows = json.loads(_run("status", "--json", env=env).stdout)
        assert all(row["vectors"] == row["chunks"] > 0 for row in rows)
        assert embedded_server_pid(home / "pgdata") == first_pid, "later commands reuse it"

        stopped = _run("db", "stop", env=env)
        assert stopped.returncode == 0 and embedded_server_pid(home / "pgdata") is None
    finally:
        stop_embedded(home / "pgdata")


def _shared_buffers(env: dict[str, str]) -> str:
    url = _run("db", "url", env=env).stdout.strip()
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text("SHOW shared_buffers")).scalar_one()
    finally:
        engine.dispose()


def test_the_embedded_server_is_sized_for_the_machine_and_follows_a_new_setting(tmp_path):
    """shared_buffers an eighth of the memory (at most 4GB) on a new home, or the
    DOC_PIPELINE_PG_SHARED_BUFFERS asked for; a changed setting restarts a server no one uses."""
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", SHARED_BUFFERS_ENV)}
    env["DOC_PIPELINE_HOME"] = str(home)
    try:
        assert _shared_buffers(env) == embedded_settings()["shared_buffers"] != "128MB"
        first_pid = embedded_server_pid(home / "pgdata")
        assert _shared_buffers(env | {SHARED_BUFFERS_ENV: "192MB"}) == "192MB"
        assert embedded_server_pid(home / "pgdata") != first_pid  # restarted for it
    finally:
        stop_embedded(home / "pgdata")
