"""Where doc_pipeline keeps its state, read from the environment.

Everything the embedded default needs lives under one home folder so that a user can see it,
back it up or delete it: the embedded Postgres data, the blob store, the Dagster home and the
uploads folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from doc_pipeline.core.failures import InvalidSettings

UPLOADS_URL_ENV = "DOC_PIPELINE_UPLOADS_URL"
BLOB_URL_ENV = "DOC_PIPELINE_BLOB_URL"
HOME_ENV = "DOC_PIPELINE_HOME"
DATABASE_URL_ENV = "DATABASE_URL"
DEFAULT_HOME = Path(".doc_pipeline")
PROVIDER_ENV = "DOC_PIPELINE_PROVIDER"
PROVIDERS = ("local", "gemini")
# The google-genai SDK reads these itself; they only decide the default provider here.
API_KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
# Kubernetes sets this in every pod: there, no default that lives on the pod's own disk (the
# embedded Postgres, the blobs and uploads folders) may be used, since pods share no disk.
KUBERNETES_ENV = "KUBERNETES_SERVICE_HOST"


def in_kubernetes_pod() -> bool:
    return bool(os.environ.get(KUBERNETES_ENV))


def required_in_pods(variable: str, what: str) -> None:
    """Refuse a default on the pod's own disk, naming the variable to set."""
    if in_kubernetes_pod():
        raise InvalidSettings(
            f"{variable} is not set: in a Kubernetes pod, {what} that every pod reaches; pods "
            "share no disk (README: Running on Kubernetes)"
        )


@dataclass(frozen=True)
class Settings:
    home: Path
    database_url: str | None  # an external Postgres with pgvector; None means the embedded one

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get(HOME_ENV) or DEFAULT_HOME).expanduser().resolve()
        return cls(home=home, database_url=os.environ.get(DATABASE_URL_ENV) or None)

    @staticmethod
    def provider() -> str:
        """`DOC_PIPELINE_PROVIDER` if set, else `gemini` when an API key is set, else `local`."""
        chosen = os.environ.get(PROVIDER_ENV, "").strip().lower()
        if chosen:
            if chosen not in PROVIDERS:
                raise ValueError(f"{PROVIDER_ENV}={chosen!r}: choose one of {', '.join(PROVIDERS)}")
            return chosen
        return "gemini" if any(os.environ.get(name) for name in API_KEY_ENVS) else "local"

    @property
    def pgdata(self) -> Path:
        return self.home / "pgdata"

    @property
    def blob_dir(self) -> Path:
        return self.home / "blobs"

    @property
    def blob_url(self) -> str:
        """Where source copies and the assets' outputs are kept: DOC_PIPELINE_BLOB_URL (any
        fsspec URL, e.g. s3://bucket/prefix, for processes that share no disk), else the home's
        `blobs` folder (not in a Kubernetes pod)."""
        url = os.environ.get(BLOB_URL_ENV)
        if not url:
            required_in_pods(BLOB_URL_ENV, "the blob store must be an object store URL (s3://...)")
        return url or str(self.blob_dir)

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def uploads_url(self) -> str:
        """Where the uploads sensor looks: DOC_PIPELINE_UPLOADS_URL (any fsspec URL), else
        the home's `uploads` folder (not in a Kubernetes pod)."""
        url = os.environ.get(UPLOADS_URL_ENV)
        if not url:
            required_in_pods(UPLOADS_URL_ENV, "the uploads location must be an object store URL")
        return url or str(self.uploads_dir)

    def ensure_dirs(self) -> None:
        blobs_here = () if os.environ.get(BLOB_URL_ENV) else (self.blob_dir,)
        for path in (self.home, *blobs_here, self.dagster_home, self.uploads_dir):
            path.mkdir(parents=True, exist_ok=True)
