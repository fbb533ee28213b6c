"""A Gemini API outage (5xx, or no answer at all) lasting longer than the provider's retries:
the provider backs off with bounded, increasing waits, cuts off requests that get no answer
with its client-side timeout, fails the stage as transient with a clear message, and a later
ingest of the same file pays only for the requests that were never answered.

"Several minutes" of outage are simulated in seconds: the retry and timeout settings are the
provider's run config, given small values here (`--config`). Real `doc-pipeline ingest` in a
subprocess, the real google-genai SDK against the fake Gemini server, a real Dagster instance
and Postgres.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import time
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa

from doc_pipeline.db import store
from doc_pipeline.db.ledger_store import Ledger, LedgerScope
from doc_pipeline.resources.gemini_provider import GeminiProvider
from doc_pipeline.resources.gemini_retries import AIUnavailable, BoundedBackoff
from doc_pipeline_tests.conftest import CORPUS
from doc_pipeline_tests.gemini_pipeline import API_KEY, PAID, GeminiPipeline
from doc_pipeline_tests.processes import wait_until

FLATLAND = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
ANSWERED_BEFORE = 4  # requests of the failing kind answered before the outage starts
ATTEMPTS = 4
INITIAL, CAP = 0.25, 1.0  # back-off seconds: 0.25, 0.5, 1.0 (the cap), 1.0, ...
TIMEOUT = 0.5  # seconds the client waits for an answer
SLACK = 1.0  # seconds a loaded machine may add to an attempt (process, SDK, HTTP)
RETRY_LOG = re.compile(r"\(attempt (\d+) of (\d+)\)\. Retrying in ([\d.]+) s\.")
OUTAGES = {
    "503": {"status": 503},
    "no answer": {"hang": True},  # the server never answers: only the timeout ends a request
}


def outage_config(tmp: Path, **extra) -> Path:
    """Run config with short back-off and timeouts (YAML is a superset of JSON), one request
    at a time: the back-off of a single request is what is measured here (concurrent requests
    in an outage: test_concurrent_requests.py)."""
    config = {
        "max_concurrent_requests": 1,
        "max_attempts": ATTEMPTS,
        "initial_backoff_seconds": INITIAL,
        "max_backoff_seconds": CAP,
        "request_timeout_seconds": TIMEOUT,
        "embed_timeout_seconds": TIMEOUT,
        **extra,
    }
    path = tmp / "outage.yaml"
    path.write_text(json.dumps({"resources": {"provider": {"config": config}}}))
    return path


def planned_waits(pipeline: GeminiPipeline) -> list[float]:
    """The waits the provider announced in the run's log (`Retrying in X s`), in order."""
    rows = pipeline.dagster_query("SELECT event FROM event_logs ORDER BY id")
    waits = []
    for (event,) in rows:
        if match := RETRY_LOG.search(event):
            assert int(match[2]) == ATTEMPTS
            waits.append(float(match[3]))
    return waits


def arrival(entry: dict) -> float:
    return dt.datetime.fromisoformat(entry["time"]).timestamp()


def paid_per_key(pipeline: GeminiPipeline) -> Counter:
    with pipeline.engine.connect() as conn:
        keys = conn.execute(sa.text("SELECT key FROM ai_calls WHERE outcome = 'paid'")).scalars()
        return Counter(keys)


def answered_per_request(pipeline: GeminiPipeline) -> Counter:
    """How often the fake answered each distinct paid request (body hash)."""
    return Counter(
        r["body_sha256"]
        for r in pipeline.fake.requests
        if r.get("api_method") in PAID and r.get("status") == 200
    )


