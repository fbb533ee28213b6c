"""Reads and writes of the app database, one transaction per stage write (DESIGN rule 3).

A stage replaces its output for a document by difference: rows that are new are inserted, rows
that changed are updated, rows that vanished are deleted, and unchanged rows are not touched,
all in one transaction. Running a stage twice on the same input writes nothing the second time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from functools import cache
from typing import Any

import numpy as np
import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Engine

from doc_pipeline.core.edges import Edge
from doc_pipeline.core.stages import STAGE_TIMESTAMPS, stage_change
from doc_pipeline.db.models import (
    AICall,
    Chunk,
    Connection,
    Document,
    DocumentIdentity,
    DocumentVersion,
    Embedding,
    Heartbeat,
)


@cache
def engine_for(url: str) -> Engine:
    # Room for a step's concurrent AI requests (each takes a connection briefly for the
    # ledger), its heartbeat and its own writes, without waiting for one another.
    return sa.create_engine(url, pool_pre_ping=True, pool_size=2, max_overflow=14)


@dataclass(frozen=True)
class WriteCounts:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    skipped: int = 0  # edges to chunks that another document's re-processing removed meanwhile

    @property
    def kept(self) -> int:
        """Rows that stay (unchanged or updated in place): a chunk that keeps its id."""
        return self.unchanged + self.updated

    def as_dict(self) -> dict[str, int]:
        return {
            "inserted": self.inserted,
            "updated": self.updated,
            "deleted": self.deleted,
            "unchanged": self.unchanged,
        }


# --- documents ---------------------------------------------------------------------------


def register_document(
    engine: Engine,
    *,
    document_id: str,
    content_sha256: str,
    source_file: str,
    byte_size: int,
    identities: Sequence[str] = (),
) -> bool:
    """Insert the document with its first version if it is new; True when it was. A known
    document is left alone."""
    statement = (
        insert(Document)
        .values(
            id=document_id,
            content_sha256=content_sha256,
            source_file=source_file,
            byte_size=byte_size,
            stage="pending",
            version=1,
        )
        .on_conflict_do_nothing(index_elements=["id"])
        .returning(Document.id)
    )
    with engine.begin() as conn:
        if conn.execute(statement).first() is None:
            return False
        _add_version_row(conn, document_id, 1, content_sha256, source_file, byte_size)
        _add_identities(conn, document_id, identities)
        return True


def add_version(
    engine: Engine,
    document_id: str,
    *,
    content_sha256: str,
    source_file: str,
    byte_size: int,
    identities: Sequence[str] = (),
) -> int:
    """Register new content of a known document as its newest version (the one its next run
    processes); returns its number. Its chunks stay those of the current version until the new
    one supersedes it."""
    with engine.begin() as conn:
        lock_document(conn, document_id)
        known = conn.execute(
            sa.select(DocumentVersion.version).where(
                DocumentVersion.content_sha256 == content_sha256
            )
        ).scalar()
        if known is not None:
            return known
        version = (
            1
            + conn.execute(
                sa.select(sa.func.max(DocumentVersion.version)).where(
                    DocumentVersion.document_id == document_id
                )
            ).scalar_one()
        )
        _add_version_row(conn, document_id, version, content_sha256, source_file, byte_size)
        conn.execute(
            sa.update(Document)
            .where(Document.id == document_id)
            .values(
                content_sha256=content_sha256,
                source_file=source_file,
                byte_size=byte_size,
                version=version,
                **stage_change("pending", datetime.now(UTC)),
            )
        )
        _add_identities(conn, document_id, identities)
    return version


def _add_version_row(
    conn: sa.Connection,
    document_id: str,
    version: int,
    content_sha256: str,
    source_file: str,
    byte_size: int,
) -> None:
    conn.execute(
        insert(DocumentVersion).values(
            document_id=document_id,
            version=version,
            content_sha256=content_sha256,
            source_file=source_file,
            byte_size=byte_size,
        )
    )


def _add_identities(conn: sa.Connection, document_id: str, identities: Sequence[str]) -> None:
    if identities:
        conn.execute(
            insert(DocumentIdentity)
            .values([{"identity": i, "document_id": document_id} for i in set(identities)])
            .on_conflict_do_nothing()
        )


def find_version(engine: Engine, content_sha256: str) -> tuple[str, int] | None:
    """(document id, version) of the content, if it arrived before."""
    with engine.connect() as conn:
        row = conn.execute(
            sa.select(DocumentVersion.document_id, DocumentVersion.version).where(
                DocumentVersion.content_sha256 == content_sha256
            )
        ).first()
    return (row.document_id, row.version) if row else None


def documents_with_identities(engine: Engine, identities: Sequence[str]) -> list[str]:
    """Documents that carry any of the identities, the most recently registered first."""
    if not identities:
        return []
    with engine.connect() as conn:
        return list(
            conn.scalars(
                sa.select(Document.id)
                .where(
                    Document.id.in_(
                        sa.select(DocumentIdentity.document_id).where(
                            DocumentIdentity.identity.in_(list(identities))
                        )
                    )
                )
                .order_by(Document.registered_at.desc(), Document.id)
            )
        )


def versions_of(engine: Engine, document_id: str) -> list[dict[str, Any]]:
    """The document's versions, oldest first."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(DocumentVersion)
            .where(DocumentVersion.document_id == document_id)
            .order_by(DocumentVersion.version)
        ).mappings()
        return [dict(row) for row in rows]


