from dagster import AssetExecutionContext, Failure, MetadataValue, asset

from doc_pipeline.assets import catalog, versions
from doc_pipeline.core.ids import document_id_for, file_sha256
from doc_pipeline.db import store
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.source_store import SourceStore


@asset(
    partitions_def=documents_partitions,
    group_name="documents",
    kinds=catalog.kinds(),
    owners=catalog.OWNERS,
    metadata=catalog.table_metadata("documents"),
    code_version=versions.SOURCE,
)
def source_document(
    context: AssetExecutionContext, app_database: AppDatabase, source_store: SourceStore
):
    """The document's newest version: its stored copy, checked against the content hash it is
    named by."""
    document_id = context.partition_key
    document = store.get_document(app_database.engine, document_id)
    if document is None:
        raise Failure(
            f"document {document_id} is not registered; add it with `doc-pipeline ingest`"
        )
    path = source_store.path_for(
        document_id_for(document["content_sha256"]), document["source_file"]
    )
    if not path.exists() or file_sha256(path) != document["content_sha256"]:
        message = (
            f"{document['source_file']}: stored copy {path} is missing or does not match its hash"
        )
        store.mark_failed(app_database.engine, document_id, "permanent", message)
        raise Failure(message, allow_retries=False)
    output = {
        "document_id": document_id,
        "content_sha256": document["content_sha256"],
        "source_file": document["source_file"],
        "stored_path": str(path),
        "byte_size": document["byte_size"],
        "version": document["version"],
    }
    context.add_output_metadata(
        {
            "source_file": document["source_file"],
            "bytes": MetadataValue.int(document["byte_size"]),
            "version": MetadataValue.int(document["version"]),
        }
    )
    return output
