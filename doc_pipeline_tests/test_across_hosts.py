"""doc_pipeline on more than one host (issue 17): Dagster's own processes and `doc-pipeline`
on hosts of their own (hosts.py: own hostname and pids, no shared folder), one Postgres, the
blobs on an S3-compatible server (moto's) and the fake Gemini server on loopback.

- A book dropped into the uploads location (in the bucket) is picked up by the uploads sensor
  of a code server on host worker-1, whose run worker (there too) is killed with the whole host
  mid-chunking, and the Dagster daemon on this host with it: every Dagster process is gone and
  the run stays STARTED. Once a daemon and a code server run again (the code server on
  worker-2) the reaper fails the run from its heartbeats' age (worker-1's pids mean nothing
  elsewhere) and Dagster retries it there: the document ends with a clean run's data, and only
  the requests in flight at the kill are paid twice.
- Two worker hosts ingest two documents at once whose chapters are the same text, so that
  they ask for the same AI requests at the same time: each request is paid once (one host waits
  for the other's lease, then reads its answer), no foreign key is violated, and each host
  connects its document to the other's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import sqlalchemy as sa

from doc_pipeline.db import store
from doc_pipeline.instance import dagster_environment, open_instance
from doc_pipeline.settings import BLOB_URL_ENV, UPLOADS_URL_ENV, Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home
from doc_pipeline_tests.crash_points import paid_bodies, requests_in_flight, slow_down
from doc_pipeline_tests.dagster_ui import document_settled
from doc_pipeline_tests.document_data import DocumentData, document_data
from doc_pipeline_tests.gemini_pipeline import API_KEY
from doc_pipeline_tests.ledger_counts import keys_paid_twice
from doc_pipeline_tests.object_store import BUCKET
from doc_pipeline_tests.processes import free_port, run_cli, stop_process_group, wait_until

FLATLAND = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
RABBIT = CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub"  # what Flatland connects to
UPLOADS_URL = f"s3://{BUCKET}/incoming"
# Seconds instead of minutes, for every process of the deployment: heartbeats every second, a
# run stale after 9 s of silence, a lease 6 s unless renewed, sensors every few seconds.
FAST_LIVENESS = {
    "DOC_PIPELINE_HEARTBEAT_INTERVAL_SECONDS": "1",
    "DOC_PIPELINE_STALE_AFTER_MINUTES": "0.15",
    "DOC_PIPELINE_AI_LEASE_SECONDS": "6",
    "DOC_PIPELINE_REAPER_INTERVAL_SECONDS": "3",
    "DOC_PIPELINE_UPLOADS_INTERVAL_SECONDS": "2",
    "DOC_PIPELINE_UPLOADS_SETTLE_SECONDS": "2",
    "DOC_PIPELINE_AUTOMATION_INTERVAL_SECONDS": "3",
    "DOC_PIPELINE_RETRY_BACKOFF_SECONDS": "2",
}
# Slow enough that the two hosts' requests for a chapter overlap.
LATENCY = {"first_token_seconds": 0.4, "output_tokens_per_second": 4_000, "embedding_seconds": 0.3}


def second_edition(book: Path, target: Path) -> Path:
    """The same text under another book identifier: a document of its own, whose AI requests
    are the same as the book's."""
    with zipfile.ZipFile(book) as source, zipfile.ZipFile(target, "w") as copy:
        for info in source.infolist():
            data = source.read(info)
            if info.filename.endswith(".opf"):
                text = data.decode("utf-8")
                text = re.sub(r"(<dc:identifier\b[^>]*>)([^<]*)", r"\1\2/second-edition", text)
                data = text.encode("utf-8")
            copy.writestr(info, data)
    return target


def host_environment(home: Path, database_url: str, fake, s3, prefix: str) -> dict[str, str]:
    """What a host's processes get: a home folder of their own (no folder is shared between
    hosts), the shared database, the blob store in the bucket (under `prefix`), the fake
    Gemini API."""
    inherited = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DAGSTER_HOME", "GOOGLE_API_KEY", "DOC_PIPELINE_PROVIDER")
        and not k.startswith("AWS_")
    }
    return inherited | {
        "DOC_PIPELINE_HOME": str(home),
        "DATABASE_URL": database_url,
        BLOB_URL_ENV: f"s3://{BUCKET}/{prefix}",
        "GEMINI_API_KEY": API_KEY,
        "GOOGLE_GEMINI_BASE_URL": fake.base_url,
        **s3.environment(home.parent),
    }