def current_text(engine: Engine, document_id: str) -> str:
    """The current version's chunk texts, in order (what a new version is compared with)."""
    return "\n\n".join(content for _, content in chunk_texts(engine, document_id))


def set_stage(engine: Engine, document_id: str, stage: str, **fields: Any) -> None:
    """Move a document to a stage (see `stage_change`)."""
    values = stage_change(stage, datetime.now(UTC), **fields)
    with engine.begin() as conn:
        conn.execute(sa.update(Document).where(Document.id == document_id).values(**values))


def mark_failed(engine: Engine, document_id: str, error_class: str, message: str) -> None:
    set_stage(engine, document_id, "failed", error_class=error_class, error_message=message)


def update_document_fields(engine: Engine, document_id: str, **fields: Any) -> None:
    """Set descriptive fields (title, author, language) only where they differ."""
    changed = sa.or_(*(getattr(Document, k).is_distinct_from(v) for k, v in fields.items()))
    with engine.begin() as conn:
        conn.execute(
            sa.update(Document).where(Document.id == document_id, changed).values(**fields)
        )


def get_document(engine: Engine, document_id: str) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(sa.select(Document).where(Document.id == document_id)).mappings().first()
    return dict(row) if row else None


def find_documents(engine: Engine, prefix: str) -> list[str]:
    """Ids of documents whose id starts with the prefix (users type short ids)."""
    with engine.connect() as conn:
        return list(
            conn.scalars(
                sa.select(Document.id).where(Document.id.startswith(prefix, autoescape=True))
            )
        )


def document_summaries(engine: Engine, document_ids: Sequence[str] | None = None) -> list[dict]:
    """Each document with its chunk, vector and connection counts (both directions) and its AI
    spend."""
    chunk_counts = (
        sa.select(Chunk.document_id, sa.func.count().label("chunks"))
        .group_by(Chunk.document_id)
        .subquery()
    )
    vector_counts = (
        sa.select(Embedding.document_id, sa.func.count(sa.distinct(Embedding.chunk_id)).label("n"))
        .group_by(Embedding.document_id)
        .subquery()
    )
    version_counts = (
        sa.select(DocumentVersion.document_id, sa.func.count().label("n"))
        .group_by(DocumentVersion.document_id)
        .subquery()
    )
    query = (
        sa.select(
            Document.id,
            Document.title,
            Document.author,
            Document.source_file,
            Document.stage,
            Document.error_class,
            Document.error_message,
            Document.extraction_warnings,
            Document.markup_errors,
            Document.registered_at,
            Document.updated_at,
            Document.version,
            Document.current_version,
            sa.func.coalesce(version_counts.c.n, 1).label("versions"),
            sa.func.coalesce(chunk_counts.c.chunks, 0).label("chunks"),
            sa.func.coalesce(vector_counts.c.n, 0).label("vectors"),
        )
        .outerjoin(chunk_counts, chunk_counts.c.document_id == Document.id)
        .outerjoin(vector_counts, vector_counts.c.document_id == Document.id)
        .outerjoin(version_counts, version_counts.c.document_id == Document.id)
        .order_by(Document.registered_at, Document.id)
    )
    if document_ids is not None:
        query = query.where(Document.id.in_(document_ids))
    with engine.connect() as conn:
        rows = [dict(row) for row in conn.execute(query).mappings()]
        for row in rows:
            row["connections"] = count_connections(conn, row["id"])
    costs = ai_costs(engine, [row["id"] for row in rows])
    for row in rows:
        row["ai_cost_usd"], row["ai_saved_usd"] = costs.get(row["id"], (0.0, 0.0))
    return rows


