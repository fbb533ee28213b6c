"""The persistent Dagster instance that the CLI and `dagster dev` share."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DagsterInstance

from doc_pipeline.concurrency import AI_POOL
from doc_pipeline.db.server import DAGSTER_URL_ENV, create_database_whole, database_urls
from doc_pipeline.settings import HOME_ENV, Settings


def _instance_config_template() -> Path:
    packaged = Path(__file__).parent / "dagster.yaml"  # in a wheel
    return packaged if packaged.exists() else Path(__file__).parent.parent / "dagster.yaml"


def dagster_environment(settings: Settings) -> dict[str, str]:
    """Environment variables under which Dagster finds this project's instance and databases.

    Starts the embedded Postgres if it is needed and not running, and makes the instance's
    database if it is missing (whole or not at all: see `create_database_whole`)."""
    settings.ensure_dirs()
    urls = database_urls(settings)
    config = _instance_config_template().read_text()
    target = settings.dagster_home / "dagster.yaml"
    if not target.exists() or target.read_text() != config:
        target.write_text(config)
    environment = {
        "DAGSTER_HOME": str(settings.dagster_home),
        DAGSTER_URL_ENV: urls.dagster,
        HOME_ENV: str(settings.home),
    }

    def create_instance_storage(scratch_url: str) -> None:
        # Dagster makes its tables when an instance first opens its database.
        saved = {name: os.environ.get(name) for name in environment}
        os.environ.update(environment | {DAGSTER_URL_ENV: scratch_url})
        try:
            DagsterInstance.get().dispose()
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    create_database_whole(urls.admin, urls.dagster, create_instance_storage)
    return environment


def open_instance(settings: Settings) -> DagsterInstance:
    os.environ.update(dagster_environment(settings))
    instance = DagsterInstance.get()
    ensure_ai_pool(instance)
    return instance


def ensure_ai_pool(instance: DagsterInstance) -> None:
    """Create the `ai` pool's limit (dagster.yaml's default) before a run needs it. Dagster
    creates it when a step first claims a slot, and two runs doing that at once on Postgres
    fail one of them with a unique violation; here a racing creator is harmless."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits or _has_ai_pool(instance):
        return
    try:
        storage.initialize_concurrency_limit_to_default(AI_POOL)
    except Exception:
        if not _has_ai_pool(instance):
            raise


def _has_ai_pool(instance: DagsterInstance) -> bool:
    return any(pool.name == AI_POOL for pool in instance.event_log_storage.get_pool_limits())
