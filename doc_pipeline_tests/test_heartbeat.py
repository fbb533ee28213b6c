"""Heartbeats against a real Postgres, with an injectable clock for the staleness rules."""

from __future__ import annotations

import threading
import time
from datetime import UTC, datetime, timedelta

import pytest

from doc_pipeline.core.reaper import DEFAULT_STALE_AFTER, is_stale
from doc_pipeline.db import store
from doc_pipeline.db.heartbeats import Heartbeat, last_beat

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, now: datetime = T0):
        self.now = now
        self.lock = threading.Lock()

    def __call__(self) -> datetime:
        with self.lock:
            return self.now

    def advance(self, delta: timedelta) -> None:
        with self.lock:
            self.now += delta


@pytest.fixture
def engine(app_database_url):
    engine = store.engine_for(app_database_url)
    yield engine
    engine.dispose()


def test_29_minutes_is_alive_and_31_is_stale():
    assert not is_stale(T0, T0 + timedelta(minutes=29), DEFAULT_STALE_AFTER)
    assert is_stale(T0, T0 + timedelta(minutes=31), DEFAULT_STALE_AFTER)
    assert is_stale(None, T0, DEFAULT_STALE_AFTER)


def _wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_each_beat_resets_the_clock(engine):
    clock = FakeClock()
    with Heartbeat(
        engine,
        run_id="run-1",
        step_key="chunks",
        document_id="d",
        interval_seconds=0.05,
        clock=clock,
    ) as heartbeat:
        assert last_beat(engine, "run-1") == T0  # the first beat comes before any work
        clock.advance(timedelta(minutes=25))
        beats = heartbeat.beats
        _wait_for(lambda: heartbeat.beats > beats)
        clock.advance(timedelta(minutes=25))  # 50 minutes after start, 25 after the last beat
        assert not is_stale(last_beat(engine, "run-1"), clock(), DEFAULT_STALE_AFTER)
    assert last_beat(engine, "run-1") == T0 + timedelta(minutes=25)
    clock.advance(timedelta(minutes=10))  # no more beats after the step: it goes stale
    assert is_stale(last_beat(engine, "run-1"), clock(), DEFAULT_STALE_AFTER)


def test_the_heartbeat_stops_when_the_step_raises_and_leaves_nothing_behind(engine):
    threads_before = set(threading.enumerate())
    heartbeat = Heartbeat(
        engine, run_id="run-2", step_key="embeddings", document_id="d", interval_seconds=0.02
    )
    with pytest.raises(RuntimeError, match="AI call failed"), heartbeat:
        _wait_for(lambda: heartbeat.beats >= 3)
        raise RuntimeError("AI call failed")
    assert not heartbeat.running
    beats = heartbeat.beats
    time.sleep(0.1)
    assert heartbeat.beats == beats, "it beat after the step ended"
    assert set(threading.enumerate()) <= threads_before
    assert engine.pool.checkedout() == 0


def test_a_long_blocking_call_keeps_beating(engine):
    """A step blocked in one call (an AI request) is alive as long as its thread beats."""
    clock = FakeClock()
    with Heartbeat(
        engine,
        run_id="run-3",
        step_key="chunks",
        document_id="d",
        interval_seconds=0.01,
        clock=clock,
    ) as heartbeat:
        for _ in range(4):  # 4 × 10 simulated minutes inside one "call"
            beats = heartbeat.beats
            clock.advance(timedelta(minutes=10))
            _wait_for(lambda beats=beats: heartbeat.beats > beats)
            assert not is_stale(last_beat(engine, "run-3"), clock(), DEFAULT_STALE_AFTER)
