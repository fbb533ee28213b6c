"""Landing a kill inside one stage of a document run, for the crash tests and bench/recovery.py.

The AI stages are slowed down at the fake server so that the run worker is caught between two
requests. Extracting and connecting take milliseconds, so there the run worker is held inside
the stage by a lock this helper takes on a row or table the stage writes; it waits there,
heartbeating, until it is killed. Either way the helper checks that the worker really is inside
the stage before it hands over the worker's pid; at a lock, that the worker is waiting for it
(the stage is marked when its step starts, before the AI requests that come before the write:
connecting's bridge judgements).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from doc_pipeline.db import store
from doc_pipeline_tests.dagster_ui import running_step_pid
from doc_pipeline_tests.fakes import FakeGemini
from doc_pipeline_tests.ledger_counts import ai_call_counts
from doc_pipeline_tests.processes import wait_until

STAGES = ("extracting", "chunking", "embedding", "connecting")
PAID = ("generateContent", "batchEmbedContents")
# The AI method slowed down for a stage, and the requests answered before the kill.
SLOWED = {"chunking": ("generateContent", 3), "embedding": ("batchEmbedContents", 0)}


def paid_bodies(fake: FakeGemini) -> list[str]:
    """The bodies of the requests the fake server answered and a real API would bill."""
    return [
        r["body_sha256"]
        for r in fake.requests
        if r.get("api_method") in PAID and r.get("status") == 200
    ]


def requests_in_flight(
    fake: FakeGemini, engine: Engine, run_id: str, stage: str, killed_at: float
) -> int:
    """Once the run worker is dead: the stage's AI requests the fake had received from it
    before `killed_at` (time.monotonic()) that the run never committed to the ledger, answered
    or still being handled at the kill. The retry pays these again, and no more. Counted after
    the kill, from what it froze (counted before it, the fake's log and the ledger were read at
    different moments while the worker went on answering and committing, and the count could
    come out short). A worker held at a lock (extracting, connecting) has committed every
    answer it got: none."""
    if stage not in SLOWED:
        return 0
    method = SLOWED[stage][0]
    # The fake logs a request when it ends; a killed client's requests end within their delay.
    wait_until(lambda: fake.in_flight(method) == 0, 60, "the killed worker's requests to end")
    received = sum(
        1
        for r in fake.requests
        if r.get("api_method") == method
        and r["started"] < killed_at
        and (r.get("status") == 200 or r.get("client_gone"))
    )
    ledger_stage = {"chunking": "chunks", "embedding": "embeddings"}[stage]
    committed = ai_call_counts(engine, "run_id", outcome="paid", stage=ledger_stage, run_id=run_id)
    return received - committed.get(run_id, 0)


def slow_down(fake: FakeGemini, stage: str) -> None:
    """Before the run: make the stage's AI requests slow enough to be caught between."""
    if stage in SLOWED:
        fake.add_fault(SLOWED[stage][0], delay_seconds=0.5)


def _stage(engine: Engine, document_id: str) -> str:
    return store.get_document(engine, document_id)["stage"]


def _waiting_for(engine: Engine, holder: int) -> bool:
    """Whether a session waits for a lock that the session `holder` holds."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text(
                "SELECT EXISTS (SELECT 1 FROM pg_stat_activity"
                " WHERE :holder = ANY(pg_blocking_pids(pid)))"
            ),
            {"holder": holder},
        ).scalar_one()


@contextmanager
def worker_inside(
    stage: str,
    engine: Engine,
    fake: FakeGemini,
    document_id: str,
    run_id: str,
    timeout: float = 300,
) -> Iterator[int]:
    """Wait until the run's worker is inside `stage`; yield its pid, still holding it there."""
    if stage in SLOWED:

        def mid_stage():
            if _stage(engine, document_id) != stage:
                return None
            if len(paid_bodies(fake)) < SLOWED[stage][1]:
                return None
            return running_step_pid(engine, run_id)

        yield wait_until(mid_stage, timeout, f"the run to be {stage}", interval=0.05)
        return
    with engine.connect() as conn:
        holder = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar_one()
        if stage == "extracting":
            # Held after extracting the book, before it writes the title to the document row.
            wait_until(
                lambda: _stage(engine, document_id) == "extracting",
                timeout,
                "the run to be extracting",
                interval=0.005,
            )
            conn.execute(
                sa.text("SELECT 1 FROM documents WHERE id = :id FOR UPDATE"), {"id": document_id}
            )
        elif stage == "connecting":
            # Held where the connections step writes, inside its transaction (the embeddings
            # check before it reads vectors, so the lock is on the connections table).
            wait_until(
                lambda: _stage(engine, document_id) == "embedded",
                timeout,
                "the run to be embedded",
                interval=0.005,
            )
            conn.execute(sa.text("LOCK TABLE connections IN ACCESS EXCLUSIVE MODE"))
            wait_until(
                lambda: _stage(engine, document_id) == "connecting",
                timeout,
                "the run to be connecting",
                interval=0.05,
            )
        else:
            raise ValueError(f"no crash point for stage {stage!r}")
        # The worker cannot leave the stage while the lock is held: check it had not yet.
        assert _stage(engine, document_id) == stage, f"the run left {stage} before it was held"
        # Killed before it reaches the lock, the worker could be between sending an AI request
        # and committing its answer, which the retry would pay again.
        wait_until(
            lambda: _waiting_for(engine, holder), timeout, f"the run to wait in {stage}", 0.02
        )
        try:
            yield wait_until(
                lambda: running_step_pid(engine, run_id), timeout, "the step's worker", 0.05
            )
        finally:
            conn.rollback()