# Each kind of outage in one stage and the other (both kinds in both stages add only time: the
# retry policy and the timeouts are the same code for every request; the unit tests below
# cut each kind of request off by its own timeout).
@pytest.mark.parametrize(
    ("method", "outage"),
    [("generateContent", "503"), ("batchEmbedContents", "no answer")],
)
def test_an_outage_fails_transiently_and_a_later_ingest_pays_only_the_unanswered(
    pipeline, tmp_path, method, outage
):
    fake = pipeline.fake
    # Embeddings in batches of 10, so that some batches are answered before the outage.
    config = outage_config(tmp_path, embedding_batch_size=10)
    fake.add_fault(method, after=ANSWERED_BEFORE, **OUTAGES[outage])

    failed = pipeline.ingest(FLATLAND, "--config", config, expect_exit=1)[FLATLAND.name]

    # Failed cleanly, as transient, with a clear message and no key.
    stage = "chunks" if method == "generateContent" else "embeddings"
    assert failed["stage"] == "failed" and failed["error_class"] == "transient"
    reason = "503 UNAVAILABLE" if outage == "503" else f"no answer within {TIMEOUT:g} s"
    message = failed["error_message"]
    assert re.search(
        rf"AIUnavailable: .*Gemini API unavailable after {ATTEMPTS} attempts "
        rf"over [\d.]+ s: {re.escape(reason)}",
        message,
    ), message
    assert API_KEY not in message and all(API_KEY not in out for out in pipeline.outputs)

    # The request of the outage was tried ATTEMPTS times and never answered.
    tried = [r for r in fake.requests if r.get("api_method") == method and r.get("fault")]
    assert len({r["body_sha256"] for r in tried}) == 1 and len(tried) == ATTEMPTS
    if outage == "503":
        assert all(r["status"] == 503 for r in tried)
    else:
        assert all(r["status"] is None and r.get("client_gone") for r in tried)

    # The back-off: announced waits increase up to the cap and never pass it ...
    waits = planned_waits(pipeline)
    assert len(waits) == ATTEMPTS - 1
    for attempt, wait in enumerate(waits, start=1):
        base = min(CAP, INITIAL * 2 ** (attempt - 1))
        assert 0.75 * base - 0.01 <= wait <= base + 0.01
    assert all(a < b for a, b in zip(waits, waits[1:], strict=False) if a < 0.75 * CAP)
    # ... and were really waited: the next attempt came after the wait (and the timeout).
    answer_time = TIMEOUT if outage == "no answer" else 0.0
    gaps = [arrival(b) - arrival(a) for a, b in zip(tried, tried[1:], strict=False)]
    for gap, wait in zip(gaps, waits, strict=True):
        assert wait + answer_time - 0.05 <= gap <= wait + answer_time + SLACK, (gaps, waits)

    # Every answer paid before the outage is in the ledger; the failed request is recorded.
    before = paid_per_key(pipeline)
    assert sum(before.values()) == len(answered_per_request(pipeline))
    with pipeline.engine.connect() as conn:
        failures = conn.execute(
            sa.text("SELECT stage, error FROM ai_calls WHERE outcome = 'failed'")
        ).all()
    assert [(row.stage, "AIUnavailable" in row.error) for row in failures] == [(stage, True)]

    # The API is back: the same file again resumes; nothing answered before is paid again.
    fake.clear_faults()
    resumed = pipeline.ingest(FLATLAND, "--config", config)[FLATLAND.name]
    assert resumed["stage"] == "connected"
    after = paid_per_key(pipeline)
    assert set(after) >= set(before) and max(after.values()) == 1, "a request was paid twice"
    assert max(answered_per_request(pipeline).values()) == 1, "a request was answered twice"
    with pipeline.engine.connect() as conn:
        hits = set(
            conn.execute(sa.text("SELECT key FROM ai_calls WHERE outcome = 'hit'")).scalars()
        )
    # Chunking answers are ledger hits; embedded batches are not even asked for again.
    reused = {key for key in before if key in hits}
    if method == "generateContent":
        assert len(reused) == ANSWERED_BEFORE
    else:
        assert len(reused) == sum(before.values()) - ANSWERED_BEFORE
    chunks = store.load_chunks(pipeline.engine, resumed["document_id"])
    with pipeline.engine.connect() as conn:
        vectors = conn.execute(
            sa.text("SELECT count(*) FROM embeddings WHERE document_id = :d"),
            {"d": resumed["document_id"]},
        ).scalar_one()
    assert chunks and vectors == len(chunks)


