"""End to end: `doc-pipeline ingest` of the real corpus on a real Dagster instance and Postgres."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import AssetKey, DagsterInstance, RunsFilter, execute_job, reconstructable
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from doc_pipeline.cli import app
from doc_pipeline.core.chunking import count_words
from doc_pipeline.db import store
from doc_pipeline.document_runs import document_job
from doc_pipeline_tests.conftest import (
    GOOD_BOOKS,
    GOOD_PDFS,
    MALFORMED_BOOKS,
    create_database,
    use_home,
)
from doc_pipeline_tests.wordcount import body_words, words

MAX_WORDS = 1200
BOOKS = [*GOOD_BOOKS, *GOOD_PDFS]  # every format, in one library

# Chapter headings (from each book's table of contents) that must survive into the markdown.
EXPECTED_HEADINGS = {
    "pg1661-sherlock-holmes.epub2.epub": [
        "A SCANDAL IN BOHEMIA",
        "THE ADVENTURE OF THE COPPER BEECHES",
    ],
    "se-abbott-flatland.epub3.epub": ["Part I", "Concerning the Inhabitants of Flatland"],
    "se-keynes-economic-consequences-of-the-peace.epub3.epub": ["Introductory", "The Treaty"],
    "pg14838-peter-rabbit.epub3.epub": ["THE TALE OF PETER RABBIT"],
    "pg11-alice-in-wonderland.pdf": ["CHAPTER I. Down the Rabbit-Hole", "Alice’s Evidence"],
}


class Pipeline:
    """A temporary home whose app database is a fresh database on the session's server."""

    def __init__(self, home: Path, database_url: str, monkeypatch: pytest.MonkeyPatch):
        self.home = home
        self.database_url = database_url
        use_home(monkeypatch, home, database_url)
        self.engine = store.engine_for(database_url)

    def cli(self, *args: str):
        return CliRunner().invoke(app, list(args), catch_exceptions=False)

    def ingest(self, *paths: Path):
        result = self.cli("ingest", "--json", *map(str, paths))
        return result, {Path(o["source_file"]).name: o for o in json.loads(result.stdout)}

    def snapshot(self) -> dict[str, dict]:
        """Every row's identity and the transaction that last wrote it (xmin)."""
        queries = {
            "chunks": "SELECT id, xmin::text FROM chunks",
            "embeddings": "SELECT chunk_id || model, xmin::text FROM embeddings",
            "connections": "SELECT source_chunk_id || target_chunk_id || connection_type,"
            " xmin::text FROM connections",
        }
        with self.engine.connect() as conn:
            return {name: dict(conn.execute(sa.text(q)).all()) for name, q in queries.items()}

    def markdown(self, document_id: str) -> str:
        path = self.home / "blobs" / "outputs" / "extracted_markdown" / f"{document_id}.json"
        return json.loads(path.read_text())["markdown"]


