"""Stage bookkeeping shared by every step: what a user sees in `documents.stage`."""

from __future__ import annotations

import errno
import re
from collections.abc import Iterator
from contextlib import contextmanager

import sqlalchemy.exc
from sqlalchemy.engine import Engine

from doc_pipeline.core.epub import InvalidBookError
from doc_pipeline.db import store

TRANSIENT = "transient"  # retrying later may succeed (database or network trouble)
PERMANENT = "permanent"  # a bug or a state that a retry will not change
INVALID_INPUT = "invalid_input"  # the file itself is the problem; never retried

# A full disk, a used-up quota or a file size limit: freeing space and retrying works.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# Errors of the database connection rather than of the statement: the server is down,
# restarting, unreachable, or dropped the connection (OperationalError), or the driver found
# the connection already closed (InterfaceError).
_DATABASE_UNAVAILABLE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)
# user:password@ in URLs, and password=... in key/value connection strings.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^@\s]*@", re.IGNORECASE)
_DSN_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and those it wraps (`raise ... from ...`), outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def _transient(error: BaseException) -> bool:
    if isinstance(error, OSError) and error.errno in STORAGE_FULL_ERRNOS:
        return True
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(
        error, (*_DATABASE_UNAVAILABLE, ConnectionError, TimeoutError, KeyboardInterrupt)
    )


def classify(error: BaseException) -> str:
    """Invalid input, transient or permanent. A wrapper counts as what it wraps: an
    orchestrator's "too many retries" raised from a refused connection is transient."""
    if isinstance(error, InvalidBookError):
        return INVALID_INPUT
    if any(_transient(e) for e in _chain(error)):
        return TRANSIENT
    return PERMANENT


def redact(text: str) -> str:
    """The text without passwords of database URLs or connection strings in it."""
    text = _URL_PASSWORD.sub(r"\g<head>***@", text)
    return _DSN_PASSWORD.sub(r"\g<head>***", text)


def _database_problem(error: sqlalchemy.exc.DBAPIError) -> str:
    # The driver's own message, without SQLAlchemy's statement and parameters (a chunks
    # write would put whole chapters into the message).
    driver_error = error.orig or error
    reason = " ".join(str(driver_error).split()) or "no message"
    what = "unavailable" if isinstance(error, _DATABASE_UNAVAILABLE) else "error"
    return f"database {what} ({type(driver_error).__name__}): {reason}"


def describe(error: BaseException) -> str:
    """One line for `documents.error_message` and the user: what went wrong and where."""
    if isinstance(error, InvalidBookError):
        return redact(str(error))
    for cause in _chain(error):
        if isinstance(cause, sqlalchemy.exc.DBAPIError):
            return redact(_database_problem(cause))
    return redact(f"{type(error).__name__}: {error}".strip())


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
