"""The AI ledger against a real Postgres: a request is paid once, whatever happens."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from decimal import Decimal

import pytest
import sqlalchemy as sa

from doc_pipeline.core.ledger import AIAnswer, AIRequest, LedgerTally, Usage
from doc_pipeline.db import store
from doc_pipeline.db.ledger_store import Ledger

REQUEST = AIRequest("gemini", "gemini-x", "chunking-v1", {"text": "chapter one", "n": 1})


class CountingFetch:
    def __init__(self, delay: float = 0.0, fail_times: int = 0):
        self.calls = 0
        self.delay = delay
        self.fail_times = fail_times
        self.lock = threading.Lock()

    def __call__(self) -> AIAnswer:
        with self.lock:
            self.calls += 1
            failing = self.calls <= self.fail_times
        time.sleep(self.delay)
        if failing:
            raise ConnectionError("the API went away")
        return AIAnswer({"chunks": ["a", "b"]}, Usage(100, 20, 5), Decimal("0.0125"))


@pytest.fixture
def engine(app_database_url):
    engine = store.engine_for(app_database_url)
    yield engine
    engine.dispose()


def _calls(engine) -> list[tuple[str, str | None]]:
    with engine.connect() as conn:
        return conn.execute(sa.text("SELECT outcome, document_id FROM ai_calls ORDER BY id")).all()


def test_key_is_stable_and_covers_provider_model_prompt_and_request():
    same = AIRequest("gemini", "gemini-x", "chunking-v1", {"n": 1, "text": "chapter one"})
    assert same.key == REQUEST.key
    for other in (
        AIRequest("local", "gemini-x", "chunking-v1", REQUEST.payload),
        AIRequest("gemini", "gemini-y", "chunking-v1", REQUEST.payload),
        AIRequest("gemini", "gemini-x", "chunking-v2", REQUEST.payload),
        AIRequest("gemini", "gemini-x", "chunking-v1", {"text": "chapter two", "n": 1}),
    ):
        assert other.key != REQUEST.key


def test_second_call_is_a_hit_that_costs_nothing(engine):
    fetch = CountingFetch()
    ledger = Ledger(engine)
    first = ledger.call(REQUEST, fetch, document_id="doc1", stage="chunks")
    second = Ledger(engine).call(REQUEST, fetch, document_id="doc2", stage="chunks")
    assert fetch.calls == 1
    assert not first.hit and first.cost_usd == Decimal("0.0125")
    assert second.hit and second.cost_usd == 0 and second.saved_usd == Decimal("0.0125")
    assert second.response == first.response == {"chunks": ["a", "b"]}
    assert _calls(engine) == [("paid", "doc1"), ("hit", "doc2")]
    tally = LedgerTally()
    tally.add(first)
    tally.add(second)
    assert tally.as_dict()["ai_requests"] == 1 and tally.as_dict()["ai_ledger_hits"] == 1
    assert tally.as_dict()["ai_cost_saved_usd"] == pytest.approx(0.0125)


def test_a_failed_request_releases_its_lease_and_is_paid_on_retry(engine):
    fetch = CountingFetch(fail_times=1)
    ledger = Ledger(engine)
    with pytest.raises(ConnectionError):
        ledger.call(REQUEST, fetch, document_id="doc1", stage="chunks")
    result = ledger.call(REQUEST, fetch, document_id="doc1", stage="chunks")
    assert not result.hit and fetch.calls == 2
    assert [outcome for outcome, _ in _calls(engine)] == ["failed", "paid"]


def test_concurrent_workers_pay_once(engine):
    fetch = CountingFetch(delay=0.5)
    results = []

    def worker() -> None:
        results.append(
            Ledger(engine, poll_seconds=0.05).call(REQUEST, fetch, document_id="d", stage="s")
        )

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert fetch.calls == 1
    assert sorted(r.hit for r in results) == [False, True, True, True]
    assert all(r.response == results[0].response for r in results)


def _lease(engine, owner: str, expires_in_seconds: float) -> None:
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO ai_responses (key, provider, model, prompt_version, state,"
                " lease_owner, lease_expires_at) VALUES (:key, 'gemini', 'gemini-x',"
                " 'chunking-v1', 'leased', :owner, now() + make_interval(secs => :secs))"
            ),
            {"key": REQUEST.key, "owner": owner, "secs": expires_in_seconds},
        )


def test_a_lease_whose_holder_died_is_taken_over(engine):
    import socket

    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    _lease(engine, f"{socket.gethostname()}:{finished.stdout.strip()}:dead", 3600)
    fetch = CountingFetch()
    started = time.monotonic()
    result = Ledger(engine).call(REQUEST, fetch, document_id="d", stage="s")
    assert not result.hit and fetch.calls == 1
    assert time.monotonic() - started < 5


def test_an_expired_lease_of_another_host_is_taken_over(engine):
    _lease(engine, "another-host:1:x", -1)
    fetch = CountingFetch()
    assert not Ledger(engine).call(REQUEST, fetch, document_id="d", stage="s").hit
    assert fetch.calls == 1


def test_a_live_lease_is_waited_for_not_paid_again(engine):
    _lease(engine, "another-host:1:x", 3600)

    def holder_answers() -> None:
        time.sleep(0.5)
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "UPDATE ai_responses SET state = 'done', response = '{\"answer\": 1}',"
                    " cost_usd = 0.5, lease_owner = NULL WHERE key = :key"
                ),
                {"key": REQUEST.key},
            )

    thread = threading.Thread(target=holder_answers)
    thread.start()
    fetch = CountingFetch()
    result = Ledger(engine, poll_seconds=0.05).call(REQUEST, fetch, document_id="d", stage="s")
    thread.join()
    assert fetch.calls == 0
    assert result.hit and result.response == {"answer": 1} and result.saved_usd == Decimal("0.5")


def test_a_request_that_outlasts_its_lease_keeps_it(engine):
    """The holder renews its lease while the request is in flight: a request five times longer
    than the lease is still paid once; the other worker waits and is answered from the ledger."""
    slow, fast = CountingFetch(delay=1.5), CountingFetch()
    results = {}

    def slow_worker() -> None:
        ledger = Ledger(engine, lease_seconds=0.3)
        results["slow"] = ledger.call(REQUEST, slow, document_id="d", stage="s")

    thread = threading.Thread(target=slow_worker)
    thread.start()
    time.sleep(0.6)  # twice the lease: it would have expired without renewals
    results["fast"] = Ledger(engine, poll_seconds=0.05).call(
        REQUEST, fast, document_id="d", stage="s"
    )
    thread.join(timeout=30)
    assert slow.calls == 1 and fast.calls == 0
    assert not results["slow"].hit and results["fast"].hit
    assert [outcome for outcome, _ in _calls(engine)] == ["paid", "hit"]


def test_a_holder_whose_lease_expired_still_finishes_cleanly(engine):
    """A lease that expired all the same (its renewals could not reach the database) lets a
    second worker pay too; the first answer stored stays, and neither worker fails."""
    slow, fast = CountingFetch(delay=1.0), CountingFetch()
    results = {}

    def slow_worker() -> None:
        ledger = Ledger(engine, lease_seconds=30)
        results["slow"] = ledger.call(REQUEST, slow, document_id="d", stage="s")

    thread = threading.Thread(target=slow_worker)
    thread.start()
    time.sleep(0.3)
    with engine.begin() as conn:  # the renewal that did not happen
        conn.execute(sa.text("UPDATE ai_responses SET lease_expires_at = now() - interval '1 s'"))
    results["fast"] = Ledger(engine).call(REQUEST, fast, document_id="d", stage="s")
    thread.join(timeout=30)
    assert slow.calls == 1 and fast.calls == 1
    assert not results["slow"].hit and not results["fast"].hit
    with engine.connect() as conn:
        states = conn.execute(sa.text("SELECT state FROM ai_responses")).scalars().all()
    assert states == ["done"]
    assert [outcome for outcome, _ in _calls(engine)] == ["paid", "paid"]
