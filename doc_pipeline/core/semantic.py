"""The semantic connection engine: nearest chunks of other documents, scored.

The search itself (pgvector HNSW) is `doc_pipeline.db.semantic_search`; this module decides what
a neighbour is worth: its cosine similarity, blended with the target chunk's importance where
the chunker gave one, kept when it reaches the similarity threshold.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from doc_pipeline.core.edges import Edge

CONNECTION_TYPE = "semantic"


@dataclass(frozen=True)
class SemanticConfig:
    min_similarity: float  # depends on the embedder (each provider calibrates its own)
    top_k: int = 5
    # HNSW's candidate list per chunk (`hnsw.ef_search`): recall against time (BENCHMARKS.md,
    # "Connections at library scale": at 1M chunks, 130 gave recall@10 0.955-0.962 in 1.8-2.6 s,
    # 100 fell to 0.94-0.95 in some builds, 200 bought 0.01 more for about 20% more time).
    ef_search: int = 130
    # The document's chunks are searched over this many database connections at once: each
    # runs in a backend of its own, so on as many cores.
    search_connections: int = 2
    # Strength = similarity, blended with the target chunk's importance where the chunker
    # gave one: (1 - w) * similarity + w * importance.
    importance_weight: float = 0.2


@dataclass(frozen=True)
class Neighbour:
    """A chunk of another document near one of the document's own chunks."""

    source: str  # the own chunk's id
    target: str
    similarity: float  # cosine similarity of their vectors


def semantic_edges(
    neighbours: Iterable[Neighbour],
    importances: Mapping[str, float],
    model: str,
    config: SemanticConfig,
) -> list[Edge]:
    """The neighbours at least min_similarity alike, as edges; `importances` holds the target
    chunks' importance where their metadata has one."""
    edges = []
    for neighbour in neighbours:
        similarity = min(1.0, max(0.0, float(neighbour.similarity)))
        if similarity < config.min_similarity:
            continue
        metadata = {"similarity": round(similarity, 6), "model": model}
        strength = similarity
        importance = importances.get(neighbour.target)
        if importance is not None and math.isfinite(importance):
            importance = min(1.0, max(0.0, importance))
            strength = (1 - config.importance_weight) * similarity + (
                config.importance_weight * importance
            )
            metadata["target_importance"] = round(importance, 6)
        edges.append(
            Edge(
                source_chunk_id=neighbour.source,
                target_chunk_id=neighbour.target,
                strength=round(strength, 6),
                metadata=metadata,
            )
        )
    return edges