def ai_costs(
    engine: Engine, document_ids: Sequence[str], run_ids: Sequence[str] | None = None
) -> dict[str, tuple[float, float]]:
    """(USD paid, USD the ledger saved) per document, over all time or the given runs."""
    query = (
        sa.select(AICall.document_id, sa.func.sum(AICall.cost_usd), sa.func.sum(AICall.saved_usd))
        .where(AICall.document_id.in_(document_ids))
        .group_by(AICall.document_id)
    )
    if run_ids is not None:
        query = query.where(AICall.run_id.in_(run_ids))
    with engine.connect() as conn:
        return {doc: (float(paid), float(saved)) for doc, paid, saved in conn.execute(query)}


def document_details(engine: Engine, document_id: str) -> dict[str, Any]:
    """One document's summary plus when each stage completed, its newest heartbeat and how
    many runs worked on it (the runs that left heartbeats)."""
    (summary,) = document_summaries(engine, [document_id])
    document = get_document(engine, document_id) or {}
    completed = {
        stage: document[column]
        for stage, column in STAGE_TIMESTAMPS.items()
        if stage != "failed" and document.get(column) is not None
    }
    with engine.connect() as conn:
        beat = (
            conn.execute(
                sa.select(Heartbeat)
                .where(Heartbeat.document_id == document_id)
                .order_by(Heartbeat.beat_at.desc())
                .limit(1)
            )
            .mappings()
            .first()
        )
        runs = conn.execute(
            sa.select(sa.func.count(sa.distinct(Heartbeat.run_id))).where(
                Heartbeat.document_id == document_id
            )
        ).scalar_one()
    return {
        **summary,
        "language": document.get("language"),
        "byte_size": document.get("byte_size"),
        "completed_stages": completed,
        "last_heartbeat": dict(beat) if beat else None,
        "attempts": runs,
        "version_history": versions_of(engine, document_id),
    }


_CONNECTIONS_OF_DOCUMENT = sa.text(
    """
    SELECT own.id AS chunk_id, k.target_chunk_id AS other_chunk_id,
           other.document_id AS other_document_id, k.connection_type, k.strength,
           k.metadata, 'found from this chunk' AS found
    FROM connections k
    JOIN chunks own ON own.id = k.source_chunk_id
    JOIN chunks other ON other.id = k.target_chunk_id
    WHERE own.document_id = :doc
    UNION ALL
    SELECT own.id, k.source_chunk_id, other.document_id, k.connection_type, k.strength,
           k.metadata, 'found from the other chunk'
    FROM connections k
    JOIN chunks own ON own.id = k.target_chunk_id
    JOIN chunks other ON other.id = k.source_chunk_id
    WHERE own.document_id = :doc
    ORDER BY chunk_id, strength DESC, other_chunk_id
    """
)


def connections_of_document(engine: Engine, document_id: str) -> dict[str, list[dict[str, Any]]]:
    """Each chunk's connections in both directions, strongest first: those its document's run
    found, and those found later from other documents' chunks (book B arriving after book A
    shows in A's chunks without reprocessing A)."""
    found: dict[str, list[dict[str, Any]]] = {}
    with engine.connect() as conn:
        for row in conn.execute(_CONNECTIONS_OF_DOCUMENT, {"doc": document_id}).mappings():
            record = dict(row)
            found.setdefault(record.pop("chunk_id"), []).append(record)
    return found


def count_connections(conn: sa.Connection, document_id: str) -> int:
    """Connections that touch the document, whichever side it is on."""
    own = sa.select(Chunk.id).where(Chunk.document_id == document_id)
    return conn.execute(
        sa.select(sa.func.count()).where(
            sa.or_(Connection.source_chunk_id.in_(own), Connection.target_chunk_id.in_(own))
        )
    ).scalar_one()


