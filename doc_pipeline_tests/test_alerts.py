"""The `final_failure_alerts` sensor on real failed runs: `doc-pipeline ingest` of files that
are not books fails real runs on a real Dagster instance and app database; the sensor, evaluated
on a run's real failure event, posts to a real HTTP receiver on loopback (a Slack webhook's
stand-in) only when nothing will retry the document."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from dagster import (
    DagsterEventType,
    DagsterInstance,
    DagsterRun,
    RunsFilter,
    build_run_status_sensor_context,
)

from doc_pipeline.core.failures import TRANSIENT
from doc_pipeline.db import store
from doc_pipeline.resources.alerts import WEBHOOK_URL_ENV, AlertNotSent, Alerts
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.recovery import Recovery
from doc_pipeline.run_recovery import failed_documents
from doc_pipeline.sensors import final_failure_alerts
from doc_pipeline_tests.conftest import CORPUS, create_database
from doc_pipeline_tests.test_ingest import Pipeline

HOSTILE = CORPUS / "hostile"
NOT_A_BOOK = HOSTILE / "not-a-book.epub"  # a PNG: fails as invalid_input
EMPTY_SPINE = HOSTILE / "empty-spine.epub"
PLAIN_ZIP = HOSTILE / "not-a-book-plain-zip.epub"
TOKEN_PATH = "/services/T0000/B0000/s3cr3t-t0k3n"  # as in a Slack webhook URL
OUTAGE = "database unavailable (OperationalError): connection to server at 127.0.0.1 refused"


class Receiver(ThreadingHTTPServer):
    """Records every POST (path, headers, body) and answers like Slack: 200 "ok"."""

    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.posts: list[tuple[str, dict[str, str], bytes]] = []
        self.answer: tuple[int, bytes] = (200, b"ok")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}{TOKEN_PATH}"


class _Handler(BaseHTTPRequestHandler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.posts.append((self.path, dict(self.headers), body))
        status, answer = self.server.answer
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.end_headers()
        self.wfile.write(answer)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


@dataclass
class Failed:
    pipeline: Pipeline
    documents: dict[str, str]  # file name -> document id


@pytest.fixture(scope="module")
def failed(postgres_server, tmp_path_factory) -> Iterator[Failed]:
    """One real failed run of each of three files that are not books."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        pipeline = Pipeline(
            tmp_path_factory.mktemp("home"), create_database(postgres_server), monkeypatch
        )
        monkeypatch.setenv("DOC_PIPELINE_PROVIDER", "local")
        result, outcomes = pipeline.ingest(NOT_A_BOOK, EMPTY_SPINE, PLAIN_ZIP)
        assert result.exit_code == 1
        assert {o["error_class"] for o in outcomes.values()} == {"invalid_input"}, outcomes
        yield Failed(pipeline, {name: o["document_id"] for name, o in outcomes.items()})
        pipeline.engine.dispose()


