"""The semantic engine's search: each chunk's nearest chunks of other documents through the
pgvector HNSW index (scored by `doc_pipeline.core.semantic`)."""

from __future__ import annotations

import sqlalchemy as sa

from doc_pipeline.core.edges import Edge
from doc_pipeline.core.semantic import Neighbour, SemanticConfig, semantic_edges


def nearest_other_documents(dimensions: int) -> sa.TextClause:
    """For each chunk of a document, its nearest chunks of other documents (same model), ordered
    by cosine distance so that the planner walks the HNSW index of that width (768: migration
    0001, 256: 0008; another width is searched exactly): the query must use the index's
    expression, `embedding::vector(N)`."""
    width = int(dimensions)
    return sa.text(
        f"""
    SELECT s.chunk_id AS source, n.chunk_id AS target, 1 - n.distance AS similarity
    FROM embeddings s
    CROSS JOIN LATERAL (
        SELECT o.chunk_id,
               o.embedding::vector({width}) <=> s.embedding::vector({width}) AS distance
        FROM embeddings o
        WHERE o.dimensions = {width} AND o.model = s.model
          AND o.document_id <> s.document_id
        ORDER BY o.embedding::vector({width}) <=> s.embedding::vector({width})
        LIMIT :top_k
    ) n
    WHERE s.document_id = :document_id AND s.model = :model AND s.dimensions = {width}
    """
    )


DOCUMENT_WIDTHS = sa.text(
    "SELECT DISTINCT dimensions FROM embeddings WHERE document_id = :document_id AND model = :model"
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
    params = {"document_id": document_id, "model": model}
    rows = [
        row
        for width in conn.execute(DOCUMENT_WIDTHS, params).scalars()
        for row in conn.execute(
            nearest_other_documents(width), params | {"top_k": config.top_k}
        ).all()
    ]
    # Fetched apart: joining chunks into the search query made the planner leave the index.
    importances = dict(
        conn.execute(TARGET_IMPORTANCE, {"ids": sorted({row.target for row in rows})}).all()
    )
    neighbours = [Neighbour(row.source, row.target, row.similarity) for row in rows]
    return semantic_edges(neighbours, importances, model, config)
