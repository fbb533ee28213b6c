"""How a stage's error is classified and described (core/stages.py): a full disk and a database
that is down are transient; messages name the problem and never show a password; and when the
database cannot take the failure (or the heartbeat's end), the step still fails with its own
error."""

from __future__ import annotations

import errno
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa

from doc_pipeline.core.atomic_write import StorageWriteError
from doc_pipeline.core.epub import InvalidBookError
from doc_pipeline.core.heartbeat import Heartbeat
from doc_pipeline.core.stages import (
    INVALID_INPUT,
    PERMANENT,
    TRANSIENT,
    classify,
    describe,
    redact,
    tracked_stage,
)
from doc_pipeline.db import store
from doc_pipeline_tests.processes import free_port


class OrchestratorError(Exception):
    """Stands for a wrapper such as dagster-postgres' "too many retries for DB connection"."""


def _database_error(kind=sa.exc.OperationalError, message="server closed the connection"):
    return kind(
        "INSERT INTO chunks (content) VALUES (%(content)s)",
        {"content": "x" * 5000},
        psycopg.OperationalError(message),
    )


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_full_disk_quota_or_size_limit_is_transient(code):
    error = OSError(code, "no room")
    assert classify(error) == TRANSIENT
    assert classify(StorageWriteError(Path("/blobs/x.json"), error)) == TRANSIENT


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EACCES, errno.EISDIR])
def test_other_file_errors_are_permanent(code):
    assert classify(OSError(code, "no")) == PERMANENT


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


def test_a_storage_error_names_the_file_and_the_reason():
    error = StorageWriteError(Path("/blobs/outputs/a.json"), OSError(errno.ENOSPC, "No space"))
    assert describe(error) == "StorageWriteError: could not write /blobs/outputs/a.json: No space"


def test_passwords_are_redacted_from_urls_and_connection_strings():
    text = (
        "postgresql+psycopg://app:s3cr%40t@db:5432/x and host=db password=hunter2 user=app"
        " and password='two words'"
    )
    redacted = redact(text)
    assert "s3cr" not in redacted and "hunter2" not in redacted and "two words" not in redacted
    assert "postgresql+psycopg://app:***@db:5432/x" in redacted and "user=app" in redacted
    error = RuntimeError("cannot reach postgresql://u:topsecret@h/db")
    assert "topsecret" not in describe(error)


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
