"""How an error is classified and described without the database (core/failures.py): a full
disk is transient, other file errors permanent, a bad book invalid input; messages name the
problem and never show a password."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from doc_pipeline.core.atomic_write import StorageWriteError
from doc_pipeline.core.books import InvalidBookError
from doc_pipeline.core.failures import (
    INVALID_INPUT,
    PERMANENT,
    TRANSIENT,
    KnownFailure,
    classify,
    describe,
    is_expected,
    redact,
)


class OrchestratorError(Exception):
    """Stands for a wrapper such as an orchestrator's "too many retries"."""


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EFBIG])
def test_a_full_disk_quota_or_size_limit_is_transient(code):
    error = OSError(code, "no room")
    assert classify(error) == TRANSIENT
    assert classify(StorageWriteError(Path("/blobs/x.json"), error)) == TRANSIENT


@pytest.mark.parametrize("code", [errno.ENOENT, errno.EACCES, errno.EISDIR])
def test_other_file_errors_are_permanent(code):
    assert classify(OSError(code, "no")) == PERMANENT


def test_a_bug_is_permanent_and_a_bad_book_invalid_input():
    assert classify(ValueError("bug")) == PERMANENT
    assert classify(InvalidBookError("book.epub: not a zip file")) == INVALID_INPUT


def test_a_layer_adds_its_own_transient_errors_and_lines_also_when_wrapped():
    class Outage(Exception):
        pass

    try:
        raise OrchestratorError("too many retries") from Outage("down")
    except OrchestratorError as wrapped:
        assert classify(wrapped) == PERMANENT
        assert classify(wrapped, also_transient=lambda e: isinstance(e, Outage)) == TRANSIENT
        explain = lambda e: f"outage: {e}" if isinstance(e, Outage) else None  # noqa: E731
        assert describe(wrapped, explain=explain) == "outage: down"
        assert describe(wrapped) == "OrchestratorError: too many retries"


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


def test_bad_input_outages_and_known_failures_are_expected_a_bug_is_not():
    for error in (InvalidBookError("a.epub: empty"), TimeoutError("slow"), KnownFailure("no")):
        assert is_expected(error, classify(error))
    try:
        raise RuntimeError("the stage failed") from KnownFailure("refused")
    except RuntimeError as wrapped:
        assert is_expected(wrapped, classify(wrapped))
    bug = KeyError("chunk")
    assert not is_expected(bug, classify(bug))
