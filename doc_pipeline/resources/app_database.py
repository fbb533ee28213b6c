"""The app database as a Dagster resource: finds or starts the server on first use."""

from __future__ import annotations

from dagster import ConfigurableResource
from sqlalchemy.engine import Engine

from doc_pipeline.db.server import database_urls
from doc_pipeline.db.store import engine_for
from doc_pipeline.settings import Settings


class AppDatabase(ConfigurableResource):
    """Documents, chunks, embeddings and connections. `DATABASE_URL` (or `database_url` here)
    selects an external Postgres with pgvector; otherwise the embedded server is used."""

    database_url: str | None = None

    @property
    def engine(self) -> Engine:
        settings = Settings.from_env()
        if self.database_url:
            settings = Settings(home=settings.home, database_url=self.database_url)
        return engine_for(database_urls(settings).app)
