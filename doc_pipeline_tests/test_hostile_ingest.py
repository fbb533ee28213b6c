"""End to end: `doc-pipeline ingest` of every hostile and malformed file (EPUB and PDF) next to
a good EPUB and a good PDF, as a user runs it in a shell. Each bad file ends as README's table
says, a rejected one after one run, and is reported in one line with no stack trace; the good
books are neither lost nor blocked. A backfill of the rejected files reports them the same
way."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import RunsFilter
from typer.testing import CliRunner

from doc_pipeline.cli import app
from doc_pipeline.db import store
from doc_pipeline.instance import open_instance
from doc_pipeline.resources.local_provider import LocalProvider
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import CORPUS, MALFORMED_BOOKS, create_database, use_home
from doc_pipeline_tests.core import test_hostile_epubs, test_hostile_pdfs
from doc_pipeline_tests.processes import run_cli

FLATLAND = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
RABBIT = CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub"  # only in the bug test
ALICE = CORPUS / "pdf" / "pg11-alice-in-wonderland.pdf"  # a good PDF beside the good EPUB
OUTCOMES = {**test_hostile_epubs.OUTCOMES, **test_hostile_pdfs.OUTCOMES}
INGESTED = sorted(OUTCOMES)
# What the user reads for each malformed file (corpus/malformed/README.md).
MALFORMED = {
    "bad-no-container-xml_from-se-flatland.epub": "no META-INF/container.xml",
    "bad-truncated-zip_from-pg1661-sherlock.epub": "not a valid ZIP archive",
}
REJECTED = {
    **{name: says for name, (outcome, says) in OUTCOMES.items() if outcome == "invalid"},
    **MALFORMED,
}
TRACES = ("Traceback", "Stack Trace:", 'File "')


@pytest.fixture(scope="module")
def ingested(postgres_server, tmp_path_factory):
    assert sorted(MALFORMED) == [path.name for path in MALFORMED_BOOKS]
    with pytest.MonkeyPatch.context() as monkeypatch:
        database_url = create_database(postgres_server)
        use_home(monkeypatch, tmp_path_factory.mktemp("home"), database_url)
        env = {k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "GOOGLE_API_KEY")}
        env["DOC_PIPELINE_PROVIDER"] = "local"
        before = set(Path("/tmp").glob("pwned*"))
        made = tmp_path_factory.mktemp("made-pdfs")
        for name, make in test_hostile_pdfs.MADE.items():
            make(made / name)
        hostile = [
            folder / name
            for folder in (test_hostile_epubs.HOSTILE, test_hostile_pdfs.HOSTILE, made)
            for name in INGESTED
            if (folder / name).is_file()
        ]
        assert len(hostile) == len(INGESTED)
        files = [FLATLAND, ALICE, *hostile, *MALFORMED_BOOKS]
        result = run_cli(env, "ingest", *files, timeout=600)
        assert set(Path("/tmp").glob("pwned*")) == before
        engine = store.engine_for(database_url)
        outcomes = {
            row["source_file"]: {
                **row,
                "document_id": row["id"],
                "warnings": row["extraction_warnings"],
            }
            for row in store.document_summaries(engine)
        }
        yield env, engine, result, outcomes
        engine.dispose()


def test_the_good_books_are_neither_lost_nor_blocked(ingested):
    _, _, result, outcomes = ingested
    assert result.returncode == 1  # the rejected files make the exit status non-zero
    for book in (FLATLAND, ALICE):
        outcome = outcomes[book.name]
        assert outcome["stage"] == "connected" and outcome["chunks"] > 0
        assert outcome["warnings"] == []


@pytest.mark.parametrize("name", INGESTED)
def test_each_hostile_file_ends_as_documented_after_one_run(ingested, name):
    env, _, _, outcomes = ingested
    outcome = outcomes[name]
    expected, says = OUTCOMES[name]
    if expected == "invalid":
        assert outcome["stage"] == "failed"
        assert outcome["error_class"] == "invalid_input"
        assert outcome["error_message"].startswith(f"{name}: ") and says in outcome["error_message"]
    else:
        assert outcome["stage"] == "connected" and outcome["chunks"] > 0
        assert any(says in warning for warning in outcome["warnings"]), outcome["warnings"]
        document = run_cli(env, "status", outcome["document_id"], timeout=60)
        assert says in " ".join(document.stdout.split())  # `status` shows the warnings
    with open_instance(Settings.from_env()) as instance:
        runs = instance.get_runs(RunsFilter(tags={"dagster/partition": outcome["document_id"]}))
    # A rejected file gets one run, never retried; a book its run and the connections run.
    assert len(runs) == (1 if expected == "invalid" else 2)


def test_no_line_of_etc_passwd_reaches_the_database(ingested):
    _, engine, _, _ = ingested
    with engine.connect() as conn:
        hits = conn.execute(
            sa.text(
                "SELECT count(*) FROM chunks WHERE content LIKE '%root:x:0%' "
                "OR content LIKE '%/usr/sbin/nologin%'"
            )
        ).scalar_one()
        warnings = conn.execute(sa.text("SELECT extraction_warnings::text FROM documents")).all()
    assert hits == 0
    assert not any("root:x:0" in row[0] for row in warnings)


def _failure_lines(output: str, name: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith(f"✗ {name} ")]


def test_each_rejected_file_is_one_line_and_no_trace_is_printed(ingested):
    _, _, result, outcomes = ingested
    output = result.stdout + result.stderr
    assert not [line for line in output.splitlines() if any(t in line for t in TRACES)]
    assert "dagster - ERROR" not in output and "STEP_FAILURE" not in output
    for name, says in REJECTED.items():
        (line,) = _failure_lines(output, name)
        assert line.startswith(f"✗ {name} (invalid_input): ") and says in line, line
        reason = outcomes[name]["error_message"].removeprefix(f"{name}: ")
        assert line == f"✗ {name} (invalid_input): {reason}"
        # Said once, in that line: not again by Dagster's logs.
        assert [x for x in output.splitlines() if reason in x and not x.startswith("✗ ")] == []
    for name, (expected, _) in OUTCOMES.items():
        if expected == "book":
            assert _failure_lines(output, name) == []


# The backfills re-run the malformed files only: the hostile ones' runs are counted above.
def test_a_backfill_of_rejected_files_reports_each_in_one_line(ingested):
    env, _, _, outcomes = ingested
    names = sorted(MALFORMED)
    ids = [outcomes[name]["document_id"] for name in names]
    result = run_cli(env, "backfill", "extracted_markdown", *ids, timeout=300)
    output = result.stdout + result.stderr
    assert result.returncode == 1
    assert not [line for line in output.splitlines() if any(t in line for t in TRACES)]
    for name in names:
        (line,) = _failure_lines(output, name)
        assert REJECTED[name] in line


def test_verbose_prints_dagster_s_own_log_lines_with_the_trace(ingested):
    env, _, _, outcomes = ingested
    name = sorted(MALFORMED)[0]
    document = outcomes[name]["document_id"]
    result = run_cli(env, "backfill", "extracted_markdown", document, "--verbose", timeout=300)
    output = result.stdout + result.stderr
    # Dagster's console logger prints the run's failure, with every trace of its steps.
    assert "dagster - ERROR" in output and "RUN_FAILURE" in output
    assert "Stack Trace:" in output and "InvalidBookError" in output
    assert len(_failure_lines(output, name)) == 1


def test_a_bug_shows_its_trace_and_says_it_is_one(ingested, monkeypatch):
    """An exception nobody expected (here a KeyError inside the chunker, in this process)
    is not dressed up as a one-line failure: its trace is printed, marked as a bug."""

    def broken_chunker(self, markdown, scope):
        raise KeyError("heading_path")

    monkeypatch.setattr(LocalProvider, "chunk", broken_chunker)
    # Not `--provider local`: in this process the CLI would keep it in os.environ for good.
    monkeypatch.setenv("DOC_PIPELINE_PROVIDER", "local")
    result = CliRunner().invoke(app, ["ingest", str(RABBIT)])
    output = result.stdout + result.stderr
    assert result.exit_code == 1
    assert f"{RABBIT.name}: unexpected error (a bug, please report it) in step chunks" in output
    assert "KeyError: 'heading_path'" in output and "in broken_chunker" in output
    (line,) = _failure_lines(output, RABBIT.name)
    assert "(permanent): KeyError: 'heading_path'" in line
