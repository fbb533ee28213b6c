"""The Kubernetes deployment (deploy/) checked without a cluster.

deploy/dagster.yaml goes through Dagster's own schema (`dagster_instance_config`) and each class
it names through that class's `config_type()`, so a typo or a key in the wrong place fails here
and not in a pod. The K8sRunLauncher is built for real from the file, offline (a throwaway
kubeconfig instead of the in-cluster one), and makes the Kubernetes Job of a run; the whole
instance opens on a real Postgres. The Helm values cannot be rendered here (no chart, no
cluster): they are checked against the keys of the chart's schema that they use and against
deploy/dagster.yaml, which is what the chart must render from them.
"""

from __future__ import annotations

import copy
import os
import re
import tomllib
from collections.abc import Callable, Iterator
from importlib import import_module
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
import yaml
from dagster import DagsterInstance
from dagster._config import process_config
from dagster._core.errors import DagsterInvalidConfigError
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef
from dagster._core.launcher import RunLauncher
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.storage.noop_compute_log_manager import NoOpComputeLogManager
from dagster._serdes.config_class import ConfigurableClassData
from dagster_k8s import K8sRunLauncher
from dagster_k8s.container_context import K8sContainerContext
from dagster_k8s.job import construct_dagster_k8s_job
from sqlalchemy.engine import make_url

from doc_pipeline.concurrency import PARTITION_TAG
from doc_pipeline.core.failures import InvalidSettings
from doc_pipeline.settings import BLOB_URL_ENV, UPLOADS_URL_ENV, Settings
from doc_pipeline_tests.conftest import PROJECT_ROOT, create_database
from doc_pipeline_tests.processes import run_cli

DEPLOY = PROJECT_ROOT / "deploy"
VALUES = DEPLOY / "helm" / "values.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
PYPROJECT = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())
CODE_LOCATION_MODULE = PYPROJECT["tool"]["dagster"]["module_name"]

# What the pods must provide: the file's `env:` entries (filled from the chart's Postgres secret).
INSTANCE_ENV = {"DAGSTER_PG_PASSWORD": "not-a-real-password"}
# A run's environment: the app's secret (DATABASE_URL, GEMINI_API_KEY) and its ConfigMap
# (DOC_PIPELINE_BLOB_URL, DOC_PIPELINE_UPLOADS_URL), as README "Running on Kubernetes" makes them.
APP_SECRET = "doc-pipeline-secrets"
APP_CONFIG_MAP = "doc-pipeline-env"
JOB_TTL_SECONDS = 86400


def _env_names(value: Any) -> set[str]:
    """Every environment variable a config names with `{env: NAME}`."""
    if isinstance(value, dict):
        if set(value) == {"env"}:
            return {value["env"]}
        return set().union(*(_env_names(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(_env_names(v) for v in value))
    return set()


def _process(section: dict[str, Any]) -> dict[str, Any]:
    """A `module`/`class`/`config` section through its class's own `config_type()`."""
    klass = getattr(import_module(section["module"]), section["class"])
    result = process_config(klass.config_type(), section.get("config") or {})
    if not result.success:
        raise DagsterInvalidConfigError(
            f"{section['class']} rejects its config", result.errors, section
        )
    return result.value


def load_deployment_config(directory: Path) -> dict[str, Any]:
    """The instance file of `directory`, validated by Dagster's instance schema and by each
    configured class's schema; returns it with each class's config processed (defaults
    filled in, `env:` resolved)."""
    config, instance_class = dagster_instance_config(str(directory))
    config = dict(config)
    assert instance_class is None, "the cluster's webserver and daemon cannot import doc_pipeline"
    for key in ("run_launcher", "run_coordinator", "compute_logs"):
        config[key] = {**config[key], "config": _process(config[key])}
    # `storage: postgres:` is dagster-postgres' DagsterPostgresStorage (InstanceRef.from_dir).
    storage = {"module": "dagster_postgres", "class": "DagsterPostgresStorage"}
    config["storage"] = {"postgres": _process({**storage, "config": config["storage"]["postgres"]})}
    return config


@pytest.fixture
def instance_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in INSTANCE_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def kubeconfig(tmp_path: Path) -> Path:
    """A kubeconfig of a cluster that does not exist: the launcher loads it, never calls it."""
    path = tmp_path / "kubeconfig"
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:9"}}],
                "users": [{"name": "none", "user": {"token": "none"}}],
                "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
                "current-context": "none",
            }
        )
    )
    return path


