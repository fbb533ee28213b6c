"""A run Dagster cannot retry (started by `doc-pipeline ingest`, so without a code location
origin) that failed transiently is resumed by the reaper once `doc-pipeline ui` runs: from the
failed step, with the failed run's config, paying only for the requests never answered."""

from __future__ import annotations

import os
import subprocess
import sys

import yaml
from dagster import AssetKey

from doc_pipeline.db import store
from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.instance import open_instance
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home
from doc_pipeline_tests.dagster_ui import document_settled
from doc_pipeline_tests.fakes import FakeGemini
from doc_pipeline_tests.processes import free_port, start_ui, stop_process_group, wait_until

BOOK = CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub"
# Give up on the API quickly in the CLI run: two attempts, a tenth of a second apart.
RUN_CONFIG = {
    "resources": {"provider": {"config": {"max_attempts": 2, "initial_backoff_seconds": 0.1}}}
}


def _count(fake: FakeGemini, method: str) -> int:
    return sum(1 for r in fake.requests if r.get("api_method") == method and r["status"] == 200)


def test_a_cli_run_that_failed_transiently_is_resumed_by_the_reaper(
    postgres_server, tmp_path, monkeypatch
):
    use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
    config = tmp_path / "run_config.yaml"
    config.write_text(yaml.safe_dump(RUN_CONFIG))
    with FakeGemini() as fake:
        monkeypatch.setenv("GEMINI_API_KEY", "test-key")
        monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
        monkeypatch.setenv("DOC_PIPELINE_REAPER_INTERVAL_SECONDS", "3")
        monkeypatch.setenv("DOC_PIPELINE_RETRY_BACKOFF_SECONDS", "1")
        fake.add_fault("batchEmbedContents", status=503)  # the embedding API is down
        ingest = subprocess.run(
            [sys.executable, "-m", "doc_pipeline", "ingest", "--json", "--config", config, BOOK],
            env=dict(os.environ),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert ingest.returncode == 1, ingest.stderr[-3000:]
        settings = Settings.from_env()
        engine = prepare_app_database(settings)
        (document,) = store.document_summaries(engine)
        assert document["stage"] == "failed" and document["error_class"] == "transient"
        chunking_requests = _count(fake, "generateContent")
        assert chunking_requests > 0 and _count(fake, "batchEmbedContents") == 0

        fake.clear_faults()  # the API is back
        port = free_port()
        ui = start_ui(port, tmp_path / "ui.log")
        try:
            embedded = document_settled(engine, document["id"], "embedded")
            wait_until(embedded, 300, "the reaper to resume the document", interval=1)
        finally:
            stop_process_group(ui)

        with open_instance(settings) as instance:
            failed, resumed = sorted(
                instance.get_runs(), key=lambda run: run.tags.get("doc_pipeline/attempt", "1")
            )
        assert failed.status.value == "FAILURE" and failed.remote_job_origin is None
        assert resumed.status.value == "SUCCESS"
        assert resumed.tags["doc_pipeline/resume_of"] == failed.run_id
        assert resumed.tags["doc_pipeline/attempt"] == "2"
        assert resumed.tags["dagster/partition"] == document["id"]
        # From the failed step: extraction and chunking are not run again, nor paid again.
        assert resumed.asset_selection == {AssetKey("embeddings")}
        assert resumed.run_config["resources"] == RUN_CONFIG["resources"]
        assert _count(fake, "generateContent") == chunking_requests
        assert _count(fake, "batchEmbedContents") == 1
        assert (
            store.count_embeddings(engine, document["id"], "gemini-embedding-001")
            == (store.document_summaries(engine)[0]["chunks"])
        )
        engine.dispose()
