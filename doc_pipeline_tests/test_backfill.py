"""`doc-pipeline backfill` over several partitions on a real instance (gemini provider against
the fake server): one run per document with the stage selected, and a backfill pays only for
the requests whose inputs changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

from dagster import AssetKey, DagsterRun, RunsFilter
from dagster._serdes import deserialize_value

from doc_pipeline.instance import open_instance
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home
from doc_pipeline_tests.fakes import FakeGemini
from doc_pipeline_tests.gemini_pipeline import GeminiPipeline
from doc_pipeline_tests.processes import (
    free_port,
    graphql,
    start_ui,
    stop_process_group,
    wait_for_graphql,
    wait_until,
)

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


LAUNCH_BACKFILL = """
mutation Backfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}
"""
UI_CONTENTS = (
    "{ assetNodes { assetKey { path } } runsOrError { ... on Runs { results { runId } } } }"
)
BACKFILL_STATUS = """
query Status($id: String!) {
  partitionBackfillOrError(backfillId: $id) { ... on PartitionBackfill { status } }
}
"""


def test_the_ui_serves_the_cli_runs_and_a_backfill_from_it_runs_the_stage_for_each_partition(
    postgres_server, tmp_path, monkeypatch
):
    use_home(monkeypatch, tmp_path / "home", create_database(postgres_server))
    monkeypatch.setenv("DOC_PIPELINE_PROVIDER", "local")
    ingest = subprocess.run(
        [sys.executable, "-m", "doc_pipeline", "ingest", "--json", *map(str, BOOKS)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert ingest.returncode == 0, ingest.stderr[-3000:]
    outcomes = json.loads(ingest.stdout)
    documents = sorted(o["document_id"] for o in outcomes)

    port = free_port()
    ui = start_ui(port, tmp_path / "ui.log")
    try:
        # `doc-pipeline ui` is dagster dev on the same instance: it serves the five assets and
        # lists the runs the CLI made.
        data = wait_for_graphql(port, UI_CONTENTS, ui, timeout=300)
        assets = {"/".join(node["assetKey"]["path"]) for node in data["assetNodes"]}
        assert assets == {
            "source_document",
            "extracted_markdown",
            "chunks",
            "embeddings",
            "connections",
        }
        listed = {run["runId"] for run in data["runsOrError"]["results"]}
        assert {run_id for o in outcomes for run_id in o["run_ids"]} <= listed
        params = {"partitionNames": documents, "assetSelection": [{"path": ["chunks"]}]}
        launched = graphql(port, LAUNCH_BACKFILL, {"params": params})["launchPartitionBackfill"]
        assert launched["__typename"] == "LaunchBackfillSuccess", launched
        backfill_id = launched["backfillId"]

        # Its runs ending is what counts: the backfill daemon marks the backfill completed at
        # its next tick, up to 30 s later (Dagster's fixed interval).
        def runs_finished():
            with open_instance(Settings.from_env()) as instance:
                runs = instance.get_runs(RunsFilter(tags={"dagster/backfill": backfill_id}))
            finished = len(runs) == len(documents) and all(r.is_finished for r in runs)
            return runs if finished else None

        runs = wait_until(runs_finished, 300, "the backfill's runs to finish", interval=2)
        status = graphql(port, BACKFILL_STATUS, {"id": backfill_id})
        assert status["partitionBackfillOrError"]["status"] in (
            "REQUESTED",
            "COMPLETED",
            "COMPLETED_SUCCESS",
        ), status
    finally:
        stop_process_group(ui)

    assert sorted(r.tags["dagster/partition"] for r in runs) == documents
    assert all(r.status.value == "SUCCESS" for r in runs)
    assert all(r.asset_selection == {AssetKey("chunks")} for r in runs)
