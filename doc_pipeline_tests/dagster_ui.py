"""Driving `doc-pipeline ui` (dagster dev) from tests and benchmarks: launch a document run over
GraphQL, and find the run worker of a step that is running (from its heartbeat)."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from doc_pipeline_tests.processes import graphql, wait_for_graphql

LOCATIONS = (
    "{ repositoriesOrError { ... on RepositoryConnection { nodes { name location { name } } } } }"
)
LAUNCH = """
mutation Launch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
    ... on RunConfigValidationInvalid { errors { message } }
  }
}
"""


def launch_document_run(
    port: int,
    ui: subprocess.Popen,
    document_id: str,
    run_config: dict | None = None,
    assets: list[str] | None = None,
) -> str:
    """Wait for the webserver, launch `document_job` (or the named assets of it) for the
    document's partition; its run id."""
    nodes = wait_for_graphql(port, LOCATIONS, ui, timeout=300)["repositoriesOrError"]["nodes"]
    (repository,) = nodes
    params = {
        "selector": {
            "repositoryLocationName": repository["location"]["name"],
            "repositoryName": repository["name"],
            "jobName": "document_job",
            **({"assetSelection": [{"path": [name]} for name in assets]} if assets else {}),
        },
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": document_id}]},
        "runConfigData": run_config or {},
    }
    launched = graphql(port, LAUNCH, {"params": params})["launchRun"]
    if launched["__typename"] != "LaunchRunSuccess":
        raise AssertionError(f"the run did not launch: {launched}")
    return launched["run"]["runId"]


def running_step_pid(engine: Engine, run_id: str) -> int | None:
    """The pid that beats for a step of the run that has not ended (its run worker), if any."""
    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT pid FROM heartbeats WHERE run_id = :run AND ended_at IS NULL"),
            {"run": run_id},
        ).scalar()


def document_settled(engine: Engine, document_id: str, stage: str) -> Callable[[], bool]:
    """A condition: the document reached `stage` and no run is still finishing (a step marks
    its stage done before Dagster records the step's success; stopping the UI in between would
    interrupt that run)."""
    from doc_pipeline.db import store
    from doc_pipeline.instance import open_instance
    from doc_pipeline.settings import Settings

    def settled() -> bool:
        if store.get_document(engine, document_id)["stage"] != stage:
            return False
        with open_instance(Settings.from_env()) as instance:
            return all(run.is_finished for run in instance.get_runs())

    return settled
