"""An IO manager that keeps each output as JSON per (asset, partition) in the blob store.

Materializing a downstream asset alone loads its inputs from here instead of recomputing them,
and a run retried from failure loads what the failed run already produced (DESIGN rule 6).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dagster import (
    ConfigurableIOManagerFactory,
    InputContext,
    MetadataValue,
    OutputContext,
    UPathIOManager,
)
from upath import UPath

from doc_pipeline.core.atomic_write import write_atomically
from doc_pipeline.settings import Settings
from doc_pipeline.step_failures import expected_failures


class JsonBlobIOManager(UPathIOManager):
    extension = ".json"

    def dump_to_path(self, context: OutputContext, obj: Any, path: UPath) -> None:
        payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        local = path.protocol in ("", "file")
        with expected_failures():  # a full disk is an outage, with one line to say so
            if local:
                # Temporary file, fsync, rename: a crash or a full disk never leaves a
                # half-written output to be loaded by a retry; a failed write names the file.
                write_atomically(Path(path.path), [payload])
            else:
                # Object stores (s3, gcs, ...) make an object visible whole or not at all.
                path.write_bytes(payload)
        # Where the output is, under the key the Dagster UI shows as the asset's URI.
        uri = Path(path.path).absolute().as_uri() if local else str(path)
        context.add_output_metadata({"dagster/uri": MetadataValue.text(uri)})

    def load_from_path(self, context: InputContext, path: UPath) -> Any:
        return json.loads(path.read_bytes())


class BlobIOManager(ConfigurableIOManagerFactory):
    """JSON outputs under `base_path` (a directory or any fsspec URL); by default the home
    folder's `blobs/outputs`."""

    base_path: str | None = None

    def create_io_manager(self, context) -> JsonBlobIOManager:
        base_path = self.base_path or str(Settings.from_env().blob_dir / "outputs")
        return JsonBlobIOManager(base_path=UPath(base_path))
