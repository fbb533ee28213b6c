"""`doc-pipeline costs`: the AI ledger's spend and savings per document and stage, from the CLI
in a subprocess against the fake Gemini server, a real Dagster instance and Postgres."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import defaultdict
from decimal import Decimal

import pytest
import sqlalchemy as sa

from doc_pipeline_tests.conftest import CORPUS
from doc_pipeline_tests.gemini_pipeline import GeminiPipeline

PETER_RABBIT = CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub"


SUMS = (
    "paid_requests",
    "ledger_hits",
    "failed_calls",
    "prompt_tokens",
    "output_tokens",
    "thinking_tokens",
    "cost_usd",
    "saved_usd",
)


def run_costs(pipeline: GeminiPipeline, *args: str, expect_exit: int = 0):
    """`doc-pipeline costs ARGS` as a user runs it, on a wide terminal (no wrapped cells)."""
    result = subprocess.run(
        [sys.executable, "-m", "doc_pipeline", "costs", *args],
        env={**pipeline.env, "COLUMNS": "220"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == expect_exit, result.stderr[-3000:]
    return result


def costs_json(pipeline: GeminiPipeline, *args: str) -> dict:
    stdout = run_costs(pipeline, "--json", *args).stdout
    return json.loads(stdout, parse_float=Decimal)  # exact, to compare sums


def by_stage(report: dict, document_id: str) -> dict[str, dict]:
    return {row["stage"]: row for row in report["rows"] if row["document_id"] == document_id}


def test_costs_per_stage_show_what_was_paid_once_and_what_the_ledger_saved(pipeline):
    outcome = pipeline.ingest(PETER_RABBIT)[PETER_RABBIT.name]
    document_id, title = outcome["document_id"], outcome["title"]
    assert title and "Peter Rabbit" in title
    answered = pipeline.paid_requests()
    first = costs_json(pipeline)

    stages = by_stage(first, document_id)
    assert [row["stage"] for row in first["rows"]] == ["chunks", "embeddings", "connections"]
    assert all(row["title"] == title for row in first["rows"])
    # Each request the fake server answered was paid once, by the stage that asked for it.
    assert stages["chunks"]["paid_requests"] == answered["generateContent"] > 0
    assert stages["embeddings"]["paid_requests"] == answered["batchEmbedContents"] > 0
    assert stages["connections"]["paid_requests"] == 0  # one book: nothing to bridge to
    for stage in ("chunks", "embeddings"):
        row = stages[stage]
        assert row["cost_usd"] > 0 and row["prompt_tokens"] > 0 and row["models"]
        assert row["ledger_hits"] == row["failed_calls"] == 0 and row["saved_usd"] == 0
    assert stages["chunks"]["output_tokens"] > 0
    assert float(first["total"]["cost_usd"]) == pytest.approx(outcome["ai_cost_usd"])

    pipeline.ingest(PETER_RABBIT)
    assert pipeline.paid_requests() == answered, "the second ingest paid for a request"
    second = costs_json(pipeline)
    again = by_stage(second, document_id)
    hits = {stage: row["ledger_hits"] for stage, row in again.items() if row["ledger_hits"]}
    assert hits.get("chunks") == stages["chunks"]["paid_requests"], hits
    for stage, row in again.items():
        before = stages[stage]
        # Hits add no payments and no tokens; they save what the first ingest paid for them.
        assert row["paid_requests"] == before["paid_requests"]
        assert row["cost_usd"] == before["cost_usd"]
        assert [row[t] for t in SUMS[3:6]] == [before[t] for t in SUMS[3:6]]
        if stage in hits:
            assert hits[stage] == before["paid_requests"]
            assert row["saved_usd"] == before["cost_usd"]
        else:
            assert row["saved_usd"] == 0

    # The total row adds up, and agrees with the ledger itself.
    for report in (first, second):
        for name in SUMS:
            assert report["total"][name] == sum(row[name] for row in report["rows"]), name
    ledger = pipeline.ledger()
    assert second["total"]["paid_requests"] == ledger["paid"] == sum(answered.values())
    assert second["total"]["ledger_hits"] == ledger["hit"] > 0
    assert second["total"]["failed_calls"] == ledger["failed"] == 0
    with pipeline.engine.connect() as conn:
        paid, saved = conn.execute(
            sa.text("SELECT sum(cost_usd), sum(saved_usd) FROM ai_calls")
        ).one()
    assert (second["total"]["cost_usd"], second["total"]["saved_usd"]) == (paid, saved)

    # A prefix of the id selects the document; --by run splits the same sums by run.
    assert costs_json(pipeline, document_id[:6])["rows"] == second["rows"]
    runs = costs_json(pipeline, "--by", "run")
    assert runs["by"] == "run" and runs["total"] == second["total"]
    per_stage: dict[str, dict[str, Decimal]] = defaultdict(lambda: defaultdict(Decimal))
    for row in runs["rows"]:
        assert row["run_id"] and row["title"] == title
        for name in SUMS:
            per_stage[row["stage"]][name] += row[name]
    for stage, sums in per_stage.items():
        assert sums == {name: again[stage][name] for name in SUMS}, stage
    paying_runs = {row["run_id"] for row in runs["rows"] if row["paid_requests"]}
    hit_runs = {row["run_id"] for row in runs["rows"] if row["ledger_hits"]}
    assert paying_runs and hit_runs and not paying_runs & hit_runs

    table = run_costs(pipeline).stdout
    assert document_id in table and title in table
    (total_line,) = [line for line in table.splitlines() if "total" in line]
    assert f"{second['total']['cost_usd']:.6f}" in total_line
    assert f"{second['total']['saved_usd']:.6f}" in total_line
    by_run = run_costs(pipeline, "--by", "run").stdout
    assert all(run[:8] in by_run for run in paying_runs | hit_runs) and title in by_run

    unknown = run_costs(pipeline, "zz", expect_exit=2)
    assert "no document with an id starting with 'zz'" in unknown.stderr


def test_costs_without_documents_says_so(pipeline):
    result = run_costs(pipeline)
    assert "No documents yet" in result.stdout
    empty = costs_json(pipeline)
    assert empty["rows"] == [] and all(empty["total"][name] == 0 for name in SUMS)