class Recorder(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def newest_run(instance: DagsterInstance, document_id: str) -> DagsterRun:
    return instance.get_runs(RunsFilter(tags={"dagster/partition": document_id}), limit=1)[0]


def evaluate(instance: DagsterInstance, run: DagsterRun) -> list[logging.LogRecord]:
    """The sensor on the run's real RUN_FAILURE event, as the daemon would call it, with the
    resources definitions.py gives it; returns what it logged."""
    (record,) = instance.get_records_for_run(
        run.run_id, of_type=DagsterEventType.RUN_FAILURE
    ).records
    context = build_run_status_sensor_context(
        sensor_name=final_failure_alerts.name,
        dagster_event=record.event_log_entry.dagster_event,
        dagster_instance=instance,
        dagster_run=run,
        resources={"alerts": Alerts(), "app_database": AppDatabase(), "recovery": Recovery()},
    )
    recorder = Recorder()
    context.log.addHandler(recorder)
    assert final_failure_alerts(context) is None
    return recorder.records


def messages(logged: list[logging.LogRecord]) -> str:
    return "\n".join(record.getMessage() for record in logged)


def test_a_bad_file_is_reported_once_to_the_webhook(failed, receiver, monkeypatch):
    monkeypatch.setenv(WEBHOOK_URL_ENV, receiver.url)
    document_id = failed.documents[NOT_A_BOOK.name]
    with DagsterInstance.get() as instance:
        run = newest_run(instance, document_id)
        logged = evaluate(instance, run)
    assert len(receiver.posts) == 1
    path, headers, body = receiver.posts[0]
    assert path == TOKEN_PATH and headers["Content-Type"].startswith("application/json")
    text = json.loads(body)["text"]
    assert text == (
        f"doc_pipeline: not-a-book.epub ({document_id[:8]}…) failed, will not be retried "
        f"(invalid_input): not a ZIP/EPUB archive (looks like a PNG image). Run {run.run_id[:8]}."
    )
    log = messages(logged)
    assert f"reported to 127.0.0.1:{receiver.server_address[1]}: {text}" in log
    assert "s3cr3t" not in log  # the URL's path is its token


def test_without_a_webhook_nothing_is_posted_and_the_log_says_what(failed, receiver, monkeypatch):
    monkeypatch.delenv(WEBHOOK_URL_ENV, raising=False)
    with DagsterInstance.get() as instance:
        logged = evaluate(instance, newest_run(instance, failed.documents[NOT_A_BOOK.name]))
    assert receiver.posts == []
    log = messages(logged)
    assert f"${WEBHOOK_URL_ENV} is not set); would report: doc_pipeline: not-a-book.epub (" in log
    assert "(invalid_input): not a ZIP/EPUB archive (looks like a PNG image)" in log


def test_a_webhook_that_refuses_is_a_warning_naming_only_its_host(failed, monkeypatch):
    closed = Receiver()  # bound, then closed: nothing listens on its port any more
    url, port = closed.url, closed.server_address[1]
    closed.server_close()
    monkeypatch.setenv(WEBHOOK_URL_ENV, url)
    with DagsterInstance.get() as instance:
        logged = evaluate(instance, newest_run(instance, failed.documents[NOT_A_BOOK.name]))
    (warning,) = [record for record in logged if record.levelno == logging.WARNING]
    assert warning.getMessage().startswith(f"alert not sent to 127.0.0.1:{port}: ")
    assert "not-a-book.epub" in warning.getMessage()  # the alert itself is in the log
    assert "s3cr3t" not in messages(logged)


@pytest.mark.parametrize(
    ("answer", "url", "problem"),
    [
        ((404, b"no_service"), None, "it answered HTTP 404 (no_service)"),  # Slack's error code
        ((400, b"Cannot POST " + TOKEN_PATH.encode()), None, "it answered HTTP 400"),
        ((302, b""), None, "it answered HTTP 302"),  # a redirected POST would lose its body
        (None, "http://127.0.0.1:9/services/\x01s3cr3t", "InvalidURL"),  # its message quotes it
        (None, "htps://hooks.example/services/s3cr3t", "is not a valid http(s) URL"),
    ],
)
def test_a_failed_post_never_shows_the_url(receiver, monkeypatch, answer, url, problem):
    if answer:
        receiver.answer = answer
    monkeypatch.setenv(WEBHOOK_URL_ENV, url or receiver.url)
    with pytest.raises(AlertNotSent) as refused:
        Alerts(timeout_seconds=2).post({"text": "x"})
    error = refused.value
    assert problem in str(error) and "s3cr3t" not in str(error)
    # Nor does its traceback: the error it replaces (which may quote the URL) is not chained.
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)


def test_a_transient_failure_with_retries_left_is_not_reported(failed, receiver, monkeypatch):
    monkeypatch.setenv(WEBHOOK_URL_ENV, receiver.url)
    document_id = failed.documents[EMPTY_SPINE.name]
    store.mark_failed(failed.pipeline.engine, document_id, TRANSIENT, OUTAGE)  # 1 of 3 attempts
    with DagsterInstance.get() as instance:
        logged = evaluate(instance, newest_run(instance, document_id))
    assert receiver.posts == []
    assert "retried or to be retried" in messages(logged)


def test_the_third_transient_failure_in_a_row_is_reported_as_given_up(
    failed, receiver, monkeypatch
):
    monkeypatch.setenv(WEBHOOK_URL_ENV, receiver.url)
    document_id = failed.documents[PLAIN_ZIP.name]
    engine = failed.pipeline.engine
    with DagsterInstance.get() as instance:
        for attempt in (2, 3):  # two more real failed runs of the document
            failed.pipeline.ingest(PLAIN_ZIP)
            store.mark_failed(engine, document_id, TRANSIENT, OUTAGE)
            run = newest_run(instance, document_id)
            evaluate(instance, run)
            assert len(receiver.posts) == attempt - 2  # the 2nd is not reported, the 3rd is
        text = json.loads(receiver.posts[0][2])["text"]
        assert text == (
            f"doc_pipeline: not-a-book-plain-zip.epub ({document_id[:8]}…) failed, will not be "
            f"retried (transient): gave up after 3 failed attempts; the last: {OUTAGE}. "
            f"Run {run.run_id[:8]}."
        )
        # The reaper gives the document up too, with the same words; had it looked first, the
        # alert would say the same.
        _, give_ups = failed_documents(instance, engine, Recovery().policy(), datetime.now(UTC))
        assert [(document, give_up.failed_run_id) for document, give_up in give_ups] == [
            (document_id, run.run_id)
        ]
        evaluate(instance, run)
        assert json.loads(receiver.posts[1][2])["text"] == text
