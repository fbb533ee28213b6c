"""Writes by difference against a real Postgres (the embedded server)."""

import numpy as np
import pytest
import sqlalchemy as sa

from doc_pipeline.core.ids import chunk_ids
from doc_pipeline.core.semantic import SemanticConfig
from doc_pipeline.core.vectors import text_key
from doc_pipeline.db import store
from doc_pipeline.db.semantic_search import (
    find_semantic_edges,
    nearest_other_documents,
    set_search_settings,
)


def _rows(document_id: str, contents: list[str]) -> list[dict]:
    return [
        {
            "id": chunk_id,
            "chunk_index": index,
            "content": content,
            "start_offset": index * 100,
            "end_offset": index * 100 + len(content),
            "word_count": len(content.split()),
            "char_count": len(content),
            "heading_path": ["Chapter"],
            "metadata": {},
        }
        for index, (chunk_id, content) in enumerate(
            zip(chunk_ids(document_id, contents), contents, strict=True)
        )
    ]


def _register(engine, document_id: str) -> None:
    store.register_document(
        engine,
        document_id=document_id,
        content_sha256=document_id * 4,
        source_file="x.epub",
        byte_size=1,
    )


def _xmins(engine, table: str) -> dict[str, str]:
    key = "chunk_id" if table == "embeddings" else "id"
    with engine.connect() as conn:
        return dict(conn.execute(sa.text(f"SELECT {key}::text, xmin::text FROM {table}")).all())


@pytest.fixture
def engine(app_database_url):
    engine = store.engine_for(app_database_url)
    yield engine
    engine.dispose()


def test_rewriting_the_same_chunks_touches_no_row(engine):
    _register(engine, "doc1")
    rows = _rows("doc1", ["one two", "three four", "five six"])
    assert store.write_chunks(engine, "doc1", rows).inserted == 3
    before = _xmins(engine, "chunks")
    counts = store.write_chunks(engine, "doc1", rows)
    assert counts.as_dict() == {"inserted": 0, "updated": 0, "deleted": 0, "unchanged": 3}
    assert _xmins(engine, "chunks") == before


def test_changed_chunk_replaced_and_shifted_indices_updated_in_one_write(engine):
    _register(engine, "doc1")
    store.write_chunks(engine, "doc1", _rows("doc1", ["a b", "c d", "e f"]))
    counts = store.write_chunks(engine, "doc1", _rows("doc1", ["new", "a b", "C D", "e f"]))
    # "a b" and "e f" keep their ids but move; "c d" vanished; "new" and "C D" are new.
    assert counts.as_dict() == {"inserted": 2, "updated": 2, "deleted": 1, "unchanged": 0}
    loaded = store.load_chunks(engine, "doc1")
    assert [c["content"] for c in loaded] == ["new", "a b", "C D", "e f"]
    assert [c["chunk_index"] for c in loaded] == [0, 1, 2, 3]


def test_embeddings_only_for_missing_chunks_and_cascade_on_chunk_removal(engine):
    _register(engine, "doc1")
    store.write_chunks(engine, "doc1", _rows("doc1", ["a b", "c d"]))
    missing = store.chunks_missing_embeddings(engine, "doc1", "m")
    assert [content for _, content in missing] == ["a b", "c d"]
    vectors = {cid: np.ones(768, dtype=np.float32) / np.sqrt(768) for cid, _ in missing}
    keys = {cid: text_key(content) for cid, content in missing}
    assert store.write_embeddings(engine, "doc1", "m", vectors, keys).inserted == 2
    assert store.chunks_missing_embeddings(engine, "doc1", "m") == []
    assert store.write_embeddings(engine, "doc1", "m", vectors, keys).inserted == 0
    # Each vector is found by its text, whatever chunk or document made it.
    found = store.vectors_of_texts(engine, "m", 768, [text_key("a b"), text_key("x y")])
    assert list(found) == [text_key("a b")] and found[text_key("a b")].shape == (768,)
    assert store.vectors_of_texts(engine, "m", 1536, [text_key("a b")]) == {}
    store.write_chunks(engine, "doc1", _rows("doc1", ["a b"]))
    assert store.count_embeddings(engine, "doc1", "m") == 1


def _unit(*values: float) -> np.ndarray:
    vector = np.zeros(768, dtype=np.float32)
    vector[: len(values)] = values
    return vector / np.linalg.norm(vector)


def _embed(engine, document_id: str, contents: list[str], vectors: list[np.ndarray]) -> list[str]:
    _register(engine, document_id)
    rows = _rows(document_id, contents)
    store.write_chunks(engine, document_id, rows)
    ids = [row["id"] for row in rows]
    keys = {row["id"]: text_key(row["content"]) for row in rows}
    store.write_embeddings(engine, document_id, "m", dict(zip(ids, vectors, strict=True)), keys)
    return ids


