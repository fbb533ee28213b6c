"""Where doc_pipeline keeps its state, read from the environment.

Everything the embedded default needs lives under one home folder so that a user can see it,
back it up or delete it: the embedded Postgres data, the blob store, the Dagster home and the
uploads folder.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

UPLOADS_URL_ENV = "DOC_PIPELINE_UPLOADS_URL"
BLOB_URL_ENV = "DOC_PIPELINE_BLOB_URL"
HOME_ENV = "DOC_PIPELINE_HOME"
DATABASE_URL_ENV = "DATABASE_URL"
DEFAULT_HOME = Path(".doc_pipeline")
PROVIDER_ENV = "DOC_PIPELINE_PROVIDER"
PROVIDERS = ("local", "gemini")
# The google-genai SDK reads these itself; they only decide the default provider here.
API_KEY_ENVS = ("GEMINI_API_KEY", "GOOGLE_API_KEY")


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
        `blobs` folder."""
        return os.environ.get(BLOB_URL_ENV) or str(self.blob_dir)

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"

    @property
    def uploads_dir(self) -> Path:
        return self.home / "uploads"

    @property
    def uploads_url(self) -> str:
        """Where the uploads sensor looks: DOC_PIPELINE_UPLOADS_URL (any fsspec URL), else
        the home's `uploads` folder."""
        return os.environ.get(UPLOADS_URL_ENV) or str(self.uploads_dir)

    def ensure_dirs(self) -> None:
        blobs_here = () if os.environ.get(BLOB_URL_ENV) else (self.blob_dir,)
        for path in (self.home, *blobs_here, self.dagster_home, self.uploads_dir):
            path.mkdir(parents=True, exist_ok=True)
