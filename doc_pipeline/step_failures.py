"""How a step's failure reaches Dagster, and how a run's failure is read back.

An expected failure (a bad file, an outage, a refused or unusable AI answer: see
`doc_pipeline.core.failures.is_expected`) is raised as Dagster's `Failure`, the framework's own
way to fail a step on purpose: its description is the one line a user reads, its metadata the
error class, and the original error stays its cause, with the whole trace, in the run's event
log. Anything else is a bug and reaches Dagster unchanged, as an unexpected error.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager

from dagster import DagsterEvent, Failure, MetadataValue

from doc_pipeline.core.failures import TRANSIENT, is_expected, known_failure_names
from doc_pipeline.db.failures import classify, describe

# Errors whose presence in a step failure's chain marks it as expected, besides KnownFailures
# (e.g. a provider's refused settings): Failure (raised here, or by a stage on purpose) and a
# failed blocking asset check (the check recorded its reason).
_EXPECTED_ERRORS = frozenset({"Failure", "DagsterAssetCheckFailedError"})


@contextmanager
def expected_failures() -> Iterator[None]:
    """Raise an expected error as a `Failure` with its one-line reason; a transient one may be
    retried, others (invalid input, a permanent failure) may not; a bug passes unchanged."""
    try:
        yield
    except Failure:
        raise
    except Exception as error:
        kind = classify(error)
        if not is_expected(error, kind):
            raise
        raise Failure(
            description=describe(error),
            metadata={"error_class": MetadataValue.text(kind)},
            allow_retries=kind == TRANSIENT,
        ) from error


def unexpected_error(events: Iterable[DagsterEvent]) -> str | None:
    """The whole trace of the first failure of a run that was not expected (a bug), or None
    when the run failed only in expected ways or did not fail. Step failures say why a run
    failed; the run's own failure counts only when no step failed (e.g. it could not start)."""
    events = list(events)
    failures = [e for e in events if e.is_step_failure] or [e for e in events if e.is_failure]
    for event in failures:
        error = getattr(event.event_specific_data, "error", None)
        if error is None:
            continue
        chain, current = [], error
        while current is not None:
            chain.append(current)
            current = current.cause
        expected = _EXPECTED_ERRORS | known_failure_names()
        if not any(e.cls_name in expected for e in chain):
            where = f"step {event.step_key}" if event.step_key else "the run"
            return f"in {where}:\n{error.to_string()}"
    return None
