import sqlalchemy as sa

from doc_pipeline.core.vectors import text_key
from doc_pipeline.db import migrate

TABLES = {
    "documents",
    "document_versions",
    "document_identities",
    "chunks",
    "embeddings",
    "connections",
    "ai_responses",
    "ai_calls",
    "heartbeats",
}


def _tables(url: str) -> set[str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        return set(sa.inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_database_url):
    url = empty_database_url
    migrate.upgrade(url)
    assert _tables(url) == TABLES
    assert migrate.current_revision(url) == migrate.head_revision()
    migrate.downgrade(url, "base")
    assert _tables(url) == set()
    assert migrate.current_revision(url) is None
    migrate.upgrade(url)
    assert _tables(url) == TABLES


def test_schema_matches_the_models(app_database_url):
    """The migrations build what the SQLAlchemy models describe (no drift)."""
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from doc_pipeline.db.models import Base

    engine = sa.create_engine(app_database_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn)
        differences = [
            d
            for d in compare_metadata(context, Base.metadata)
            # Expression indexes (the HNSW one) are invisible to the models by design.
            if not (d[0] == "remove_index" and d[1].name.startswith("ix_embeddings_hnsw_"))
        ]
    engine.dispose()
    assert differences == []


def test_a_ledger_made_by_the_previous_release_upgrades_and_downgrades(empty_database_url):
    """A database at 0004 (the previous release) with a paid answer in its ledger: 0005 adds
    `model_version` (NULL for what was stored before) and keeps the answer; its downgrade
    drops the column and keeps the answer too."""
    url = empty_database_url
    migrate.upgrade(url, "0004")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO ai_responses (key, provider, model, prompt_version, state,"
                    " response) VALUES ('k', 'gemini', 'gemini-2.5-flash', 'chunking-v1/essay',"
                    " 'done', '{\"text\": \"{}\"}')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO ai_calls (key, provider, model, outcome)"
                    " VALUES ('k', 'gemini', 'gemini-2.5-flash', 'paid')"
                )
            )
        migrate.upgrade(url)
        with engine.connect() as conn:
            kept = conn.execute(
                sa.text("SELECT state, model_version FROM ai_responses WHERE key = 'k'")
            ).one()
            calls = conn.execute(sa.text("SELECT model_version FROM ai_calls")).scalars().all()
        assert tuple(kept) == ("done", None) and calls == [None]
        migrate.downgrade(url, "0004")
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("ai_responses")}
            count = conn.execute(sa.text("SELECT count(*) FROM ai_responses")).scalar_one()
        assert "model_version" not in columns and count == 1
    finally:
        engine.dispose()


def test_vectors_made_by_the_previous_release_get_their_text_keys(empty_database_url):
    """A database at 0005 (the previous release) with a chunk and its vector: 0006 keys the
    vector by the SHA-256 of the chunk's text, as new vectors are keyed; its downgrade drops the
    key and keeps the vector."""
    url = empty_database_url
    migrate.upgrade(url, "0005")
    text = "Une île, déjà: a chunk's text with non-ASCII letters."
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO documents (id, content_sha256, source_file, byte_size)"
                    " VALUES ('doc', repeat('a', 64), 'a.epub', 100)"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO chunks (id, document_id, chunk_index, content, start_offset,"
                    " end_offset, word_count, char_count, heading_path)"
                    " VALUES ('c1', 'doc', 0, :text, 0, 10, 9, 10, '{}')"
                ),
                {"text": text},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO embeddings (chunk_id, model, document_id, dimensions, embedding)"
                    " VALUES ('c1', 'm', 'doc', 3, '[0.6, 0.8, 0]')"
                )
            )
        migrate.upgrade(url)
        with engine.connect() as conn:
            key = conn.execute(sa.text("SELECT text_sha256 FROM embeddings")).scalar_one()
        assert key == text_key(text)
        migrate.downgrade(url, "0005")
        with engine.connect() as conn:
            columns = {c["name"] for c in sa.inspect(conn).get_columns("embeddings")}
            count = conn.execute(sa.text("SELECT count(*) FROM embeddings")).scalar_one()
        assert "text_sha256" not in columns and count == 1
    finally:
        engine.dispose()