def _raw(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _offline_launcher_section(kubeconfig: Path) -> dict[str, Any]:
    """deploy/dagster.yaml's run launcher, told to read `kubeconfig` instead of the pod's
    service account (the only change)."""
    section = copy.deepcopy(_raw(DEPLOY / "dagster.yaml")["run_launcher"])
    assert section["config"]["load_incluster_config"] is True
    section["config"].update(load_incluster_config=False, kubeconfig_file=str(kubeconfig))
    return section


def _build_launcher(section: dict[str, Any]) -> K8sRunLauncher:
    config_yaml = yaml.safe_dump(section["config"])
    data = ConfigurableClassData(section["module"], section["class"], config_yaml)
    launcher = data.rehydrate(as_type=RunLauncher)
    assert isinstance(launcher, K8sRunLauncher)
    return launcher


def _run_job(launcher: K8sRunLauncher, image: str = "registry.example.com/doc-pipeline:0.1.0"):
    """The Kubernetes Job the launcher makes for a run, with the launcher's own code."""
    run = DagsterRun(job_name="document_job", run_id="7b7cf4ee-5fd3-4c5e-9c4a-1d2e3f405060")
    context = K8sContainerContext.create_for_run(run, launcher, include_run_tags=True)
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(job_image=image, run_launcher=launcher),
        args=["dagster", "api", "execute_run"],
        job_name="dagster-run-7b7cf4ee",
        pod_name="dagster-run-7b7cf4ee",
        component="run_worker",
        user_defined_k8s_config=context.run_k8s_config,
        labels={"dagster/run-id": run.run_id},
        env_vars=[],
    )
    return context, job


# --- deploy/dagster.yaml through Dagster's schema ------------------------------------------


def test_the_instance_file_names_only_the_env_the_pods_get():
    assert _env_names(_raw(DEPLOY / "dagster.yaml")) == set(INSTANCE_ENV)


def test_the_instance_file_passes_dagsters_schema_and_each_classs_own(instance_env):
    config = load_deployment_config(DEPLOY)

    launcher = config["run_launcher"]
    assert (launcher["module"], launcher["class"]) == ("dagster_k8s", "K8sRunLauncher")
    assert launcher["config"]["job_namespace"] == "doc-pipeline"
    assert launcher["config"]["env_secrets"] == [APP_SECRET]
    assert launcher["config"]["env_config_maps"] == [APP_CONFIG_MAP]
    assert launcher["config"]["resources"]["limits"]["memory"]
    job_spec = launcher["config"]["run_k8s_config"]["job_spec_config"]
    assert job_spec == {"ttl_seconds_after_finished": JOB_TTL_SECONDS, "backoff_limit": 0}

    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert config["compute_logs"]["class"] == "NoOpComputeLogManager"
    postgres = config["storage"]["postgres"]["postgres_db"]
    assert postgres["password"] == INSTANCE_ENV["DAGSTER_PG_PASSWORD"]  # `env:` resolved

    # The in-process executor cannot resume a run mid-step: a dead worker fails the run, and
    # run retries re-execute it from the failed step.
    assert config["run_monitoring"]["enabled"] is True
    assert config["run_monitoring"]["max_resume_run_attempts"] == 0
    assert config["run_monitoring"]["poll_interval_seconds"] > 0
    assert config["run_retries"]["enabled"] is True


