"""Retrying Gemini API calls: which errors are worth another attempt, how long to wait, and
the one line that says why the API was given up on (never with the API key)."""

from __future__ import annotations

import importlib.util
import logging
import random
import re
import time
from collections.abc import Callable
from typing import TypeVar

import tenacity
from google.genai import errors as genai_errors

from doc_pipeline.core.failures import KnownFailure
from doc_pipeline.core.rate_limits import RateLimiter

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
_DURATION = re.compile(r"(\d+(?:\.\d+)?)s")  # a protobuf Duration in JSON
logger = logging.getLogger(__name__)
T = TypeVar("T")


class AIUnavailable(ConnectionError):
    """The API kept failing (rate limits, 5xx, timeouts, dropped connections) after every
    attempt; a later retry of the run resumes, paying only for what was never answered."""


class AIRequestRefused(KnownFailure):
    """The API refused the request for good (400 invalid, 401/403 key, 404 no such model):
    retrying the same request changes nothing; the settings or the request must."""


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


def retry_delay(error: BaseException) -> float | None:
    """The seconds a 429 asks to wait (its google.rpc.RetryInfo `retryDelay`, e.g. "26s"),
    or None when it gives none. The SDK keeps the whole error body in `details`."""
    if not isinstance(error, genai_errors.APIError) or error.code != 429:
        return None
    body = error.details if isinstance(error.details, dict) else {}
    details = body.get("error", body).get("details") or []
    for detail in details if isinstance(details, list) else []:
        if isinstance(detail, dict) and str(detail.get("@type", "")).endswith("RetryInfo"):
            match = _DURATION.fullmatch(str(detail.get("retryDelay", "")).strip())
            if match:
                return float(match.group(1))
    return None


class ServerPacedBackoff(tenacity.wait.wait_base):
    """After a 429 no wait of its own: the rate limiter holds every request of the model until
    the server's retry delay has passed. After any other failure, `backoff`."""

    def __init__(self, backoff: BoundedBackoff) -> None:
        self.backoff = backoff

    def __call__(self, retry_state: tenacity.RetryCallState) -> float:
        error = retry_state.outcome.exception() if retry_state.outcome else None
        if isinstance(error, genai_errors.APIError) and error.code == 429:
            return 0.0
        return self.backoff(retry_state)


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
    limiter: RateLimiter | None = None,
    tokens: int = 0,
    requests: int = 1,
) -> T:
    """`call()`, with bounded exponential back-off on 5xx, timeouts and dropped connections,
    and on 429 the server's own pace (`limiter.slow_down`); each attempt first waits for room
    under the model's rate limits (`tokens` estimated, counting as `requests`). Other errors
    (a bad request, a refused key) fail at once: AIRequestRefused. After the last attempt:
    AIUnavailable, which fails the stage as transient."""
    attempts, started = 0, time.monotonic()

    def attempt() -> T:
        nonlocal attempts
        attempts += 1
        if limiter is not None:
            limiter.acquire(tokens, requests)
        try:
            return call()
        except genai_errors.APIError as error:
            if limiter is not None and error.code == 429:
                limiter.slow_down(retry_delay(error))
            raise

    def log_retry(state: tenacity.RetryCallState) -> None:
        error = state.outcome.exception() if state.outcome else None
        reason = describe_failure(error, timeout_seconds) if error else "no outcome"
        sleep = state.next_action.sleep if state.next_action else 0.0
        paced = limiter is not None and isinstance(error, genai_errors.APIError)
        if paced and error.code == 429:
            delay = retry_delay(error)
            asked = f"{delay:g} s, as the server asked" if delay is not None else "1 s"
            when = f"Retrying after {asked}, with every request of the model slowed down."
        else:
            when = f"Retrying in {sleep:.2f} s."
        logger.warning(
            redacted(f"{what}: {reason} (attempt {state.attempt_number} of {max_attempts}). {when}")
        )

    retrying = tenacity.Retrying(
        stop=tenacity.stop_after_attempt(max_attempts),
        wait=ServerPacedBackoff(backoff) if limiter is not None else backoff,
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
        if isinstance(error, genai_errors.APIError):
            reason = describe_failure(error, timeout_seconds)
            refused = redacted(f"{what}: the Gemini API refused it: {reason}")
            raise AIRequestRefused(refused) from error
        raise
