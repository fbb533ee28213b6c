"""The blob store on an object store (DOC_PIPELINE_BLOB_URL=s3://...): no code path assumes a
shared disk.

A real S3 wire protocol: moto's standalone server, started in this process on a free port and
stopped by the test; s3fs finds it through botocore's own endpoint variable
(AWS_ENDPOINT_URL_S3), with fake credentials. `doc-pipeline ingest` and `export` run as users
run them, in subprocesses with that environment.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import build_sensor_context

from doc_pipeline import blob_store
from doc_pipeline.core.failures import TRANSIENT
from doc_pipeline.core.ids import document_id_for, file_sha256
from doc_pipeline.db import store
from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.db.failures import classify
from doc_pipeline.instance import open_instance
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.source_store import SourceStore
from doc_pipeline.resources.uploads import Uploads
from doc_pipeline.sensors import uploads_sensor
from doc_pipeline.settings import BLOB_URL_ENV, Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home
from doc_pipeline_tests.object_store import BLOB_URL, BUCKET
from doc_pipeline_tests.outages import RABBIT, SHERLOCK, LocalPipeline
from doc_pipeline_tests.processes import run_cli, stop_process_group

FLATLAND = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"


def _use_in_this_process(monkeypatch: pytest.MonkeyPatch, environment: dict[str, str]) -> None:
    """The environment for this process, without AWS settings of the machine's."""
    for name in [n for n in os.environ if n.startswith("AWS_")]:
        monkeypatch.delenv(name)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)