def lock_document(conn: sa.Connection, document_id: str) -> None:
    """Serialize the stage writes of one document until the transaction ends, so two runs of the
    same document racing each compute their difference against the other's committed result.
    NO KEY UPDATE: foreign-key checks of other transactions (KEY SHARE) are not blocked."""
    statement = sa.select(Document.id).where(Document.id == document_id)
    # key_share=True renders FOR NO KEY UPDATE (with read=True it would be FOR KEY SHARE).
    found = conn.execute(statement.with_for_update(key_share=True)).first()
    if found is None:
        raise LookupError(f"document {document_id} is not registered")


# --- chunks ------------------------------------------------------------------------------

_CHUNK_FIELDS = (
    "chunk_index",
    "content",
    "start_offset",
    "end_offset",
    "word_count",
    "char_count",
    "heading_path",
    "metadata",
)


def write_chunks(
    engine: Engine,
    document_id: str,
    rows: Sequence[Mapping[str, Any]],
    version: int | None = None,
) -> WriteCounts:
    """Replace a document's chunks by difference; they are those of `version`, when given,
    which becomes its current version. Each row has `id` and the _CHUNK_FIELDS."""
    with engine.begin() as conn:
        lock_document(conn, document_id)
        if version is not None and _newer_is_current(conn, document_id, version):
            raise SupersededError(document_id, version)
        counts = _write_chunks(conn, document_id, rows)
        if version is not None:
            conn.execute(
                sa.update(Document)
                .where(Document.id == document_id)
                .values(current_version=version)
            )
    return counts


def _chunk_difference(
    conn: sa.Connection, document_id: str, rows: Sequence[Mapping[str, Any]]
) -> tuple[list[str], list[dict[str, Any]], list[Mapping[str, Any]], int]:
    """What writing `rows` as the document's chunks changes: (vanished ids, rows to insert, rows
    to update, rows unchanged)."""
    table = Chunk.__table__
    new = {row["id"]: row for row in rows}
    if len(new) != len(rows):
        raise ValueError(f"duplicate chunk ids for document {document_id}")
    existing = {
        row.id: row._mapping
        for row in conn.execute(sa.select(table).where(table.c.document_id == document_id))
    }
    vanished = [chunk_id for chunk_id in existing if chunk_id not in new]
    inserts = [
        {"document_id": document_id, **row} for cid, row in new.items() if cid not in existing
    ]
    updates = [
        row
        for cid, row in new.items()
        if cid in existing and any(existing[cid][f] != row[f] for f in _CHUNK_FIELDS)
    ]
    return vanished, inserts, updates, len(new) - len(inserts) - len(updates)


def compare_chunks(
    engine: Engine, document_id: str, rows: Sequence[Mapping[str, Any]]
) -> WriteCounts:
    """What `write_chunks` of these rows would change, without writing."""
    with engine.connect() as conn:
        vanished, inserts, updates, unchanged = _chunk_difference(conn, document_id, rows)
    return WriteCounts(len(inserts), len(updates), len(vanished), unchanged)


def _write_chunks(
    conn: sa.Connection, document_id: str, rows: Sequence[Mapping[str, Any]]
) -> WriteCounts:
    table = Chunk.__table__
    vanished, inserts, updates, unchanged = _chunk_difference(conn, document_id, rows)
    if vanished:  # cascades to their embeddings and connections
        # Row locks in id order, as connection writes take theirs: no lock cycles.
        conn.execute(
            sa.select(table.c.id)
            .where(table.c.id.in_(vanished))
            .order_by(table.c.id)
            .with_for_update()
        )
        conn.execute(sa.delete(table).where(table.c.id.in_(vanished)))
    if inserts:
        conn.execute(sa.insert(table), inserts)
    for row in updates:
        conn.execute(
            sa.update(table)
            .where(table.c.id == row["id"])
            .values({field: row[field] for field in _CHUNK_FIELDS})
        )
    return WriteCounts(len(inserts), len(updates), len(vanished), unchanged)


def current_version(engine: Engine, document_id: str) -> int | None:
    """The version whose chunks the document has (None: none yet)."""
    with engine.connect() as conn:
        return _current_version(conn, document_id)


class SupersededError(Exception):
    """A version was to be written when a newer one is current already (two versions of one
    document processed at once, the newer finished first): the older is never current."""

    def __init__(self, document_id: str, version: int) -> None:
        super().__init__(
            f"version {version} of document {document_id} was not made current: a newer "
            "version is current already"
        )
        self.document_id, self.version = document_id, version


def _current_version(conn: sa.Connection, document_id: str) -> int | None:
    return conn.execute(
        sa.select(Document.current_version).where(Document.id == document_id)
    ).scalar()


