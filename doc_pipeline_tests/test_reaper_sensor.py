"""The stale-run reaper on a real Dagster instance and app database."""

from __future__ import annotations

import os
import socket
from datetime import UTC, datetime, timedelta

import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterRunStatus, build_sensor_context

from doc_pipeline.concurrency import AI_POOL
from doc_pipeline.db import store
from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.document_runs import document_job
from doc_pipeline.instance import open_instance
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.liveness import Liveness
from doc_pipeline.resources.recovery import Recovery
from doc_pipeline.sensors import stale_run_reaper
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import create_database, use_home
from doc_pipeline_tests.processes import ended_process_pid


@pytest.fixture
def instance_and_engine(postgres_server, tmp_path, monkeypatch):
    use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
    settings = Settings.from_env()
    engine = prepare_app_database(settings)
    with open_instance(settings) as instance:
        yield instance, engine
    engine.dispose()


def _started_run(
    instance, engine, document_id: str, *, pid: int, beat_minutes_ago: float, tags=None
):
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
        tags={"dagster/partition": document_id, **(tags or {})},
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


def _context(instance, **recovery):
    resources = {
        "app_database": AppDatabase(),
        "liveness": Liveness(),
        "recovery": Recovery(**{"initial_backoff_seconds": 0, **recovery}),
    }
    return build_sensor_context(instance=instance, resources=resources)


def test_reaps_dead_and_silent_runs_and_leaves_live_ones(instance_and_engine):
    instance, engine = instance_and_engine
    gone = ended_process_pid()
    dead = _started_run(instance, engine, "deadworker00001", pid=gone, beat_minutes_ago=1)
    silent = _started_run(instance, engine, "silentworker001", pid=os.getpid(), beat_minutes_ago=45)
    # Alive: blocked in one long call for 20 minutes, its heartbeat a minute old.
    alive = _started_run(instance, engine, "aliveworker0001", pid=os.getpid(), beat_minutes_ago=1)
    # Silent for 45 minutes, but its job allows an hour.
    patient = _started_run(
        instance,
        engine,
        "patientworker01",
        pid=os.getpid(),
        beat_minutes_ago=45,
        tags={"doc_pipeline/stale_after_minutes": "60"},
    )

    # A dead run holds a slot of the AI pool; the reaper gives it back.
    instance.event_log_storage.set_concurrency_slots(AI_POOL, 1)
    claim = instance.event_log_storage.claim_concurrency_slot(AI_POOL, dead.run_id, "chunks")
    assert claim.is_claimed

    # (A long backoff: resuming them is the next tests' subject.)
    result = stale_run_reaper(_context(instance, initial_backoff_seconds=3600))
    assert "4 started run(s) checked, 2 failed as dead" in result.skip_message
    assert instance.event_log_storage.get_concurrency_info(AI_POOL).claimed_slots == []

    assert instance.get_run_by_id(dead.run_id).status == DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(silent.run_id).status == DagsterRunStatus.FAILURE
    assert instance.get_run_by_id(alive.run_id).status == DagsterRunStatus.STARTED
    assert instance.get_run_by_id(patient.run_id).status == DagsterRunStatus.STARTED
    dead_document = store.get_document(engine, "deadworker00001")
    assert dead_document["stage"] == "failed" and dead_document["error_class"] == "transient"
    assert "is gone" in dead_document["error_message"]
    assert (
        "last heartbeat was 45 min ago"
        in store.get_document(engine, "silentworker001")["error_message"]
    )
    assert store.get_document(engine, "aliveworker0001")["stage"] == "pending"


def _failed_run(instance, engine, document_id: str, assets: list[str], run_config: dict):
    if store.get_document(engine, document_id) is None:
        store.register_document(
            engine,
            document_id=document_id,
            content_sha256=document_id * 4,
            source_file="b.epub",
            byte_size=1,
        )
    store.mark_failed(engine, document_id, "transient", "AIUnavailable: 503 six times")
    return instance.create_run_for_job(
        job_def=document_job(),
        status=DagsterRunStatus.FAILURE,
        tags={"dagster/partition": document_id},
        asset_selection=frozenset(AssetKey(name) for name in assets),
        run_config=run_config,
    )


def test_a_failed_run_that_dagster_cannot_retry_is_resumed_with_its_config(instance_and_engine):
    instance, engine = instance_and_engine
    config = {"resources": {"provider": {"config": {"max_words": 900}}}}
    # Started by `doc-pipeline ingest`: no code location origin, so Dagster cannot retry it.
    failed = _failed_run(instance, engine, "cliresume000001", ["chunks", "embeddings"], config)
    assert failed.remote_job_origin is None

    result = stale_run_reaper(_context(instance))
    (request,) = result.run_requests
    assert request.partition_key == "cliresume000001"
    assert request.asset_selection == [AssetKey("chunks"), AssetKey("embeddings")]
    assert request.run_config == config
    assert request.run_key == f"resume-{failed.run_id}"
    assert request.tags["doc_pipeline/attempt"] == "2"


def test_after_max_attempts_the_document_is_given_up_with_the_reason(instance_and_engine):
    instance, engine = instance_and_engine
    for _ in range(2):
        _failed_run(instance, engine, "givenup00000001", ["embeddings"], {})

    result = stale_run_reaper(_context(instance, max_attempts=2))
    assert "0 failed document(s) resumed, 1 given up" in result.skip_message
    document = store.get_document(engine, "givenup00000001")
    assert document["stage"] == "failed" and document["error_class"] == "transient"
    assert document["error_message"] == (
        "gave up after 2 failed attempts; the last: AIUnavailable: 503 six times"
    )
    # Decided once: the next evaluation leaves it alone.
    assert "0 given up" in stale_run_reaper(_context(instance, max_attempts=2)).skip_message


def test_bad_input_is_not_retried(instance_and_engine):
    instance, engine = instance_and_engine
    _failed_run(instance, engine, "notabook0000001", ["extracted_markdown"], {})
    store.mark_failed(engine, "notabook0000001", "invalid_input", "b.epub: not a zip file")
    result = stale_run_reaper(_context(instance))
    assert "0 failed document(s) resumed, 0 given up" in result.skip_message