def _files_under(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def _export_bytes(env: dict[str, str], *args: object) -> subprocess.CompletedProcess:
    """`doc-pipeline export ARGS`, with its standard output as bytes."""
    process = subprocess.Popen(
        [sys.executable, "-m", "doc_pipeline", "export", *map(str, args)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=120)
    finally:
        stop_process_group(process)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def test_ingest_export_corruption_and_outage_on_an_object_store(postgres_server, tmp_path, s3):
    """`ingest` (its runs on worker processes) keeps every blob in the bucket; `export` reads
    from it; a changed copy and a store that is gone fail documents with one line each."""
    pipeline = LocalPipeline(tmp_path / "home", create_database(postgres_server))
    pipeline.env = {
        **{k: v for k, v in pipeline.env.items() if not k.startswith("AWS_")},
        **s3.environment(tmp_path),
        BLOB_URL_ENV: BLOB_URL,
    }
    bucket = s3.client()
    sherlock_id = document_id_for(file_sha256(SHERLOCK))
    rabbit_id = document_id_for(file_sha256(RABBIT))

    # Two books to `connected`, with every blob in the bucket and none on the home's disk.
    ingested = pipeline.ingest(SHERLOCK, RABBIT)
    assert ingested.returncode == 0, ingested.stderr[-3000:]
    assert {o["stage"] for o in ingested.outcomes.values()} == {"connected"}
    stored = set(bucket.find(f"{BUCKET}/blobs"))
    for document_id in (sherlock_id, rabbit_id):
        assert f"{BUCKET}/blobs/sources/{document_id}.epub" in stored
        for asset in ("source_document", "extracted_markdown", "chunks", "embeddings"):
            assert f"{BUCKET}/blobs/outputs/{asset}/{document_id}.json" in stored
    assert bucket.cat(f"{BUCKET}/blobs/sources/{rabbit_id}.epub") == RABBIT.read_bytes()
    assert _files_under(pipeline.home / "blobs") == []

    # `export --version` streams the source from the bucket, byte for byte.
    exported = _export_bytes(pipeline.env, rabbit_id, "--version", 1)
    assert exported.returncode == 0, exported.stderr.decode()[-3000:]
    assert exported.stdout == RABBIT.read_bytes()

    # A stored copy whose bytes changed fails its document, with one line naming the file.
    sherlock_object = f"{BUCKET}/blobs/sources/{sherlock_id}.epub"
    changed = bytearray(bucket.cat(sherlock_object))
    changed[len(changed) // 2] ^= 0xFF
    bucket.pipe(sherlock_object, bytes(changed))
    tampered = pipeline.ingest(SHERLOCK)
    assert tampered.returncode == 1
    outcome = tampered.outcomes[SHERLOCK.name]
    assert (outcome["stage"], outcome["error_class"]) == ("failed", "permanent")
    assert outcome["error_message"] == (
        f"{SHERLOCK.name}: stored copy {BLOB_URL}/sources/{sherlock_id}.epub does not match "
        "its hash"
    )
    assert "Traceback" not in tampered.stderr

    # The store is gone: a registered document's run and a new file's registration fail as
    # transient, each with one line in the terminal, and no trace.
    s3.stop()
    books = (RABBIT, FLATLAND)
    down = run_cli(pipeline.env, "ingest", "--config", pipeline.config, *books, timeout=300)
    assert down.returncode == 1, down.stderr[-3000:]
    assert "Traceback" not in down.stderr and "Traceback" not in down.stdout
    for name in (book.name for book in books):
        (line,) = [line for line in down.stdout.splitlines() if line.startswith(f"✗ {name}")]
        assert re.fullmatch(rf"✗ {re.escape(name)} \(transient\): .*blob store unreachable.*", line)
    engine = store.engine_for(pipeline.database_url)
    rabbit = store.get_document(engine, rabbit_id)
    engine.dispose()
    assert (rabbit["stage"], rabbit["error_class"]) == ("failed", TRANSIENT)
    unreachable = f"blob store unreachable for {BLOB_URL}/sources/{rabbit_id}.epub: "
    assert unreachable in rabbit["error_message"]
    assert "\n" not in rabbit["error_message"]
    assert _files_under(pipeline.home / "blobs") == []


def test_the_store_helpers_on_s3(tmp_path, s3, monkeypatch):
    """Whole objects in, streamed hashes and copies out, a temporary local copy that is
    removed afterwards; a missing object and an outage each raise what the callers expect."""
    _use_in_this_process(monkeypatch, s3.environment(tmp_path))
    url = f"{BLOB_URL}/sources/rabbit.epub"
    assert not blob_store.exists(url)
    blob_store.store_file(RABBIT, url)
    assert blob_store.exists(url) and blob_store.sha256_of(url) == file_sha256(RABBIT)
    copied = io.BytesIO()
    blob_store.copy_to(url, copied)
    assert copied.getvalue() == RABBIT.read_bytes()
    with blob_store.local_copy(url) as local:
        assert local.read_bytes() == RABBIT.read_bytes()
    assert not local.exists() and not local.parent.exists()
    with blob_store.local_copy(str(RABBIT)) as itself:  # a local store: no copy
        assert itself == RABBIT
    with pytest.raises(FileNotFoundError):
        blob_store.sha256_of(f"{BLOB_URL}/sources/missing.epub")
    with pytest.raises(blob_store.BlobStoreError, match="refused s3://no-such-bucket/x"):
        blob_store.store_bytes("s3://no-such-bucket/x", b"{}")

    s3.stop()
    with pytest.raises(blob_store.BlobStoreUnavailable) as raised:
        blob_store.sha256_of(url)
    assert classify(raised.value) == TRANSIENT
    assert str(raised.value).startswith(f"blob store unreachable for {url}: ")


def test_uploads_from_s3_are_registered_into_an_s3_blob_store(
    postgres_server, tmp_path, s3, monkeypatch
):
    """The uploads sensor, in a daemon that shares no disk with the run workers: a book
    dropped into s3://.../incoming is copied into the blob store in the bucket."""
    use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
    _use_in_this_process(monkeypatch, {**s3.environment(tmp_path), BLOB_URL_ENV: BLOB_URL})
    settings = Settings.from_env()
    engine = prepare_app_database(settings)
    bucket = s3.client()
    bucket.pipe(f"{BUCKET}/incoming/rabbit.epub", RABBIT.read_bytes())
    resources = {
        "app_database": AppDatabase(),
        "source_store": SourceStore(),
        "uploads": Uploads(url=f"s3://{BUCKET}/incoming", settle_seconds=0),
    }
    with open_instance(settings) as instance:
        cursor = None
        for _ in range(2):  # seen once, then known to be complete
            context = build_sensor_context(instance=instance, cursor=cursor, resources=resources)
            result = uploads_sensor(context)
            cursor = getattr(result, "cursor", None) or context.cursor
    (request,) = result.run_requests
    document = store.get_document(engine, request.partition_key)
    assert document["source_file"] == "rabbit.epub"
    stored = f"{BUCKET}/blobs/sources/{request.partition_key}.epub"
    assert bucket.cat(stored) == RABBIT.read_bytes()
    assert _files_under(settings.blob_dir) == []
    engine.dispose()
