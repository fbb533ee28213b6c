"""Landing a kill inside one stage of a document run, for the crash tests and bench/recovery.py.

The AI stages are slowed down at the fake server so that the run worker is caught between two
requests. Extracting and connecting take milliseconds, so there the run worker is held inside
the stage by a lock this helper takes on a row or table the stage needs next; it waits there,
heartbeating, until it is killed. Either way the helper checks that the worker really is inside
the stage before it hands over the worker's pid.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from doc_pipeline.db import store
from doc_pipeline_tests.dagster_ui import running_step_pid
from doc_pipeline_tests.fakes import FakeGemini
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


def requests_in_flight(fake: FakeGemini, engine: Engine, document_id: str, stage: str) -> int:
    """The stage's AI requests the run worker has sent and not yet committed to the ledger:
    those the fake is still handling, and those it answered that the ledger does not hold
    yet. A kill now loses these; the retry pays them again, and no more."""
    if stage not in SLOWED:
        return 0
    method = SLOWED[stage][0]
    answered = sum(
        1 for r in fake.requests if r.get("api_method") == method and r.get("status") == 200
    )
    ledger_stage = {"chunking": "chunks", "embedding": "embeddings"}[stage]
    with engine.connect() as conn:
        committed = conn.execute(
            sa.text(
                "SELECT count(*) FROM ai_calls"
                " WHERE outcome = 'paid' AND stage = :stage AND document_id = :doc"
            ),
            {"stage": ledger_stage, "doc": document_id},
        ).scalar_one()
    return fake.in_flight(method) + answered - committed


def slow_down(fake: FakeGemini, stage: str) -> None:
    """Before the run: make the stage's AI requests slow enough to be caught between."""
    if stage in SLOWED:
        fake.add_fault(SLOWED[stage][0], delay_seconds=0.5)


def _stage(engine: Engine, document_id: str) -> str:
    return store.get_document(engine, document_id)["stage"]


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
        try:
            yield wait_until(
                lambda: running_step_pid(engine, run_id), timeout, "the step's worker", 0.05
            )
        finally:
            conn.rollback()
