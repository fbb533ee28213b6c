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

from doc_pipeline import blob_store
from doc_pipeline.settings import Settings
from doc_pipeline.step_failures import expected_failures


class JsonBlobIOManager(UPathIOManager):
    extension = ".json"

    # A full disk or an unreachable object store is an outage, with one line to say so; the
    # whole calls are covered too, since Dagster checks and makes folders around the writes.
    def handle_output(self, context: OutputContext, obj: Any) -> None:
        with expected_failures(), blob_store.store_errors(str(self._base_path)):
            super().handle_output(context, obj)

    def load_input(self, context: InputContext) -> Any:
        with expected_failures(), blob_store.store_errors(str(self._base_path)):
            return super().load_input(context)

    def dump_to_path(self, context: OutputContext, obj: Any, path: UPath) -> None:
        payload = json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode()
        # Whole or nothing: a crash, a full disk or an outage never leaves a half-written output
        # to be loaded by a retry; a failed write names the file.
        blob_store.store_bytes(str(path), payload)
        local = path.protocol in ("", "file")
        # Where the output is, under the key the Dagster UI shows as the asset's URI.
        uri = Path(path.path).absolute().as_uri() if local else str(path)
        context.add_output_metadata({"dagster/uri": MetadataValue.text(uri)})

    def load_from_path(self, context: InputContext, path: UPath) -> Any:
        with blob_store.store_errors(str(path)):
            payload = path.read_bytes()
        return json.loads(payload)


class BlobIOManager(ConfigurableIOManagerFactory):
    """JSON outputs under `base_path` (a directory or any fsspec URL); by default `outputs`
    of the blob store location (DOC_PIPELINE_BLOB_URL, else the home folder's `blobs`)."""

    base_path: str | None = None

    def create_io_manager(self, context) -> JsonBlobIOManager:
        base_path = self.base_path or blob_store.join(Settings.from_env().blob_url, "outputs")
        return JsonBlobIOManager(base_path=UPath(base_path))
