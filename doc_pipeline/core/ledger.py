"""The AI ledger's rules (DESIGN rule 1): what names a request, what an answer cost, and when
a lease may be taken over. The ledger's table and its transactions are in
`doc_pipeline.db.ledger_store`.

A request's key is a hash of the provider, model, prompt version and the canonical request, so
the same request always has the same key. A lease is held by one worker process, named
`host:pid:nonce`; it may be taken over when it expired, or when its holder ran on this host
and its process is gone (a holder on another host can only be judged by the expiry). A holder
renews its leases while its requests are in flight, however long they take (rate-limit waits,
retries and back-off included), so a lease never expires under a live request, and one whose
holder died (its whole host, say) expires after LEASE_SECONDS.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from doc_pipeline.core.processes import pid_alive


@dataclass(frozen=True)
class AIRequest:
    provider: str
    model: str
    prompt_version: str
    payload: Mapping[str, Any]  # everything that decides the answer, JSON-serializable

    @property
    def key(self) -> str:
        canonical = json.dumps(
            [self.provider, self.model, self.prompt_version, self.payload],
            sort_keys=True,
            separators=(",", ":"),
            ensure_ascii=False,
        )
        return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.output_tokens + self.thinking_tokens


@dataclass(frozen=True)
class AIAnswer:
    """What a provider's fetch returns: the answer as JSON, its usage and its price."""

    response: Any
    usage: Usage
    cost_usd: Decimal
    model_version: str | None = None  # as the API reports it (`modelVersion`)


@dataclass(frozen=True)
class LedgerResult:
    response: Any
    hit: bool
    usage: Usage  # of the original paid call, also for a hit
    cost_usd: Decimal  # paid by this call: zero for a hit
    saved_usd: Decimal  # what a hit would have cost


@dataclass
class LedgerTally:
    """What one stage's calls cost, for its materialization metadata."""

    requests: int = 0
    hits: int = 0
    prompt_tokens: int = 0
    output_tokens: int = 0
    thinking_tokens: int = 0
    cost_usd: Decimal = field(default_factory=Decimal)
    saved_usd: Decimal = field(default_factory=Decimal)

    def add(self, result: LedgerResult) -> None:
        if result.hit:
            self.hits += 1
            self.saved_usd += result.saved_usd
            return
        self.requests += 1
        self.prompt_tokens += result.usage.prompt_tokens
        self.output_tokens += result.usage.output_tokens
        self.thinking_tokens += result.usage.thinking_tokens
        self.cost_usd += result.cost_usd

    def as_dict(self) -> dict[str, Any]:
        return {
            "ai_requests": self.requests,
            "ai_ledger_hits": self.hits,
            "ai_prompt_tokens": self.prompt_tokens,
            "ai_output_tokens": self.output_tokens,
            "ai_thinking_tokens": self.thinking_tokens,
            "ai_cost_usd": float(self.cost_usd),
            "ai_cost_saved_usd": float(self.saved_usd),
        }


# How long a lease lasts unless renewed, and how often its holder renews it: a dead holder on
# another host is known after at most LEASE_SECONDS; a live one renews twice within that time.
LEASE_SECONDS = 120.0
RENEWALS_PER_LEASE = 3


def lease_owner() -> str:
    """A name for a worker's leases: this host and process, and a nonce for the ledger object."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def holder_is_dead(
    owner: str | None,
    this_host: str | None = None,
    alive: Callable[[int], bool] = pid_alive,
) -> bool:
    """True when the lease holder ran on this host and its process is gone."""
    if not owner:
        return True
    host, _, rest = owner.partition(":")
    pid_text = rest.partition(":")[0]
    if host != (this_host or socket.gethostname()) or not pid_text.isdigit():
        return False  # another host: only the lease's expiry can tell
    return not alive(int(pid_text))


def may_take_over(state: str, expired: bool, owner: str | None) -> bool:
    """Whether a worker may take the lease of a key in this state: never once it is answered;
    when the lease expired, or its holder died."""
    return state == "leased" and (expired or holder_is_dead(owner))
