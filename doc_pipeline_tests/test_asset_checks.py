"""The asset checks on real rows: two books processed once with every check passing, then for
each check one corrupted row makes it fail with a message that names the problem. Blocking
checks stop the downstream asset of the same run.

Runs on a Definitions object built here (the project's assets, job and resources plus the
checks), so definitions.py needs no change for the test."""

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from decimal import Decimal

import numpy as np
import pytest
import sqlalchemy as sa
from dagster import (
    AssetCheckEvaluation,
    AssetCheckKey,
    AssetCheckSeverity,
    AssetKey,
    AssetSelection,
    DagsterInstance,
    Definitions,
    materialize,
)
from sqlalchemy.engine import Engine

from doc_pipeline.assets import document_assets
from doc_pipeline.checks import AIBudget, asset_checks
from doc_pipeline.core.local_embedding import DIMENSIONS, MODEL_NAME
from doc_pipeline.db import integrity, store
from doc_pipeline.db.app import prepare_app_database
from doc_pipeline.db.ledger_store import LedgerScope
from doc_pipeline.db.registration import register_file
from doc_pipeline.jobs import DOCUMENT_JOB, document_job
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.blob_io_manager import BlobIOManager
from doc_pipeline.resources.liveness import Liveness
from doc_pipeline.resources.local_provider import LocalProvider
from doc_pipeline.resources.recovery import Recovery
from doc_pipeline.resources.source_store import SourceStore
from doc_pipeline.settings import Settings
from doc_pipeline_tests.conftest import CORPUS, create_database, use_home

FLATLAND = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
PETER_RABBIT = CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub"

COVERAGE = AssetCheckKey(AssetKey("chunks"), "chunks_cover_markdown")
EMBEDDINGS = AssetCheckKey(AssetKey("embeddings"), "one_embedding_per_chunk")
CONNECTIONS = AssetCheckKey(AssetKey("connections"), "connections_are_sound")
COST = {
    stage: AssetCheckKey(AssetKey(stage), "ai_cost_within_budget")
    for stage in ("chunks", "embeddings", "connections")
}


class FaultyProvider(LocalProvider):
    """The local provider with the bugs the blocking checks exist for: a chunker that loses a
    passage, an embedder whose vectors are not normalized."""

    drop_chunk: int | None = None
    vector_scale: float = 1.0

    def chunk(self, markdown: str, scope: LedgerScope) -> list:
        pieces = super().chunk(markdown, scope)
        if self.drop_chunk is not None:  # numbered as if nothing were missing
            del pieces[self.drop_chunk]
            pieces = [(replace(chunk, index=i), meta) for i, (chunk, meta) in enumerate(pieces)]
        return pieces

    def embed(self, texts: list[str], scope: LedgerScope) -> np.ndarray:
        return super().embed(texts, scope) * self.vector_scale


def resources(**overrides: object) -> dict[str, object]:
    """definitions.py's resources with the local provider, plus the checks' budget. Every
    similarity counts, so that two unrelated books surely have connections to check."""
    return {
        "app_database": AppDatabase(),
        "source_store": SourceStore(),
        "io_manager": BlobIOManager(),
        "provider": LocalProvider(connection_min_similarity=0.0),
        "liveness": Liveness(),
        "recovery": Recovery(),
        "ai_budget": AIBudget(),
        **overrides,
    }


class Books:
    def __init__(self, engine: Engine, instance: DagsterInstance, a: str, b: str):
        self.engine, self.instance = engine, instance
        self.a, self.b = a, b  # Peter Rabbit, then Flatland (connected to Peter Rabbit)
        self.first_runs = {d: self.run_job(d) for d in (a, b)}  # every stage of each book

    def run_job(self, document_id: str, assets: list[str] | None = None, **overrides: object):
        """The document job as definitions.py would build it once the checks are wired in."""
        defs = Definitions(
            assets=document_assets,
            asset_checks=asset_checks,
            jobs=[document_job],
            resources=resources(**overrides),
        )
        return defs.resolve_job_def(DOCUMENT_JOB).execute_in_process(
            instance=self.instance,
            partition_key=document_id,
            asset_selection=[AssetKey(a) for a in assets] if assets else None,
            raise_on_error=False,
        )

    def run_check(self, key: AssetCheckKey, document_id: str, **overrides: object):
        """Only the check, in a run of its own (inputs come through the IO manager)."""
        result = materialize(
            [*document_assets, *asset_checks],
            selection=AssetSelection.checks(key),
            # Not partition_key=: Dagster 1.13 validates it against the selected *assets*, and a
            # checks-only selection has none ("no PartitionsDefinition shared by all the
            # provided assets"). The tag is what partition_key would set.
            tags={"dagster/partition": document_id},
            instance=self.instance,
            resources=resources(**overrides),
            raise_on_error=False,
        )
        step = f"{key.asset_key.to_python_identifier()}_{key.name}"
        assert {event.step_key for event in result.get_step_success_events()} <= {step}
        return evaluation(result, key)

    def sql(self, statement: str, **params: object) -> list:
        with self.engine.begin() as conn:
            result = conn.execute(sa.text(statement), params)
            return result.all() if result.returns_rows else []


