"""The `local` provider: everything on this machine, no network, no API key."""

from __future__ import annotations

import numpy as np

from doc_pipeline.core import local_embedding
from doc_pipeline.core.chunking import ChunkingConfig, TextChunk, chunk_markdown
from doc_pipeline.db.ledger_store import LedgerScope
from doc_pipeline.resources.provider import Provider


class LocalProvider(Provider):
    """EPUB and PDF → markdown (ebooklib; pdfium, scanned pages left out), structural chunks, and
    a semantic embedder that runs offline (WordLlama, 256 dimensions: core/local_embedding).
    Makes no AI request, so the ledger is never used."""

    min_words: int = 500
    max_words: int = 1200
    # Chunks of two different books of the corpus (`python bench/similarity.py`): median cosine
    # 0.17, the closest 1% of pairs above 0.55 (two chunks of one book: median 0.56); 0.55 keeps
    # the closest passages only.
    connection_min_similarity: float = 0.55
    max_concurrent_requests: int = 1  # no network to wait on: nothing to overlap

    @property
    def name(self) -> str:
        return "local"

    @property
    def embedding_model(self) -> str:
        return local_embedding.MODEL_NAME

    @property
    def embedding_dimensions(self) -> int:
        return local_embedding.DIMENSIONS

    def chunk(self, markdown: str, scope: LedgerScope) -> list[tuple[TextChunk, dict]]:
        config = ChunkingConfig(min_words=self.min_words, max_words=self.max_words)
        return [(chunk, {"chunker": "structural"}) for chunk in chunk_markdown(markdown, config)]

    def embed(self, texts: list[str], scope: LedgerScope) -> np.ndarray:
        return local_embedding.embed_texts(texts)
