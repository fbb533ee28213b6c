"""`doc-pipeline backfill` over several partitions on a real instance (gemini provider against
the fake server): one run per document with the stage selected, and a backfill pays only for
the requests whose inputs changed."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter

from dagster import AssetKey, DagsterRun
from dagster._serdes import deserialize_value

from doc_pipeline_tests.conftest import CORPUS, create_database
from doc_pipeline_tests.fakes import FakeGemini
from doc_pipeline_tests.test_gemini_pipeline import GeminiPipeline

BOOKS = [
    CORPUS / "epub" / "se-abbott-flatland.epub3.epub",
    CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub",
]
# Smaller chunking windows: different requests.
SMALLER_WINDOWS = "resources:\n  provider:\n    config:\n      window_chars: 12000\n"


def _backfill(pipeline: GeminiPipeline, *args: str) -> list[dict]:
    result = subprocess.run(
        [sys.executable, "-m", "doc_pipeline", "backfill", *args, "--json"],
        env=pipeline.env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads(result.stdout)


def _chunking_bodies(fake: FakeGemini) -> Counter:
    return Counter(
        r["body_sha256"]
        for r in fake.requests
        if r.get("api_method") == "generateContent" and r.get("status") == 200
    )


def test_a_backfill_reruns_a_stage_per_document_and_pays_only_for_changes(
    postgres_server, tmp_path
):
    with FakeGemini() as fake:
        pipeline = GeminiPipeline(tmp_path / "home", create_database(postgres_server), fake)
        pipeline.ingest(*BOOKS)
        first = _chunking_bodies(fake)
        fake.clear_requests()

        # Nothing changed: every document's chunks again, every request from the ledger.
        outcomes = _backfill(pipeline, "chunks", "--all")
        assert len(outcomes) == 2 and all(o["ai_cost_usd"] == 0 for o in outcomes)
        assert pipeline.paid_requests() == {}
        runs = pipeline.dagster_query(
            "SELECT run_body FROM runs ORDER BY create_timestamp DESC LIMIT 2"
        )
        for (body,) in runs:
            run = deserialize_value(body, DagsterRun)
            assert run.asset_selection == {AssetKey("chunks")}

        # Smaller windows: new requests, each paid once, none of the earlier ones again.
        config = tmp_path / "windows.yaml"
        config.write_text(SMALLER_WINDOWS)
        args = ("chunks", "--all", "--downstream", "--config", str(config))
        outcomes = _backfill(pipeline, *args)
        assert {o["stage"] for o in outcomes} == {"connected"}
        changed = _chunking_bodies(fake)
        assert changed and not set(changed) & set(first)
        assert set(changed.values()) == {1}
        # The same backfill again: nothing changed since, nothing paid.
        fake.clear_requests()
        outcomes = _backfill(pipeline, *args)
        assert pipeline.paid_requests() == {} and all(o["ai_cost_usd"] == 0 for o in outcomes)
        pipeline.engine.dispose()
