"""Stage bookkeeping shared by every step: what a user sees in `documents.stage`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy.exc
from sqlalchemy.engine import Engine

from doc_pipeline.core.epub import InvalidBookError
from doc_pipeline.db import store

TRANSIENT = "transient"  # retrying later may succeed (database or network trouble)
PERMANENT = "permanent"  # a bug or a state that a retry will not change
INVALID_INPUT = "invalid_input"  # the file itself is the problem; never retried


def classify(error: BaseException) -> str:
    if isinstance(error, InvalidBookError):
        return INVALID_INPUT
    if isinstance(
        error, (sqlalchemy.exc.OperationalError, ConnectionError, TimeoutError, KeyboardInterrupt)
    ):
        return TRANSIENT
    return PERMANENT


def describe(error: BaseException) -> str:
    if isinstance(error, InvalidBookError):
        return str(error)
    return f"{type(error).__name__}: {error}".strip()


@contextmanager
def tracked_stage(engine: Engine, document_id: str, running: str, done: str) -> Iterator[None]:
    """Mark the document `running`, then `done`; on any error mark it failed with its class."""
    store.set_stage(engine, document_id, running)
    try:
        yield
    except BaseException as error:
        store.mark_failed(engine, document_id, classify(error), describe(error))
        raise
    store.set_stage(engine, document_id, done)
