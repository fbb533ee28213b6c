"""A home made by the previous release holds the lexical embedder's vectors (768 wide, model
`local/lexical-hash-v1`): one `doc-pipeline backfill embeddings --all --downstream` gives every
chunk a vector of the semantic local embedder, on its own row (one per chunk and model), and
connects the documents again with it, through the 256-wide HNSW index."""

from __future__ import annotations

import os

import numpy as np
import sqlalchemy as sa

from doc_pipeline.core.local_embedding import MODEL_NAME
from doc_pipeline.db import store
from doc_pipeline_tests.conftest import CORPUS, create_database
from doc_pipeline_tests.processes import run_cli

BOOKS = [
    CORPUS / "epub" / "se-abbott-flatland.epub3.epub",
    CORPUS / "epub" / "se-keynes-economic-consequences-of-the-peace.epub3.epub",
]
OLD_MODEL = "local/lexical-hash-v1"


def test_a_backfill_moves_a_home_from_the_lexical_embedder_to_the_semantic_one(
    postgres_server, tmp_path
):
    url = create_database(postgres_server)
    env = {
        **{k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "GEMINI_API_KEY")},
        "DOC_PIPELINE_HOME": str(tmp_path / "home"),
        "DATABASE_URL": url,
        "DOC_PIPELINE_PROVIDER": "local",
    }
    assert run_cli(env, "ingest", *BOOKS, timeout=600).returncode == 0
    engine = store.engine_for(url)
    rng = np.random.default_rng(3)
    # What the previous release left: each chunk's lexical vector, and connections found by it.
    with engine.begin() as conn:
        rows = conn.execute(sa.text("SELECT chunk_id, document_id, text_sha256 FROM embeddings"))
        old = [
            {
                "chunk": chunk,
                "doc": document,
                "key": key,
                "vector": "[" + ",".join(f"{x:.6f}" for x in v / np.linalg.norm(v)) + "]",
            }
            for (chunk, document, key), v in zip(rows, rng.normal(size=(10_000, 768)), strict=False)
        ]
        conn.execute(sa.text("DELETE FROM connections"))
        conn.execute(sa.text("DELETE FROM embeddings"))
        conn.execute(
            sa.text(
                "INSERT INTO embeddings (chunk_id, document_id, model, dimensions, embedding,"
                " text_sha256) VALUES (:chunk, :doc, :model, 768, CAST(:vector AS vector), :key)"
            ),
            [row | {"model": OLD_MODEL} for row in old],
        )

    result = run_cli(env, "backfill", "embeddings", "--all", "--downstream", "--json", timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

    with engine.connect() as conn:
        by_model = dict(
            conn.execute(
                sa.text("SELECT model || ':' || dimensions, count(*) FROM embeddings GROUP BY 1")
            ).all()
        )
        chunks = conn.execute(sa.text("SELECT count(*) FROM chunks")).scalar_one()
        models = set(
            conn.execute(sa.text("SELECT DISTINCT metadata ->> 'model' FROM connections")).scalars()
        )
    assert by_model == {f"{OLD_MODEL}:768": len(old), f"{MODEL_NAME}:256": chunks}
    assert models == {MODEL_NAME}
    summaries = store.document_summaries(engine)
    assert all(d["stage"] == "connected" and d["connections"] > 0 for d in summaries)
    engine.dispose()
