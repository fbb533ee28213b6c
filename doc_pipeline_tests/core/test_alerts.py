"""Which failed runs are final (nothing retries them) and what their alert says."""

from datetime import UTC, datetime, timedelta
from itertools import product

from doc_pipeline.core.alerts import alert_text, slack_body
from doc_pipeline.core.resume import (
    GAVE_UP,
    DocumentState,
    FinalFailure,
    GiveUp,
    RecoveryPolicy,
    RunOutcome,
    decide,
    final_failure,
)

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
POLICY = RecoveryPolicy(max_attempts=3)
BAD_FILE = DocumentState(
    "failed", "invalid_input", "not-a-book.epub: not a ZIP/EPUB archive (looks like a PNG image)"
)
TRANSIENT_FAILURE = DocumentState("failed", "transient", "AIUnavailable: 503 for 6 attempts")


def run(run_id: str, *, failed=True, will_retry=False, retried=False) -> RunOutcome:
    return RunOutcome(run_id, failed, NOW - timedelta(minutes=5), will_retry, retried)


def final(runs, document, *, dagster_will_retry=False, policy=POLICY):
    return final_failure(
        runs, document, policy, run_id=runs[0].run_id, dagster_will_retry=dagster_will_retry
    )


def test_bad_input_and_bugs_are_final_at_once():
    assert final([run("a")], BAD_FILE) == FinalFailure(
        "invalid_input", BAD_FILE.error_message, given_up=False
    )
    check = DocumentState("failed", "permanent", "check chunks_cover_markdown failed: 3 gaps")
    assert final([run("a")], check) == FinalFailure("permanent", check.error_message, False)


def test_a_transient_failure_is_final_only_when_the_reaper_gives_up():
    assert final([run("a")], TRANSIENT_FAILURE) is None
    assert final([run("b"), run("a")], TRANSIENT_FAILURE) is None
    third = final([run("c"), run("b"), run("a")], TRANSIENT_FAILURE)
    assert third == FinalFailure(
        "transient",
        f"{GAVE_UP} 3 failed attempts; the last: AIUnavailable: 503 for 6 attempts",
        given_up=True,
    )
    # A success in between starts the count again.
    assert final([run("c"), run("b"), run("ok", failed=False), run("a")], TRANSIENT_FAILURE) is None


def test_it_agrees_with_the_reaper_whichever_looks_first():
    runs = [run("c"), run("b"), run("a")]
    give_up = decide(runs, TRANSIENT_FAILURE, now=NOW, policy=POLICY)
    assert isinstance(give_up, GiveUp)
    before = final(runs, TRANSIENT_FAILURE)
    marked = DocumentState("failed", "transient", give_up.message)  # what the reaper writes
    assert before == final(runs, marked) == FinalFailure("transient", give_up.message, True)


def test_final_exactly_when_the_reaper_gives_up_or_never_retries():
    states = [
        TRANSIENT_FAILURE,
        DocumentState("embedded", None, None),  # the run failed outside any stage
        DocumentState("failed", "transient", f"{GAVE_UP} 3 failed attempts; the last: x"),
        BAD_FILE,
        DocumentState("failed", "permanent", "a bug"),
    ]
    for state, failures, success_before in product(states, range(1, 5), (False, True)):
        runs = [run(f"r{i}") for i in range(failures)]
        if success_before:
            runs.append(run("ok", failed=False))
        decision = decide(runs, state, now=NOW, policy=POLICY)
        found = final(runs, state)
        never_retried = state.error_class in ("invalid_input", "permanent") or (
            state.error_message or ""
        ).startswith(GAVE_UP)
        assert (found is not None) == (isinstance(decision, GiveUp) or never_retried), (
            state,
            failures,
        )
        if isinstance(decision, GiveUp):
            assert found.given_up and found.reason == decision.message


def test_not_final_when_dagster_retries_or_a_newer_run_exists():
    assert final([run("a")], BAD_FILE, dagster_will_retry=True) is None
    assert final([run("a", retried=True)], BAD_FILE) is None
    # The reaper's "Dagster may retry" alone does not hide a final failure.
    assert final([run("a", will_retry=True)], BAD_FILE) is not None
    newer = [run("b", failed=False), run("a")]
    assert final_failure(newer, BAD_FILE, POLICY, run_id="a", dagster_will_retry=False) is None
    assert final_failure([], BAD_FILE, POLICY, run_id="a", dagster_will_retry=False) is None


def test_the_reason_is_one_bounded_line():
    state = DocumentState("failed", "permanent", "Traceback:\n  boom\n\n" + "x" * 2000)
    reason = final([run("a")], state).reason
    assert "\n" not in reason and reason.startswith("Traceback: boom x")
    assert len(reason) == 500 and reason.endswith("…")
    assert final([run("a")], DocumentState("failed", "permanent", None)).reason


def test_the_alert_names_the_file_the_class_the_reason_and_the_run():
    failure = final([run("a")], BAD_FILE)
    text = alert_text(
        document_id="5e12a3ccd5c456af",
        source_file="/uploads/not-a-book.epub",
        title=None,
        run_id="c28dcc76-0b5e-4a3c-9d7e-1f2a3b4c5d6e",
        failure=failure,
    )
    assert text == (
        "doc_pipeline: not-a-book.epub (5e12a3cc…) failed, will not be retried (invalid_input): "
        "not a ZIP/EPUB archive (looks like a PNG image). Run c28dcc76."
    )
    given_up = final([run("c"), run("b"), run("a")], TRANSIENT_FAILURE)
    text = alert_text(
        document_id="fe3f112c75ea28d0",
        source_file="pg1661.epub",
        title="The Adventures of Sherlock Holmes",
        run_id="0123456789abcdef",
        failure=given_up,
    )
    assert text.startswith(
        "doc_pipeline: pg1661.epub (The Adventures of Sherlock Holmes, fe3f112c…) failed, "
        "will not be retried (transient): gave up after 3 failed attempts; the last: "
    )


def test_the_body_cannot_mention_a_channel():
    body = slack_body("<!channel> & <https://evil.example|click>.epub failed")
    assert body == {"text": "&lt;!channel&gt; &amp; &lt;https://evil.example|click&gt;.epub failed"}
