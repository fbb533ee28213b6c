"""Stage bookkeeping shared by every step: the document's stage while a step works on it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy.exc
from sqlalchemy.engine import Engine

from doc_pipeline.db import store
from doc_pipeline.db.failures import classify, describe


@contextmanager
def tracked_stage(engine: Engine, document_id: str, running: str, done: str) -> Iterator[None]:
    """Mark the document `running`, then `done`; on any error mark it failed with its class.

    When the database is down the failure cannot be written: the original error still fails
    the step, and the document stays `running` until the reaper (or the next `ingest`) finds
    its run dead and marks it failed."""
    store.set_stage(engine, document_id, running)
    try:
        yield
    except BaseException as error:
        try:
            store.mark_failed(engine, document_id, classify(error), describe(error))
        except sqlalchemy.exc.SQLAlchemyError as recording:
            error.add_note(f"(the failure could not be recorded: {describe(recording)})")
        raise
    store.set_stage(engine, document_id, done)