def test_two_worker_hosts_at_once_pay_each_request_once(
    postgres_server, tmp_path, monkeypatch, fake, s3_module, start_host
):
    s3 = s3_module
    fake.clear_requests()
    fake.clear_faults()
    fake.set_latency(**LATENCY)
    database_url = create_database(postgres_server)
    books = [FLATLAND, second_edition(FLATLAND, tmp_path / "flatland-second-edition.epub")]
    try:
        hosts = [
            start_host(
                f"worker-{number}",
                [sys.executable, "-m", "doc_pipeline", "ingest", "--json", "--jobs", 1, book],
                host_environment(tmp_path / f"home-{number}", database_url, fake, s3, "two"),
            )
            for number, book in enumerate(books, 1)
        ]
        wait_until(lambda: not any(h.alive() for h in hosts), 600, "both ingests to end", 1)
    finally:
        fake.set_latency()
    logs = [Path(tmp_path / f"host-worker-{n}-{n - 1}.log").read_text() for n in (1, 2)]
    assert [h.process.returncode for h in hosts] == [0, 0], [log[-3000:] for log in logs]

    engine = store.engine_for(database_url)
    try:
        summaries = {d["source_file"]: d for d in store.document_summaries(engine)}
        assert {d["stage"] for d in summaries.values()} == {"connected"}
        assert len(summaries) == 2
        # Each request was paid once, by one host or the other: the ledger and the API agree.
        assert keys_paid_twice(engine) == []
        bodies = paid_bodies(fake)
        assert bodies and len(bodies) == len(set(bodies))
        with engine.connect() as conn:
            shared = conn.execute(
                sa.text(
                    "SELECT count(*) FROM ai_calls h JOIN ai_calls p ON p.key = h.key"
                    " WHERE h.outcome = 'hit' AND p.outcome = 'paid'"
                    " AND h.document_id <> p.document_id AND h.stage = 'chunks'"
                )
            ).scalar_one()
            # Connections from each document to the other's chunks, none to a chunk that is gone.
            across = conn.execute(
                sa.text(
                    "SELECT s.document_id, count(*) FROM connections k"
                    " JOIN chunks s ON s.id = k.source_chunk_id"
                    " JOIN chunks t ON t.id = k.target_chunk_id"
                    " WHERE s.document_id <> t.document_id GROUP BY s.document_id"
                )
            ).all()
    finally:
        engine.dispose()
    assert shared > 0, "the two hosts never asked for the same request"
    assert len(across) == 2 and all(count > 0 for _, count in across)

    use_home(monkeypatch, tmp_path / "home-1", database_url)
    monkeypatch.setenv(BLOB_URL_ENV, f"s3://{BUCKET}/two")
    with open_instance(Settings.from_env()) as instance:
        records = instance.get_run_records()
        logs = [e.message or "" for r in records for e in instance.all_logs(r.dagster_run.run_id)]
    runs = [record.dagster_run for record in records]
    assert {run.tags["doc_pipeline/worker_host"] for run in runs} == {"worker-1", "worker-2"}
    assert all(run.status.value == "SUCCESS" for run in runs)
    # The hosts' first runs (source to embeddings) ran at the same time.
    first = {}
    for record in sorted(records, key=lambda r: r.start_time):
        first.setdefault(record.dagster_run.tags["doc_pipeline/worker_host"], record)
    one, two = first["worker-1"], first["worker-2"]
    assert one.start_time < two.end_time and two.start_time < one.end_time
    assert not [m for m in logs if "ForeignKeyViolation" in m or "foreign key" in m.lower()]
    # No host kept a blob on its own disk: sources and outputs are in the bucket.
    for number in (1, 2):
        assert not [p for p in (tmp_path / f"home-{number}").glob("blobs/**/*") if p.is_file()]
    stored = s3.client().find(f"{BUCKET}/two/sources")
    assert len(stored) == 2


