"""How a stage's database errors are classified and described (db/failures.py): a database
that is down is transient, also when wrapped, and is described by the driver's message without
the statement; and when the database cannot take the failure (or the heartbeat's end), the step
still fails with its own error. The rules without the database: core/test_failures.py."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from doc_pipeline.core.books import InvalidBookError
from doc_pipeline.core.failures import INVALID_INPUT, PERMANENT, TRANSIENT
from doc_pipeline.db import store
from doc_pipeline.db.failures import classify, describe
from doc_pipeline.db.heartbeats import Heartbeat
from doc_pipeline.db.stage_tracking import tracked_stage
from doc_pipeline_tests.processes import free_port


class OrchestratorError(Exception):
    """Stands for a wrapper such as dagster-postgres' "too many retries for DB connection"."""


def _database_error(kind=sa.exc.OperationalError, message="server closed the connection"):
    return kind(
        "INSERT INTO chunks (content) VALUES (%(content)s)",
        {"content": "x" * 5000},
        psycopg.OperationalError(message),
    )


def test_a_database_that_is_down_is_transient_also_when_wrapped():
    down = _database_error()
    assert classify(down) == TRANSIENT
    try:
        raise OrchestratorError("too many retries for DB connection") from down
    except OrchestratorError as wrapped:
        assert classify(wrapped) == TRANSIENT
    closed = _database_error(sa.exc.InterfaceError, "the connection is closed")
    assert classify(closed) == TRANSIENT


def test_a_statement_error_or_a_bug_is_permanent_and_a_bad_book_invalid_input():
    assert classify(_database_error(sa.exc.IntegrityError, "duplicate key")) == PERMANENT
    assert classify(ValueError("bug")) == PERMANENT
    assert classify(InvalidBookError("book.epub: not a zip file")) == INVALID_INPUT


def test_a_database_error_is_described_by_the_driver_without_the_statement_or_its_rows():
    message = describe(_database_error(message="terminating connection\nserver closed it"))
    assert message == (
        "database unavailable (OperationalError): terminating connection server closed it"
    )
    assert "INSERT" not in message and "xxxx" not in message


def test_a_failure_that_cannot_be_recorded_still_fails_with_the_stage_error(monkeypatch):
    def database_down(*args, **kwargs):
        raise _database_error(message="connection refused")

    monkeypatch.setattr(store, "set_stage", lambda *args, **kwargs: None)
    monkeypatch.setattr(store, "mark_failed", database_down)
    with pytest.raises(ValueError) as raised, tracked_stage(None, "doc", "chunking", "chunked"):
        raise ValueError("the stage's own error")
    assert str(raised.value) == "the stage's own error"
    (note,) = raised.value.__notes__
    assert note.startswith("(the failure could not be recorded: database unavailable")


def test_a_heartbeat_that_cannot_record_its_end_lets_the_step_error_through():
    engine = sa.create_engine(
        f"postgresql+psycopg://u:p@127.0.0.1:{free_port()}/nothing", poolclass=sa.NullPool
    )
    beat = Heartbeat(engine, run_id="run", step_key="chunks", document_id="doc")
    error = ValueError("the step's own error")
    assert beat.__exit__(ValueError, error, None) is None  # not swallowed, not replaced
    with pytest.raises(sa.exc.OperationalError):
        beat.__exit__(None, None, None)  # a step that succeeded: the write error is its own
