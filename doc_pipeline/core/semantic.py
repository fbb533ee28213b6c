"""The semantic connection engine: nearest chunks of other documents through pgvector HNSW."""

from __future__ import annotations

import math
from dataclasses import dataclass

import sqlalchemy as sa

from doc_pipeline.db.store import Edge

CONNECTION_TYPE = "semantic"
# The HNSW index exists for this width only (see migration 0001); the query must use the same
# expression as the index, `embedding::vector(768)`, for the planner to pick it.
INDEXED_DIMENSIONS = 768


# For each chunk of a document, its nearest chunks of other documents (same model), ordered by
# cosine distance so that the planner walks the HNSW index.
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


@dataclass(frozen=True)
class SemanticConfig:
    min_similarity: float  # depends on the embedder: lexical vectors of two books rarely pass 0.2
    top_k: int = 5
    ef_search: int = 100
    # Strength = similarity, blended with the target chunk's importance where the chunker
    # gave one: (1 - w) * similarity + w * importance.
    importance_weight: float = 0.2


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
    edges = []
    for row in rows:
        similarity = min(1.0, max(0.0, float(row.similarity)))
        if similarity < config.min_similarity:
            continue
        metadata = {"similarity": round(similarity, 6), "model": model}
        strength = similarity
        importance = importances.get(row.target)
        if importance is not None and math.isfinite(importance):
            importance = min(1.0, max(0.0, importance))
            strength = (1 - config.importance_weight) * similarity + (
                config.importance_weight * importance
            )
            metadata["target_importance"] = round(importance, 6)
        edges.append(
            Edge(
                source_chunk_id=row.source,
                target_chunk_id=row.target,
                strength=round(strength, 6),
                metadata=metadata,
            )
        )
    return edges
