"""How long the fake Gemini server takes, and how many requests it is handling at once.

The latency model lets tests and benchmarks of a concurrent pipeline see the real API's
timing; the in-flight counts let them check how many requests actually overlapped.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import threading
from collections import Counter
from dataclasses import dataclass

TOTAL = "*"  # the key of all methods together, as in fault rules


@dataclass(frozen=True)
class Latency:
    """How long an answer is held before it is sent; the default holds nothing.

    A generateContent answer takes `first_token_seconds + output_tokens /
    output_tokens_per_second` (None: no time per token), where output tokens are the
    answer's candidates + thoughts tokens; an embedding request takes `embedding_seconds`
    whatever its batch size, as one batch is one forward pass."""

    first_token_seconds: float = 0
    output_tokens_per_second: float | None = None
    embedding_seconds: float = 0

    def __post_init__(self) -> None:
        for name in ("first_token_seconds", "embedding_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not _finite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        rate = self.output_tokens_per_second
        if rate is not None and (isinstance(rate, bool) or not _finite(rate) or rate <= 0):
            raise ValueError(f"output_tokens_per_second must be > 0 or None, not {rate!r}")

    def generate_seconds(self, output_tokens: int) -> float:
        rate = self.output_tokens_per_second
        return self.first_token_seconds + (output_tokens / rate if rate else 0)

    def describe(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, value: object) -> Latency:
        """The fields as an object, or {"latency": {...}} as GET /_fake/latency answers."""
        if not isinstance(value, dict):
            raise ValueError("the latency must be a JSON object")
        return cls(**value.get("latency", value))


def _finite(value: object) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def parse_latency(text: str) -> tuple[float, float | None]:
    """`--latency SECONDS[,TOKENS_PER_SECOND]` as (first-token seconds, tokens per second);
    Latency itself says whether the numbers are allowed."""
    first, _, rate = text.partition(",")
    try:
        return float(first), float(rate) if rate.strip() else None
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not SECONDS or SECONDS,TOKENS_PER_SECOND (e.g. 1.5,180)"
        ) from None


class InFlight:
    """Requests being handled now, per API method, and the peak since the last reset."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now: Counter[str] = Counter()
        self._peak: Counter[str] = Counter()

    def begin(self, method: str) -> int:
        """Counts a request in; returns how many of its method are in flight, itself too."""
        with self._lock:
            self._now[method] += 1
            self._now[TOTAL] += 1
            for key in (method, TOTAL):
                self._peak[key] = max(self._peak[key], self._now[key])
            return self._now[method]

    def end(self, method: str) -> None:
        with self._lock:
            self._now.subtract((method, TOTAL))

    def now(self) -> dict[str, int]:
        """Per method, the methods with requests in flight only (no TOTAL key)."""
        with self._lock:
            return {m: n for m, n in self._now.items() if n > 0 and m != TOTAL}

    def count(self, method: str = TOTAL) -> int:
        with self._lock:
            return self._now[method]

    def peak(self, method: str = TOTAL) -> int:
        with self._lock:
            return self._peak[method]

    def peaks(self) -> dict[str, int]:
        """Per method, with TOTAL for all methods together (not the largest of the peaks)."""
        with self._lock:
            return {m: n for m, n in self._peak.items() if n > 0}

    def reset_peak(self) -> None:
        """The requests still in flight overlap whatever comes next: they start the peak."""
        with self._lock:
            self._peak = Counter({m: n for m, n in self._now.items() if n > 0})
