"""AI requests in flight concurrently inside a step (DESIGN rule 8), end to end through the CLI
against the fake Gemini server with a latency model: they overlap up to the limit, the data
equals a sequential run's whatever order the answers arrive in, and when one request fails for
good the others in flight are finished and kept."""

from __future__ import annotations

import json
import os
import random
import signal
import time

import pytest
import sqlalchemy as sa

from doc_pipeline.db import store
from doc_pipeline.db.ledger_store import Ledger, LedgerScope
from doc_pipeline.resources.gemini_provider import GeminiProvider
from doc_pipeline_tests.conftest import CORPUS, create_database
from doc_pipeline_tests.document_data import document_data
from doc_pipeline_tests.gemini_pipeline import API_KEY, GeminiPipeline
from doc_pipeline_tests.ledger_counts import ai_call_counts, keys_paid_twice
from doc_pipeline_tests.processes import stop_process_group

FLATLAND = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
PEPPER = CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub"
# Answers held 0.3 s plus their output at 4,000 tokens/s: answers of different lengths arrive
# in another order than they were asked in.
LATENCY = {"first_token_seconds": 0.3, "output_tokens_per_second": 4_000, "embedding_seconds": 0.3}
DATA = {
    "chunks": "SELECT id, chunk_index, content, metadata::text FROM chunks ORDER BY id",
    "embeddings": "SELECT chunk_id, model, embedding::text FROM embeddings ORDER BY chunk_id",
    "connections": (
        "SELECT source_chunk_id, target_chunk_id, connection_type, strength, metadata::text"
        " FROM connections ORDER BY 1, 2, 3"
    ),
}


@pytest.fixture
def slow_fake(fake):
    fake.clear_requests()
    fake.clear_faults()
    fake.set_latency(**LATENCY)
    try:
        yield fake
    finally:
        fake.set_latency()


def _config(pipeline: GeminiPipeline, name: str, **provider) -> str:
    path = pipeline.home.parent / f"{name}.yaml"
    resources = {"provider": {"config": provider}, "liveness": {"config": {}}}
    resources["liveness"]["config"]["heartbeat_interval_seconds"] = 0.2
    path.write_text(json.dumps({"resources": resources}))
    return str(path)


def _data(pipeline: GeminiPipeline) -> dict[str, list]:
    with pipeline.engine.connect() as conn:
        return {name: [tuple(row) for row in conn.execute(sa.text(q))] for name, q in DATA.items()}


def test_requests_overlap_up_to_the_limit_and_the_data_equals_a_sequential_run(
    postgres_server, tmp_path, slow_fake
):
    runs = {}
    for limit in (8, 1):
        pipeline = GeminiPipeline(
            tmp_path / f"home-{limit}", create_database(postgres_server), slow_fake
        )
        slow_fake.clear_requests()
        config = _config(pipeline, f"limit-{limit}", max_concurrent_requests=limit)
        # One document at a time: the limit is per step (two runs' steps add up).
        outcomes = pipeline.ingest(PEPPER, FLATLAND, "--config", config, "--jobs", "1")
        assert {o["stage"] for o in outcomes.values()} == {"connected"}
        generate = [r for r in slow_fake.requests if r.get("api_method") == "generateContent"]
        runs[limit] = {
            "data": _data(pipeline),
            "peak": slow_fake.peak_in_flight("generateContent"),
            "order": [r["body_sha256"] for r in generate],
            "keys": sorted(r["body_sha256"] for r in generate),
        }
        with pipeline.engine.connect() as conn:
            # The chunking steps kept beating while their requests were in flight.
            beats = conn.execute(
                sa.text(
                    "SELECT extract(epoch FROM beat_at - started_at) FROM heartbeats"
                    " WHERE step_key = 'chunks'"
                )
            ).scalars()
            assert max(beats) > 0.2
        pipeline.engine.dispose()
    assert runs[8]["peak"] == 8 and runs[1]["peak"] == 1
    # The same requests were paid, answered in another order, and gave the same rows.
    assert runs[8]["keys"] == runs[1]["keys"]
    assert runs[8]["data"] == runs[1]["data"]
    assert runs[8]["data"]["chunks"] and runs[8]["data"]["embeddings"]