def _newer_is_current(conn: sa.Connection, document_id: str, version: int) -> bool:
    current = _current_version(conn, document_id)
    return current is not None and current > version


def supersede(
    engine: Engine,
    document_id: str,
    version: int,
    rows: Sequence[Mapping[str, Any]],
    model: str,
    vectors: Mapping[str, np.ndarray],
    text_keys: Mapping[str, str],
) -> WriteCounts:
    """Make `version` current in one transaction: its chunks replace the current ones by
    difference (unchanged chunks keep their rows, vectors and connections; vanished ones go
    with theirs), the new chunks get their vectors (`vectors`: chunk id -> vector, for at least
    every chunk without one), and the version is stamped current. A crash before the commit
    leaves the previous version current and whole."""
    now = datetime.now(UTC)
    with engine.begin() as conn:
        lock_document(conn, document_id)
        current = _current_version(conn, document_id)
        if current is not None and current > version:
            raise SupersededError(document_id, version)
        counts = _write_chunks(conn, document_id, rows)
        has_vector = set(
            conn.scalars(
                sa.select(Embedding.chunk_id).where(
                    Embedding.document_id == document_id, Embedding.model == model
                )
            )
        )
        fresh = [
            {
                "chunk_id": row["id"],
                "model": model,
                "document_id": document_id,
                "dimensions": int(vectors[row["id"]].shape[0]),
                "embedding": vectors[row["id"]],
                "text_sha256": text_keys[row["id"]],
            }
            for row in rows
            if row["id"] not in has_vector
        ]
        if fresh:
            conn.execute(sa.insert(Embedding.__table__), fresh)
        changes = {
            "kept": counts.kept,
            "added": counts.inserted,
            "removed": counts.deleted,
            "superseded": current,
        }
        versions = DocumentVersion.__table__
        if current is not None and current != version:
            conn.execute(
                sa.update(versions)
                .where(versions.c.document_id == document_id, versions.c.version == current)
                .values(superseded_at=now)
            )
        conn.execute(
            sa.update(versions)
            .where(versions.c.document_id == document_id, versions.c.version == version)
            .values(current_since=now, changes=changes)
        )
        conn.execute(
            sa.update(Document).where(Document.id == document_id).values(current_version=version)
        )
    return counts


def load_chunks(engine: Engine, document_id: str) -> list[dict[str, Any]]:
    table = Chunk.__table__
    with engine.connect() as conn:
        result = conn.execute(
            sa.select(table).where(table.c.document_id == document_id).order_by(table.c.chunk_index)
        )
        return [dict(row) for row in result.mappings()]


# --- embeddings --------------------------------------------------------------------------


def chunk_texts(engine: Engine, document_id: str) -> list[tuple[str, str]]:
    """(chunk id, content) of the document's chunks in order."""
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(Chunk.id, Chunk.content)
            .where(Chunk.document_id == document_id)
            .order_by(Chunk.chunk_index)
        )
        return [(row.id, row.content) for row in rows]


def chunks_missing_embeddings(
    engine: Engine, document_id: str, model: str
) -> list[tuple[str, str]]:
    """(id, content) of the document's chunks that have no vector for the model yet, in order.

    A chunk's id is derived from its content, so an existing vector is always current."""
    embedded = sa.select(Embedding.chunk_id).where(
        Embedding.model == model, Embedding.chunk_id == Chunk.id
    )
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(Chunk.id, Chunk.content)
            .where(Chunk.document_id == document_id, ~sa.exists(embedded))
            .order_by(Chunk.chunk_index)
        )
        return [(row.id, row.content) for row in rows]


def vectors_of_texts(
    engine: Engine, model: str, dimensions: int, keys: Iterable[str]
) -> dict[str, np.ndarray]:
    """The vectors already made for these texts (by text key), by any chunk of any document."""
    keys = sorted(set(keys))
    if not keys:
        return {}
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(Embedding.text_sha256, Embedding.embedding)
            .where(
                Embedding.model == model,
                Embedding.dimensions == dimensions,
                Embedding.text_sha256.in_(keys),
            )
            .distinct(Embedding.text_sha256)
        )
        return {row.text_sha256: np.asarray(row.embedding, dtype=np.float32) for row in rows}


