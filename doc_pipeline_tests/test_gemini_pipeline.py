"""The `gemini` provider end to end: the real google-genai SDK against the fake Gemini server,
the CLI in a subprocess (as a user runs it), a real Dagster instance and Postgres."""

from __future__ import annotations

import json
import os
import signal
import time
from collections import Counter

import sqlalchemy as sa

from doc_pipeline.db import store
from doc_pipeline.resources.gemini_provider import GeminiProvider
from doc_pipeline_tests.conftest import CORPUS, create_database
from doc_pipeline_tests.gemini_pipeline import API_KEY, PAID, GeminiPipeline
from doc_pipeline_tests.processes import stop_process_group
from doc_pipeline_tests.wordcount import words

FLATLAND = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
PETER_RABBIT = CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub"


def test_ingest_pays_each_request_once_and_a_second_ingest_pays_nothing(pipeline):
    first = pipeline.ingest(FLATLAND)[FLATLAND.name]
    assert first["stage"] == "embedded" or first["stage"] == "connected"
    paid = pipeline.paid_requests()
    assert paid["generateContent"] > 3 and paid["batchEmbedContents"] >= 1
    assert pipeline.ledger()["paid"] == sum(paid.values())

    chunks = store.load_chunks(pipeline.engine, first["document_id"])
    markdown = json.loads(
        (
            pipeline.home / "blobs/outputs/extracted_markdown" / f"{first['document_id']}.json"
        ).read_text()
    )["markdown"]
    assert Counter(w for c in chunks for w in words(c["content"])) == Counter(words(markdown))
    assert all(markdown[c["start_offset"] : c["end_offset"]] == c["content"] for c in chunks)
    assert all(2 <= len(c["metadata"]["themes"]) <= 5 for c in chunks)
    assert all(-1 <= c["metadata"]["emotional_polarity"] <= 1 for c in chunks)

    second = pipeline.ingest(FLATLAND)[FLATLAND.name]
    assert pipeline.paid_requests() == paid, "a second ingest made new AI requests"
    assert first["ai_cost_usd"] > 0 and first["ai_saved_usd"] == 0
    # Chunking is answered from the ledger; embeddings are not asked for at all (all stored).
    assert second["ai_cost_usd"] == 0 and 0 < second["ai_saved_usd"] < first["ai_cost_usd"]

    # Each materialization tells what it paid and what the ledger saved.
    first_chunks, second_chunks = pipeline.materialization_metadata("chunks")
    labels = {
        "ai_requests",
        "ai_ledger_hits",
        "ai_prompt_tokens",
        "ai_output_tokens",
        "ai_cost_usd",
        "ai_cost_saved_usd",
    }
    assert labels <= set(first_chunks) and labels <= set(second_chunks)
    assert "ai_requests" in pipeline.materialization_metadata("embeddings")[0]
    assert second["chunks"] == first["chunks"]
    assert pipeline.ledger()["paid"] == sum(paid.values())


def test_killed_run_resumes_paying_only_for_what_was_never_answered(
    pipeline, postgres_server, tmp_path
):
    # N, the requests of a clean run, from the same book in another database.
    clean = GeminiPipeline(tmp_path / "clean", create_database(postgres_server), pipeline.fake)
    clean.ingest(FLATLAND)
    total = sum(clean.paid_requests().values())
    pipeline.fake.clear_requests()

    pipeline.fake.add_fault("generateContent", delay_seconds=0.4)
    process = pipeline.start_ingest(FLATLAND)
    try:
        deadline = time.monotonic() + 300
        while _committed(pipeline) < 4:  # some answers committed, others in flight
            assert process.poll() is None and time.monotonic() < deadline, "run ended too soon"
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
    finally:
        stop_process_group(process)
    committed = pipeline.ledger()["paid"]
    answered_before_kill = sum(pipeline.paid_requests().values())
    pipeline.fake.clear_faults()
    pipeline.fake.clear_requests()

    pipeline.ingest(FLATLAND)
    resumed = sum(pipeline.paid_requests().values())
    # Every answer committed before the kill is a ledger hit; the requests in flight at the
    # kill (answered or not) are paid again: at most `max_concurrent_requests` of them.
    assert resumed == total - committed
    assert committed <= answered_before_kill <= committed + GeminiProvider().max_concurrent_requests
    assert pipeline.ledger()["hit"] >= committed


def _committed(pipeline: GeminiPipeline) -> int:
    """Answers paid and committed to the ledger (0 before the ingest has made its tables)."""
    try:
        return pipeline.ledger()["paid"]
    except sa.exc.ProgrammingError:
        return 0