def test_semantic_edges_only_to_other_documents_above_threshold_top_k(engine):
    (a1,) = _embed(engine, "docA", ["a"], [_unit(1, 0, 0)])
    b_ids = _embed(
        engine, "docB", ["b1", "b2", "b3"], [_unit(1, 0.1, 0), _unit(1, 0.5, 0), _unit(0, 1, 0)]
    )
    _embed(engine, "docA2", ["a-twin"], [_unit(1, 0, 0.01)])
    with engine.begin() as conn:
        edges = find_semantic_edges(conn, "docA", "m", SemanticConfig(min_similarity=0.5, top_k=2))
    targets = [edge.target_chunk_id for edge in edges]
    assert all(edge.source_chunk_id == a1 for edge in edges)
    assert b_ids[2] not in targets  # orthogonal: below the threshold
    assert len(targets) == 2 and b_ids[1] not in targets  # top 2: the twin and b1
    assert all(0.5 <= edge.strength <= 1.0 for edge in edges)


def test_connections_written_by_difference_and_removed_with_their_chunks(engine):
    (a1,) = _embed(engine, "docA", ["a"], [_unit(1, 0)])
    b_ids = _embed(engine, "docB", ["b1", "b2"], [_unit(1, 0.2), _unit(1, 0.3)])
    config = SemanticConfig(min_similarity=0.1, top_k=5)
    with engine.begin() as conn:
        edges = find_semantic_edges(conn, "docA", "m", config)
        assert store.write_connections(conn, "docA", "semantic", edges).inserted == 2
    before = _xmins(engine, "connections")
    with engine.begin() as conn:
        edges = find_semantic_edges(conn, "docA", "m", config)
        assert store.write_connections(conn, "docA", "semantic", edges).unchanged == 2
    assert _xmins(engine, "connections") == before
    # Re-chunking B without b2 removes its connection in the same transaction (cascade).
    store.write_chunks(
        engine, "docB", [r for r in _rows("docB", ["b1", "b2"]) if r["content"] == "b1"]
    )
    with engine.connect() as conn:
        targets = conn.execute(sa.text("SELECT target_chunk_id FROM connections")).scalars().all()
    assert targets == [b_ids[0]]
    # Edges pointing at chunks that are gone are skipped instead of violating the foreign key.
    with engine.begin() as conn:
        stale = store.Edge(a1, b_ids[1], 0.9, {})
        counts = store.write_connections(conn, "docA", "semantic", [stale])
    assert counts.inserted == 0


def test_connection_constraints_hold(engine):
    (a1,) = _embed(engine, "docA", ["a"], [_unit(1, 0)])
    with pytest.raises(sa.exc.IntegrityError), engine.begin() as conn:
        conn.execute(
            sa.text(
                "INSERT INTO connections"
                " (source_chunk_id, target_chunk_id, connection_type, strength)"
                " VALUES (:a, :a, 'semantic', 0.5)"
            ),
            {"a": a1},
        )


def _embed_random(engine, width: int, documents: int = 3, chunks: int = 200) -> list[str]:
    """Documents docA, docB, ... of random unit vectors of that width; docA's chunk ids."""
    rng = np.random.default_rng(7)
    ids = {}
    for document in [f"doc{chr(ord('A') + i)}" for i in range(documents)]:
        contents = [f"{document} chunk {i}" for i in range(chunks)]
        vectors = [v / np.linalg.norm(v) for v in rng.normal(size=(chunks, width))]
        ids[document] = _embed(engine, document, contents, [v.astype(np.float32) for v in vectors])
    return ids["docA"]


@pytest.mark.parametrize("width", [768, 256])  # gemini's vectors; the local embedder's
def test_nearest_neighbour_search_walks_the_hnsw_index(engine, width):
    own = _embed_random(engine, width)
    config = SemanticConfig(min_similarity=0.0)
    with engine.begin() as conn:
        # On a table this small, scanning and sorting looks cheaper to the planner (which scan
        # depends on when autovacuum analyzed the table); the search's own settings leave it
        # the index walk only, and the plan shows that the query's expression matches the
        # half-precision HNSW index of that width.
        conn.execute(sa.text("ANALYZE embeddings"))
        set_search_settings(conn, config)
        plan = conn.execute(
            sa.text(f"EXPLAIN {nearest_other_documents(width, 5).text}"),
            {"chunk_ids": own, "model": "m"},
        ).scalars()
        assert f"Index Scan using ix_embeddings_hnsw_halfvec_{width}" in "\n".join(plan)
        edges = find_semantic_edges(conn, "docA", "m", config)
    assert len(edges) == 200 * 5


def test_searching_over_several_connections_finds_the_same_edges(engine):
    """The document's chunks split over connections that search at once: the same edges in the
    same order as one connection, each with its exact similarity."""
    own = _embed_random(engine, 256, documents=2, chunks=100)
    found = {}
    for connections in (1, 3):
        with engine.begin() as conn:
            config = SemanticConfig(min_similarity=-1.0, top_k=3, search_connections=connections)
            found[connections] = find_semantic_edges(conn, "docA", "m", config)
    assert found[3] == found[1]
    assert len(found[1]) == 100 * 3 and {e.source_chunk_id for e in found[1]} == set(own)
    with engine.connect() as conn:
        edge = found[3][-1]
        exact = conn.execute(
            sa.text(
                "SELECT 1 - (s.embedding <=> o.embedding) FROM embeddings s, embeddings o"
                " WHERE s.chunk_id = :source AND o.chunk_id = :target"
            ),
            {"source": edge.source_chunk_id, "target": edge.target_chunk_id},
        ).scalar_one()
    assert edge.metadata["similarity"] == pytest.approx(max(0.0, exact), abs=1e-6)