def write_embeddings(
    engine: Engine,
    document_id: str,
    model: str,
    vectors: Mapping[str, np.ndarray],
    text_keys: Mapping[str, str],
) -> WriteCounts:
    """Insert vectors for chunks that had none for this model, in one transaction, each under
    its text's key (`text_keys`: chunk id -> key).

    Vectors of chunks that vanished went with them (ON DELETE CASCADE); a vector that exists is
    never rewritten, since the chunk id pins its content. Chunks deleted meanwhile are skipped."""
    if not vectors:
        return WriteCounts()
    table = Embedding.__table__
    rows = [
        {
            "chunk_id": chunk_id,
            "model": model,
            "document_id": document_id,
            "dimensions": int(vector.shape[0]),
            "embedding": vector,
            "text_sha256": text_keys[chunk_id],
        }
        for chunk_id, vector in vectors.items()
    ]
    with engine.begin() as conn:
        live = set(
            conn.scalars(
                sa.select(Chunk.id)
                .where(Chunk.id.in_(list(vectors)))
                .with_for_update(read=True, key_share=True)  # FOR KEY SHARE
            )
        )
        rows = [row for row in rows if row["chunk_id"] in live]
        inserted = 0
        if rows:
            statement = (
                insert(table)
                .on_conflict_do_nothing(index_elements=["chunk_id", "model"])
                .returning(table.c.chunk_id)
            )
            inserted = len(conn.execute(statement, rows).all())
    return WriteCounts(inserted=inserted, unchanged=len(vectors) - inserted)


def count_embeddings(engine: Engine, document_id: str, model: str) -> int:
    with engine.connect() as conn:
        return conn.execute(
            sa.select(sa.func.count())
            .select_from(Embedding)
            .where(Embedding.document_id == document_id, Embedding.model == model)
        ).scalar_one()


# --- connections -------------------------------------------------------------------------


def write_connections(
    conn: sa.Connection, document_id: str, connection_type: str, edges: Iterable[Edge]
) -> WriteCounts:
    """Replace the connections of one type that start in the document, by difference, inside the
    caller's transaction (the caller found the edges in the same transaction).

    Edges whose target chunk no longer exists are skipped rather than violating the foreign key;
    an unchanged edge is not rewritten."""
    table = Connection.__table__
    own = sa.select(Chunk.id).where(Chunk.document_id == document_id)
    edges = {(e.source_chunk_id, e.target_chunk_id): e for e in edges}
    existing = {
        (row.source_chunk_id, row.target_chunk_id): row
        for row in conn.execute(
            sa.select(table).where(
                table.c.connection_type == connection_type, table.c.source_chunk_id.in_(own)
            )
        )
    }
    vanished = [existing[key].id for key in existing if key not in edges]
    changed = [
        edge
        for key, edge in edges.items()
        if key not in existing
        or abs(existing[key].strength - edge.strength) > 1e-9
        or existing[key]._mapping["metadata"] != dict(edge.metadata)
    ]
    rows = []
    if changed:
        # Lock the chunks the edges point at so a concurrent re-chunk cannot delete them between
        # this check and the insert; edges to chunks already gone are dropped. Locked before any
        # connection row is touched, in id order like re-chunking's deletes: no lock cycles.
        ids = {e.source_chunk_id for e in changed} | {e.target_chunk_id for e in changed}
        live = set(
            conn.scalars(
                sa.select(Chunk.id)
                .where(Chunk.id.in_(ids))
                .order_by(Chunk.id)
                .with_for_update(read=True, key_share=True)  # FOR KEY SHARE
            )
        )
        rows = [
            {
                "source_chunk_id": e.source_chunk_id,
                "target_chunk_id": e.target_chunk_id,
                "connection_type": connection_type,
                "strength": e.strength,
                "metadata": dict(e.metadata),
            }
            for e in changed
            if e.source_chunk_id in live and e.target_chunk_id in live
        ]
    if vanished:
        conn.execute(sa.delete(table).where(table.c.id.in_(vanished)))
    if rows:
        statement = insert(table)
        statement = statement.on_conflict_do_update(
            constraint="uq_connections_edge",
            set_={"strength": statement.excluded.strength, "metadata": statement.excluded.metadata},
        )
        conn.execute(statement, rows)
    inserted = sum(1 for r in rows if (r["source_chunk_id"], r["target_chunk_id"]) not in existing)
    return WriteCounts(
        inserted=inserted,
        updated=len(rows) - inserted,
        deleted=len(vanished),
        unchanged=len(edges) - len(changed),
        skipped=len(changed) - len(rows),
    )