def test_two_concurrent_runs_of_a_document_pay_each_request_once(pipeline):
    pipeline.fake.add_fault("generateContent", delay_seconds=0.1)  # keep the runs overlapping
    processes = [pipeline.start_ingest(FLATLAND) for _ in range(2)]
    try:
        results = [process.communicate(timeout=600) for process in processes]
    finally:
        for process in processes:
            stop_process_group(process)
    for process, (_, stderr) in zip(processes, results, strict=True):
        assert process.returncode == 0, stderr[-3000:]
    paid = [
        r["body_sha256"]
        for r in pipeline.fake.requests
        if r.get("api_method") in PAID and r.get("status") == 200
    ]
    assert paid and len(paid) == len(set(paid)), "a request was paid twice"
    outcomes = [json.loads(stdout)[0] for stdout, _ in results]
    # Each ingest reports the stage when it ended, which the other may still be changing
    # (`connecting`); when both have ended the document is connected.
    (document_id,) = {o["document_id"] for o in outcomes}
    assert store.get_document(pipeline.engine, document_id)["stage"] == "connected"
    assert len({o["chunks"] for o in outcomes}) == 1
    assert pipeline.ledger()["hit"] >= len(paid) - 2  # the loser waited for each answer


def test_rate_limits_outages_drops_and_truncated_answers_are_survived(pipeline):
    pipeline.fake.add_fault("generateContent", times=2, status=429)
    pipeline.fake.add_fault("batchEmbedContents", times=2, status=503)
    pipeline.fake.add_fault("batchEmbedContents", times=1, drop_connection=True)
    pipeline.fake.add_fault("generateContent", times=1, truncate_json=True)
    outcome = pipeline.ingest(PETER_RABBIT, fast_retries=True)[PETER_RABBIT.name]
    assert outcome["stage"] in ("embedded", "connected")
    statuses = Counter(r["status"] for r in pipeline.fake.requests)
    assert statuses[429] == 2 and statuses[503] == 2 and statuses[None] == 1  # None: dropped
    truncated = [r for r in pipeline.fake.requests if (r.get("fault") or {}).get("truncate_json")]
    assert len(truncated) == 1
    # The retries are visible beside the step in the UI (the event log), with their reason.
    assert "429" in pipeline.event_log_text() and "Retrying" in pipeline.event_log_text()
    chunks = store.load_chunks(pipeline.engine, outcome["document_id"])
    assert chunks and all(c["metadata"].get("themes") for c in chunks)
    markdown = pipeline.markdown(outcome["document_id"])
    assert Counter(w for c in chunks for w in words(c["content"])) == Counter(words(markdown))


def test_a_safety_block_fails_the_document_naming_the_chapter(pipeline):
    pipeline.fake.add_fault("generateContent", safety_block=True)
    outcome = pipeline.ingest(PETER_RABBIT, expect_exit=1)[PETER_RABBIT.name]
    assert outcome["stage"] == "failed" and outcome["error_class"] == "permanent"
    assert "refused to chunk" in outcome["error_message"]
    assert "Peter Rabbit" in outcome["error_message"] or "offset" in outcome["error_message"]


def test_the_api_key_appears_nowhere(pipeline):
    pipeline.fake.add_fault("generateContent", times=1, status=500)
    pipeline.ingest(PETER_RABBIT)
    assert all(API_KEY not in output for output in pipeline.outputs)
    with pipeline.engine.connect() as conn:
        dumped = (
            conn.execute(
                sa.text(
                    "SELECT string_agg(t::text, '') FROM (SELECT * FROM ai_calls) t"
                    " UNION ALL SELECT string_agg(t::text, '') FROM (SELECT * FROM documents) t"
                    " UNION ALL SELECT string_agg(t::text, '') FROM (SELECT * FROM chunks) t"
                )
            )
            .scalars()
            .all()
        )
    assert all(API_KEY not in (text or "") for text in dumped)
    events = pipeline.event_log_text()
    ((runs,),) = pipeline.dagster_query("SELECT string_agg(run_body, '') FROM runs")
    assert events and API_KEY not in events and API_KEY not in (runs or "")
    assert API_KEY not in json.dumps(pipeline.fake.requests)
    for path in pipeline.home.rglob("*"):  # compute logs, outputs, instance config
        if path.is_file() and "pgdata" not in path.parts:
            assert API_KEY.encode() not in path.read_bytes(), path
