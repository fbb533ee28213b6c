"""Connection detection of one document raced against re-processing of another (DESIGN rule 4;
in the old system 94% of connection inserts failed on foreign keys this way), on a real
Postgres with the real write paths: re-chunking writes by difference and its deletes cascade,
while `connect_document` finds and writes edges to the chunks being replaced."""

from __future__ import annotations

import threading
from collections import Counter

import pytest
import sqlalchemy as sa

from doc_pipeline.core.chunk_rows import chunk_rows
from doc_pipeline.core.chunking import ChunkingConfig, chunk_markdown
from doc_pipeline.core.epub import epub_to_markdown
from doc_pipeline.core.local_embedding import MODEL_NAME, embed_texts
from doc_pipeline.core.semantic import SemanticConfig
from doc_pipeline.core.vectors import text_key
from doc_pipeline.db import migrate, store
from doc_pipeline.db.connecting import Engines, connect_document
from doc_pipeline_tests.conftest import CORPUS, create_database

ROUNDS = 50
A, B = "a" * 16, "b" * 16  # document ids
ENGINES = Engines(semantic=SemanticConfig(min_similarity=0.0, top_k=5))
# B's two versions: the same book chunked to two sizes, so most chunk ids differ between them.
B_VERSIONS = (ChunkingConfig(min_words=300, max_words=700), ChunkingConfig())


def _chunks(document_id: str, markdown: str, config: ChunkingConfig) -> list[dict]:
    return chunk_rows(document_id, [(c, {}) for c in chunk_markdown(markdown, config)])


_VECTORS: dict[str, object] = {}  # by chunk id: each version's vectors are computed once


def _write_version(engine, document_id: str, rows: list[dict]) -> None:
    """What the chunks and embeddings steps write when a document is processed again."""
    new = [row for row in rows if row["id"] not in _VECTORS]
    vectors = embed_texts([row["content"] for row in new])
    _VECTORS.update({row["id"]: vector for row, vector in zip(new, vectors, strict=True)})
    store.write_chunks(engine, document_id, rows)
    missing = store.chunks_missing_embeddings(engine, document_id, MODEL_NAME)
    store.write_embeddings(
        engine,
        document_id,
        MODEL_NAME,
        {chunk_id: _VECTORS[chunk_id] for chunk_id, _ in missing},
        {chunk_id: text_key(content) for chunk_id, content in missing},
    )


@pytest.fixture
def engine(postgres_server):
    url = create_database(postgres_server)
    migrate.upgrade(url)
    engine = store.engine_for(url)
    yield engine
    engine.dispose()


def _register(engine, document_id: str) -> None:
    store.register_document(
        engine,
        document_id=document_id,
        content_sha256=document_id * 4,
        source_file=f"{document_id}.epub",
        byte_size=1,
    )


def _stale_edges(engine) -> list:
    """Edges whose strength is not the similarity of the chunks they join as they are now."""
    query = sa.text(
        "SELECT k.source_chunk_id, k.target_chunk_id, k.strength,"
        " 1 - (s.embedding <=> t.embedding) AS similarity"
        " FROM connections k JOIN embeddings s ON s.chunk_id = k.source_chunk_id"
        " JOIN embeddings t ON t.chunk_id = k.target_chunk_id"
    )
    with engine.connect() as conn:
        rows = conn.execute(query).all()
    return [row for row in rows if abs(row.strength - max(0.0, row.similarity)) > 1e-5]


