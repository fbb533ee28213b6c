"""The AI ledger's store (DESIGN rule 1): no AI request is ever paid twice.

Every AI request goes through `Ledger.call`. The answer is committed to the `ai_responses`
table before the caller sees it; a later call with the same key is answered from there without
calling the API (a hit); while one worker is paying for a key it holds a lease, renewed for as
long as the request is in flight, and any other worker waits for the answer instead of paying
again; a lease whose holder died is taken over (the rules: `doc_pipeline.core.ledger`). Every
call, paid, hit or failed, is recorded in `ai_calls` with its tokens, cost, latency, document
and stage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from doc_pipeline.core.ledger import (
    LEASE_SECONDS,
    RENEWALS_PER_LEASE,
    AIAnswer,
    AIRequest,
    LedgerResult,
    LedgerTally,
    Usage,
    lease_owner,
    may_take_over,
)
from doc_pipeline.db.models import AICall, AIResponse


def _identity(request: AIRequest, key: str, context: dict) -> dict[str, Any]:
    """The columns that name a ledger row and who asked first."""
    return {
        "key": key,
        "provider": request.provider,
        "model": request.model,
        "prompt_version": request.prompt_version,
        "document_id": context["document_id"],
        "stage": context["stage"],
    }


def _lease_expiry(seconds: float):
    return sa.func.now() + sa.text(f"interval '{float(seconds)} seconds'")


class LeaseRenewer:
    """Extends the leases of the keys an owner is paying for, every `lease_seconds /
    RENEWALS_PER_LEASE`, from a thread that runs while any is in flight."""

    def __init__(self, engine: Engine, owner: str, lease_seconds: float) -> None:
        self.engine, self.owner, self.lease_seconds = engine, owner, lease_seconds
        self._keys: dict[str, int] = {}  # in flight: how many calls of ours pay for each
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._thread: threading.Thread | None = None

    def holding(self, key: str) -> _Holding:
        return _Holding(self, key)

    def _add(self, key: str) -> None:
        with self._lock:
            self._keys[key] = self._keys.get(key, 0) + 1
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="ledger-lease-renewer", daemon=True
                )
                self._thread.start()

    def _remove(self, key: str) -> None:
        with self._lock:
            self._keys[key] -= 1
            if not self._keys[key]:
                del self._keys[key]
            self._wake.notify()

    def _run(self) -> None:
        interval = self.lease_seconds / RENEWALS_PER_LEASE
        while True:
            with self._lock:
                self._wake.wait_for(lambda: not self._keys, timeout=interval)
                if not self._keys:
                    self._thread = None
                    return
                keys = sorted(self._keys)
            self.renew(keys)

    def renew(self, keys: list[str]) -> None:
        table = AIResponse.__table__
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(table)
                    .where(
                        table.c.key.in_(keys),
                        table.c.state == "leased",
                        table.c.lease_owner == self.owner,
                    )
                    .values(lease_expires_at=_lease_expiry(self.lease_seconds))
                )
        except sa.exc.SQLAlchemyError:
            # The database is out of reach: the request's own write will fail the same way;
            # the next renewal tries again.
            return


@dataclass
class _Holding:
    renewer: LeaseRenewer
    key: str

    def __enter__(self) -> None:
        self.renewer._add(self.key)

    def __exit__(self, *exc: object) -> None:
        self.renewer._remove(self.key)


class Ledger:
    def __init__(
        self,
        engine: Engine,
        *,
        lease_seconds: float = LEASE_SECONDS,
        poll_seconds: float = 0.5,
        owner: str | None = None,
    ) -> None:
        self.engine = engine
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.owner = owner or lease_owner()
        self._renewer = LeaseRenewer(engine, self.owner, lease_seconds)

    def call(
        self,
        request: AIRequest,
        fetch: Callable[[], AIAnswer],
        *,
        document_id: str | None,
        stage: str,
        run_id: str | None = None,
    ) -> LedgerResult:
        """The answer to the request: from the ledger if it is there, otherwise paid once."""
        key = request.key
        context = {"document_id": document_id, "stage": stage, "run_id": run_id}
        while True:
            done = self._done(key)
            if done is not None:
                return self._record_hit(request, done, context)
            if self._acquire(request, key, context):
                return self._pay(request, key, fetch, context)
            time.sleep(self.poll_seconds)  # someone alive is paying for it: wait for the answer

    # -- states -----------------------------------------------------------------------------

    def _done(self, key: str) -> AIResponse | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                sa.select(AIResponse.__table__).where(
                    AIResponse.key == key, AIResponse.state == "done"
                )
            ).first()
        return row

    def _acquire(self, request: AIRequest, key: str, context: dict) -> bool:
        """Take the lease: a new key, an expired lease, or one whose holder died."""
        table = AIResponse.__table__
        expires = _lease_expiry(self.lease_seconds)
        with self.engine.begin() as conn:
            inserted = conn.execute(
                insert(table)
                .values(
                    **_identity(request, key, context),
                    state="leased",
                    lease_owner=self.owner,
                    lease_expires_at=expires,
                )
                .on_conflict_do_nothing(index_elements=["key"])
                .returning(table.c.key)
            ).first()
            if inserted is not None:
                return True
            current = conn.execute(
                sa.select(
                    table.c.state,
                    table.c.lease_owner,
                    (table.c.lease_expires_at < sa.func.now()).label("expired"),
                )
                .where(table.c.key == key)
                .with_for_update()
            ).first()
            if current is None or not may_take_over(
                current.state, current.expired, current.lease_owner
            ):
                return False  # vanished (its holder failed), answered, or held: look again
            conn.execute(
                sa.update(table)
                .where(table.c.key == key)
                .values(lease_owner=self.owner, lease_expires_at=expires)
            )
            return True

    def _pay(self, request: AIRequest, key: str, fetch: Callable[[], AIAnswer], context: dict):
        started = time.perf_counter()
        try:
            with self._renewer.holding(key):
                answer = fetch()
        except BaseException as error:
            self._release(request, key, context, error, started)
            raise
        latency_ms = int((time.perf_counter() - started) * 1000)
        table = AIResponse.__table__
        done = {
            "state": "done",
            "response": answer.response,
            "prompt_tokens": answer.usage.prompt_tokens,
            "output_tokens": answer.usage.output_tokens,
            "thinking_tokens": answer.usage.thinking_tokens,
            "cost_usd": answer.cost_usd,
            "latency_ms": latency_ms,
            "model_version": answer.model_version,
            "completed_at": sa.func.now(),
        }
        with self.engine.begin() as conn:
            # Committed before the caller uses it: a crash after this line loses nothing.
            updated = conn.execute(
                sa.update(table)
                .where(table.c.key == key, table.c.state == "leased")
                .values(**done, lease_owner=None, lease_expires_at=None)
                .returning(table.c.key)
            ).first()
            if updated is None:
                # Our lease expired meanwhile: the row is another worker's answer (kept), or
                # gone because that worker failed (ours is stored).
                conn.execute(
                    insert(table)
                    .values(**_identity(request, key, context), **done)
                    .on_conflict_do_nothing(index_elements=["key"])
                )
            self._insert_call(
                conn,
                request,
                key,
                context,
                outcome="paid",
                usage=answer.usage,
                cost_usd=answer.cost_usd,
                latency_ms=latency_ms,
                model_version=answer.model_version,
            )
        return LedgerResult(
            response=answer.response,
            hit=False,
            usage=answer.usage,
            cost_usd=answer.cost_usd,
            saved_usd=Decimal(0),
        )

    def _release(
        self, request: AIRequest, key: str, context: dict, error: BaseException, started: float
    ) -> None:
        """Give the lease up so that a retry (ours or another worker's) can pay for it."""
        table = AIResponse.__table__
        with self.engine.begin() as conn:
            conn.execute(
                sa.delete(table).where(
                    table.c.key == key, table.c.state == "leased", table.c.lease_owner == self.owner
                )
            )
            self._insert_call(
                conn,
                request,
                key,
                context,
                outcome="failed",
                latency_ms=int((time.perf_counter() - started) * 1000),
                error=f"{type(error).__name__}: {error}"[:2000],
            )

    def _record_hit(self, request: AIRequest, done, context: dict) -> LedgerResult:
        usage = Usage(done.prompt_tokens, done.output_tokens, done.thinking_tokens)
        with self.engine.begin() as conn:
            self._insert_call(
                conn,
                request,
                done.key,
                context,
                outcome="hit",
                saved_usd=done.cost_usd,
                model_version=done.model_version,
            )
        return LedgerResult(
            response=done.response,
            hit=True,
            usage=usage,
            cost_usd=Decimal(0),
            saved_usd=Decimal(done.cost_usd),
        )

    @staticmethod
    def _insert_call(
        conn: sa.Connection,
        request: AIRequest,
        key: str,
        context: dict,
        *,
        outcome: str,
        usage: Usage | None = None,
        cost_usd: Decimal | int = 0,
        saved_usd: Decimal | int = 0,
        latency_ms: int | None = None,
        error: str | None = None,
        model_version: str | None = None,
    ) -> None:
        usage = usage or Usage()
        conn.execute(
            sa.insert(AICall.__table__).values(
                key=key,
                provider=request.provider,
                model=request.model,
                outcome=outcome,
                prompt_tokens=usage.prompt_tokens,
                output_tokens=usage.output_tokens,
                thinking_tokens=usage.thinking_tokens,
                cost_usd=cost_usd,
                saved_usd=saved_usd,
                latency_ms=latency_ms,
                error=error,
                model_version=model_version,
                **context,
            )
        )


@dataclass
class LedgerScope:
    """The ledger as one stage of one document uses it: attributes calls and tallies them.
    Safe to call from the threads of concurrent requests."""

    ledger: Ledger
    document_id: str | None
    stage: str
    run_id: str | None = None
    tally: LedgerTally = field(default_factory=LedgerTally)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def call(self, request: AIRequest, fetch: Callable[[], AIAnswer]) -> LedgerResult:
        result = self.ledger.call(
            request, fetch, document_id=self.document_id, stage=self.stage, run_id=self.run_id
        )
        with self._lock:
            self.tally.add(result)
        return result
