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
