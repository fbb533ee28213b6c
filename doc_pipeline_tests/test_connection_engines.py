"""The three connection engines end to end (gemini provider against the fake server, the CLI,
a real instance and Postgres): semantic, contradiction and AI-judged thematic bridges connect
two books; bridge requests go through the ledger, within their cap, and are not paid again."""

from __future__ import annotations

import json

import sqlalchemy as sa

from doc_pipeline_tests.conftest import CORPUS, create_database
from doc_pipeline_tests.fakes import FakeGemini
from doc_pipeline_tests.gemini_pipeline import GeminiPipeline
from doc_pipeline_tests.ledger_counts import ai_call_counts

BOOKS = [
    CORPUS / "epub" / "se-abbott-flatland.epub3.epub",
    CORPUS / "epub" / "se-keynes-economic-consequences-of-the-peace.epub3.epub",
]
MAX_BRIDGE_REQUESTS = 2
CONFIG = f"""
resources:
  provider:
    config:
      connection_min_similarity: 0.0
ops:
  connections:
    config:
      bridge_max_requests: {MAX_BRIDGE_REQUESTS}
"""


def _types(pipeline: GeminiPipeline) -> dict[str, int]:
    with pipeline.engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT connection_type, count(*) FROM connections GROUP BY 1")
        ).all()
    return dict(rows)


def _bridge_calls(pipeline: GeminiPipeline) -> dict[str, int]:
    return ai_call_counts(pipeline.engine, "outcome", stage="connections")


def test_three_engines_connect_two_books_through_the_ledger(postgres_server, tmp_path):
    config = tmp_path / "config.yaml"
    config.write_text(CONFIG)
    with FakeGemini() as fake:
        pipeline = GeminiPipeline(tmp_path / "home", create_database(postgres_server), fake)
        outcomes = pipeline.ingest(*BOOKS, "--config", config)
        assert {o["stage"] for o in outcomes.values()} == {"connected"}
        types = _types(pipeline)
        assert types.get("semantic", 0) > 0
        assert types.get("contradiction", 0) > 0
        assert types.get("thematic_bridge", 0) > 0
        # Each document's bridge requests are capped, and each was paid once.
        paid = _bridge_calls(pipeline)
        assert 0 < paid["paid"] <= MAX_BRIDGE_REQUESTS * len(BOOKS)

        # Every edge joins chunks of two different documents, within [0, 1].
        with pipeline.engine.connect() as conn:
            bad = conn.execute(
                sa.text(
                    "SELECT count(*) FROM connections k"
                    " JOIN chunks s ON s.id = k.source_chunk_id"
                    " JOIN chunks t ON t.id = k.target_chunk_id"
                    " WHERE s.document_id = t.document_id OR k.strength NOT BETWEEN 0 AND 1"
                )
            ).scalar()
            bridge = conn.execute(
                sa.text(
                    "SELECT metadata FROM connections WHERE connection_type = 'thematic_bridge'"
                    " LIMIT 1"
                )
            ).scalar()
        assert bad == 0
        assert bridge["bridge_type"] != "none" and bridge["explanation"]
        assert bridge["source_domain"] != bridge["target_domain"]
        metadata = pipeline.materialization_metadata("connections")
        assert any("thematic_bridge_connections" in m for m in metadata)
        # What a data engineer sees on each stage's materializations in the UI.
        ai = {"ai_requests", "ai_ledger_hits", "ai_prompt_tokens", "ai_cost_usd"}
        ai |= {"ai_cost_saved_usd", "seconds"}
        wanted = {
            "extracted_markdown": {"words", "chapters", "preview", "seconds"},
            "chunks": {"chunks", "words_median", "rows_inserted"} | ai,
            "embeddings": {"vectors", "dimensions", "embedded_now"} | ai,
            "connections": {"connections", "strongest", "semantic_connections"} | ai,
        }
        for asset, keys in wanted.items():
            for materialization in pipeline.materialization_metadata(asset):
                assert keys <= set(materialization), (asset, keys - set(materialization))
        # And Dagster's own keys, which the UI renders natively: the rows of the asset's table
        # (the same number as the stage's own count) and where its output is stored.
        counted = {"chunks": "chunks", "embeddings": "vectors", "connections": "connections"}
        for asset, count in counted.items():
            for materialization in pipeline.materialization_metadata(asset):
                rows = materialization["dagster/row_count"]
                assert json.dumps(rows).replace("dagster/row_count", count) == json.dumps(
                    materialization[count]
                )
                uri = json.dumps(materialization["dagster/uri"])
                assert f"file://{pipeline.home}" in uri and f"/{asset}/" in uri

        # Again: the same connections, and no request paid again.
        fake.clear_requests()
        pipeline.ingest(*BOOKS, "--config", config)
        assert _types(pipeline) == types
        assert pipeline.paid_requests() == {}
        assert _bridge_calls(pipeline)["paid"] == paid["paid"]
        pipeline.engine.dispose()


def test_without_ai_metadata_the_other_engines_are_skipped_with_the_reason(
    postgres_server, tmp_path
):
    with FakeGemini() as fake:
        pipeline = GeminiPipeline(tmp_path / "home", create_database(postgres_server), fake)
        pipeline.env["DOC_PIPELINE_PROVIDER"] = "local"
        pipeline.ingest(*BOOKS)
        assert set(_types(pipeline)) == {"semantic"}
        assert fake.requests == []
        (first, second) = pipeline.materialization_metadata("connections")
        for metadata in (first, second):
            assert "local provider" in json.dumps(metadata["contradiction_skipped"])
            assert "no AI judge" in json.dumps(metadata["thematic_bridge_skipped"])
        pipeline.engine.dispose()
