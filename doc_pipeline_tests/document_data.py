"""A document's stored data, to compare a run that survived a failure with a clean run."""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from doc_pipeline.db import store

# Every pair of chunks is similar enough, so that the connections compared are not empty.
CONNECT_EVERYTHING = {"resources": {"provider": {"config": {"connection_min_similarity": 0.0}}}}


@dataclass(frozen=True)
class DocumentData:
    chunks: dict[str, str]  # id -> content
    vectors: dict[str, str]  # chunk id -> the vector as Postgres prints it
    connections: frozenset[tuple[str, str, str, float]]  # those found from this document


def document_data(engine: Engine, document_id: str) -> DocumentData:
    with engine.connect() as conn:
        vectors = conn.execute(
            sa.text(
                "SELECT e.chunk_id, e.model || ':' || e.embedding::text FROM embeddings e"
                " JOIN chunks c ON c.id = e.chunk_id WHERE c.document_id = :doc"
            ),
            {"doc": document_id},
        ).all()
        connections = conn.execute(
            sa.text(
                "SELECT source_chunk_id, target_chunk_id, connection_type,"
                " round(strength::numeric, 6) FROM connections WHERE source_chunk_id IN"
                " (SELECT id FROM chunks WHERE document_id = :doc)"
            ),
            {"doc": document_id},
        ).all()
    return DocumentData(
        chunks={c["id"]: c["content"] for c in store.load_chunks(engine, document_id)},
        vectors=dict(vectors),
        connections=frozenset((s, t, kind, float(v)) for s, t, kind, v in connections),
    )
