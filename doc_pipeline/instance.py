"""The persistent Dagster instance that the CLI and `dagster dev` share."""

from __future__ import annotations

import os
from pathlib import Path

from dagster import DagsterInstance

from doc_pipeline.db.server import DAGSTER_URL_ENV, database_urls
from doc_pipeline.settings import HOME_ENV, Settings


def _instance_config_template() -> Path:
    packaged = Path(__file__).parent / "dagster.yaml"  # in a wheel
    return packaged if packaged.exists() else Path(__file__).parent.parent / "dagster.yaml"


def dagster_environment(settings: Settings) -> dict[str, str]:
    """Environment variables under which Dagster finds this project's instance and databases.

    Starts the embedded Postgres if it is needed and not running."""
    settings.ensure_dirs()
    urls = database_urls(settings)
    config = _instance_config_template().read_text()
    target = settings.dagster_home / "dagster.yaml"
    if not target.exists() or target.read_text() != config:
        target.write_text(config)
    return {
        "DAGSTER_HOME": str(settings.dagster_home),
        DAGSTER_URL_ENV: urls.dagster,
        HOME_ENV: str(settings.home),
    }


def open_instance(settings: Settings) -> DagsterInstance:
    os.environ.update(dagster_environment(settings))
    return DagsterInstance.get()
