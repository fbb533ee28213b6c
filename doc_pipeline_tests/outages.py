"""Shared by the outage tests (database down, disk full): `doc-pipeline ingest` in a subprocess
with the `local` provider, and a document's data to compare with a clean run of the same books.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from sqlalchemy.engine import Engine

from doc_pipeline.db import store
from doc_pipeline_tests.conftest import CORPUS, create_database
from doc_pipeline_tests.document_data import CONNECT_EVERYTHING, DocumentData, document_data
from doc_pipeline_tests.processes import start_ingest, stop_process_group

# Sherlock's markdown (about 600 kB of JSON) is larger than its EPUB (250 kB); Peter Rabbit's
# EPUB (1.5 MB, pictures) is larger than its markdown. Both are quick with the local provider.
SHERLOCK = CORPUS / "epub" / "pg1661-sherlock-holmes.epub2.epub"
RABBIT = CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub"
BOOKS = (SHERLOCK, RABBIT)


@dataclass(frozen=True)
class Ingested:
    returncode: int
    outcomes: dict[str, dict]  # by the book's file name
    stderr: str


class LocalPipeline:
    """A home folder and app database for `doc-pipeline ingest --provider local`."""

    def __init__(self, home: Path, database_url: str):
        self.home = home
        self.database_url = database_url
        home.mkdir(parents=True, exist_ok=True)
        self.config = home / "run_config.yaml"
        self.config.write_text(yaml.safe_dump(CONNECT_EVERYTHING))
        self.env = {
            **{k: v for k, v in os.environ.items() if k != "DAGSTER_HOME"},
            "DOC_PIPELINE_HOME": str(home),
            "DATABASE_URL": database_url,
            "DOC_PIPELINE_PROVIDER": "local",
        }

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    def start_ingest(
        self, *books: Path, preexec_fn: Callable[[], None] | None = None
    ) -> subprocess.Popen:
        return start_ingest(self.env, "--config", self.config, *books, preexec_fn=preexec_fn)

    def finish(self, process: subprocess.Popen, timeout: float = 300) -> Ingested:
        try:
            stdout, stderr = process.communicate(timeout=timeout)
        finally:
            stop_process_group(process)
        try:
            outcomes = {Path(o["source_file"]).name: o for o in json.loads(stdout)}
        except json.JSONDecodeError:
            outcomes = {}
        return Ingested(process.returncode, outcomes, stderr)

    def ingest(self, *books: Path, preexec_fn: Callable[[], None] | None = None) -> Ingested:
        return self.finish(self.start_ingest(*books, preexec_fn=preexec_fn))


_clean_runs: dict[str, dict[str, DocumentData]] = {}


def clean_data(
    server_url: str, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, DocumentData]:
    """`clean_run` in a new database of the server, once per test process (both outage
    modules compare with it)."""
    if server_url not in _clean_runs:
        home = tmp_path_factory.mktemp("clean")
        _clean_runs[server_url] = clean_run(home, create_database(server_url))
    return _clean_runs[server_url]


def clean_run(home: Path, database_url: str) -> dict[str, DocumentData]:
    """BOOKS ingested once, undisturbed: each book's data, by file name."""
    pipeline = LocalPipeline(home, database_url)
    result = pipeline.ingest(*BOOKS)
    assert result.returncode == 0, result.stderr[-3000:]
    engine = store.engine_for(database_url)
    try:
        data = {
            name: document_data(engine, outcome["document_id"])
            for name, outcome in result.outcomes.items()
        }
    finally:
        engine.dispose()
    assert all(d.chunks and d.vectors and d.connections for d in data.values()), data.keys()
    return data


def assert_completed_like_clean(
    retried: Ingested, engine: Engine, clean: dict[str, DocumentData]
) -> None:
    """The ingest after the outage ended well, with every book's data equal to a clean run."""
    assert retried.returncode == 0, retried.stderr[-3000:]
    for book in BOOKS:
        outcome = retried.outcomes[book.name]
        assert outcome["stage"] == "connected"
        assert document_data(engine, outcome["document_id"]) == clean[book.name]
