"""What is wrong with one document's rows: the logic of the asset checks, with no Dagster import.

Each function reads the app database and returns the problems it finds as sentences a data
engineer can act on (an empty list means the rows are sound). They only test what the schema
does not already guarantee: foreign keys, the unique keys and the CHECK constraints (an
embedding's `dimensions` equals its vector's length; a connection's strength is in [0, 1] and
it is no self link) cannot be violated, and pgvector refuses NaN and infinite components, so
none of those is queried here.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from doc_pipeline.core import bridges, contradiction, semantic
from doc_pipeline.db.models import AICall, Chunk

# The connection types the engines write; anything else is no engine's output.
KNOWN_CONNECTION_TYPES = (
    semantic.CONNECTION_TYPE,
    contradiction.CONNECTION_TYPE,
    bridges.CONNECTION_TYPE,
)
# Stored vectors are L2-normalized (the providers' contract); cosine search relies on it, and a
# zero vector would give NaN distances.
NORM_TOLERANCE = 1e-3
_EXCERPT = 40  # characters of text quoted in a problem


def _quote(text: str) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= _EXCERPT else text[:_EXCERPT] + "…")


def _difference(content: str, markdown: str, start: int, end: int) -> str:
    """Where a chunk's content first differs from the markdown span it claims."""
    span = markdown[start:end]
    at = next(
        (i for i, (a, b) in enumerate(zip(content, span, strict=False)) if a != b),
        min(len(content), len(span)),
    )
    return (
        f"content differs from the markdown at [{start}, {end}) from offset {start + at}: "
        f"the chunk has {_quote(content[at:])}, the markdown {_quote(span[at:])}"
    )


# --- chunks ------------------------------------------------------------------------------


def chunk_coverage_problems(
    engine: Engine,
    document_id: str,
    markdown: str,
    pending_rows: Sequence[Mapping[str, Any]] | None = None,
) -> list[str]:
    """How the document's chunks, in chunk_index order, fail to partition the markdown.

    Sound chunks are numbered 0..n-1, each is the non-empty span markdown[start:end] it claims
    (so its char_count is its length), the spans follow each other without overlapping, and
    whatever lies between, before or after them is whitespace: every non-whitespace character
    is in exactly one chunk. `pending_rows`: the chunks of a new version, not written yet, are
    checked instead of the current version's."""
    if pending_rows is not None:
        ordered = sorted(pending_rows, key=lambda r: (r["chunk_index"], r["start_offset"]))
        return _coverage_problems([SimpleNamespace(**row) for row in ordered], markdown)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(
                Chunk.id,
                Chunk.chunk_index,
                Chunk.start_offset,
                Chunk.end_offset,
                Chunk.char_count,
                Chunk.content,
            )
            .where(Chunk.document_id == document_id)
            .order_by(Chunk.chunk_index, Chunk.start_offset)
        ).all()
    return _coverage_problems(rows, markdown)


def _coverage_problems(rows: Sequence[Any], markdown: str) -> list[str]:
    if not rows:
        return ["the document has no chunks"] if markdown.strip() else []
    problems: list[str] = []
    covered_to = 0  # end of the text covered so far
    for row in rows:
        name = f"chunk {row.chunk_index} ({row.id})"
        start, end = row.start_offset, row.end_offset
        if not 0 <= start < end <= len(markdown):
            problems.append(
                f"{name}: offsets [{start}, {end}) are not a non-empty span of the "
                f"{len(markdown)}-character markdown"
            )
            continue
        if row.content != markdown[start:end]:
            problems.append(f"{name}: {_difference(row.content, markdown, start, end)}")
        if row.char_count != len(row.content):
            problems.append(
                f"{name}: char_count {row.char_count} but its content has {len(row.content)}"
            )
        if start < covered_to:
            problems.append(
                f"{name}: starts at {start}, inside the previous chunk (which ends at "
                f"{covered_to}): overlapping or out-of-order offsets"
            )
        else:
            gap = markdown[covered_to:start]
            if gap.strip():
                problems.append(
                    f"text at [{covered_to}, {start}) before {name} is in no chunk: {_quote(gap)}"
                )
        covered_to = max(covered_to, end)
    tail = markdown[covered_to:]
    if tail.strip():
        problems.append(
            f"text at [{covered_to}, {len(markdown)}) after the last chunk is in no chunk: "
            f"{_quote(tail)}"
        )
    # One problem for the numbering, not one per chunk after a gap.
    misnumbered = [(p, r) for p, r in enumerate(rows) if r.chunk_index != p]
    if misnumbered:
        position, row = misnumbered[0]
        problems.append(
            f"chunk_index is not 0..{len(rows) - 1}: {len(misnumbered)} chunks are misnumbered,"
            f" the first is chunk {row.chunk_index} ({row.id}) where {position} was expected"
        )
    return problems


# --- embeddings --------------------------------------------------------------------------

# One row per chunk of the document (with its vector for the model, if any), then one per vector
# of the model labelled with the document whose chunk belongs to another document.
_EMBEDDING_ROWS = sa.text(
    """
    SELECT c.id AS chunk_id, c.chunk_index, c.document_id AS chunk_document_id,
           e.chunk_id AS embedded_chunk_id, e.document_id AS embedding_document_id,
           vector_dims(e.embedding) AS length, vector_norm(e.embedding) AS norm
    FROM chunks c
    LEFT JOIN embeddings e ON e.chunk_id = c.id AND e.model = :model
    WHERE c.document_id = :doc
    UNION ALL
    SELECT NULL, NULL, c.document_id, e.chunk_id, e.document_id, vector_dims(e.embedding),
           vector_norm(e.embedding)
    FROM embeddings e
    JOIN chunks c ON c.id = e.chunk_id
    WHERE e.document_id = :doc AND e.model = :model AND c.document_id <> :doc
    ORDER BY chunk_index NULLS LAST, embedded_chunk_id
    """
)


