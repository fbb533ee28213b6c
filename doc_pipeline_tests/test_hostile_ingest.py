"""End to end: `doc-pipeline ingest` of the hostile files next to a good book. Each bad file
ends as README's table says, a rejected one after one run; the good book is neither lost nor
blocked. Every rejected file is ingested, and of those read in part the two whose hostility
targets the machine (an external entity, escaping paths); the others differ from these only
inside the reader, which core/test_hostile_epubs.py covers for every file."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from dagster import DagsterInstance, RunsFilter

from doc_pipeline_tests.conftest import CORPUS, create_database
from doc_pipeline_tests.core.test_hostile_epubs import HOSTILE, OUTCOMES
from doc_pipeline_tests.test_ingest import Pipeline

FLATLAND = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
INGESTED = sorted(
    name
    for name, (outcome, _) in OUTCOMES.items()
    if outcome == "invalid" or name in ("xxe-external-entity.epub", "path-traversal.epub")
)


@pytest.fixture(scope="module")
def ingested(postgres_server, tmp_path_factory):
    with pytest.MonkeyPatch.context() as monkeypatch:
        pipeline = Pipeline(
            tmp_path_factory.mktemp("home"), create_database(postgres_server), monkeypatch
        )
        before = set(Path("/tmp").glob("pwned*"))
        result, outcomes = pipeline.ingest(FLATLAND, *(HOSTILE / name for name in INGESTED))
        assert set(Path("/tmp").glob("pwned*")) == before
        yield pipeline, result, outcomes
        pipeline.engine.dispose()


def test_the_good_book_is_neither_lost_nor_blocked(ingested):
    _, result, outcomes = ingested
    assert result.exit_code == 1  # the rejected files make the exit status non-zero
    flatland = outcomes[FLATLAND.name]
    assert flatland["stage"] == "connected" and flatland["chunks"] > 0
    assert flatland["warnings"] == []


@pytest.mark.parametrize("name", INGESTED)
def test_each_hostile_file_ends_as_documented_after_one_run(ingested, name):
    pipeline, _, outcomes = ingested
    outcome = outcomes[name]
    expected, says = OUTCOMES[name]
    if expected == "invalid":
        assert outcome["stage"] == "failed"
        assert outcome["error_class"] == "invalid_input"
        assert outcome["error_message"].startswith(f"{name}: ") and says in outcome["error_message"]
    else:
        assert outcome["stage"] == "connected" and outcome["chunks"] > 0
        assert any(says in warning for warning in outcome["warnings"]), outcome["warnings"]
        document = pipeline.cli("status", outcome["document_id"])
        assert says in " ".join(document.stdout.split())  # `status` shows the warnings
    with DagsterInstance.get() as instance:
        runs = instance.get_runs(RunsFilter(tags={"dagster/partition": outcome["document_id"]}))
    # A rejected file gets one run, never retried; a book its run and the connections run.
    assert len(runs) == (1 if expected == "invalid" else 2)


def test_no_line_of_etc_passwd_reaches_the_database(ingested):
    pipeline, _, _ = ingested
    with pipeline.engine.connect() as conn:
        hits = conn.execute(
            sa.text(
                "SELECT count(*) FROM chunks WHERE content LIKE '%root:x:0%' "
                "OR content LIKE '%/usr/sbin/nologin%'"
            )
        ).scalar_one()
        warnings = conn.execute(sa.text("SELECT extraction_warnings::text FROM documents")).all()
    assert hits == 0
    assert not any("root:x:0" in row[0] for row in warnings)
