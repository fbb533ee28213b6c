"""The `local` provider: everything on this machine, no network, no API key."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from dagster import ConfigurableResource

from doc_pipeline.core import lexical_embedding
from doc_pipeline.core.chunking import ChunkingConfig, TextChunk, chunk_markdown
from doc_pipeline.core.epub import ExtractedBook, epub_to_markdown
from doc_pipeline.core.semantic import SemanticConfig


class LocalProvider(ConfigurableResource):
    """EPUB → markdown with ebooklib, structural chunks, and a lexical (not semantic) embedder."""

    min_words: int = 500
    max_words: int = 1200
    connection_top_k: int = 5
    # Lexical vectors of different books: median cosine about 0.07, top 1% above 0.16 (measured
    # on the samples); 0.15 keeps the closest passages only.
    connection_min_similarity: float = 0.15

    @property
    def name(self) -> str:
        return "local"

    @property
    def embedding_model(self) -> str:
        return lexical_embedding.MODEL_NAME

    @property
    def embedding_dimensions(self) -> int:
        return lexical_embedding.DIMENSIONS

    def extract(self, path: Path, name: str) -> ExtractedBook:
        return epub_to_markdown(path, name)

    def chunk(self, markdown: str) -> list[TextChunk]:
        return chunk_markdown(
            markdown, ChunkingConfig(min_words=self.min_words, max_words=self.max_words)
        )

    def embed(self, texts: list[str]) -> np.ndarray:
        return lexical_embedding.embed_texts(texts)

    @property
    def semantic_config(self) -> SemanticConfig:
        return SemanticConfig(
            top_k=self.connection_top_k, min_similarity=self.connection_min_similarity
        )
