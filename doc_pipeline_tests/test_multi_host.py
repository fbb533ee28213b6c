"""The liveness rules across hosts (DESIGN rule 5, issue 17), with a second host on this machine
(hosts.py: its own hostname and pids) and one Postgres:

- a lease held from another host is taken over only once it expired, and never expires under
  a request that is still in flight there, however long it takes (its holder renews it);
- the reaper judges a run whose worker is on another host by the age of its heartbeats only
  (a pid of another host means nothing here), fails it through the run launcher, and leaves a
  run that never beat to Dagster's run monitoring where the launcher checks worker health.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterEvent, DagsterEventType, DagsterInstance, DagsterRunStatus
from dagster._core.events.log import EventLogEntry

from doc_pipeline.core.ledger import AIAnswer, Usage
from doc_pipeline.db import store
from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.db.ledger_store import Ledger
from doc_pipeline.document_runs import document_job
from doc_pipeline.instance import open_instance
from doc_pipeline.run_recovery import REAPED_TAG, reap_dead_runs
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import create_database, use_home
from doc_pipeline_tests.hosts import Host
from doc_pipeline_tests.ledger_counts import ai_call_counts
from doc_pipeline_tests.processes import ended_process_pid, free_port, wait_until
from doc_pipeline_tests.remote_worker import ANSWER, REQUEST


def _remote(start_host, name: str, *args: object, pid: int | None = None) -> Host:
    """remote_worker.py's command on the host `name`."""
    argv = [sys.executable, "-m", "doc_pipeline_tests.remote_worker", *args]
    return start_host(name, argv, dict(os.environ), pid=pid)


@pytest.fixture
def engine(app_database_url):
    engine = store.engine_for(app_database_url)
    yield engine
    engine.dispose()


def _lease(engine) -> sa.Row | None:
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT lease_owner, lease_expires_at, lease_expires_at - now() AS remaining"
                " FROM ai_responses WHERE key = :key AND state = 'leased'"
            ),
            {"key": REQUEST.key},
        ).first()


class RecordingFetch:
    def __init__(self) -> None:
        self.calls: list[float] = []

    def __call__(self) -> AIAnswer:
        self.calls.append(time.monotonic())
        return AIAnswer({"chunks": ["paid here"]}, Usage(100, 10, 0), Decimal("0.01"))


def _call_in_thread(ledger: Ledger, fetch: RecordingFetch) -> tuple[threading.Thread, dict]:
    result: dict = {}

    def call() -> None:
        result["answer"] = ledger.call(REQUEST, fetch, document_id=None, stage="chunks")

    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    return thread, result


def test_a_live_holder_on_another_host_keeps_its_lease_however_long_its_request(
    app_database_url, engine, start_host, tmp_path
):
    release = tmp_path / "release"
    _remote(start_host, "worker-b", "pay", app_database_url, 1.0, release)
    first = wait_until(lambda: _lease(engine), 60, "worker-b to hold the lease", 0.05)
    assert first.lease_owner.startswith("worker-b:")

    fetch = RecordingFetch()
    thread, result = _call_in_thread(Ledger(engine, lease_seconds=1.0, poll_seconds=0.05), fetch)
    time.sleep(4)  # four lease lengths: only worker-b's renewals keep it
    assert fetch.calls == [] and thread.is_alive()
    renewed = _lease(engine)
    assert renewed.lease_owner == first.lease_owner
    assert renewed.lease_expires_at > first.lease_expires_at + timedelta(seconds=2)

    release.touch()  # worker-b's API answers
    thread.join(30)
    assert fetch.calls == []
    assert result["answer"].hit and result["answer"].response == ANSWER
    assert ai_call_counts(engine, "outcome") == {"paid": 1, "hit": 1}


def test_a_lease_held_on_a_dead_host_is_taken_over_once_it_expired(
    app_database_url, engine, start_host, tmp_path
):
    host = _remote(start_host, "worker-b", "pay", app_database_url, 3.0, tmp_path / "never")
    wait_until(lambda: _lease(engine), 60, "worker-b to hold the lease", 0.05)
    host.kill()  # the whole host, mid-request: nothing is left to renew or release the lease
    killed_at = time.monotonic()
    remaining = _lease(engine).remaining.total_seconds()

    fetch = RecordingFetch()
    thread, result = _call_in_thread(Ledger(engine, lease_seconds=3.0, poll_seconds=0.05), fetch)
    thread.join(30)
    assert len(fetch.calls) == 1 and not result["answer"].hit
    waited = fetch.calls[0] - killed_at
    # Not before the lease ran out (the holder's pid means nothing on this host), and soon after.
    assert remaining - 0.3 <= waited <= remaining + 3, (remaining, waited)
    assert ai_call_counts(engine, "outcome") == {"paid": 1}


@pytest.fixture
def instance_and_engine(postgres_server, tmp_path, monkeypatch):
    url = create_database(postgres_server)
    use_home(monkeypatch, tmp_path / "home", url)
    settings = Settings.from_env()
    engine = prepare_app_database(settings)
    with open_instance(settings) as instance:
        yield instance, engine, url
    engine.dispose()