def evaluation(result, key: AssetCheckKey) -> AssetCheckEvaluation:
    (found,) = [e for e in result.get_asset_check_evaluations() if e.asset_check_key == key]
    return found


def started_steps(result) -> set[str]:
    return {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}


def failed_steps(result) -> set[str]:
    return {e.step_key for e in result.get_step_failure_events()}


def chunk_count(books: "Books", document_id: str) -> int:
    return books.sql("SELECT count(*) FROM chunks WHERE document_id = :doc", doc=document_id)[0][0]


def assert_fails(found: AssetCheckEvaluation, *phrases: str) -> None:
    """Failed with ERROR; the description names the first problem, the metadata lists them."""
    assert not found.passed
    assert found.severity == AssetCheckSeverity.ERROR
    listed = found.metadata["first_problems"].value
    lines = listed.splitlines()
    assert found.description.endswith(f"first: {lines[0].removeprefix('- ')}")
    more = int(lines.pop().split()[3]) if lines[-1].startswith("- … and ") else 0
    assert found.metadata["problems"].value == len(lines) + more
    for phrase in phrases:
        assert phrase in listed, listed


@pytest.fixture(scope="module")
def books(postgres_server, tmp_path_factory) -> Iterator[Books]:
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_home(monkeypatch, tmp_path_factory.mktemp("home"), create_database(postgres_server))
        monkeypatch.setenv("DOC_PIPELINE_PROVIDER", "local")
        settings = Settings.from_env()
        engine = prepare_app_database(settings)
        a, b = (
            register_file(engine, settings.blob_dir, path).document_id
            for path in (PETER_RABBIT, FLATLAND)
        )
        with DagsterInstance.ephemeral() as instance:
            instance.add_dynamic_partitions(documents_partitions.name, [a, b])
            yield Books(engine, instance, a, b)
        engine.dispose()


def test_every_check_passes_on_a_clean_run_for_its_partition(books):
    for document_id, result in books.first_runs.items():
        assert result.success
        found = {e.asset_check_key: e for e in result.get_asset_check_evaluations()}
        assert set(found) == {COVERAGE, EMBEDDINGS, CONNECTIONS, *COST.values()}
        for key, evaluated in found.items():
            assert evaluated.passed, (key, evaluated.description)
            assert evaluated.partition == document_id  # one result per document, not per asset
    connections = books.sql(
        "SELECT count(*) FROM connections k JOIN chunks c ON c.id = k.source_chunk_id"
        " WHERE c.document_id = :doc",
        doc=books.b,
    )[0][0]
    assert connections > 0, "the connections check needs connections to look at"


# --- chunks_cover_markdown ----------------------------------------------------------------


@contextmanager
def changed_chunk(books: Books, index: int, **assignments: str) -> Iterator[None]:
    """Set columns of one of Flatland's chunks by SQL expressions, then put them back."""
    columns = "content, start_offset, end_offset, char_count"
    where = "document_id = :doc AND chunk_index = :index"
    (saved,) = books.sql(f"SELECT {columns} FROM chunks WHERE {where}", doc=books.b, index=index)
    sets = ", ".join(f"{column} = {value}" for column, value in assignments.items())
    books.sql(f"UPDATE chunks SET {sets} WHERE {where}", doc=books.b, index=index)
    try:
        yield
    finally:
        books.sql(
            f"UPDATE chunks SET content = :content, start_offset = :start_offset,"
            f" end_offset = :end_offset, char_count = :char_count WHERE {where}",
            doc=books.b,
            index=index,
            **saved._mapping,
        )