@pytest.fixture(scope="module")
def clean_flatland(postgres_server, tmp_path_factory, fake, s3_module) -> DocumentData:
    """Peter Rabbit and Flatland ingested by the CLI on this host with nothing failing (what
    Flatland connects to is the same whichever of the two came first)."""
    fake.clear_faults()
    home = tmp_path_factory.mktemp("clean")
    database_url = create_database(postgres_server)
    env = host_environment(home / "home", database_url, fake, s3_module, prefix="clean")
    result = run_cli(env, "ingest", "--json", "--jobs", 1, RABBIT, FLATLAND, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    engine = store.engine_for(database_url)
    (flatland,) = [
        d["id"] for d in store.document_summaries(engine) if "flatland" in d["source_file"]
    ]
    data = document_data(engine, flatland)
    engine.dispose()
    return data


def _start_code_server(start_host, name: str, port: int, env: dict[str, str]):
    command = [sys.executable, "-m", "dagster", "api", "grpc", "-m", "doc_pipeline.definitions"]
    return start_host(name, [*command, "-h", "127.0.0.1", "-p", port], env)


def _start_daemon(folder: Path, port: int, env: dict[str, str]) -> subprocess.Popen:
    """Dagster's daemon on this host, for the code location served at `port`."""
    workspace = folder / "workspace.yaml"
    workspace.write_text(
        "load_from:\n  - grpc_server:\n      host: 127.0.0.1\n"
        f"      port: {port}\n      location_name: doc_pipeline\n"
    )
    daemon = Path(sys.executable).with_name("dagster-daemon")
    with open(folder / "daemon.log", "a") as log:
        return subprocess.Popen(
            [daemon, "run", "-w", workspace],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_every_dagster_process_killed_mid_chunking_the_run_is_retried_on_another_host(
    postgres_server, tmp_path, monkeypatch, fake, s3_module, start_host, clean_flatland
):
    s3 = s3_module
    fake.clear_faults()
    database_url = create_database(postgres_server)

    def deployment_host(name: str) -> dict[str, str]:
        """A host's environment, with its own home and Dagster instance folder."""
        home = tmp_path / name
        env = host_environment(home, database_url, fake, s3, "crash") | FAST_LIVENESS
        env[UPLOADS_URL_ENV] = UPLOADS_URL
        return env | dagster_environment(Settings(home=home, database_url=database_url))

    here = deployment_host("here")
    result = run_cli(here, "ingest", "--json", RABBIT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    engine = store.engine_for(database_url)
    port = free_port()
    slow_down(fake, "chunking")
    fake.clear_requests()
    daemons = [_start_daemon(tmp_path, port, here)]
    try:
        worker_1 = _start_code_server(start_host, "worker-1", port, deployment_host("worker-1"))
        s3.client().put_file(str(FLATLAND), f"{BUCKET}/incoming/{FLATLAND.name}")

        def chunking_on_worker_1() -> tuple[str, str] | None:
            with engine.connect() as conn:
                beat = conn.execute(
                    sa.text(
                        "SELECT run_id, document_id FROM heartbeats WHERE step_key = 'chunks'"
                        " AND host = 'worker-1' AND ended_at IS NULL"
                    )
                ).first()
            return tuple(beat) if beat and fake.in_flight("generateContent") else None

        run_id, document_id = wait_until(
            chunking_on_worker_1, 300, "worker-1's run worker to be chunking", 0.05
        )
        worker_1.kill()  # the code server, its run worker, everything on that host
        os.killpg(daemons[0].pid, signal.SIGKILL)  # and the daemon here
        killed_at = time.monotonic()
        daemons[0].wait(30)
        in_flight = requests_in_flight(fake, engine, run_id, "chunking", killed_at)
        assert in_flight >= 1
        use_home(monkeypatch, tmp_path / "here", database_url)
        with open_instance(Settings.from_env()) as instance:
            assert instance.get_run_by_id(run_id).status.value == "STARTED"  # stuck

        daemons.append(_start_daemon(tmp_path, port, here))
        _start_code_server(start_host, "worker-2", port, deployment_host("worker-2"))
        wait_until(
            document_settled(engine, document_id, "connected"),
            300,
            "the run to be retried on worker-2 and the document connected",
            1,
        )
    finally:
        for daemon in daemons:
            stop_process_group(daemon)

    with open_instance(Settings.from_env()) as instance:
        original = instance.get_run_by_id(run_id)
        runs = instance.get_runs()
        retries = [r for r in runs if r.tags.get("dagster/parent_run_id") == run_id]
        logs = [event.message or "" for run in runs for event in instance.all_logs(run.run_id)]
    assert original.status.value == "FAILURE"
    assert "its last heartbeat was" in original.tags["doc_pipeline/reaped"]
    assert [r.status.value for r in retries] == ["SUCCESS"]
    with engine.connect() as conn:
        hosts = (
            conn.execute(
                sa.text("SELECT DISTINCT host FROM heartbeats WHERE run_id = :run"),
                {"run": retries[0].run_id},
            )
            .scalars()
            .all()
        )
    assert hosts == ["worker-2"]
    assert not [m for m in logs if "ForeignKeyViolation" in m or "foreign key" in m.lower()]
    assert document_data(engine, document_id) == clean_flatland
    bodies = paid_bodies(fake)
    assert len(bodies) - len(set(bodies)) <= in_flight
    assert keys_paid_twice(engine) == []
    engine.dispose()
    for name in ("here", "worker-1", "worker-2"):  # no blob was kept on a host's own disk
        assert not [p for p in (tmp_path / name).glob("blobs/**/*") if p.is_file()]