def test_connecting_a_while_b_is_reprocessed_never_fails_and_ends_consistent(engine):
    book_a = epub_to_markdown(CORPUS / "epub" / "se-abbott-flatland.epub3.epub").markdown
    book_b = epub_to_markdown(CORPUS / "epub" / "pg14838-peter-rabbit.epub3.epub").markdown
    book_b += (
        "\n\n" + epub_to_markdown(CORPUS / "epub" / "pg1661-sherlock-holmes.epub2.epub").markdown
    )
    _register(engine, A)
    _register(engine, B)
    _write_version(engine, A, _chunks(A, book_a, ChunkingConfig()))
    versions = [_chunks(B, book_b, config) for config in B_VERSIONS]
    shared = {r["id"] for r in versions[0]} & {r["id"] for r in versions[1]}
    assert len(shared) < len(versions[1]) / 2, "B's versions should mostly differ"
    _write_version(engine, B, versions[1])

    errors: list[BaseException] = []
    skipped = []  # edges to B's chunks that A's detection found but B's re-processing removed
    for round_number in range(ROUNDS):
        start = threading.Barrier(2)

        def reprocess_b(rows=versions[round_number % 2], start=start):
            start.wait()
            _write_version(engine, B, rows)

        def connect_a(start=start):
            start.wait()
            skipped.append(connect_document(engine, A, MODEL_NAME, ENGINES).counts.skipped)

        threads = [
            threading.Thread(target=_collecting(errors, f)) for f in (reprocess_b, connect_a)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not errors, f"round {round_number}: {errors[0]!r}"
        assert _stale_edges(engine) == []

    # The two really interleaved: in some rounds A found chunks of B that were gone at its write.
    assert sum(1 for count in skipped if count) >= 1, skipped

    # The end state is the one a quiet run computes: connecting A again changes nothing
    # but the edges to B's chunks that arrived after A's last detection.
    again = connect_document(engine, A, MODEL_NAME, ENGINES)
    assert again.counts.deleted == 0 and again.counts.updated == 0
    with engine.connect() as conn:
        targets = (
            conn.execute(
                sa.text(
                    "SELECT DISTINCT c.document_id FROM connections k"
                    " JOIN chunks c ON c.id = k.target_chunk_id"
                )
            )
            .scalars()
            .all()
        )
    assert targets == [B]
    final = {r["id"] for r in versions[(ROUNDS - 1) % 2]}
    assert {e.target_chunk_id for e in again.edges} <= final


def _collecting(errors: list[BaseException], function):
    def run():
        try:
            function()
        except BaseException as error:  # noqa: BLE001 - reported by the test
            errors.append(error)

    return run


def test_connections_between_unchanged_chunks_survive_reprocessing_and_removed_ones_go(engine):
    book_a = epub_to_markdown(CORPUS / "epub" / "se-abbott-flatland.epub3.epub").markdown
    book_b = epub_to_markdown(CORPUS / "epub" / "pg1661-sherlock-holmes.epub2.epub").markdown
    _register(engine, A)
    _register(engine, B)
    _write_version(engine, A, _chunks(A, book_a, ChunkingConfig()))
    before = _chunks(B, book_b, ChunkingConfig())
    _write_version(engine, B, before)
    connect_document(engine, A, MODEL_NAME, ENGINES)
    with engine.connect() as conn:
        edges = {
            (row.source_chunk_id, row.target_chunk_id): (row.id, row.xmin)
            for row in conn.execute(
                sa.text("SELECT id, xmin::text, source_chunk_id, target_chunk_id FROM connections")
            )
        }
    assert edges

    # The text of B's most connected chunk changes: that chunk is replaced, the rest stay.
    targets = Counter(target for _, target in edges)
    ((most_connected, _),) = targets.most_common(1)
    where = next(r for r in before if r["id"] == most_connected)["start_offset"]
    revised = book_b[:where] + "Revised. " + book_b[where:]
    changed = _chunks(B, revised, ChunkingConfig())
    removed = {r["id"] for r in before} - {r["id"] for r in changed}
    assert 0 < len(removed) < len(before)
    _write_version(engine, B, changed)

    with engine.connect() as conn:
        after = {
            (row.source_chunk_id, row.target_chunk_id): (row.id, row.xmin)
            for row in conn.execute(
                sa.text("SELECT id, xmin::text, source_chunk_id, target_chunk_id FROM connections")
            )
        }
    expected = {key: value for key, value in edges.items() if key[1] not in removed}
    assert after == expected  # the same rows, not rewritten; those to removed chunks are gone
    assert most_connected in removed
    assert len(after) == len(edges) - sum(targets[chunk] for chunk in removed)


def test_a_failed_connection_write_fails_and_leaves_the_previous_connections(engine):
    book_a = epub_to_markdown(CORPUS / "epub" / "se-abbott-flatland.epub3.epub").markdown
    book_b = epub_to_markdown(CORPUS / "epub" / "pg1661-sherlock-holmes.epub2.epub").markdown
    _register(engine, A)
    _register(engine, B)
    _write_version(engine, A, _chunks(A, book_a, ChunkingConfig()))
    _write_version(engine, B, _chunks(B, book_b, ChunkingConfig()))
    connect_document(engine, A, MODEL_NAME, ENGINES)
    with engine.connect() as conn:
        before = conn.execute(sa.text("SELECT id, xmin::text FROM connections")).all()
    # The next write fails half-way (a trigger raises on the first changed row) ...
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN RAISE EXCEPTION 'disk full'; END $$;"
                " CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON connections"
                " FOR EACH ROW EXECUTE FUNCTION refuse();"
            )
        )
    more = Engines(semantic=SemanticConfig(min_similarity=0.0, top_k=8))
    with pytest.raises(sa.exc.DBAPIError, match="disk full"):
        connect_document(engine, A, MODEL_NAME, more)
    # ... and nothing of it stays: the step fails, the previous connections are intact.
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT id, xmin::text FROM connections")).all() == before
