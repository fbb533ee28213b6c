from datetime import UTC, datetime, timedelta

from doc_pipeline.core.resume import (
    GAVE_UP,
    DocumentState,
    GiveUp,
    RecoveryPolicy,
    Resume,
    RunOutcome,
    decide,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
POLICY = RecoveryPolicy(
    max_attempts=3,
    initial_backoff=timedelta(seconds=30),
    max_backoff=timedelta(minutes=10),
    dagster_grace=timedelta(minutes=2),
)
TRANSIENT_FAILURE = DocumentState("failed", "transient", "AIUnavailable: 503 for 6 attempts")


def run(run_id: str, *, failed=True, ago=timedelta(minutes=5), will_retry=False, retried=False):
    return RunOutcome(run_id, failed, NOW - ago, will_retry, retried)


def test_a_failed_run_is_resumed_after_its_backoff():
    assert (
        decide([run("a", ago=timedelta(seconds=29))], TRANSIENT_FAILURE, now=NOW, policy=POLICY)
        is None
    )
    assert decide(
        [run("a", ago=timedelta(seconds=31))], TRANSIENT_FAILURE, now=NOW, policy=POLICY
    ) == Resume("a", 2)


def test_the_backoff_doubles_with_each_failure_and_is_capped():
    assert POLICY.backoff(1) == timedelta(seconds=30)
    assert POLICY.backoff(2) == timedelta(seconds=60)
    assert POLICY.backoff(3) == timedelta(seconds=120)
    assert POLICY.backoff(10) == timedelta(minutes=10)
    second = [run("b", ago=timedelta(seconds=45)), run("a")]
    assert decide(second, TRANSIENT_FAILURE, now=NOW, policy=POLICY) is None
    second = [run("b", ago=timedelta(seconds=61)), run("a")]
    assert decide(second, TRANSIENT_FAILURE, now=NOW, policy=POLICY) == Resume("b", 3)


def test_dagster_gets_its_grace_to_retry_first():
    due = [run("a", ago=timedelta(seconds=60), will_retry=True)]
    assert decide(due, TRANSIENT_FAILURE, now=NOW, policy=POLICY) is None
    # Its retry never came (for example, launching it failed).
    late = [run("a", ago=timedelta(minutes=3), will_retry=True)]
    assert decide(late, TRANSIENT_FAILURE, now=NOW, policy=POLICY) == Resume("a", 2)
    retried = [run("a", ago=timedelta(minutes=3), will_retry=True, retried=True)]
    assert decide(retried, TRANSIENT_FAILURE, now=NOW, policy=POLICY) is None


def test_after_max_attempts_in_a_row_the_document_is_given_up_with_the_reason():
    runs = [run("c"), run("b"), run("a")]
    decision = decide(runs, TRANSIENT_FAILURE, now=NOW, policy=POLICY)
    assert isinstance(decision, GiveUp) and decision.failed_run_id == "c"
    assert decision.message.startswith(f"{GAVE_UP} 3 failed attempts")
    assert "AIUnavailable: 503" in decision.message
    given_up = DocumentState("failed", "transient", decision.message)
    assert decide(runs, given_up, now=NOW, policy=POLICY) is None


def test_only_failures_since_the_last_success_count():
    runs = [run("c"), run("b"), run("ok", failed=False), run("a")]
    assert decide(runs, TRANSIENT_FAILURE, now=NOW, policy=POLICY) == Resume("c", 3)


def test_nothing_is_done_for_live_runs_bad_input_or_bugs():
    assert decide([], TRANSIENT_FAILURE, now=NOW, policy=POLICY) is None
    running = [run("b", failed=False), run("a")]
    assert decide(running, TRANSIENT_FAILURE, now=NOW, policy=POLICY) is None
    for error_class in ("invalid_input", "permanent"):
        state = DocumentState("failed", error_class, "not a book")
        assert decide([run("a")], state, now=NOW, policy=POLICY) is None


def test_a_run_that_failed_before_any_stage_is_resumed_too():
    state = DocumentState("embedded", None, None)
    assert decide([run("a")], state, now=NOW, policy=POLICY) == Resume("a", 2)
    decision = decide([run("c"), run("b"), run("a")], state, now=NOW, policy=POLICY)
    assert isinstance(decision, GiveUp) and "before a stage started" in decision.message