def test_documents_made_by_the_previous_release_become_their_first_version(empty_database_url):
    """A database at 0006 (the previous release) with a chunked document and one never chunked:
    0007 makes each its version 1, current for the one with chunks; its downgrade gives the
    documents their current version's content again and keeps every row."""
    url = empty_database_url
    migrate.upgrade(url, "0006")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO documents (id, content_sha256, source_file, byte_size)"
                    " VALUES ('done', repeat('a', 64), 'a.epub', 100),"
                    " ('fresh', repeat('b', 64), 'b.pdf', 200)"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO chunks (id, document_id, chunk_index, content, start_offset,"
                    " end_offset, word_count, char_count, heading_path)"
                    " VALUES ('c1', 'done', 0, 'text', 0, 4, 1, 4, '{}')"
                )
            )
        migrate.upgrade(url)
        with engine.connect() as conn:
            documents = conn.execute(
                sa.text("SELECT id, version, current_version FROM documents ORDER BY id")
            ).all()
            versions = conn.execute(
                sa.text(
                    "SELECT document_id, version, content_sha256, source_file, byte_size"
                    " FROM document_versions ORDER BY document_id"
                )
            ).all()
        assert documents == [("done", 1, 1), ("fresh", 1, None)]
        assert versions == [
            ("done", 1, "a" * 64, "a.epub", 100),
            ("fresh", 1, "b" * 64, "b.pdf", 200),
        ]
        # A second version of `done` arrives; `done` is then downgraded while version 1 is
        # still current: the document keeps version 1's content.
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO document_versions (document_id, version, content_sha256,"
                    " source_file, byte_size) VALUES ('done', 2, repeat('c', 64), 'a.epub', 101)"
                )
            )
            conn.execute(
                sa.text(
                    "UPDATE documents SET version = 2, content_sha256 = repeat('c', 64),"
                    " byte_size = 101 WHERE id = 'done'"
                )
            )
        migrate.downgrade(url, "0006")
        with engine.connect() as conn:
            rows = conn.execute(
                sa.text("SELECT id, content_sha256, byte_size FROM documents ORDER BY id")
            ).all()
            chunks = conn.execute(sa.text("SELECT count(*) FROM chunks")).scalar_one()
        assert rows == [("done", "a" * 64, 100), ("fresh", "b" * 64, 200)] and chunks == 1
        migrate.upgrade(url)
        assert migrate.current_revision(url) == migrate.head_revision()
    finally:
        engine.dispose()


def _index_definitions(url: str) -> dict[str, str]:
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return dict(
                conn.execute(
                    sa.text(
                        "SELECT indexname, indexdef FROM pg_indexes WHERE tablename = 'embeddings'"
                    )
                ).all()
            )
    finally:
        engine.dispose()


def test_0008_indexes_both_widths_at_half_precision_and_its_downgrade_restores_0007(
    empty_database_url,
):
    """A home at 0007 (the previous release) with 768-wide vectors: 0008 replaces the 768 index
    of full vectors by half-precision HNSW indexes for 768 and 256 wide vectors (the local
    embedder's), keeping the rows and the other indexes; its downgrade gives 0007's indexes back
    exactly; up again."""
    url = empty_database_url
    migrate.upgrade(url, "0007")
    engine = sa.create_engine(url, poolclass=sa.NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.text(
                    "INSERT INTO documents (id, content_sha256, source_file, byte_size, stage,"
                    " version, current_version, registered_at, updated_at) VALUES ('doc', :sha,"
                    " 'a.epub', 1, 'embedded', 1, 1, now(), now())"
                ),
                {"sha": "c" * 64},
            )
            conn.execute(
                sa.text(
                    "INSERT INTO chunks (id, document_id, chunk_index, content, start_offset,"
                    " end_offset, word_count, char_count, heading_path, metadata) VALUES"
                    " ('c1', 'doc', 0, 'a', 0, 1, 1, 1, '{}', '{}')"
                )
            )
            conn.execute(
                sa.text(
                    "INSERT INTO embeddings (chunk_id, model, document_id, dimensions, embedding,"
                    " text_sha256) VALUES ('c1', 'm', 'doc', 768, :vector, :key)"
                ),
                {"vector": str([1.0] + [0.0] * 767), "key": text_key("a")},
            )
        before = _index_definitions(url)
        assert "ix_embeddings_hnsw_768" in before
        migrate.upgrade(url)
        after = _index_definitions(url)
        added = {name: after[name] for name in after.keys() - before.keys()}
        assert set(added) == {"ix_embeddings_hnsw_halfvec_768", "ix_embeddings_hnsw_halfvec_256"}
        for width in (768, 256):
            definition = added[f"ix_embeddings_hnsw_halfvec_{width}"]
            assert f"((embedding)::halfvec({width})) halfvec_cosine_ops" in definition
            assert "m='24'" in definition and "ef_construction='128'" in definition
            assert f"WHERE (dimensions = {width})" in definition
        assert before.keys() - after.keys() == {"ix_embeddings_hnsw_768"}
        with engine.connect() as conn:
            assert conn.execute(sa.text("SELECT count(*) FROM embeddings")).scalar_one() == 1
        migrate.downgrade(url, "0007")
        assert _index_definitions(url) == before
        migrate.upgrade(url)
        assert _index_definitions(url) == after
    finally:
        engine.dispose()
