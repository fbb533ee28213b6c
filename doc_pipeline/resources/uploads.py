"""Where users drop books: a local folder or any fsspec URL (s3://, gcs://, sftp://, ...)."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath

import fsspec
from dagster import ConfigurableResource

from doc_pipeline.core.uploads import ListedFile
from doc_pipeline.settings import Settings


def _modified(info: dict) -> datetime | None:
    """The modification time, whatever the file system calls it."""
    for key in ("mtime", "LastModified", "last_modified", "updated", "modified"):
        value = info.get(key)
        if isinstance(value, (int, float)):
            return datetime.fromtimestamp(value, UTC)
        if isinstance(value, datetime):
            return value if value.tzinfo else value.replace(tzinfo=UTC)
        if isinstance(value, str):
            try:
                parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
            except ValueError:
                continue
            return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    return None


SETTLE_SECONDS_ENV = "DOC_PIPELINE_UPLOADS_SETTLE_SECONDS"


class Uploads(ConfigurableResource):
    """`url`: the uploads location (default `$DOC_PIPELINE_HOME/uploads`, or the
    DOC_PIPELINE_UPLOADS_URL environment variable); `settle_seconds` (default from
    DOC_PIPELINE_UPLOADS_SETTLE_SECONDS, else 10): how long a file's size and modification time
    must stay the same before it counts as completely written."""

    url: str | None = None
    settle_seconds: float = float(os.environ.get(SETTLE_SECONDS_ENV, "10"))

    def location(self) -> str:
        return self.url or Settings.from_env().uploads_url

    def _fs(self) -> tuple[fsspec.AbstractFileSystem, str]:
        fs, root = fsspec.core.url_to_fs(self.location())
        return fs, root

    def listing(self) -> list[ListedFile]:
        fs, root = self._fs()
        if not fs.exists(root):
            return []
        found = fs.find(root, detail=True)
        return [
            ListedFile(path, int(info.get("size") or 0), _modified(info))
            for path, info in found.items()
            if info.get("type", "file") == "file"
        ]

    @contextmanager
    def local_copy(self, path: str) -> Iterator[Path]:
        """The file as a local path: itself on a local file system, else a temporary copy."""
        fs, _ = self._fs()
        if "file" in (fs.protocol if isinstance(fs.protocol, tuple) else (fs.protocol,)):
            yield Path(path)
            return
        with tempfile.TemporaryDirectory(prefix="doc-pipeline-upload-") as folder:
            local = Path(folder) / PurePosixPath(path).name
            with fs.open(path, "rb") as source, open(local, "wb") as target:
                shutil.copyfileobj(source, target, length=1024 * 1024)
            yield local
