import warnings

from dagster import BetaWarning, with_source_code_references

from doc_pipeline.assets.chunks import chunks
from doc_pipeline.assets.connections import connections
from doc_pipeline.assets.embeddings import embeddings
from doc_pipeline.assets.extracted_markdown import extracted_markdown
from doc_pipeline.assets.source_document import source_document

# Each asset links to its module in the UI ("View source"); a beta API in Dagster 1.13 (it warns
# on every load, in every command's output).
with warnings.catch_warnings():
    warnings.simplefilter("ignore", BetaWarning)
    document_assets = with_source_code_references(
        [source_document, extracted_markdown, chunks, embeddings, connections]
    )
