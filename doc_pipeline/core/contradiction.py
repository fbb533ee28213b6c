"""The contradiction engine: chunks of different books that discuss the same concepts in
opposite emotional tones (one celebrates what the other mourns or attacks).

Pure and local: it reads the chunk metadata of the AI chunker (concepts with importance,
emotional polarity, importance) and pays for no AI request. A document whose chunks have no
such metadata (the local provider makes none) is skipped with the reason in the result, so the
caller can record why it has no contradiction edges instead of failing or writing nothing
silently.

Strength of an edge between own chunk a and other chunk b sharing the concepts S:
    concept_score    = 1 - prod over s in S of (1 - min(importance_a(s), importance_b(s)))
                       (a noisy-OR: one concept central to both is enough for a high score,
                       several peripheral ones add up, and it never exceeds 1)
    polarity_gap     = |polarity_a - polarity_b| / 2       (in [min_polarity, 1])
    importance_score = (importance_a + importance_b) / 2
    strength = weighted mean of the three with the config's weights, so it stays in [0, 1].
Unknown importances count as the config's defaults.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from doc_pipeline.core.connection_types import ChunkFacts, chunk_facts, normalize_name
from doc_pipeline.core.edges import Edge

__all__ = [
    "CONNECTION_TYPE",
    "SKIP_NO_METADATA",
    "ChunkFacts",
    "ContradictionConfig",
    "ContradictionResult",
    "chunk_facts",
    "find_contradictions",
    "has_contradiction_metadata",
    "normalize_name",
]

CONNECTION_TYPE = "contradiction"
SKIP_NO_METADATA = (
    "no chunk of this document has concepts and an emotional polarity "
    "(the local provider makes none)"
)
_DIGITS = 6  # stored values are rounded so that a recomputation compares equal


@dataclass(frozen=True)
class ContradictionConfig:
    min_polarity: float = 0.3  # |polarity| each side must reach; the signs must be opposite
    min_shared_concepts: int = 1
    min_strength: float = 0.3
    top_k: int = 5  # edges kept per own chunk, strongest first
    concept_weight: float = 0.5
    polarity_weight: float = 0.3
    importance_weight: float = 0.2
    default_concept_importance: float = 0.5  # for a concept given without importance
    default_chunk_importance: float = 0.5  # for a chunk given without importance
    max_listed_concepts: int = 20  # shared concepts named in an edge's metadata

    def __post_init__(self) -> None:
        weights = (self.concept_weight, self.polarity_weight, self.importance_weight)
        if min(weights) < 0 or sum(weights) <= 0:
            raise ValueError("weights must be non-negative with a positive sum")
        if not 0 <= self.min_polarity <= 1 or not 0 <= self.min_strength <= 1:
            raise ValueError("min_polarity and min_strength must be in [0, 1]")
        if self.min_shared_concepts < 1 or self.top_k < 1 or self.max_listed_concepts < 0:
            raise ValueError("min_shared_concepts and top_k must be at least 1")
        for default in (self.default_concept_importance, self.default_chunk_importance):
            if not 0 <= default <= 1:
                raise ValueError("default importances must be in [0, 1]")


@dataclass(frozen=True)
class ContradictionResult:
    edges: list[Edge]
    skipped: str | None = None  # why the document was not considered at all, if it was not


def has_contradiction_metadata(chunk: ChunkFacts) -> bool:
    """True if the chunk has what this engine reads: concepts and an emotional polarity."""
    return bool(chunk.concepts) and chunk.polarity is not None


def _sign(chunk: ChunkFacts, config: ContradictionConfig) -> int:
    """+1 or -1 for a chunk charged enough to take part, 0 otherwise (neutral or unknown)."""
    polarity = chunk.polarity
    if polarity is None or not chunk.concepts or abs(polarity) < config.min_polarity:
        return 0
    return (polarity > 0) - (polarity < 0)


def _unique(chunks: Iterable[ChunkFacts]) -> list[ChunkFacts]:
    seen: dict[str, ChunkFacts] = {}
    for chunk in chunks:
        seen.setdefault(chunk.chunk_id, chunk)
    return list(seen.values())


def find_contradictions(
    own: Iterable[ChunkFacts],
    others: Iterable[ChunkFacts],
    config: ContradictionConfig | None = None,
) -> ContradictionResult:
    """Edges from own chunks to chunks of other documents that share at least
    min_shared_concepts concepts with an opposite polarity of at least min_polarity on each
    side; up to top_k per own chunk with strength at least min_strength.

    Output is sorted by (source id, strength descending, target id), independent of the input
    order. The others are indexed by (polarity sign, concept), so the work grows with the
    number of pairs that share a concept, not with own x others."""
    config = config or ContradictionConfig()
    own = _unique(own)
    if not any(has_contradiction_metadata(chunk) for chunk in own):
        return ContradictionResult(edges=[], skipped=SKIP_NO_METADATA)
    index: dict[tuple[int, str], list[ChunkFacts]] = defaultdict(list)
    for other in _unique(others):
        if sign := _sign(other, config):
            for name in other.concepts:
                index[(sign, name)].append(other)
    edges: list[Edge] = []
    for chunk in sorted(own, key=lambda c: c.chunk_id):
        if not (sign := _sign(chunk, config)):
            continue
        shared: dict[str, list[str]] = defaultdict(list)  # other chunk id -> shared concepts
        targets: dict[str, ChunkFacts] = {}
        for name in chunk.concepts:
            for other in index.get((-sign, name), ()):
                if other.document_id != chunk.document_id and other.chunk_id != chunk.chunk_id:
                    shared[other.chunk_id].append(name)
                    targets[other.chunk_id] = other
        found = []  # scores first, Edge objects only for the kept ones: most pairs lose
        for other_id, names in shared.items():
            if len(names) >= config.min_shared_concepts:
                names.sort()  # so that floats add up the same whatever the order
                scores = _scores(chunk, targets[other_id], names, config)
                if scores[0] >= config.min_strength:
                    found.append((-scores[0], other_id, names, scores))
        found.sort(key=lambda item: item[:2])
        for _, other_id, names, scores in found[: config.top_k]:
            edges.append(_edge(chunk, targets[other_id], names, scores, config))
    return ContradictionResult(edges=edges)


def _scores(
    a: ChunkFacts, b: ChunkFacts, names: list[str], config: ContradictionConfig
) -> tuple[float, float, float, float]:
    """(strength, concept_score, polarity_gap, importance_score) of a -> b, see the module
    docstring; strength is rounded as stored, so the min_strength cut matches what is kept."""
    assert a.polarity is not None and b.polarity is not None  # checked by _sign
    missing = config.default_concept_importance
    unshared = 1.0
    for name in names:
        ia, ib = a.concepts[name], b.concepts[name]
        unshared *= 1.0 - min(missing if ia is None else ia, missing if ib is None else ib)
    concept_score = 1.0 - unshared
    polarity_gap = abs(a.polarity - b.polarity) / 2
    default = config.default_chunk_importance
    importance_score = (
        (default if a.importance is None else a.importance)
        + (default if b.importance is None else b.importance)
    ) / 2
    total = config.concept_weight + config.polarity_weight + config.importance_weight
    strength = (
        config.concept_weight * concept_score
        + config.polarity_weight * polarity_gap
        + config.importance_weight * importance_score
    ) / total
    return (
        round(min(1.0, max(0.0, strength)), _DIGITS),
        concept_score,
        polarity_gap,
        importance_score,
    )


def _edge(
    a: ChunkFacts,
    b: ChunkFacts,
    names: list[str],
    scores: tuple[float, float, float, float],
    config: ContradictionConfig,
) -> Edge:
    assert a.polarity is not None and b.polarity is not None
    strength, concept_score, polarity_gap, importance_score = scores
    return Edge(
        source_chunk_id=a.chunk_id,
        target_chunk_id=b.chunk_id,
        strength=strength,
        metadata={
            # lists, not tuples: the stored JSON must compare equal to a recomputation
            "shared_concepts": names[: config.max_listed_concepts],
            "shared_concept_count": len(names),
            "source_polarity": round(a.polarity, _DIGITS),
            "target_polarity": round(b.polarity, _DIGITS),
            "concept_score": round(concept_score, _DIGITS),
            "polarity_gap": round(polarity_gap, _DIGITS),
            "importance_score": round(importance_score, _DIGITS),
        },
    )
