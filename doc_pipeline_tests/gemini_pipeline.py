"""Driving the `gemini` provider end to end from tests: the CLI in a subprocess (as a user runs
it) against the fake Gemini server, with a home and database of the test's own."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import sqlalchemy as sa

from doc_pipeline.db import store
from doc_pipeline_tests.fakes import FakeGemini
from doc_pipeline_tests.processes import start_ingest, stop_process_group

API_KEY = "test-secret-key-4f9d2c"
PAID = ("generateContent", "batchEmbedContents")


class GeminiPipeline:
    def __init__(self, home: Path, database_url: str, fake: FakeGemini):
        self.home, self.database_url, self.fake = home, database_url, fake
        self.engine = store.engine_for(database_url)
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "GOOGLE_API_KEY")},
            "DOC_PIPELINE_HOME": str(home),
            "DATABASE_URL": database_url,
            "GEMINI_API_KEY": API_KEY,
            "GOOGLE_GEMINI_BASE_URL": fake.base_url,
        }
        self.outputs: list[str] = []

    def start_ingest(self, *books: Path) -> subprocess.Popen:
        return start_ingest(self.env, *books)

    def ingest(
        self,
        *books: Path,
        expect_exit: int = 0,
        fast_retries: bool = False,
        extra_args: tuple | list = (),
    ) -> dict:
        args = [*books, *extra_args]
        if fast_retries:
            args += ["--config", str(self.write_fast_retries())]
        process = self.start_ingest(*args)
        try:
            stdout, stderr = process.communicate(timeout=600)
        finally:
            stop_process_group(process)
        self.outputs += [stdout, stderr]
        assert process.returncode == expect_exit, stderr[-3000:]
        return {Path(o["source_file"]).name: o for o in json.loads(stdout)}

    def write_fast_retries(self) -> Path:
        """Run config with short back-off, so that outages are given up on in seconds."""
        path = self.home.parent / "fast-retries.yaml"
        path.write_text(
            "resources:\n  provider:\n    config:\n      max_attempts: 4\n"
            "      initial_backoff_seconds: 0.05\n      max_backoff_seconds: 0.2\n"
        )
        return path

    def markdown(self, document_id: str) -> str:
        path = self.home / "blobs/outputs/extracted_markdown" / f"{document_id}.json"
        return json.loads(path.read_text())["markdown"]

    def dagster_query(self, sql: str, **params) -> list:
        """Rows of a query on the Dagster instance's database (`<app database>_dagster`)."""
        url = sa.engine.make_url(self.database_url)
        engine = sa.create_engine(
            url.set(database=f"{url.database}_dagster"), poolclass=sa.NullPool
        )
        try:
            with engine.connect() as conn:
                return conn.execute(sa.text(sql), params).all()
        finally:
            engine.dispose()

    def materialization_metadata(self, asset: str) -> list[dict]:
        """The metadata of every materialization of the asset, from the Dagster event log,
        oldest first."""
        rows = self.dagster_query(
            "SELECT event FROM event_logs"
            " WHERE dagster_event_type = 'ASSET_MATERIALIZATION' AND asset_key = :key"
            " ORDER BY id",
            key=json.dumps([asset]),
        )
        records = [json.loads(row.event) for row in rows]
        found = []
        for record in records:
            materialization = record["dagster_event"]["event_specific_data"]["materialization"]
            found.append({entry["label"]: entry for entry in materialization["metadata_entries"]})
        return found

    def event_log_text(self) -> str:
        (row,) = self.dagster_query("SELECT string_agg(event, '') AS text FROM event_logs")
        return row.text or ""

    def paid_requests(self) -> Counter:
        return Counter(
            r["api_method"]
            for r in self.fake.requests
            if r.get("api_method") in PAID and r.get("status") == 200
        )

    def ledger(self) -> Counter:
        with self.engine.connect() as conn:
            return Counter(conn.execute(sa.text("SELECT outcome FROM ai_calls")).scalars())
