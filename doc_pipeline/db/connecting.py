"""Finding and writing one document's connections: the three engines (DESIGN rule 4).

The AI judging of thematic bridges happens first, outside any transaction (it can take
minutes); then one transaction holds the document, finds the semantic and contradiction edges
against the committed chunks, and replaces each type's connections by difference. A target
chunk that another document's re-processing removed meanwhile is skipped, never a foreign-key
error.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from doc_pipeline.core import bridges, contradiction, semantic
from doc_pipeline.core.bridges import BridgeConfig, BridgeRequest, JudgedBridges
from doc_pipeline.core.connection_types import ChunkFacts, chunk_facts
from doc_pipeline.core.contradiction import ContradictionConfig
from doc_pipeline.core.edges import Edge
from doc_pipeline.core.semantic import SemanticConfig
from doc_pipeline.db import store
from doc_pipeline.db.semantic_search import find_semantic_edges
from doc_pipeline.db.store import WriteCounts

BridgeJudge = Callable[[list[BridgeRequest]], JudgedBridges]
NO_JUDGE = "the provider has no AI judge (the local provider makes no AI requests)"


@dataclass(frozen=True)
class Engines:
    """Which engines run, with their settings; None switches one off (its stored connections
    are then left as they are)."""

    semantic: SemanticConfig | None
    contradiction: ContradictionConfig | None = None
    bridges: BridgeConfig | None = None


@dataclass
class EngineOutcome:
    edges: list[Edge] = field(default_factory=list)
    counts: WriteCounts | None = None  # None: nothing written (switched off or skipped)
    skipped: str | None = None  # why the engine did not run for this document
    problems: list[str] = field(default_factory=list)  # e.g. unusable AI answers


@dataclass
class Connected:
    outcomes: dict[str, EngineOutcome]  # by connection type

    @property
    def edges(self) -> list[Edge]:
        return [edge for outcome in self.outcomes.values() for edge in outcome.edges]

    @property
    def counts(self) -> WriteCounts:
        written = [o.counts for o in self.outcomes.values() if o.counts is not None]
        return WriteCounts(
            **{
                name: sum(getattr(c, name) for c in written)
                for name in ("inserted", "updated", "deleted", "unchanged", "skipped")
            }
        )


def connect_document(
    engine: Engine,
    document_id: str,
    model: str,
    engines: Engines,
    judge: BridgeJudge | None = None,
    judge_model: str | None = None,
) -> Connected:
    """Find the document's edges with each engine and replace its connections by difference."""
    outcomes: dict[str, EngineOutcome] = {}
    if engines.bridges is not None:
        outcomes[bridges.CONNECTION_TYPE] = _judge_bridges(
            engine, document_id, model, engines, judge, judge_model
        )
    with engine.begin() as conn:
        store.lock_document(conn, document_id)
        if engines.semantic is not None:
            edges = find_semantic_edges(conn, document_id, model, engines.semantic)
            outcomes[semantic.CONNECTION_TYPE] = EngineOutcome(
                edges, store.write_connections(conn, document_id, semantic.CONNECTION_TYPE, edges)
            )
        if engines.contradiction is not None:
            own = _own_facts(conn, document_id)
            found = contradiction.find_contradictions(
                own, _related_facts(conn, document_id, own), engines.contradiction
            )
            # Written even when skipped: without metadata no contradiction can stand.
            outcomes[contradiction.CONNECTION_TYPE] = EngineOutcome(
                found.edges,
                store.write_connections(
                    conn, document_id, contradiction.CONNECTION_TYPE, found.edges
                ),
                found.skipped,
            )
        judged = outcomes.get(bridges.CONNECTION_TYPE)
        if judged is not None and judged.skipped is None:
            judged.counts = store.write_connections(
                conn, document_id, bridges.CONNECTION_TYPE, judged.edges
            )
    return Connected(outcomes)


def _judge_bridges(
    engine: Engine,
    document_id: str,
    model: str,
    engines: Engines,
    judge: BridgeJudge | None,
    judge_model: str | None,
) -> EngineOutcome:
    """Candidate pairs and the AI's judgement of them, with no lock held."""
    if judge is None or judge_model is None:
        return EngineOutcome(skipped=NO_JUDGE)
    config = engines.bridges
    with engine.connect() as conn:
        own = _own_facts(conn, document_id)
        reason = bridges.bridge_skip_reason(own)
        if reason:
            return EngineOutcome(skipped=reason)
        nearest = find_semantic_edges(
            conn, document_id, model, engines.semantic or SemanticConfig(min_similarity=0.0)
        )
        similarity = {(e.source_chunk_id, e.target_chunk_id): e.strength for e in nearest}
        others = _related_facts(conn, document_id, own, {e.target_chunk_id for e in nearest})
        pairs = bridges.select_candidates(own, others, similarity, config)
        wanted = {chunk_id for p in pairs for chunk_id in (p.source_chunk_id, p.target_chunk_id)}
        texts = dict(
            conn.execute(
                sa.text("SELECT id, content FROM chunks WHERE id = ANY(:ids)"),
                {"ids": sorted(wanted)},
            ).all()
        )
        conn.rollback()
    requests = bridges.build_requests(pairs, texts, judge_model, config)
    judged = judge(requests) if requests else JudgedBridges([], [])
    return EngineOutcome(judged.edges, problems=judged.unusable)


def _facts(rows: Iterable) -> list[ChunkFacts]:
    return [chunk_facts(row.id, row.document_id, row.metadata) for row in rows]


def _own_facts(conn: sa.Connection, document_id: str) -> list[ChunkFacts]:
    return _facts(
        conn.execute(
            sa.text("SELECT id, document_id, metadata FROM chunks WHERE document_id = :doc"),
            {"doc": document_id},
        )
    )


# Other documents' chunks that name one of the terms (concepts or themes) in their metadata, or
# are among the given ids. SQL only narrows the candidates down (lower-case, trimmed); the
# engines match the exactly normalized names.
_RELATED = sa.text(
    """
    SELECT c.id, c.document_id, c.metadata FROM chunks c
    WHERE c.document_id <> :doc AND (
      c.id = ANY(:ids)
      OR EXISTS (
        SELECT 1 FROM jsonb_array_elements(
          CASE WHEN jsonb_typeof(c.metadata -> 'concepts') = 'array'
               THEN c.metadata -> 'concepts' ELSE '[]'::jsonb END) AS concept
        WHERE lower(btrim(CASE WHEN jsonb_typeof(concept) = 'object'
                               THEN concept ->> 'name' ELSE concept #>> '{}' END)) = ANY(:terms))
      OR EXISTS (
        SELECT 1 FROM jsonb_array_elements_text(
          CASE WHEN jsonb_typeof(c.metadata -> 'themes') = 'array'
               THEN c.metadata -> 'themes' ELSE '[]'::jsonb END) AS theme
        WHERE lower(btrim(theme)) = ANY(:terms))
    )
    ORDER BY c.id
    """
)


def _related_facts(
    conn: sa.Connection, document_id: str, own: list[ChunkFacts], ids: Iterable[str] = ()
) -> list[ChunkFacts]:
    terms = sorted({term for chunk in own for term in chunk.terms})
    if not terms and not ids:
        return []
    return _facts(conn.execute(_RELATED, {"doc": document_id, "ids": sorted(ids), "terms": terms}))