def test_the_cluster_keeps_the_single_machine_limits_and_retries():
    """The guarantees that live in the instance are the same as in the root dagster.yaml."""
    cluster, machine = _raw(DEPLOY / "dagster.yaml"), _raw(PROJECT_ROOT / "dagster.yaml")
    for key in ("run_retries", "python_logs", "run_coordinator"):
        assert cluster[key] == machine[key], key
    # How many runs at once is the cluster's own choice; which runs may overlap is not.
    assert cluster["concurrency"]["pools"] == machine["concurrency"]["pools"]
    runs, machine_runs = cluster["concurrency"]["runs"], machine["concurrency"]["runs"]
    assert runs["tag_concurrency_limits"] == machine_runs["tag_concurrency_limits"]
    limits = cluster["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": PARTITION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in limits
    assert cluster["concurrency"]["pools"]["default_limit"] >= 1
    assert "instance_class" not in cluster


def _rename(path: tuple[str, ...], new_name: str) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        parent = config
        for key in path[:-1]:
            parent = parent[key]
        parent[new_name] = parent.pop(path[-1])

    return mutate


@pytest.mark.parametrize(
    "mutate",
    [
        _rename(("run_monitoring",), "run_monitorin"),  # the instance schema
        _rename(("run_retries", "max_retries"), "max_retry"),
        _rename(("storage", "postgres", "postgres_db", "db_name"), "database"),
        _rename(("run_launcher", "config", "job_namespace"), "namespace"),  # the launcher's own
        _rename(("run_launcher", "config", "env_secrets"), "envSecrets"),
        _rename(("compute_logs", "class"), "klass"),
    ],
)
def test_a_wrong_key_in_the_instance_file_fails(mutate, instance_env, tmp_path):
    config = _raw(DEPLOY / "dagster.yaml")
    mutate(config)
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(DagsterInvalidConfigError):
        load_deployment_config(tmp_path)


# --- the launcher and the instance, built offline ------------------------------------------


def test_the_launcher_builds_offline_and_makes_a_run_job(instance_env, kubeconfig):
    launcher = _build_launcher(_offline_launcher_section(kubeconfig))
    # What lets Dagster's run monitoring see a dead run worker (the default launcher cannot).
    assert launcher.supports_check_run_worker_health

    context, job = _run_job(launcher)
    assert context.namespace == "doc-pipeline"
    assert job.spec.ttl_seconds_after_finished == JOB_TTL_SECONDS
    assert job.spec.backoff_limit == 0
    container = job.spec.template.spec.containers[0]
    assert container.image == "registry.example.com/doc-pipeline:0.1.0"
    assert container.resources.limits["memory"] == "2Gi"
    sources = {(s.config_map_ref or s.secret_ref).name for s in container.env_from}
    assert sources == {APP_SECRET, APP_CONFIG_MAP}
    password = next(e for e in container.env if e.name == "DAGSTER_PG_PASSWORD")
    assert password.value_from.secret_key_ref.name == "dagster-postgresql-secret"
    assert password.value_from.secret_key_ref.key == "postgresql-password"


def test_a_wrong_job_spec_key_fails_when_the_job_is_made(instance_env, kubeconfig):
    """`run_k8s_config` is free-form for Dagster's schema; Kubernetes' model is not."""
    section = _offline_launcher_section(kubeconfig)
    job_spec = section["config"]["run_k8s_config"]["job_spec_config"]
    job_spec["ttl_second_after_finished"] = job_spec.pop("ttl_seconds_after_finished")
    with pytest.raises(Exception, match="ttl_second_after_finished"):
        _run_job(_build_launcher(section))


@pytest.fixture
def deployed_instance(
    postgres_server: str, tmp_path: Path, kubeconfig: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[DagsterInstance]:
    """The whole instance of deploy/dagster.yaml, opened on a fresh database of the test
    server: only the connection (a local socket) and the launcher's kube config differ."""
    url = make_url(create_database(postgres_server, prefix="deploy"))
    monkeypatch.setenv("DAGSTER_PG_PASSWORD", url.password or "")
    postgres = copy.deepcopy(_raw(DEPLOY / "dagster.yaml")["storage"]["postgres"])
    postgres["postgres_db"].update(
        hostname=url.host or "localhost",
        port=url.port or 5432,
        username=url.username,
        db_name=url.database,
        params={"host": url.query["host"]} if "host" in url.query else {},
    )
    ref = InstanceRef.from_dir(
        str(tmp_path / "home"),
        config_dir=str(DEPLOY),
        overrides={
            "storage": {"postgres": postgres},
            "run_launcher": _offline_launcher_section(kubeconfig),
        },
    )
    instance = DagsterInstance.from_ref(ref)
    try:
        yield instance
    finally:
        instance.dispose()


def test_the_whole_instance_opens_offline(deployed_instance):
    instance = deployed_instance
    assert type(instance) is DagsterInstance  # no doc_pipeline class on the cluster
    assert isinstance(instance.run_launcher, K8sRunLauncher)
    assert instance.run_launcher.job_namespace == "doc-pipeline"
    assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
    assert isinstance(instance.compute_log_manager, NoOpComputeLogManager)

    concurrency = instance.get_concurrency_config()
    assert concurrency.pool_config.default_pool_limit == 2
    queue = concurrency.run_queue_config
    assert queue is not None and queue.max_concurrent_runs == 8
    assert {"key": PARTITION_TAG, "value": {"applyLimitPerUniqueValue": True}, "limit": 1} in (
        queue.tag_concurrency_limits
    )

    assert instance.run_monitoring_enabled
    assert instance.run_monitoring_max_resume_run_attempts == 0
    assert instance.run_monitoring_start_timeout_seconds == 300
    assert instance.run_retries_enabled and instance.run_retries_max_retries == 2
    assert instance.run_retries_retry_on_asset_or_op_failure is False
    assert instance.managed_python_loggers == ["doc_pipeline"]
    assert not instance.telemetry_enabled

    # The storage works: the instance made its tables and keeps the documents' partitions.
    instance.add_dynamic_partitions("documents", ["0123456789abcdef"])
    assert instance.get_dynamic_partitions("documents") == ["0123456789abcdef"]


# --- the Helm values -----------------------------------------------------------------------

# The keys of the chart's values that deploy/helm/values.yaml may use, from the chart's values
# schema (helm/dagster/schema/schema/charts/: dagster/values.py, subschema/daemon.py,
# concurrency.py, run_launcher.py, postgresql.py, global_.py, python_logs.py, webserver.py,
# dagster_user_deployments/subschema/user_deployments.py) and the instance templates
# (templates/configmap-instance.yaml: runMonitoring and runRetries are free-form in the schema).
# None: free-form beneath (as `resources`, a Kubernetes ResourceRequirements). A list holds the
# keys of each item.
CHART_KEYS: dict[str, Any] = {
    "global": {"postgresqlSecretName": None, "dagsterHome": None, "serviceAccountName": None},
    "dagsterWebserver": {"resources": None, "replicaCount": None, "env": None},
    "dagsterDaemon": {
        "resources": None,
        "runCoordinator": {"enabled": None, "type": None, "config": None},
        "runMonitoring": {
            key: None
            for key in (
                "enabled",
                "startTimeoutSeconds",
                "cancelTimeoutSeconds",
                "maxRuntimeSeconds",
                "maxResumeRunAttempts",
                "pollIntervalSeconds",
                "freeSlotsAfterRunEndSeconds",
            )
        },
        "runRetries": {"enabled": None, "maxRetries": None, "retryOnAssetOrOpFailure": None},
    },
    "concurrency": {
        "enabled": None,
        "pools": {"defaultLimit": None, "granularity": None, "opGranularityRunBuffer": None},
        "runs": {
            "maxConcurrentRuns": None,
            "tagConcurrencyLimits": [{"key": None, "value": None, "limit": None}],
        },
    },
    "dagster-user-deployments": {
        "enabled": None,
        "enableSubchart": None,
        "imagePullSecrets": None,
        "deployments": [
            {
                "name": None,
                "image": {"repository": None, "tag": None, "pullPolicy": None},
                "dagsterApiGrpcArgs": None,
                "port": None,
                "env": None,
                "envConfigMaps": [{"name": None}],
                "envSecrets": [{"name": None}],
                "resources": None,
                "includeConfigInLaunchedRuns": {"enabled": None},
            }
        ],
    },
    "runLauncher": {
        "type": None,
        "config": {
            "k8sRunLauncher": {
                "jobNamespace": None,
                "loadInclusterConfig": None,
                "kubeconfigFile": None,
                "imagePullPolicy": None,
                "envConfigMaps": [{"name": None}],
                "envSecrets": [{"name": None}],
                "envVars": None,
                "resources": None,
                "runK8sConfig": {
                    "containerConfig": None,
                    "podSpecConfig": None,
                    "podTemplateSpecMetadata": None,
                    "jobSpecConfig": None,
                    "jobMetadata": None,
                },
            }
        },
    },
    "postgresql": {
        "enabled": None,
        "postgresqlHost": None,
        "postgresqlUsername": None,
        "postgresqlPassword": None,
        "postgresqlDatabase": None,
        "postgresqlParams": None,
        "postgresqlScheme": None,
        "service": {"port": None},
    },
    "generatePostgresqlPasswordSecret": None,
    "computeLogManager": {"type": None, "config": None},
    "pythonLogs": {"pythonLogLevel": None, "managedPythonLoggers": None},
    "telemetry": {"enabled": None},
}


def _unknown_keys(value: Any, allowed: Any, path: str = "") -> list[str]:
    if allowed is None:
        return []
    if isinstance(allowed, list):
        assert isinstance(value, list), path
        return [k for item in value for k in _unknown_keys(item, allowed[0], f"{path}[]")]
    assert isinstance(value, dict), path
    unknown = [f"{path}.{key}".lstrip(".") for key in value if key not in allowed]
    for key in value.keys() & allowed.keys():
        unknown += _unknown_keys(value[key], allowed[key], f"{path}.{key}")
    return unknown


def test_the_helm_values_use_only_keys_of_the_chart():
    values = _raw(VALUES)
    assert _unknown_keys(values, CHART_KEYS) == []
    typo = copy.deepcopy(values)
    typo["runLauncher"]["config"]["k8sRunLauncher"]["jobNamespac"] = "x"
    assert _unknown_keys(typo, CHART_KEYS) == ["runLauncher.config.k8sRunLauncher.jobNamespac"]


def _chart_instance(values: dict[str, Any]) -> dict[str, Any]:
    """The parts of the instance that the chart renders from `values`, in dagster.yaml's terms
    (after templates/configmap-instance.yaml and templates/helpers/instance/*.tpl)."""
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    daemon = values["dagsterDaemon"]
    monitoring, retries = daemon["runMonitoring"], daemon["runRetries"]
    concurrency = values["concurrency"]
    postgres = values["postgresql"]
    assert concurrency["enabled"] and daemon["runCoordinator"]["enabled"]
    snake = {"jobSpecConfig": "job_spec_config", "containerConfig": "container_config"}
    return {
        "storage": {
            "hostname": postgres["postgresqlHost"],
            "port": postgres["service"]["port"],
            "username": postgres["postgresqlUsername"],
            "db_name": postgres["postgresqlDatabase"],
            "password": {"env": "DAGSTER_PG_PASSWORD"},
        },
        "run_launcher_class": values["runLauncher"]["type"],
        "run_launcher": {
            "load_incluster_config": launcher["loadInclusterConfig"],
            "job_namespace": launcher["jobNamespace"],
            "postgres_password_secret": values["global"]["postgresqlSecretName"],
            "env_config_maps": [item["name"] for item in launcher["envConfigMaps"]],
            "env_secrets": [item["name"] for item in launcher["envSecrets"]],
            "resources": launcher["resources"],
            "run_k8s_config": {snake[k]: v for k, v in launcher["runK8sConfig"].items()},
        },
        "run_coordinator_class": daemon["runCoordinator"]["type"],
        "run_coordinator": {
            "dequeue_interval_seconds": daemon["runCoordinator"]["config"]["queuedRunCoordinator"][
                "dequeueIntervalSeconds"
            ]
        },
        "concurrency": {
            "runs": {
                "max_concurrent_runs": concurrency["runs"]["maxConcurrentRuns"],
                "tag_concurrency_limits": concurrency["runs"]["tagConcurrencyLimits"],
            },
            "pools": {"default_limit": concurrency["pools"]["defaultLimit"]},
        },
        "run_monitoring": {
            "enabled": monitoring["enabled"],
            "start_timeout_seconds": monitoring["startTimeoutSeconds"],
            "cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"],
            "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
            "poll_interval_seconds": monitoring["pollIntervalSeconds"],
            "free_slots_after_run_end_seconds": monitoring["freeSlotsAfterRunEndSeconds"],
        },
        "run_retries": {
            "enabled": retries["enabled"],
            "max_retries": retries["maxRetries"],
            "retry_on_asset_or_op_failure": retries["retryOnAssetOrOpFailure"],
        },
        "compute_logs_class": values["computeLogManager"]["type"],
        "python_logs": {"managed_python_loggers": values["pythonLogs"]["managedPythonLoggers"]},
        "telemetry": values["telemetry"],
    }


def _file_instance(config: dict[str, Any]) -> dict[str, Any]:
    launcher = config["run_launcher"]["config"]
    return {
        "storage": config["storage"]["postgres"]["postgres_db"],
        "run_launcher_class": config["run_launcher"]["class"],
        "run_launcher": {
            key: launcher[key]
            for key in (
                "load_incluster_config",
                "job_namespace",
                "postgres_password_secret",
                "env_config_maps",
                "env_secrets",
                "resources",
                "run_k8s_config",
            )
        },
        "run_coordinator_class": config["run_coordinator"]["class"],
        "run_coordinator": config["run_coordinator"]["config"],
        "concurrency": config["concurrency"],
        "run_monitoring": config["run_monitoring"],
        "run_retries": config["run_retries"],
        "compute_logs_class": config["compute_logs"]["class"],
        "python_logs": config["python_logs"],
        "telemetry": config["telemetry"],
    }


def test_the_helm_values_render_the_instance_of_deploy_dagster_yaml():
    chart = _chart_instance(_raw(VALUES))
    assert chart == _file_instance(_raw(DEPLOY / "dagster.yaml"))
    # The chart names the instance ConfigMap after the release (`dagster`): what the file says.
    assert _raw(DEPLOY / "dagster.yaml")["run_launcher"]["config"]["instance_config_map"] == (
        "dagster-instance"
    )


def test_the_helm_values_run_the_code_location_with_the_apps_environment():
    values = _raw(VALUES)
    (deployment,) = values["dagster-user-deployments"]["deployments"]
    assert values["dagster-user-deployments"]["enabled"] is True
    # `dagster api grpc -m doc_pipeline.definitions`: the module pyproject.toml names.
    assert deployment["dagsterApiGrpcArgs"] == ["-m", CODE_LOCATION_MODULE]
    assert CODE_LOCATION_MODULE == "doc_pipeline.definitions"
    # Its sensors (uploads, reaper, alerts) need the same environment as the runs.
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert deployment["envSecrets"] == launcher["envSecrets"] == [{"name": APP_SECRET}]
    assert deployment["envConfigMaps"] == launcher["envConfigMaps"] == [{"name": APP_CONFIG_MAP}]
    assert deployment["resources"]["requests"] and launcher["resources"]["requests"]


def test_the_helm_values_hold_no_secret():
    values = _raw(VALUES)
    assert values["generatePostgresqlPasswordSecret"] is False
    assert "postgresqlPassword" not in values["postgresql"]
    text = VALUES.read_text()
    for name in ("DATABASE_URL", "GEMINI_API_KEY"):
        # Named in comments only; no `NAME: value` or `value: ...` entry sets them here.
        assert not re.search(rf"^\s*(- name: )?{name}\s*:", text, re.MULTILINE), name
    assert "postgresql://" not in text


# --- the image --------------------------------------------------------------------------------


def test_the_dockerfile_installs_the_k8s_and_s3_extras_on_python_311():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11-slim\b", text, re.MULTILINE)
    install = re.search(r"^RUN pip install \"\.\[([^\]]+)\]\"$", text, re.MULTILINE)
    assert install, "the image installs the project with its extras"
    extras = set(install.group(1).split(","))
    # The launcher's library, and s3fs for the s3:// URLs the README's walk-through uses.
    assert {"k8s", "s3"} <= extras <= set(PYPROJECT["project"]["optional-dependencies"])
    command = re.search(r"^CMD (\[.*\])$", text, re.MULTILINE)
    assert command and yaml.safe_load(command.group(1))[-2:] == ["-m", CODE_LOCATION_MODULE]


def test_the_k8s_extra_pins_dagster_k8s_with_the_other_dagster_packages():
    extras = PYPROJECT["project"]["optional-dependencies"]
    pins = dict(
        requirement.split("==")
        for requirement in PYPROJECT["project"]["dependencies"] + extras["k8s"]
        if requirement.startswith("dagster") and "==" in requirement
    )
    # dagster-k8s and dagster-postgres are released together, as 0.x beside dagster 1.x.
    assert pins["dagster-k8s"] == pins["dagster-postgres"]
    assert "dagster-k8s==" + pins["dagster-k8s"] in extras["test"]
    assert version("dagster-k8s") == pins["dagster-k8s"]


def test_in_a_pod_no_default_on_the_pods_own_disk_is_used(postgres_server, tmp_path, monkeypatch):
    """In a Kubernetes pod (KUBERNETES_SERVICE_HOST is set) a missing DATABASE_URL, blob store
    or uploads URL is one line naming the variable, instead of an embedded Postgres or folders
    on the pod's own disk that other pods never see and that go with the pod."""
    book = PROJECT_ROOT.parent / "shared/corpus/epub/pg14838-peter-rabbit.epub3.epub"
    pod = {
        **{k: v for k, v in os.environ.items() if not k.startswith(("DOC_PIPELINE_", "DATABASE"))},
        "KUBERNETES_SERVICE_HOST": "10.96.0.1",
        "DOC_PIPELINE_HOME": str(tmp_path / "home"),
    }
    missing_database = run_cli(pod, "ingest", book, timeout=120)
    with_database = pod | {"DATABASE_URL": create_database(postgres_server)}
    missing_blobs = run_cli(with_database, "ingest", book, timeout=120)
    for result, variable in ((missing_database, "DATABASE_URL"), (missing_blobs, BLOB_URL_ENV)):
        assert result.returncode == 2, result.stderr[-2000:]
        assert result.stderr.strip().startswith(f"{variable} is not set: in a Kubernetes pod")
        assert "Traceback" not in result.stderr and len(result.stderr.strip().splitlines()) <= 2
    assert not (tmp_path / "home" / "pgdata").exists()
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.96.0.1")
    monkeypatch.delenv(UPLOADS_URL_ENV, raising=False)
    with pytest.raises(InvalidSettings, match=UPLOADS_URL_ENV):
        Settings(home=tmp_path / "home", database_url=None).uploads_url  # noqa: B018
