"""Alembic environment: the caller (doc_pipeline.db.migrate) passes the connection, which holds
the migration lock; there is no alembic.ini."""

from alembic import context

from doc_pipeline.db.models import Base

if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported; run `doc-pipeline db upgrade`")

context.configure(connection=context.config.attributes["connection"], target_metadata=Base.metadata)
with context.begin_transaction():
    context.run_migrations()