def test_when_one_request_fails_for_good_the_others_in_flight_are_kept(pipeline, slow_fake):
    # The 4th chunking request is refused (a 400 is not retried); 7 others are in flight.
    slow_fake.add_fault("generateContent", status=400, after=3, times=1)
    failed = pipeline.ingest(FLATLAND, expect_exit=1)[FLATLAND.name]
    assert failed["stage"] == "failed" and failed["error_class"] == "permanent"
    assert "the Gemini API refused it: 400" in failed["error_message"]
    answered = {
        r["body_sha256"]
        for r in slow_fake.requests
        if r.get("api_method") == "generateContent" and r["status"] == 200
    }
    # The refusal came at once; the 7 requests in flight with it were answered all the same.
    assert len(answered) >= 7
    # Every answer that arrived was committed to the ledger, also those after the failure.
    paid = ai_call_counts(pipeline.engine, "stage", outcome="paid", stage="chunks")
    assert paid["chunks"] == len(answered)

    slow_fake.clear_faults()
    slow_fake.clear_requests()
    resumed = pipeline.ingest(FLATLAND)[FLATLAND.name]
    assert resumed["stage"] == "connected"
    again = [
        r["body_sha256"]
        for r in slow_fake.requests
        if r.get("api_method") == "generateContent" and r["status"] == 200
    ]
    assert not answered & set(again)  # nothing answered before was paid again


def test_a_429_holds_every_request_of_the_model_for_the_server_s_delay(
    fake, app_database_url, monkeypatch
):
    """Concurrent requests meet a 429: none of the model's requests starts again before the
    delay the server asked for, and the request is then answered (not given up)."""
    fake.clear_requests()
    fake.clear_faults()
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
    # Limits of their own: a limiter of its own, untouched by other tests in this process.
    provider = GeminiProvider(
        max_concurrent_requests=4, requests_per_minute=6_001, initial_backoff_seconds=0.01
    )
    provider.setup_for_execution(None)  # type: ignore[arg-type]  # the context is unused
    engine = store.engine_for(app_database_url)
    scope = LedgerScope(Ledger(engine), document_id=None, stage="chunks")
    markdown = "\n\n".join(
        f"## Chapter {n}\n\n" + " ".join(["A sentence of this chapter."] * 400) for n in range(8)
    )
    fake.set_latency(first_token_seconds=0.2)
    fake.add_fault("generateContent", status=429, after=2, times=1, retry_delay_seconds=0.8)
    try:
        chunks = provider.chunk(markdown, scope)
    finally:
        fake.set_latency()
        engine.dispose()
    assert chunks
    log = [r for r in fake.requests if r.get("api_method") == "generateContent"]
    (refused,) = [r for r in log if r["status"] == 429]
    # Requests already on their way when the 429 came back may arrive just after it; after
    # that, none starts within the delay, and the later ones are all answered.
    on_their_way = refused["finished"] + 0.1
    held = [r for r in log if on_their_way < r["started"] < refused["finished"] + 0.79]
    later = [r for r in log if r["started"] >= refused["finished"] + 0.79]
    assert held == [] and later and all(r["status"] == 200 for r in later)


def test_random_kills_of_a_concurrent_ingest_end_like_a_clean_run(
    postgres_server, tmp_path, slow_fake
):
    """The ingest's whole process group is SIGKILLed at random moments (a fixed seed) while
    requests are in flight, then run to the end: the same data as a clean run, no key paid
    twice in the ledger, and no more answers paid twice than requests were in flight."""
    clean = GeminiPipeline(tmp_path / "clean", create_database(postgres_server), slow_fake)
    clean_id = clean.ingest(FLATLAND)[FLATLAND.name]["document_id"]
    expected = document_data(clean.engine, clean_id)
    clean.engine.dispose()

    pipeline = GeminiPipeline(tmp_path / "killed", create_database(postgres_server), slow_fake)
    slow_fake.clear_requests()
    rng = random.Random(20261202)
    lost = 0  # requests in flight at the kills: what may be paid twice
    for _ in range(4):
        process = pipeline.start_ingest(FLATLAND)
        try:
            time.sleep(rng.uniform(2.0, 9.0))  # dagster's start, then somewhere in the stages
            lost += slow_fake.in_flight("*")  # their clients die: never answered, or paid again
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(30)
        finally:
            stop_process_group(process)
    # Answers that arrived but were not committed before a kill: paid again later.
    answered = sum(1 for r in slow_fake.requests if r.get("status") == 200)
    lost += answered - _paid(pipeline)
    outcome = pipeline.ingest(FLATLAND)[FLATLAND.name]
    assert outcome["stage"] == "connected"
    assert document_data(pipeline.engine, outcome["document_id"]) == expected
    assert keys_paid_twice(pipeline.engine) == []
    bodies = [r["body_sha256"] for r in slow_fake.requests if r.get("status") == 200]
    assert len(bodies) - len(set(bodies)) <= lost
    pipeline.engine.dispose()


def _paid(pipeline: GeminiPipeline) -> int:
    return ai_call_counts(pipeline.engine, "outcome", outcome="paid").get("paid", 0)
