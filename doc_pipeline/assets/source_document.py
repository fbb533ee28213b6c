from dagster import AssetExecutionContext, Failure, MetadataValue, asset
from sqlalchemy.engine import Engine

from doc_pipeline import blob_store
from doc_pipeline.assets import catalog, versions
from doc_pipeline.core.ids import document_id_for
from doc_pipeline.db import store
from doc_pipeline.db.failures import classify, describe
from doc_pipeline.partitions import documents_partitions
from doc_pipeline.resources.app_database import AppDatabase
from doc_pipeline.resources.source_store import SourceStore
from doc_pipeline.step_failures import expected_failures


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
    engine = app_database.engine
    document = store.get_document(engine, document_id)
    if document is None:
        raise Failure(
            f"document {document_id} is not registered; add it with `doc-pipeline ingest`"
        )
    url = source_store.url_for(document_id_for(document["content_sha256"]), document["source_file"])
    with expected_failures():
        stored_sha256 = _stored_sha256(engine, document_id, url)
    if stored_sha256 != document["content_sha256"]:
        problem = "is missing" if stored_sha256 is None else "does not match its hash"
        message = f"{document['source_file']}: stored copy {url} {problem}"
        store.mark_failed(engine, document_id, "permanent", message)
        raise Failure(message, allow_retries=False)
    output = {
        "document_id": document_id,
        "content_sha256": document["content_sha256"],
        "source_file": document["source_file"],
        "stored_path": url,  # a local path or a URL of the blob store
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


def _stored_sha256(engine: Engine, document_id: str, url: str) -> str | None:
    """The stored copy's hash (None when it is missing); a store that cannot be read fails the
    document with its class (an outage is transient)."""
    try:
        return blob_store.sha256_of(url)
    except FileNotFoundError:
        return None
    except Exception as error:
        store.mark_failed(engine, document_id, classify(error), describe(error))
        raise