@pytest.fixture(scope="module")
def ingested(postgres_server, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        pipeline = Pipeline(
            tmp_path_factory.mktemp("home"), create_database(postgres_server), monkeypatch
        )
        result, outcomes = pipeline.ingest(*BOOKS, *MALFORMED_BOOKS)
        yield pipeline, result, outcomes
        pipeline.engine.dispose()


def test_every_good_book_ingests_and_broken_ones_fail_alone(ingested):
    _, result, outcomes = ingested
    assert result.exit_code == 1, "a failed document must make the exit status non-zero"
    for book in BOOKS:
        outcome = outcomes[book.name]
        assert outcome["stage"] == "connected", outcome
        assert outcome["chunks"] > 0 and outcome["error_message"] is None
    assert sum(outcomes[b.name]["connections"] for b in BOOKS) > 0


@pytest.mark.parametrize(
    ("book", "cause"),
    [
        ("bad-truncated-zip_from-pg1661-sherlock.epub", "zip"),
        ("bad-no-container-xml_from-se-flatland.epub", "container.xml"),
    ],
)
def test_broken_file_fails_with_a_message_naming_file_and_cause(ingested, book, cause):
    pipeline, _, outcomes = ingested
    outcome = outcomes[book]
    assert outcome["stage"] == "failed"
    assert outcome["error_class"] == "invalid_input"
    assert book in outcome["error_message"] and cause in outcome["error_message"].lower()
    document = store.get_document(pipeline.engine, outcome["document_id"])
    assert document["stage"] == "failed" and document["error_message"] == outcome["error_message"]


@pytest.mark.parametrize("book", BOOKS, ids=lambda p: p.name)
def test_chapter_headings_survive_into_the_markdown(ingested, book):
    pipeline, _, outcomes = ingested
    markdown = pipeline.markdown(outcomes[book.name]["document_id"])
    headings = [line.lstrip("#").strip() for line in markdown.splitlines() if line.startswith("#")]
    for expected in EXPECTED_HEADINGS[book.name]:
        assert any(expected.lower() in heading.lower() for heading in headings), expected


@pytest.mark.parametrize("book", BOOKS, ids=lambda p: p.name)
def test_chunks_keep_the_body_words_within_size_bounds(ingested, book):
    pipeline, _, outcomes = ingested
    chunks = store.load_chunks(pipeline.engine, outcomes[book.name]["document_id"])
    chunk_words = Counter(w for chunk in chunks for w in words(chunk["content"]))
    expected = Counter(body_words(book))
    kept = sum(min(count, chunk_words[word]) for word, count in expected.items())
    assert kept / sum(expected.values()) >= 0.98
    sizes = [count_words(chunk["content"]) for chunk in chunks]
    assert max(sizes) <= MAX_WORDS
    assert [c["chunk_index"] for c in chunks] == list(range(len(chunks)))
    markdown = pipeline.markdown(outcomes[book.name]["document_id"])
    assert all(markdown[c["start_offset"] : c["end_offset"]] == c["content"] for c in chunks)
    if sum(sizes) > 5 * MAX_WORDS:  # long books: most chunks reach the 500-word target
        assert sorted(sizes)[len(sizes) // 2] >= 500


def test_runs_are_in_the_persistent_dagster_instance(ingested):
    pipeline, _, outcomes = ingested
    with DagsterInstance.get() as instance:
        runs = instance.get_runs(RunsFilter(tags={"doc_pipeline/source": "cli"}))
        partitions = set(instance.get_dynamic_partitions("documents"))
    outcome = outcomes[BOOKS[0].name]
    assert outcome["document_id"] in partitions
    assert set(outcome["run_ids"]) <= {run.run_id for run in runs}
    assert (pipeline.home / "dagster" / "dagster.yaml").exists()
    # With DATABASE_URL nothing is started, and the instance lives on that server.
    assert not (pipeline.home / "pgdata").exists()
    dagster_url = make_url(pipeline.database_url)
    dagster_url = dagster_url.set(database=f"{dagster_url.database}_dagster")
    engine = sa.create_engine(dagster_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        stored = set(conn.execute(sa.text("SELECT run_id FROM runs")).scalars())
    engine.dispose()
    assert set(outcome["run_ids"]) <= stored


def test_status_and_export(ingested):
    pipeline, _, outcomes = ingested
    document_id = outcomes[BOOKS[0].name]["document_id"]
    status = pipeline.cli("status", document_id[:8], "--json")
    assert status.exit_code == 0
    row = json.loads(status.stdout)
    assert row["id"] == document_id and row["stage"] == "connected"
    assert set(row["completed_stages"]) == {"extracted", "chunked", "embedded", "connected"}
    assert row["last_heartbeat"]["ended_at"] is not None and row["attempts"] >= 2
    listing = json.loads(pipeline.cli("status", "--json").stdout)
    assert {r["id"] for r in listing} >= {o["document_id"] for o in outcomes.values()}
    text = pipeline.cli("status", document_id).stdout
    assert "last heartbeat" in text and "connected" in text
    exported = pipeline.cli("export", document_id)
    lines = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [line["index"] for line in lines] == list(range(row["chunks"]))
    assert {"id", "index", "content", "heading_path", "metadata"} <= set(lines[0])
    assert pipeline.cli("status", "zzzz").exit_code == 2


@pytest.mark.parametrize("pdf", GOOD_PDFS, ids=lambda p: p.name)
def test_a_pdf_connects_to_the_epubs_and_its_chunks_know_their_pages(ingested, pdf):
    pipeline, _, outcomes = ingested
    document_id = outcomes[pdf.name]["document_id"]
    epubs = [outcomes[book.name]["document_id"] for book in GOOD_BOOKS]
    with pipeline.engine.connect() as conn:
        across = conn.execute(
            sa.text(
                "SELECT count(*) FROM connections c"
                " JOIN chunks s ON s.id = c.source_chunk_id"
                " JOIN chunks t ON t.id = c.target_chunk_id"
                " WHERE (s.document_id = :pdf AND t.document_id = ANY(:epubs))"
                " OR (t.document_id = :pdf AND s.document_id = ANY(:epubs))"
            ),
            {"pdf": document_id, "epubs": epubs},
        ).scalar_one()
    assert across > 0
    exported = pipeline.cli("export", document_id).stdout.splitlines()
    exported = [json.loads(line) for line in exported]
    spans = [(c["metadata"]["page_start"], c["metadata"]["page_end"]) for c in exported]
    assert all(1 <= start <= end for start, end in spans)
    assert spans == sorted(spans) and spans[-1][1] > spans[0][0]


def test_a_downstream_asset_alone_loads_its_inputs(ingested):
    pipeline, _, outcomes = ingested
    document_id = outcomes[BOOKS[0].name]["document_id"]
    before = pipeline.snapshot()
    with DagsterInstance.get() as instance:
        result = execute_job(
            reconstructable(document_job),
            instance=instance,
            tags={"dagster/partition": document_id},
            asset_selection=[AssetKey("chunks")],
        )
        assert result.success
        steps = {e.step_key for e in result.all_events if e.is_step_success}
        materialized = {
            e.asset_key.to_user_string() for e in result.all_events if e.is_step_materialization
        }
    # Only chunks ran (and its checks); its input came through the IO manager.
    assert materialized == {"chunks"}
    assert "chunks" in steps and all(step.startswith("chunks") for step in steps)
    assert pipeline.snapshot() == before


def test_long_steps_leave_ended_heartbeats(ingested):
    pipeline, _, outcomes = ingested
    run_ids = outcomes[BOOKS[0].name]["run_ids"]
    with pipeline.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT step_key, ended_at FROM heartbeats WHERE run_id = ANY(:runs)"),
            {"runs": run_ids},
        ).all()
    assert {row.step_key for row in rows} == {
        "extracted_markdown",
        "chunks",
        "embeddings",
        "connections",
    }
    assert all(row.ended_at is not None for row in rows)


def test_a_second_ingest_changes_nothing(ingested):
    """Runs last in this module: everything is ingested again, and no row is rewritten."""
    pipeline, _, first = ingested
    before = pipeline.snapshot()
    result, second = pipeline.ingest(*BOOKS)
    assert result.exit_code == 0
    for book in BOOKS:
        assert second[book.name]["document_id"] == first[book.name]["document_id"]
        assert second[book.name]["chunks"] == first[book.name]["chunks"]
        assert second[book.name]["stage"] == "connected"
    assert pipeline.snapshot() == before
    assert all(before.values())