@pytest.mark.parametrize(
    ("assignments", "phrases"),
    [
        pytest.param(
            {"content": "content || ' Mr. McGregor'"},
            ["differs from the markdown", "char_count"],
            id="content-edited",
        ),
        pytest.param(
            {"start_offset": "start_offset - 5", "end_offset": "end_offset - 5"},
            ["differs from the markdown", "inside the previous chunk", "is in no chunk"],
            id="offsets-shifted",
        ),
        pytest.param(
            {
                "content": "left(content, char_length(content) / 2)",
                "end_offset": "start_offset + char_length(content) / 2",
                "char_count": "char_length(content) / 2",
            },
            ["is in no chunk"],
            id="chunk-cut-short",
        ),
        pytest.param(
            {"start_offset": "-1"}, ["are not a non-empty span"], id="offset-out-of-range"
        ),
    ],
)
def test_chunk_coverage_fails_on_a_corrupted_chunk(books, assignments, phrases):
    with changed_chunk(books, 1, **assignments):
        assert_fails(books.run_check(COVERAGE, books.b), *phrases)
    assert books.run_check(COVERAGE, books.b).passed


def test_chunk_coverage_fails_on_a_renumbered_chunk(books):
    last = books.sql("SELECT max(chunk_index) FROM chunks WHERE document_id = :doc", doc=books.b)
    last = last[0][0]
    books.sql(
        "UPDATE chunks SET chunk_index = :gap WHERE document_id = :doc AND chunk_index = :last",
        doc=books.b,
        gap=last + 5,
        last=last,
    )
    try:
        assert_fails(books.run_check(COVERAGE, books.b), f"where {last} was expected")
    finally:
        books.sql(
            "UPDATE chunks SET chunk_index = :last WHERE document_id = :doc AND chunk_index = :gap",
            doc=books.b,
            gap=last + 5,
            last=last,
        )


def test_a_chunker_that_loses_text_stops_the_run_before_embeddings(books):
    """Blocking: the check fails in the run that wrote the chunks, and embeddings never starts
    (Dagster logs "Dependencies for step embeddings failed ... Not executing", no skip event)."""
    before = chunk_count(books, books.b)
    result = books.run_job(books.b, ["chunks", "embeddings"], provider=FaultyProvider(drop_chunk=1))
    try:
        assert not result.success
        assert_fails(evaluation(result, COVERAGE), "is in no chunk")
        assert chunk_count(books, books.b) == before - 1  # the faulty chunks were written...
        assert started_steps(result) == {  # ...but nothing after the failed check ran
            "chunks",
            "chunks_chunks_cover_markdown",
            "chunks_ai_cost_within_budget",
        }
        assert failed_steps(result) == {"chunks_chunks_cover_markdown"}
        # The document says why, as a permanent failure (the reaper does not retry it).
        document = store.get_document(books.engine, books.b)
        assert document["stage"] == "failed" and document["error_class"] == "permanent"
        assert document["error_message"].startswith("check chunks_cover_markdown failed: ")
    finally:
        repaired = books.run_job(books.b)  # a run with the right chunker puts everything back
    assert repaired.success and chunk_count(books, books.b) == before
    assert all(e.passed for e in repaired.get_asset_check_evaluations())


# --- one_embedding_per_chunk ----------------------------------------------------------------


@contextmanager
def changed_embedding(books: Books, statement: str, chunk_id: str) -> Iterator[None]:
    """Run a statement on one chunk's vector, then restore the row as it was."""
    (saved,) = books.sql(
        "SELECT chunk_id, model, document_id, dimensions, embedding::text AS embedding,"
        " text_sha256 FROM embeddings WHERE chunk_id = :chunk",
        chunk=chunk_id,
    )
    books.sql(statement, chunk=chunk_id, other=books.a)
    try:
        yield
    finally:
        books.sql("DELETE FROM embeddings WHERE chunk_id = :chunk", chunk=chunk_id)
        books.sql(
            "INSERT INTO embeddings (chunk_id, model, document_id, dimensions, embedding,"
            " text_sha256) VALUES (:chunk_id, :model, :document_id, :dimensions,"
            " CAST(:embedding AS vector), :text_sha256)",
            **saved._mapping,
        )


def first_chunk(books: Books) -> str:
    return books.sql(
        "SELECT id FROM chunks WHERE document_id = :doc ORDER BY chunk_index LIMIT 1", doc=books.b
    )[0][0]


