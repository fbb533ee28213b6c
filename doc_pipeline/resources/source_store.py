"""Where registered source files are kept (a copy named by the document id)."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from doc_pipeline.core.book_files import stored_source_path
from doc_pipeline.settings import Settings


class SourceStore(ConfigurableResource):
    """Registered uploads, under `base_dir` or by default the home folder's `blobs`."""

    base_dir: str | None = None

    @property
    def blob_dir(self) -> Path:
        return Path(self.base_dir) if self.base_dir else Settings.from_env().blob_dir

    def path_for(self, document_id: str, source_file: str) -> Path:
        return stored_source_path(self.blob_dir, document_id, source_file)
