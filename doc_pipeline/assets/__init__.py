from doc_pipeline.assets.chunks import chunks
from doc_pipeline.assets.connections import connections
from doc_pipeline.assets.embeddings import embeddings
from doc_pipeline.assets.extracted_markdown import extracted_markdown
from doc_pipeline.assets.source_document import source_document

document_assets = [source_document, extracted_markdown, chunks, embeddings, connections]
