"""Heartbeats (DESIGN rule 5): liveness is observed, not assumed.

A step that can run long beats from a daemon thread into the app database every
`interval_seconds`; a step blocked for 20 minutes in one AI call keeps beating. When silence
means a run is dead is the reaper's rule (`doc_pipeline.core.reaper`). The clock is injectable
so that both can be tested without waiting.
"""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from types import TracebackType

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from doc_pipeline.db.models import Heartbeat as HeartbeatRow

DEFAULT_INTERVAL_SECONDS = 60.0

Clock = Callable[[], datetime]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Heartbeat:
    """Context manager: beats while the block runs, and stops on every way out of it."""

    def __init__(
        self,
        engine: Engine,
        *,
        run_id: str,
        step_key: str,
        document_id: str | None,
        interval_seconds: float = DEFAULT_INTERVAL_SECONDS,
        clock: Clock = utc_now,
    ) -> None:
        if interval_seconds <= 0:
            raise ValueError("interval_seconds must be positive")
        self.engine = engine
        self.run_id = run_id
        self.step_key = step_key
        self.document_id = document_id
        self.interval_seconds = interval_seconds
        self.clock = clock
        self.beats = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> Heartbeat:
        started = self.clock()
        self._write(started_at=started)  # the first beat before any work: never "no beat yet"
        self._thread = threading.Thread(
            target=self._beat_until_stopped,
            name=f"heartbeat-{self.run_id[:8]}-{self.step_key}",
            daemon=True,  # a dying worker must not be kept alive by its heartbeat
        )
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(HeartbeatRow)
                    .where(
                        HeartbeatRow.run_id == self.run_id, HeartbeatRow.step_key == self.step_key
                    )
                    .values(ended_at=self.clock())
                )
        except sa.exc.SQLAlchemyError:
            # The step's own error (often the same outage) is the one to report; without an
            # end the reaper judges the run by its pid and the age of its last beat.
            if exc is None:
                raise

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _beat_until_stopped(self) -> None:
        while not self._stop.wait(self.interval_seconds):
            try:
                self._write()
            except sa.exc.SQLAlchemyError:
                # A missed beat is not a failure of the step: the next one may get through,
                # and if none do, the reaper will see the silence, which is the truth.
                continue

    def _write(self, started_at: datetime | None = None) -> None:
        now = self.clock()
        values = {
            "run_id": self.run_id,
            "step_key": self.step_key,
            "document_id": self.document_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": started_at or now,
            "beat_at": now,
            "ended_at": None,
        }
        statement = insert(HeartbeatRow).values(**values)
        update = {"beat_at": now, "ended_at": None, "host": values["host"], "pid": values["pid"]}
        if started_at is not None:
            update["started_at"] = started_at
        with self.engine.begin() as conn:
            conn.execute(
                statement.on_conflict_do_update(index_elements=["run_id", "step_key"], set_=update)
            )
        self.beats += 1


def newest_beats(engine: Engine, run_ids: list[str]) -> dict[str, HeartbeatRow]:
    """Each run's newest heartbeat row (of any of its steps)."""
    if not run_ids:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(HeartbeatRow.__table__)
            .where(HeartbeatRow.run_id.in_(run_ids))
            .distinct(HeartbeatRow.run_id)
            .order_by(HeartbeatRow.run_id, HeartbeatRow.beat_at.desc())
        )
        return {row.run_id: row for row in rows}


def last_beat(engine: Engine, run_id: str) -> datetime | None:
    """The newest beat of any step of the run."""
    row = newest_beats(engine, [run_id]).get(run_id)
    return row.beat_at if row else None
