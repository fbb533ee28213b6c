import sqlalchemy as sa

from doc_pipeline.db import migrate

TABLES = {
    "documents",
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
            if not (d[0] == "remove_index" and d[1].name == "ix_embeddings_hnsw_768")
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
