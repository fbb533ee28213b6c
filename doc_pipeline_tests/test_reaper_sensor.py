"""The stale-run reaper on a real Dagster instance and app database."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from dagster import DagsterRunStatus, build_sensor_context

from doc_pipeline.db import store
from doc_pipeline.ingest import document_job, prepare_app_database
from doc_pipeline.instance import open_instance
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.liveness import Liveness
from doc_pipeline.sensors import stale_run_reaper
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import create_database, use_home


@pytest.fixture
def instance_and_engine(postgres_server, tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
    settings = Settings.from_env()
    engine = prepare_app_database(settings)
    with open_instance(settings) as instance:
        yield instance, engine
    engine.dispose()


def _started_run(instance, engine, document_id: str, *, pid: int, beat_minutes_ago: float):
    store.register_document(
        engine,
        document_id=document_id,
        content_sha256=document_id * 4,
        source_file="b.epub",
        byte_size=1,
    )
    run = instance.create_run_for_job(
        job_def=document_job(),
        status=DagsterRunStatus.STARTED,
        tags={"dagster/partition": document_id},
    )
    beat = datetime.now(UTC) - timedelta(minutes=beat_minutes_ago)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO heartbeats (run_id, step_key, document_id, host, pid, started_at,"
                " beat_at) VALUES (:run, 'chunks', :doc, :host, :pid, :beat, :beat)"
            ),
            {
                "run": run.run_id,
                "doc": document_id,
                "host": socket.gethostname(),
                "pid": pid,
                "beat": beat,
            },
        )
    return run


def _dead_pid() -> int:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(finished.stdout)


def test_reaps_dead_and_silent_runs_and_leaves_live_ones(instance_and_engine):
    instance, engine = instance_and_engine
    dead = _started_run(instance, engine, "deadworker00001", pid=_dead_pid(), beat_minutes_ago=1)
    silent = _started_run(instance, engine, "silentworker001", pid=os.getpid(), beat_minutes_ago=45)
    # Alive: blocked in one long call for 20 minutes, its heartbeat a minute old.
    alive = _started_run(instance, engine, "aliveworker0001", pid=os.getpid(), beat_minutes_ago=1)

    context = build_sensor_context(
        instance=instance, resources={"app_database": AppDatabase(), "liveness": Liveness()}
    )
    result = stale_run_reaper(context)
    assert "3 started run(s) checked, 2 failed" in result.skip_message

    assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(silent.run_id).status == DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(alive.run_id).status == DagsterRunStatus.STARTED
    dead_document = store.get_document(engine, "deadworker00001")
    assert dead_document["stage"] == "failed" and dead_document["error_class"] == "transient"
    assert "is gone" in dead_document["error_message"]
    assert (
        "last heartbeat was 45 min ago"
        in store.get_document(engine, "silentworker001")["error_message"]
    )
    assert store.get_document(engine, "aliveworker0001")["stage"] == "pending"
