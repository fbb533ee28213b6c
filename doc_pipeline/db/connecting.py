"""Finding and writing one document's connections in one transaction."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from doc_pipeline.core.semantic import CONNECTION_TYPE, SemanticConfig, find_semantic_edges
from doc_pipeline.db import store
from doc_pipeline.db.store import Edge, WriteCounts


@dataclass(frozen=True)
class Connected:
    edges: list[Edge]
    counts: WriteCounts


def connect_document(
    engine: Engine, document_id: str, model: str, semantic: SemanticConfig
) -> Connected:
    """Find the document's edges and replace its connections by difference, in one transaction
    that holds the document: edges are found and written against the same committed chunks,
    and a target chunk deleted meanwhile by another document's re-processing is skipped."""
    with engine.begin() as conn:
        store.lock_document(conn, document_id)
        edges = find_semantic_edges(conn, document_id, model, semantic)
        counts = store.write_connections(conn, document_id, CONNECTION_TYPE, edges)
    return Connected(edges, counts)