def _started_run(instance: DagsterInstance, engine, document_id: str, started_ago: timedelta):
    store.register_document(
        engine,
        document_id=document_id,
        content_sha256=document_id * 4,
        source_file=f"{document_id}.epub",
        byte_size=1,
    )
    run = instance.create_run_for_job(
        job_def=document_job(),
        status=DagsterRunStatus.NOT_STARTED,
        tags={"dagster/partition": document_id},
    )
    started = DagsterEvent(DagsterEventType.RUN_START.value, job_name=run.job_name)
    instance.handle_new_event(
        EventLogEntry(
            error_info=None,
            level="DEBUG",
            user_message="",
            run_id=run.run_id,
            timestamp=(datetime.now(UTC) - started_ago).timestamp(),
            dagster_event=started,
        )
    )
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
    return run


def _beats(engine, run_id: str) -> list[sa.Row]:
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT host, pid FROM heartbeats WHERE run_id = :run"), {"run": run_id}
        ).all()


def test_the_reaper_judges_a_worker_on_another_host_by_its_heartbeats_alone(
    instance_and_engine, start_host
):
    instance, engine, url = instance_and_engine
    run = _started_run(instance, engine, "remoteworker001", timedelta(seconds=1))
    pid = ended_process_pid()
    host = _remote(start_host, "worker-b", "beat", url, run.run_id, "remoteworker001", 0.2, pid=pid)
    beat = wait_until(lambda: _beats(engine, run.run_id), 60, "worker-b's heartbeat", 0.05)
    assert beat[0].host == "worker-b" and beat[0].pid == pid  # a pid no process has here
    host.kill()

    stale_after = timedelta(seconds=4)
    _, verdicts = reap_dead_runs(instance, engine, stale_after)
    assert verdicts == []  # its pid is not this host's: only its beats' age tells
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED

    time.sleep(stale_after.total_seconds() + 0.5)
    _, verdicts = reap_dead_runs(instance, engine, stale_after)
    assert [v.run_id for v in verdicts] == [run.run_id]
    assert "its last heartbeat was" in verdicts[0].reason
    failed = instance.get_run_by_id(run.run_id)
    assert failed.status == DagsterRunStatus.FAILURE
    assert failed.tags[REAPED_TAG].endswith(verdicts[0].reason)
    document = store.get_document(engine, "remoteworker001")
    assert document["stage"] == "failed" and document["error_class"] == "transient"


def _kubernetes_instance(postgres_server, folder: Path) -> DagsterInstance:
    """An instance whose runs are launched by Dagster's K8sRunLauncher (which checks its run
    workers' health), with run monitoring on; built offline: the kube config names a cluster
    at a port where nothing listens."""
    kubeconfig = folder / "kubeconfig"
    kubeconfig.write_text(
        f"""apiVersion: v1
kind: Config
clusters: [{{name: nowhere, cluster: {{server: "https://127.0.0.1:{free_port()}"}}}}]
users: [{{name: nobody, user: {{token: not-a-token}}}}]
contexts: [{{name: nowhere, context: {{cluster: nowhere, user: nobody}}}}]
current-context: nowhere
"""
    )
    dagster_url = create_database(postgres_server)
    (folder / "dagster.yaml").write_text(
        f"""storage:
  postgres:
    postgres_url: "{dagster_url.replace("+psycopg", "+psycopg2")}"
run_launcher:
  module: dagster_k8s
  class: K8sRunLauncher
  config:
    load_incluster_config: false
    kubeconfig_file: "{kubeconfig}"
    job_namespace: doc-pipeline
    service_account_name: dagster
    instance_config_map: dagster-instance
    dagster_home: /opt/dagster/dagster_home
run_monitoring:
  enabled: true
  max_resume_run_attempts: 0
"""
    )
    return DagsterInstance.from_config(str(folder))


def test_where_the_launcher_checks_worker_health_a_silent_run_is_left_to_dagster(
    postgres_server, tmp_path, monkeypatch
):
    """With the K8sRunLauncher, a run that never beat may be waiting for a pool slot in a pod
    on another host: Dagster's run monitoring asks the cluster about it, the reaper does not
    fail it by age. A run whose beats stopped (a hung worker) is still failed, after the
    launcher was asked to terminate it (here the cluster is out of reach: it is failed all the
    same)."""
    use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
    engine = prepare_app_database(Settings.from_env())
    instance = _kubernetes_instance(postgres_server, tmp_path)
    try:
        assert instance.run_launcher.supports_check_run_worker_health
        silent = _started_run(instance, engine, "silentpod000001", timedelta(hours=1))
        hung = _started_run(instance, engine, "hungpod00000001", timedelta(hours=1))
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO heartbeats (run_id, step_key, document_id, host, pid,"
                    " started_at, beat_at) VALUES (:run, 'chunks', 'hungpod00000001', 'pod-7',"
                    " 1, now() - interval '50 minutes', now() - interval '45 minutes')"
                ),
                {"run": hung.run_id},
            )
        _, verdicts = reap_dead_runs(instance, engine, timedelta(minutes=30))
        assert [v.run_id for v in verdicts] == [hung.run_id]
        assert instance.get_run_by_id(silent.run_id).status == DagsterRunStatus.STARTED
        assert instance.get_run_by_id(hung.run_id).status == DagsterRunStatus.FAILURE
    finally:
        instance.dispose()
        engine.dispose()


def test_without_a_health_check_a_run_that_never_beat_is_failed_by_age(instance_and_engine):
    """The contrast: the default launcher cannot see a worker on another host."""
    instance, engine, _ = instance_and_engine
    silent = _started_run(instance, engine, "silentworker001", timedelta(hours=1))
    _, verdicts = reap_dead_runs(instance, engine, timedelta(minutes=30))
    assert [v.run_id for v in verdicts] == [silent.run_id]
    assert "never sent a heartbeat" in verdicts[0].reason
