"""Requests and tokens per minute, per model, shared by all concurrent requests of a worker.

Each model's limiter holds two token buckets, requests and tokens, refilled continuously at
the per-minute rate and holding at most `burst_seconds` worth: a request waits until both have
room for it. A 429 is the server saying the rate is too high: `slow_down` stops every request
of the model until the server's retry delay has passed, and halves the rate, which recovers
over `recovery_seconds`, so that the concurrent requests back off together instead of each
retrying on its own. The clock and the sleep are injectable, for tests without waiting.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from doc_pipeline.core.failures import InvalidSettings


@dataclass(frozen=True)
class Limits:
    requests_per_minute: float
    tokens_per_minute: float
    burst_seconds: float = 10.0  # how much of a minute's quota may go at once
    recovery_seconds: float = 60.0  # after a 429, the rate climbs back to full over this long

    def __post_init__(self) -> None:
        if min(self.requests_per_minute, self.tokens_per_minute, self.burst_seconds) <= 0:
            raise InvalidSettings("rate limits (requests and tokens per minute) must be positive")


class RateLimiter:
    def __init__(
        self,
        limits: Limits,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limits, self.clock, self.sleep = limits, clock, sleep
        self._lock = threading.Lock()
        now = clock()
        self._requests = self._request_capacity()
        self._tokens = self._token_capacity()
        self._refilled = now
        self._paused_until = now
        self._slowed_at: float | None = None
        self.waited_seconds = 0.0  # in all, by every request: shown in the step's metadata

    def _request_capacity(self) -> float:
        return max(1.0, self.limits.requests_per_minute * self.limits.burst_seconds / 60)

    def _token_capacity(self) -> float:
        return self.limits.tokens_per_minute * self.limits.burst_seconds / 60

    def rate_share(self, now: float) -> float:
        """The share of the configured rate in force: 1, or after a 429 from 1/2 back to 1."""
        if self._slowed_at is None:
            return 1.0
        climbed = (now - self._slowed_at) / self.limits.recovery_seconds
        if climbed >= 1:
            self._slowed_at = None
            return 1.0
        return 0.5 + 0.5 * max(0.0, climbed)

    def _refill(self, now: float) -> None:
        elapsed = max(0.0, now - self._refilled)
        self._refilled = now
        share = self.rate_share(now)
        self._requests = min(
            self._request_capacity(),
            self._requests + elapsed * share * self.limits.requests_per_minute / 60,
        )
        self._tokens = min(
            self._token_capacity(),
            self._tokens + elapsed * share * self.limits.tokens_per_minute / 60,
        )

    def acquire(self, tokens: int = 0, requests: int = 1) -> float:
        """Wait until the request (of `tokens` estimated tokens, counting as `requests`, e.g.
        one per text of an embedding batch) fits; return the seconds waited."""
        tokens = min(float(tokens), self._token_capacity())  # a huge one waits for a full bucket
        requests_needed = min(float(requests), self._request_capacity())
        waited = 0.0
        while True:
            with self._lock:
                now = self.clock()
                self._refill(now)
                pause = self._paused_until - now
                if pause <= 0 and self._requests >= requests_needed and self._tokens >= tokens:
                    self._requests -= requests_needed
                    self._tokens -= tokens
                    self.waited_seconds += waited
                    return waited
                rate = self.rate_share(now) / 60
                need = max(
                    (requests_needed - self._requests) / (self.limits.requests_per_minute * rate),
                    (tokens - self._tokens) / (self.limits.tokens_per_minute * rate),
                    pause,
                    0.001,
                )
            self.sleep(need)
            waited += need

    def slow_down(self, retry_after_seconds: float | None) -> None:
        """A 429: no request of the model starts before the server's retry delay (or, without
        one, a second), and the rate is halved, climbing back over `recovery_seconds`."""
        with self._lock:
            now = self.clock()
            self._refill(now)
            delay = retry_after_seconds if retry_after_seconds is not None else 1.0
            self._paused_until = max(self._paused_until, now + delay)
            self._slowed_at = now
            self._requests = min(self._requests, 0.0)


_SHARED: dict[tuple[str, Limits], RateLimiter] = {}
_SHARED_LOCK = threading.Lock()


def shared_limiter(model: str, limits: Limits) -> RateLimiter:
    """The limiter of `model` in this process: every step and request of a worker that uses
    the model under the same limits shares it."""
    with _SHARED_LOCK:
        return _SHARED.setdefault((model, limits), RateLimiter(limits))
