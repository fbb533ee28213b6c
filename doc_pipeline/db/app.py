"""The app database, ready to use: migrated to the newest schema. No Dagster import, so the
commands that only read the database (`status`, `costs`, `export`) start quickly."""

from __future__ import annotations

from sqlalchemy.engine import Engine

from doc_pipeline.db import migrate, store
from doc_pipeline.db.server import database_urls
from doc_pipeline.settings import Settings


def prepare_app_database(settings: Settings) -> Engine:
    """The app database's engine, migrated to the newest schema."""
    url = database_urls(settings).app
    migrate.upgrade(url)
    return store.engine_for(url)
