"""Retrying Gemini API calls: which errors are worth another attempt, how long to wait, and
the one line that says why the API was given up on (never with the API key)."""

from __future__ import annotations

import importlib.util
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity
from google.genai import errors as genai_errors

RETRYABLE_STATUS = {408, 429, 500, 502, 503, 504}
# The SDK's transport is httpx or its fork httpx2; a dropped connection or a timeout raises a
# TransportError (a timeout a TimeoutException) of whichever is installed.
_TRANSPORTS = [
    importlib.import_module(name)
    for name in ("httpx", "httpx2")
    if importlib.util.find_spec(name) is not None
]
TRANSPORT_ERRORS = tuple(module.TransportError for module in _TRANSPORTS)
TIMEOUT_ERRORS = tuple(module.TimeoutException for module in _TRANSPORTS)
BACKOFF_JITTER = 0.25  # each wait is shortened by up to this share, at random
logger = logging.getLogger(__name__)
T = TypeVar("T")


class AIUnavailable(ConnectionError):
    """The API kept failing (rate limits, 5xx, timeouts, dropped connections) after every
    attempt; a later retry of the run resumes, paying only for what was never answered."""


def is_transient(error: BaseException) -> bool:
    if isinstance(error, genai_errors.APIError):
        return error.code in RETRYABLE_STATUS
    return isinstance(error, TRANSPORT_ERRORS)


class BoundedBackoff(tenacity.wait.wait_base):
    """Waits `initial * 2**(n-1)` seconds after the n-th failed attempt, at most `maximum`,
    shortened at random by up to `jitter` of itself. The jitter only shortens, so the cap is a
    hard bound, and with a jitter under one half every wait is longer than the one before until
    the cap; it keeps many workers of one outage from retrying in lockstep."""

    def __init__(
        self,
        initial: float,
        maximum: float,
        jitter: float = BACKOFF_JITTER,
        uniform: Callable[[], float] = random.random,
    ) -> None:
        if not (0 <= initial <= maximum and 0 <= jitter < 0.5):
            raise ValueError("need 0 <= initial <= maximum and 0 <= jitter < 0.5")
        self.initial, self.maximum, self.jitter, self.uniform = initial, maximum, jitter, uniform

    def delay(self, attempt: int) -> float:
        base = min(self.maximum, self.initial * 2 ** min(attempt - 1, 64))
        return base * (1 - self.jitter * self.uniform())

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        return self.delay(retry_state.attempt_number)


def describe_failure(error: BaseException, timeout_seconds: float) -> str:
    """A short reason: '503 UNAVAILABLE: <message>', 'no answer within 600 s (ReadTimeout)'."""
    if isinstance(error, genai_errors.APIError):
        status = f" {error.status}" if error.status else ""
        return f"{error.code}{status}: {error.message or 'no message'}"
    if isinstance(error, TIMEOUT_ERRORS):
        return f"no answer within {timeout_seconds:g} s ({type(error).__name__})"
    return f"{type(error).__name__}: {error}".rstrip(": ")


def with_retries(
    call: Callable[[], T],
    what: str,
    *,
    timeout_seconds: float,
    max_attempts: int,
    backoff: BoundedBackoff,
    redacted: Callable[[str], str],
) -> T:
    """`call()`, with bounded exponential back-off on 429, 5xx, timeouts and dropped
    connections; other errors (a bad request, a refused key) fail at once. After the last
    attempt: AIUnavailable, which fails the stage as transient."""
    attempts, started = 0, time.monotonic()

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        return call()

    def log_retry(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        reason = describe_failure(error, timeout_seconds) if error else "no outcome"
        sleep = state.next_action.sleep if state.next_action else 0.0
        logger.warning(
            redacted(
                f"{what}: {reason} (attempt {state.attempt_number} of "
                f"{max_attempts}). Retrying in {sleep:.2f} s."
            )
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max_attempts),
        wait=backoff,
        retry=tenacity.retry_if_exception(is_transient),
        before_sleep=log_retry,
        reraise=True,
    )
    try:
        return retrying(attempt)
    except Exception as error:
        if is_transient(error):
            elapsed = time.monotonic() - started
            tries = f"{attempts} attempt{'' if attempts == 1 else 's'}"
            raise AIUnavailable(
                redacted(
                    f"{what}: Gemini API unavailable after {tries} over {elapsed:.1f} s: "
                    f"{describe_failure(error, timeout_seconds)}"
                )
            ) from error
        raise
