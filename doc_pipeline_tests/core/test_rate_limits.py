"""Rate limits per model (core/rate_limits.py) on a fake clock: requests and tokens per minute
are held to, a burst is bounded, and a 429 pauses every request and halves the rate."""

from __future__ import annotations

import threading

import pytest

from doc_pipeline.core.failures import InvalidSettings
from doc_pipeline.core.rate_limits import Limits, RateLimiter, shared_limiter


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.now += seconds


def limiter(rpm: float, tpm: float = 1e9, burst: float = 10.0) -> tuple[RateLimiter, Clock]:
    clock = Clock()
    return RateLimiter(Limits(rpm, tpm, burst_seconds=burst), clock, clock.sleep), clock


def test_requests_per_minute_are_held_to_after_the_burst():
    rate, clock = limiter(rpm=60)  # one a second, ten at once
    for _ in range(10):
        assert rate.acquire() == 0.0
    waits = [rate.acquire() for _ in range(5)]
    assert waits == pytest.approx([1.0] * 5)
    assert clock.now == pytest.approx(5.0)


def test_tokens_per_minute_are_held_to():
    rate, clock = limiter(rpm=10_000, tpm=6_000)  # 100 tokens a second, 1,000 at once
    assert rate.acquire(tokens=1_000) == 0.0
    assert rate.acquire(tokens=500) == pytest.approx(5.0)
    # A request bigger than a burst waits for a full bucket, not forever.
    assert rate.acquire(tokens=50_000) == pytest.approx(10.0)


def test_an_embedding_batch_counts_one_request_per_text():
    rate, clock = limiter(rpm=600)  # ten a second, a hundred at once
    assert rate.acquire(requests=100) == 0.0
    assert rate.acquire(requests=50) == pytest.approx(5.0)


def test_a_429_pauses_every_request_for_the_server_s_delay_and_halves_the_rate():
    rate, clock = limiter(rpm=60, burst=1)  # one a second, one at once
    rate.acquire()
    rate.slow_down(30.0)
    assert rate.acquire() == pytest.approx(30.0)  # the server's delay, not our own back-off
    assert rate.rate_share(clock.now) == pytest.approx(0.5 + 0.5 * 30 / 60)
    clock.now += 60
    assert rate.rate_share(clock.now) == 1.0  # recovered
    rate.slow_down(None)  # no delay given: a second, and the next request at half the rate
    assert rate.acquire() == pytest.approx(2.0)


def test_limits_must_be_positive_and_a_model_s_limiter_is_shared():
    with pytest.raises(InvalidSettings):
        Limits(0, 100)
    limits = Limits(100, 1_000)
    assert shared_limiter("m", limits) is shared_limiter("m", limits)
    assert shared_limiter("m", limits) is not shared_limiter("other", limits)
