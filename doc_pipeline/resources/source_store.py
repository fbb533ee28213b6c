"""Where registered source files are kept (a copy named by the document id)."""

from __future__ import annotations

from dagster import ConfigurableResource

from doc_pipeline import blob_store
from doc_pipeline.core.book_files import stored_source_key
from doc_pipeline.settings import Settings


class SourceStore(ConfigurableResource):
    """Registered uploads under `sources/` of `base_dir` (a folder or any fsspec URL); by
    default the blob store location (DOC_PIPELINE_BLOB_URL, else the home folder's `blobs`)."""

    base_dir: str | None = None

    @property
    def url(self) -> str:
        return self.base_dir or Settings.from_env().blob_url

    def url_for(self, document_id: str, source_file: str) -> str:
        return blob_store.join(self.url, stored_source_key(document_id, source_file))