@pytest.mark.parametrize(
    ("statement", "phrase"),
    [
        pytest.param(
            "DELETE FROM embeddings WHERE chunk_id = :chunk",
            f"have no {MODEL_NAME} embedding",
            id="missing",
        ),
        pytest.param(
            f"UPDATE embeddings SET dimensions = {DIMENSIONS - 1},"
            f" embedding = subvector(embedding, 1, {DIMENSIONS - 1}) WHERE chunk_id = :chunk",
            f"{DIMENSIONS - 1} components",
            id="vector-too-short",
        ),
        pytest.param(
            "UPDATE embeddings SET embedding = embedding + embedding WHERE chunk_id = :chunk",
            "not an L2-normalized vector",
            id="not-normalized",
        ),
        pytest.param(
            "UPDATE embeddings SET document_id = :other WHERE chunk_id = :chunk",
            "but the chunk belongs to document",
            id="labelled-with-another-document",
        ),
    ],
)
def test_embedding_check_fails_on_a_corrupted_vector(books, statement, phrase):
    with changed_embedding(books, statement, first_chunk(books)):
        assert_fails(books.run_check(EMBEDDINGS, books.b), phrase)
    assert books.run_check(EMBEDDINGS, books.b).passed


def test_an_unnormalized_embedder_stops_the_run_before_connections(books):
    books.sql("DELETE FROM embeddings WHERE document_id = :doc", doc=books.b)
    result = books.run_job(
        books.b, ["embeddings", "connections"], provider=FaultyProvider(vector_scale=2.0)
    )
    try:
        assert not result.success
        assert_fails(evaluation(result, EMBEDDINGS), "norm 2, not an L2-normalized vector")
        assert "connections" not in started_steps(result)
        assert failed_steps(result) == {"embeddings_one_embedding_per_chunk"}
    finally:
        books.sql("DELETE FROM embeddings WHERE document_id = :doc", doc=books.b)
        repaired = books.run_job(books.b, ["embeddings", "connections"])
    assert repaired.success
    assert all(e.passed for e in repaired.get_asset_check_evaluations())


# --- connections_are_sound ----------------------------------------------------------------


def chunk_of(books: Books, document_id: str, index: int) -> str:
    return books.sql(
        "SELECT id FROM chunks WHERE document_id = :doc AND chunk_index = :index",
        doc=document_id,
        index=index,
    )[0][0]


@pytest.mark.parametrize(
    ("target", "connection_type", "phrase"),
    [
        pytest.param("b", "semantic", "both chunks are in this document", id="same-document"),
        pytest.param("a", "made_up", "unknown type", id="unknown-type"),
    ],
)
def test_connection_check_fails_on_an_impossible_connection(books, target, connection_type, phrase):
    (new_id,) = books.sql(
        "INSERT INTO connections (source_chunk_id, target_chunk_id, connection_type, strength,"
        " metadata) VALUES (:source, :target, :type, 0.5, CAST(:meta AS jsonb)) RETURNING id",
        source=chunk_of(books, books.b, 0),
        target=chunk_of(books, getattr(books, target), 1 if target == "b" else 0),
        type=connection_type,
        meta=json.dumps({"model": MODEL_NAME}),
    )[0]
    try:
        assert_fails(books.run_check(CONNECTIONS, books.b), phrase, f"connection {new_id} ")
    finally:
        books.sql("DELETE FROM connections WHERE id = :id", id=new_id)
    assert books.run_check(CONNECTIONS, books.b).passed


def test_connection_check_fails_on_an_orphan_connection(books):
    """A semantic connection whose target lost its vector (say, a model change) is an orphan."""
    source, target = books.sql(
        "SELECT k.source_chunk_id, k.target_chunk_id FROM connections k"
        " JOIN chunks c ON c.id = k.source_chunk_id"
        " WHERE c.document_id = :doc AND k.connection_type = 'semantic' LIMIT 1",
        doc=books.b,
    )[0]
    assert integrity.orphan_connections(books.engine, books.b) == 0
    with changed_embedding(books, "DELETE FROM embeddings WHERE chunk_id = :chunk", target):
        assert integrity.orphan_connections(books.engine, books.b) >= 1
        found = books.run_check(CONNECTIONS, books.b)
        assert_fails(found, f"orphan, the target chunk has no {MODEL_NAME} embedding")
        assert found.metadata["orphan_connections"].value >= 1
    assert books.run_check(CONNECTIONS, books.b).passed