def test_backoff_is_bounded_and_increasing_with_the_default_settings():
    provider = GeminiProvider()
    for share in (0.0, 0.5, 0.999):  # the jitter's random draw, from none to the most
        wait = BoundedBackoff(
            provider.initial_backoff_seconds,
            provider.max_backoff_seconds,
            uniform=lambda share=share: share,
        )
        delays = [wait.delay(attempt) for attempt in range(1, 40)]
        assert max(delays) <= provider.max_backoff_seconds
        rising = [d for d in delays if d < 0.75 * provider.max_backoff_seconds]
        assert rising == sorted(set(rising)) and len(rising) >= 5  # 1, 2, 4, 8, 16, (32) s
        assert delays[-1] >= 0.75 * provider.max_backoff_seconds
    with pytest.raises(ValueError):
        BoundedBackoff(2.0, 1.0)


@pytest.fixture
def provider_and_scope(fake, app_database_url, monkeypatch):
    """The provider in this process against the fake, with a ledger scope of its own."""
    fake.clear_requests()
    fake.clear_faults()
    monkeypatch.setenv("GEMINI_API_KEY", API_KEY)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    monkeypatch.setenv("GOOGLE_GEMINI_BASE_URL", fake.base_url)
    engine = store.engine_for(app_database_url)

    def make(**config) -> tuple[GeminiProvider, LedgerScope]:
        provider = GeminiProvider(**config)
        provider.setup_for_execution(None)  # type: ignore[arg-type]  # the context is unused
        return provider, LedgerScope(Ledger(engine), document_id=None, stage="embeddings")

    yield make
    engine.dispose()


def test_each_kind_of_request_is_cut_off_by_its_own_timeout(fake, provider_and_scope):
    # Generate requests may take long (600 s by default); an embedding batch gets less.
    provider, scope = provider_and_scope(
        request_timeout_seconds=30, embed_timeout_seconds=0.3, max_attempts=2
    )
    fake.add_fault("batchEmbedContents", hang=True)
    started = time.monotonic()
    with pytest.raises(AIUnavailable, match=r"after 2 attempts .*no answer within 0.3 s"):
        provider.embed(["a text"], scope)
    # Two timeouts and a wait of about a second (not 30 s: the generate timeout).
    assert time.monotonic() - started < 10
    # The fake logs a hung request once it sees the client gone, a moment after the timeout.
    wait_until(lambda: len(fake.requests) >= 2, 5, "the fake to log both hung requests")
    assert [r["status"] for r in fake.requests] == [None, None]

    provider, scope = provider_and_scope(request_timeout_seconds=0.3, max_attempts=1)
    fake.add_fault("generateContent", hang=True)
    with pytest.raises(
        AIUnavailable, match=r"after 1 attempt over [\d.]+ s: no answer within 0.3 s"
    ):
        provider.chunk("# One\n\nA short chapter of a book.", scope)


def test_settings_that_would_disable_the_timeout_are_refused(provider_and_scope):
    for config in ({"request_timeout_seconds": 0}, {"embed_timeout_seconds": -1}):
        with pytest.raises(ValueError, match="must be > 0"):
            provider_and_scope(**config)
    with pytest.raises(ValueError, match="max_backoff_seconds"):
        provider_and_scope(initial_backoff_seconds=10, max_backoff_seconds=1)


def test_failure_messages_never_hold_the_key(provider_and_scope):
    provider, _ = provider_and_scope()
    assert API_KEY not in provider._redacted(f"GET /v1/models?key={API_KEY} failed")
