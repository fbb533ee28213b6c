"""An IO manager that keeps each output as JSON per (asset, partition) in the blob store.

Materializing a downstream asset alone loads its inputs from here instead of recomputing them,
and a run retried from failure loads what the failed run already produced (DESIGN rule 6).
"""

from __future__ import annotations

import json
import os
import uuid
from typing import Any

from dagster import ConfigurableIOManagerFactory, InputContext, OutputContext, UPathIOManager
from upath import UPath

from doc_pipeline.settings import Settings


class JsonBlobIOManager(UPathIOManager):
    extension = ".json"

    def dump_to_path(self, context: OutputContext, obj: Any, path: UPath) -> None:
        payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        if path.protocol in ("", "file"):
            # Write then rename, so a crash never leaves a half-written file to be read back.
            path.parent.mkdir(parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
            with temporary.open("wb") as handle:
                handle.write(payload)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary.path, path.path)
        else:
            path.write_bytes(payload)

    def load_from_path(self, context: InputContext, path: UPath) -> Any:
        return json.loads(path.read_bytes())


class BlobIOManager(ConfigurableIOManagerFactory):
    """JSON outputs under `base_path` (a directory or any fsspec URL); by default the home
    folder's `blobs/outputs`."""

    base_path: str | None = None

    def create_io_manager(self, context) -> JsonBlobIOManager:
        base_path = self.base_path or str(Settings.from_env().blob_dir / "outputs")
        return JsonBlobIOManager(base_path=UPath(base_path))
