"""Failures of the database itself: which are transient, and how to say them in one line.

`classify` and `describe` are core's (`doc_pipeline.core.failures`) with these rules added, and
are what the stages, `ingest` and the reaper use.
"""

from __future__ import annotations

import sqlalchemy.exc

from doc_pipeline.core import failures

# Errors of the database connection rather than of the statement: the server is down,
# restarting, unreachable, or dropped the connection (OperationalError), or the driver found
# the connection already closed (InterfaceError).
_DATABASE_UNAVAILABLE = (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)


def database_unavailable(error: BaseException) -> bool:
    if isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated:
        return True
    return isinstance(error, _DATABASE_UNAVAILABLE)


def database_problem(error: BaseException) -> str | None:
    """The driver's own message, without SQLAlchemy's statement and parameters (a chunks
    write would put whole chapters into the message); None for other errors."""
    if not isinstance(error, sqlalchemy.exc.DBAPIError):
        return None
    driver_error = error.orig or error
    reason = " ".join(str(driver_error).split()) or "no message"
    what = "unavailable" if isinstance(error, _DATABASE_UNAVAILABLE) else "error"
    return f"database {what} ({type(driver_error).__name__}): {reason}"


def classify(error: BaseException) -> str:
    """Invalid input, transient (also a database that is down) or permanent."""
    return failures.classify(error, also_transient=database_unavailable)


def describe(error: BaseException) -> str:
    """One line for `documents.error_message` and the user, never with a password."""
    return failures.describe(error, explain=database_problem)