# --- AI ledger ---------------------------------------------------------------------------

# The stages that call the AI, in order; every document has a costs row for each of these
# three, and one for the transcription of scanned PDF pages when it had any.
AI_STAGES = ("transcription", "chunks", "embeddings", "connections")
ALWAYS_COSTED = AI_STAGES[1:]
_TOKEN_COLUMNS = ("prompt_tokens", "output_tokens", "thinking_tokens")


def _empty_costs() -> dict[str, Any]:
    return {
        "paid_requests": 0,
        "ledger_hits": 0,
        "failed_calls": 0,
        **dict.fromkeys(_TOKEN_COLUMNS, 0),
        "cost_usd": Decimal(0),
        "saved_usd": Decimal(0),
        "models": [],
        "model_versions": [],
        "first_call_at": None,
        "last_call_at": None,
    }


def cost_breakdown(
    engine: Engine, document_ids: Sequence[str] | None = None, *, by_run: bool = False
) -> list[dict[str, Any]]:
    """AI spend per document and stage (and run, with `by_run`), from the ledger's calls.

    Each row: requests paid, ledger hits, failed calls, tokens of the paid requests, USD paid,
    USD the hits saved, models, first and last call. Without `by_run` every document has a row
    per stage of ALWAYS_COSTED, zeros where it made no calls; with it, only groups that made calls.
    Without `document_ids`: all documents, and calls of documents no longer registered."""
    paid = AICall.outcome == "paid"
    keys = [AICall.document_id, AICall.stage, *([AICall.run_id] if by_run else [])]
    calls = sa.select(
        *keys,
        sa.func.count().filter(paid).label("paid_requests"),
        sa.func.count().filter(AICall.outcome == "hit").label("ledger_hits"),
        sa.func.count().filter(AICall.outcome == "failed").label("failed_calls"),
        *(
            sa.func.coalesce(sa.func.sum(getattr(AICall, name)).filter(paid), 0).label(name)
            for name in _TOKEN_COLUMNS
        ),
        sa.func.coalesce(sa.func.sum(AICall.cost_usd), 0).label("cost_usd"),
        sa.func.coalesce(sa.func.sum(AICall.saved_usd), 0).label("saved_usd"),
        sa.func.array_agg(sa.distinct(AICall.model)).label("models"),
        # What the API says answered (none for embeddings, or answers stored before 0005).
        sa.func.array_remove(sa.func.array_agg(sa.distinct(AICall.model_version)), None).label(
            "model_versions"
        ),
        sa.func.min(AICall.created_at).label("first_call_at"),
        sa.func.max(AICall.created_at).label("last_call_at"),
    ).group_by(*keys)
    documents = sa.select(Document.id, Document.title, Document.source_file).order_by(
        Document.registered_at, Document.id
    )
    if document_ids is not None:
        calls = calls.where(AICall.document_id.in_(document_ids))
        documents = documents.where(Document.id.in_(document_ids))
    with engine.connect() as conn:
        known = {row.id: dict(row._mapping) for row in conn.execute(documents)}
        groups = [dict(row) for row in conn.execute(calls).mappings()]
    by_document: dict[str | None, list[dict[str, Any]]] = {doc: [] for doc in known}
    for group in groups:
        group["models"] = sorted(group["models"])
        group["model_versions"] = sorted(group["model_versions"])
        by_document.setdefault(group["document_id"], []).append(group)

    def stage_order(stage: str | None) -> tuple[int, str]:
        return (AI_STAGES.index(stage) if stage in AI_STAGES else len(AI_STAGES), stage or "")

    rows: list[dict[str, Any]] = []
    for document_id, found in by_document.items():  # registered first, then unregistered ones
        document = known.get(document_id, {})
        head = {
            "document_id": document_id,
            "title": document.get("title"),
            "source_file": document.get("source_file"),
        }
        if by_run:
            found.sort(key=lambda g: (g["first_call_at"], stage_order(g["stage"])))
        else:
            stages = {g["stage"] for g in found}
            found += [
                {"stage": stage, **_empty_costs()} for stage in ALWAYS_COSTED if stage not in stages
            ]
            found.sort(key=lambda g: stage_order(g["stage"]))
        rows += [{**head, **{k: v for k, v in g.items() if k != "document_id"}} for g in found]
    return rows
