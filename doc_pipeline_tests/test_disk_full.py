"""The blob store's disk refuses writes: a clear failure, no half-written file, and a retry
once there is room again completes the documents like a clean run.

The refusal is real, from the kernel: `doc-pipeline ingest` runs with RLIMIT_FSIZE (and SIGXFSZ
ignored, as Python does anyway), so a write() past the limit fails with EFBIG ("File too
large") after the bytes below the limit were written, just as a full disk cuts a file short
with ENOSPC. A tmpfs of a few hundred kB would give ENOSPC itself, but mounting one needs
privileges that CI does not have. With the limit, Peter Rabbit's EPUB (1.5 MB) cannot be
copied into the store at registration, and Sherlock Holmes (EPUB 250 kB) registers but its
extracted markdown (600 kB of JSON) cannot be stored as the step's output.
"""

from __future__ import annotations

import resource
import signal

import pytest

from doc_pipeline.core.book_files import stored_source_path
from doc_pipeline.core.ids import document_id_for, file_sha256
from doc_pipeline.db import store
from doc_pipeline_tests.conftest import create_database
from doc_pipeline_tests.document_data import DocumentData
from doc_pipeline_tests.outages import (
    BOOKS,
    RABBIT,
    SHERLOCK,
    LocalPipeline,
    assert_completed_like_clean,
    clean_data,
)

LIMIT_BYTES = 400 * 1024


def limit_file_size() -> None:
    """Runs in the ingest's process before it starts (preexec_fn): no file past LIMIT_BYTES."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills it instead of EFBIG
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))


@pytest.fixture(scope="module")
def clean(postgres_server, tmp_path_factory) -> dict[str, DocumentData]:
    return clean_data(postgres_server, tmp_path_factory)


def test_a_full_blob_disk_fails_clearly_leaves_no_partial_file_and_a_retry_completes(
    postgres_server, tmp_path, clean
):
    assert SHERLOCK.stat().st_size < LIMIT_BYTES < RABBIT.stat().st_size
    pipeline = LocalPipeline(tmp_path / "home", create_database(postgres_server))
    engine = store.engine_for(pipeline.database_url)
    sherlock_id = document_id_for(file_sha256(SHERLOCK))
    rabbit_id = document_id_for(file_sha256(RABBIT))
    rabbit_copy = stored_source_path(pipeline.blob_dir, rabbit_id, RABBIT.name)
    markdown = pipeline.blob_dir / "outputs" / "extracted_markdown" / f"{sherlock_id}.json"

    failed = pipeline.ingest(*BOOKS, preexec_fn=limit_file_size)
    assert failed.returncode == 1, failed.stderr[-3000:]
    rabbit = failed.outcomes[RABBIT.name]
    assert rabbit["stage"] == "failed" and rabbit["error_class"] == "transient"
    assert f"could not write {rabbit_copy}: File too large" in rabbit["error_message"]
    sherlock = failed.outcomes[SHERLOCK.name]
    assert sherlock["stage"] == "failed" and sherlock["error_class"] == "transient"
    assert f"could not write {markdown}: File too large" in sherlock["error_message"]
    document = store.get_document(engine, sherlock_id)
    assert (document["stage"], document["error_class"]) == ("failed", "transient")
    assert document["error_message"] == sherlock["error_message"]

    # Neither file exists, cut short or whole, and no temporary file was left behind.
    assert not rabbit_copy.exists() and not markdown.exists()
    leftovers = [p for p in pipeline.blob_dir.rglob("*") if p.is_file() and p.suffix == ".tmp"]
    assert leftovers == []
    # What fitted was stored whole.
    sherlock_copy = stored_source_path(pipeline.blob_dir, sherlock_id, SHERLOCK.name)
    assert file_sha256(sherlock_copy) == file_sha256(SHERLOCK)

    retried = pipeline.ingest(*BOOKS)  # space was freed: the same command again
    assert_completed_like_clean(retried, engine, clean)
    engine.dispose()