def embedding_problems(engine: Engine, document_id: str, model: str, dimensions: int) -> list[str]:
    """How the document's vectors for `model` fall short of exactly one per chunk, each labelled
    with its chunk's document, `dimensions` wide and of unit norm."""
    with engine.connect() as conn:
        rows = conn.execute(_EMBEDDING_ROWS, {"doc": document_id, "model": model}).all()
    problems: list[str] = []
    missing = [row for row in rows if row.embedded_chunk_id is None]
    if missing:
        shown = ", ".join(f"{row.chunk_index} ({row.chunk_id})" for row in missing[:5])
        problems.append(
            f"{len(missing)} of {sum(1 for r in rows if r.chunk_id)} chunks have no "
            f"{model} embedding: chunk {shown}{' …' if len(missing) > 5 else ''}"
        )
    for row in rows:
        if row.embedded_chunk_id is None:
            continue
        name = f"embedding of chunk {row.embedded_chunk_id}"
        if row.chunk_document_id != row.embedding_document_id:
            problems.append(
                f"{name}: labelled document {row.embedding_document_id}, but the chunk belongs "
                f"to document {row.chunk_document_id}"
            )
        if row.length != dimensions:  # ck_embeddings_dims keeps the dimensions column equal
            problems.append(
                f"{name}: {row.length} components, but {model} is configured for {dimensions}"
            )
        if abs(row.norm - 1.0) > NORM_TOLERANCE:
            problems.append(f"{name}: norm {row.norm:.6g}, not an L2-normalized vector")
    return problems


# --- connections -------------------------------------------------------------------------

# The connections the document's run wrote: those that start at its chunks.
_CONNECTION_ROWS = sa.text(
    """
    SELECT k.id, k.source_chunk_id, k.target_chunk_id, k.connection_type,
           t.document_id AS target_document_id, k.metadata ->> 'model' AS model,
           EXISTS (SELECT 1 FROM embeddings e
                   WHERE e.chunk_id = k.source_chunk_id
                     AND e.model = k.metadata ->> 'model') AS source_embedded,
           EXISTS (SELECT 1 FROM embeddings e
                   WHERE e.chunk_id = k.target_chunk_id
                     AND e.model = k.metadata ->> 'model') AS target_embedded
    FROM connections k
    JOIN chunks s ON s.id = k.source_chunk_id
    JOIN chunks t ON t.id = k.target_chunk_id
    WHERE s.document_id = :doc
    ORDER BY k.id
    """
)


def _connection_rows(engine: Engine, document_id: str) -> list[Any]:
    with engine.connect() as conn:
        return list(conn.execute(_CONNECTION_ROWS, {"doc": document_id}))


def _is_orphan(row: Any) -> bool:
    return row.connection_type == semantic.CONNECTION_TYPE and not (
        row.model and row.source_embedded and row.target_embedded
    )


def orphan_connections(engine: Engine, document_id: str) -> int:
    """Semantic connections from the document's chunks whose vectors are gone: the source or
    target chunk has no embedding for the model the connection was found with (after a model
    change or a lost embedding). Chunks cannot be missing (foreign keys), but what made the
    connection can."""
    return sum(1 for row in _connection_rows(engine, document_id) if _is_orphan(row))


def connection_problems(engine: Engine, document_id: str) -> list[str]:
    """Connections from the document's chunks that no engine could have written: ends in the
    same document, an unknown type, or orphans (see `orphan_connections`)."""
    problems: list[str] = []
    for row in _connection_rows(engine, document_id):
        name = f"{row.connection_type} connection {row.id} ({row.source_chunk_id} → " + (
            f"{row.target_chunk_id})"
        )
        if row.target_document_id == document_id:
            problems.append(f"{name}: both chunks are in this document")
        if row.connection_type not in KNOWN_CONNECTION_TYPES:
            problems.append(
                f"{name}: unknown type; the engines write {', '.join(KNOWN_CONNECTION_TYPES)}"
            )
        if _is_orphan(row):
            if not row.model:
                problems.append(f"{name}: its metadata names no embedding model")
            else:
                ends = [
                    end
                    for end, present in (
                        ("source", row.source_embedded),
                        ("target", row.target_embedded),
                    )
                    if not present
                ]
                problems.append(
                    f"{name}: orphan, the {' and '.join(ends)} chunk has no {row.model} "
                    "embedding any more"
                )
    return problems


# --- AI cost -----------------------------------------------------------------------------


def stage_cost(engine: Engine, document_id: str, stage: str, run_id: str | None = None) -> Decimal:
    """USD paid for the document's AI requests of one stage (the asset name: chunks,
    embeddings, connections), over all runs or only the given run. Ledger hits cost nothing."""
    query = sa.select(sa.func.coalesce(sa.func.sum(AICall.cost_usd), 0)).where(
        AICall.document_id == document_id, AICall.stage == stage, AICall.outcome == "paid"
    )
    if run_id is not None:
        query = query.where(AICall.run_id == run_id)
    with engine.connect() as conn:
        return Decimal(conn.execute(query).scalar_one())
