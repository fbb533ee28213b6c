"""When a failed document run is resumed by the reaper, and when the reaper gives up.

Dagster's run retries re-execute a crashed run from its failed step, but not always: a run
started outside a code location (the CLI's) has no origin to re-execute, a retry whose launch
failed is never retried again, and step failures are not retried at all (a bad file must not
be). The reaper covers these with its own bounded retries, with exponential backoff; it steps in
only after Dagster has had the chance to retry and did not.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from doc_pipeline.core.failures import INVALID_INPUT, PERMANENT, TRANSIENT

GAVE_UP = "gave up after"


@dataclass(frozen=True)
class RecoveryPolicy:
    max_attempts: int = 3  # runs of a document in a row that may fail, the first included
    initial_backoff: timedelta = timedelta(seconds=30)  # doubled after every failed attempt
    max_backoff: timedelta = timedelta(minutes=10)
    dagster_grace: timedelta = timedelta(minutes=2)  # Dagster's own retry gets this long first

    def backoff(self, failures: int) -> timedelta:
        return min(self.initial_backoff * 2 ** max(failures - 1, 0), self.max_backoff)


@dataclass(frozen=True)
class RunOutcome:
    """One run of a document, as the reaper sees it."""

    run_id: str
    failed: bool  # False: it succeeded, or it is queued or running
    ended_at: datetime | None
    dagster_will_retry: bool  # Dagster's own retry is due (it has an origin and retries left)
    dagster_retried: bool  # Dagster has created its retry run


@dataclass(frozen=True)
class DocumentState:
    stage: str | None
    error_class: str | None
    error_message: str | None


@dataclass(frozen=True)
class Resume:
    failed_run_id: str
    attempt: int  # the attempt the resumed run will be, counting the first run as 1


@dataclass(frozen=True)
class GiveUp:
    failed_run_id: str
    message: str


def decide(
    runs_newest_first: list[RunOutcome],
    document: DocumentState,
    *,
    now: datetime,
    policy: RecoveryPolicy,
) -> Resume | GiveUp | None:
    """What to do about a document whose newest run failed; None: nothing (yet)."""
    if not runs_newest_first or not runs_newest_first[0].failed:
        return None
    if document.stage == "failed":
        if document.error_class in (INVALID_INPUT, PERMANENT):
            return None  # reported once; retrying a bad file or a bug changes nothing
        if (document.error_message or "").startswith(GAVE_UP):
            return None
        last_error = document.error_message
    else:  # the run failed outside any stage: its launch, or a resource that did not start
        last_error = "the run failed before a stage started"
    newest = runs_newest_first[0]
    failures = 0
    for run in runs_newest_first:
        if not run.failed:
            break
        failures += 1
    if failures >= policy.max_attempts:
        return GiveUp(
            newest.run_id,
            f"{GAVE_UP} {failures} failed attempts; the last: {last_error}",
        )
    if newest.dagster_retried:
        return None
    ended = newest.ended_at or now
    if newest.dagster_will_retry and now - ended < policy.dagster_grace:
        return None
    if now - ended < policy.backoff(failures):
        return None
    return Resume(newest.run_id, attempt=failures + 1)


@dataclass(frozen=True)
class FinalFailure:
    """A failed run of a document that nothing will retry on its own: what to tell a person."""

    error_class: str
    reason: str  # one line
    given_up: bool  # the reaper's attempts are used up (else: bad input or a bug)


REASON_MAX_CHARS = 500  # an alert is read in a chat line, not a log


def final_failure(
    runs_newest_first: list[RunOutcome],
    document: DocumentState,
    policy: RecoveryPolicy,
    *,
    run_id: str,
    dagster_will_retry: bool,
) -> FinalFailure | None:
    """Whether the failure of run `run_id` is final: neither Dagster's run retries nor the
    reaper (`decide`) will run the document again. None: it will be retried, or it has been
    (a newer run of the document exists).

    `dagster_will_retry` is Dagster's verdict (the run's `dagster/will_retry` tag is true and
    the run has an origin to re-execute), not `RunOutcome.dagster_will_retry`, which is a retry
    the reaper waits for and that may never come: such a retry must not hide a final failure.
    The reaper's count of failures in a row decides as in `decide`, so both agree on when a
    document is given up, whichever of them looks first."""
    if not runs_newest_first or runs_newest_first[0].run_id != run_id:
        return None
    newest = runs_newest_first[0]
    if not newest.failed or dagster_will_retry or newest.dagster_retried:
        return None
    if document.stage == "failed":
        error_class = document.error_class or TRANSIENT
        if error_class in (INVALID_INPUT, PERMANENT):
            return FinalFailure(error_class, _one_line(document.error_message), given_up=False)
        if (document.error_message or "").startswith(GAVE_UP):  # the reaper was first
            return FinalFailure(error_class, _one_line(document.error_message), given_up=True)
        last_error = document.error_message
    else:  # as in `decide`: the run failed outside any stage
        error_class, last_error = TRANSIENT, "the run failed before a stage started"
    failures = 0
    for run in runs_newest_first:
        if not run.failed:
            break
        failures += 1
    if failures < policy.max_attempts:
        return None  # the reaper (or Dagster) runs it again
    message = f"{GAVE_UP} {failures} failed attempts; the last: {last_error}"
    return FinalFailure(error_class, _one_line(message), given_up=True)


def _one_line(text: str | None) -> str:
    line = " ".join((text or "").split()) or "no reason was recorded"
    if len(line) > REASON_MAX_CHARS:
        line = line[: REASON_MAX_CHARS - 1].rstrip() + "…"
    return line