@pytest.mark.parametrize(
    ("statement", "error"),
    [
        pytest.param(
            "UPDATE embeddings SET dimensions = 384 WHERE chunk_id = :own",
            "ck_embeddings_dims",
            id="dimensions-column-unlike-the-vector",
        ),
        pytest.param(
            "UPDATE embeddings SET embedding = CAST(:nan AS vector) WHERE chunk_id = :own",
            "NaN not allowed in vector",
            id="nan-component",
        ),
        pytest.param(
            "INSERT INTO connections (source_chunk_id, target_chunk_id, connection_type,"
            " strength) VALUES (:own, :other, 'semantic', 1.5)",
            "ck_connections_strength",
            id="strength-above-one",
        ),
        pytest.param(
            "INSERT INTO connections (source_chunk_id, target_chunk_id, connection_type,"
            " strength) VALUES (:own, :other, 'semantic', 'NaN')",
            "ck_connections_strength",
            id="strength-nan",
        ),
        pytest.param(
            "INSERT INTO connections (source_chunk_id, target_chunk_id, connection_type,"
            " strength) VALUES (:own, :own, 'semantic', 0.5)",
            "ck_connections_no_self_link",
            id="self-link",
        ),
    ],
)
def test_the_schema_refuses_what_the_checks_leave_out(books, statement, error):
    """Why the checks do not look for these: the database cannot hold them."""
    with pytest.raises(sa.exc.DBAPIError, match=error):
        books.sql(
            statement,
            own=chunk_of(books, books.b, 0),
            other=chunk_of(books, books.a, 0),
            nan="[" + ",".join(["NaN"] + ["0"] * (DIMENSIONS - 1)) + "]",
        )


# --- ai_cost_within_budget ----------------------------------------------------------------


@pytest.mark.parametrize("stage", ["chunks", "embeddings", "connections"])
def test_cost_check_warns_over_budget(books, stage):
    check = COST[stage]
    books.sql(
        "INSERT INTO ai_calls (key, provider, model, document_id, stage, run_id, outcome,"
        " cost_usd) VALUES ('k', 'gemini', 'm', :doc, :stage, 'an-earlier-run', 'paid', 0.42)",
        doc=books.b,
        stage=stage,
    )
    # A ledger hit is free whatever it saved; another stage's spend is not this stage's.
    books.sql(
        "INSERT INTO ai_calls (key, provider, model, document_id, stage, outcome, cost_usd,"
        " saved_usd) VALUES ('k', 'gemini', 'm', :doc, :stage, 'hit', 0, 9),"
        " ('k', 'gemini', 'm', :doc, 'other', 'paid', 9, 0)",
        doc=books.b,
        stage=stage,
    )
    try:
        assert integrity.stage_cost(books.engine, books.b, stage) == Decimal("0.42")
        assert integrity.stage_cost(books.engine, books.b, stage, "an-earlier-run") > 0
        assert integrity.stage_cost(books.engine, books.b, stage, "another-run") == 0
        assert books.run_check(check, books.b).passed  # the default budget is $2.00
        found = books.run_check(check, books.b, ai_budget=AIBudget(stage_max_usd={stage: 0.05}))
        assert not found.passed and found.severity == AssetCheckSeverity.WARN
        assert "$0.420000" in found.description and "$0.050000" in found.description
        assert found.metadata["cost_usd"].value == pytest.approx(0.42)
        assert found.metadata["cost_usd_this_run"].value == 0
        strict = AIBudget(max_usd_per_document_stage=0.05, over_budget_is_error=True)
        found = books.run_check(check, books.b, ai_budget=strict)
        assert not found.passed and found.severity == AssetCheckSeverity.ERROR
        assert books.run_check(check, books.a, ai_budget=strict).passed  # another document
    finally:
        books.sql("DELETE FROM ai_calls WHERE document_id = :doc", doc=books.b)


def test_an_over_budget_stage_warns_without_stopping_the_run(books):
    books.sql(
        "INSERT INTO ai_calls (key, provider, model, document_id, stage, outcome, cost_usd)"
        " VALUES ('k', 'gemini', 'm', :doc, 'chunks', 'paid', 0.42)",
        doc=books.a,
    )
    try:
        result = books.run_job(
            books.a, ["chunks", "embeddings"], ai_budget=AIBudget(max_usd_per_document_stage=0.05)
        )
    finally:
        books.sql("DELETE FROM ai_calls WHERE document_id = :doc", doc=books.a)
    assert result.success and "embeddings" in started_steps(result)
    found = evaluation(result, COST["chunks"])
    assert not found.passed and found.severity == AssetCheckSeverity.WARN
    assert evaluation(result, COST["embeddings"]).passed
