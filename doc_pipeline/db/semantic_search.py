"""The semantic engine's search: each chunk's nearest chunks of other documents through the
pgvector HNSW index (scored by `doc_pipeline.core.semantic`)."""

from __future__ import annotations

import sqlalchemy as sa

from doc_pipeline.core.edges import Edge
from doc_pipeline.core.semantic import (
    INDEXED_DIMENSIONS,
    Neighbour,
    SemanticConfig,
    semantic_edges,
)

# For each chunk of a document, its nearest chunks of other documents (same model), ordered by
# cosine distance so that the planner walks the HNSW index. The query must use the same
# expression as the index, `embedding::vector(768)`, for the planner to pick it.
NEAREST_OTHER_DOCUMENTS = sa.text(
    f"""
    SELECT s.chunk_id AS source, n.chunk_id AS target, 1 - n.distance AS similarity
    FROM embeddings s
    CROSS JOIN LATERAL (
        SELECT o.chunk_id,
               o.embedding::vector({INDEXED_DIMENSIONS})
                 <=> s.embedding::vector({INDEXED_DIMENSIONS}) AS distance
        FROM embeddings o
        WHERE o.dimensions = {INDEXED_DIMENSIONS} AND o.model = s.model
          AND o.document_id <> s.document_id
        ORDER BY o.embedding::vector({INDEXED_DIMENSIONS})
                 <=> s.embedding::vector({INDEXED_DIMENSIONS})
        LIMIT :top_k
    ) n
    WHERE s.document_id = :document_id AND s.model = :model
      AND s.dimensions = {INDEXED_DIMENSIONS}
    """
)


TARGET_IMPORTANCE = sa.text(
    """
    SELECT id, (metadata ->> 'importance')::float FROM chunks
    WHERE id = ANY(:ids) AND jsonb_typeof(metadata -> 'importance') = 'number'
    """
)


def find_semantic_edges(
    conn: sa.Connection, document_id: str, model: str, config: SemanticConfig
) -> list[Edge]:
    """For each chunk of the document, up to top_k chunks of other documents with cosine
    similarity at least min_similarity, embedded with the same model."""
    # Iterative scans keep searching when the filter (other documents only) removes candidates.
    conn.execute(sa.text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
    conn.execute(sa.text(f"SET LOCAL hnsw.ef_search = {int(max(config.ef_search, config.top_k))}"))
    rows = conn.execute(
        NEAREST_OTHER_DOCUMENTS,
        {"document_id": document_id, "model": model, "top_k": config.top_k},
    ).all()
    # Fetched apart: joining chunks into the search query made the planner leave the index.
    importances = dict(
        conn.execute(TARGET_IMPORTANCE, {"ids": sorted({row.target for row in rows})}).all()
    )
    neighbours = [Neighbour(row.source, row.target, row.similarity) for row in rows]
    return semantic_edges(neighbours, importances, model, config)
