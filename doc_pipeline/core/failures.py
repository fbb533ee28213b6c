"""What kind of failure an error is, and the one line a user reads about it.

Three classes: `invalid_input` (the file itself; never retried), `transient` (retrying later
may succeed: a full disk, a network or database outage) and `permanent` (a state a retry will
not change). A wrapper counts as what it wraps, so an orchestrator's "too many retries" raised
from a refused connection is transient. Persistence errors are recognised by the database layer,
which passes its own rules in (`doc_pipeline.db.failures`).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator

from doc_pipeline.core.books import InvalidBookError

TRANSIENT = "transient"  # retrying later may succeed (database or network trouble)
PERMANENT = "permanent"  # a bug or a state that a retry will not change
INVALID_INPUT = "invalid_input"  # the file itself is the problem; never retried

# A full disk, a used-up quota or a file size limit: freeing space and retrying works.
STORAGE_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
# user:password@ in URLs, and password=... in key/value connection strings.
_URL_PASSWORD = re.compile(r"(?P<head>[a-z][a-z0-9+.-]*://[^:/?#@\s]*:)[^@\s]*@", re.IGNORECASE)
_DSN_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)('[^']*'|\S+)", re.IGNORECASE)


class KnownFailure(Exception):
    """An error the pipeline raises on purpose, with a reason a user can act on (an AI answer
    that stays unusable, a refusal, an answer of the wrong shape): expected, not a bug."""


class InvalidSettings(KnownFailure, ValueError):
    """Settings (resource or run config) that cannot work, named with the reason."""


def known_failure_names() -> frozenset[str]:
    """The class names of KnownFailure and its subclasses (for errors known only by name, as
    in a run's event log)."""
    names, todo = set(), [KnownFailure]
    while todo:
        cls = todo.pop()
        names.add(cls.__name__)
        todo.extend(cls.__subclasses__())
    return frozenset(names)


def error_chain(error: BaseException) -> Iterator[BaseException]:
    """The error and those it wraps (`raise ... from ...`), outermost first."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__


def is_transient(error: BaseException) -> bool:
    """This error alone (not what it wraps) says that a later retry may succeed."""
    if isinstance(error, OSError) and error.errno in STORAGE_FULL_ERRNOS:
        return True
    return isinstance(error, (ConnectionError, TimeoutError, KeyboardInterrupt))


def classify(
    error: BaseException, also_transient: Callable[[BaseException], bool] = lambda error: False
) -> str:
    """Invalid input, transient or permanent; `also_transient` adds a layer's own rules."""
    if isinstance(error, InvalidBookError):
        return INVALID_INPUT
    if any(is_transient(e) or also_transient(e) for e in error_chain(error)):
        return TRANSIENT
    return PERMANENT


def is_expected(error: BaseException, kind: str) -> bool:
    """True for a failure the pipeline anticipates (a bad file, an outage, a KnownFailure),
    False for a bug: its trace is worth showing."""
    return kind != PERMANENT or any(isinstance(e, KnownFailure) for e in error_chain(error))


def redact(text: str) -> str:
    """The text without passwords of database URLs or connection strings in it."""
    text = _URL_PASSWORD.sub(r"\g<head>***@", text)
    return _DSN_PASSWORD.sub(r"\g<head>***", text)


def describe(
    error: BaseException, explain: Callable[[BaseException], str | None] = lambda error: None
) -> str:
    """One line for `documents.error_message` and the user: what went wrong and where.
    `explain` gives a layer's own line for an error in the chain (None: not its kind)."""
    if isinstance(error, InvalidBookError):
        return redact(str(error))
    for cause in error_chain(error):
        if (line := explain(cause)) is not None:
            return redact(line)
    return redact(f"{type(error).__name__}: {error}".strip())
