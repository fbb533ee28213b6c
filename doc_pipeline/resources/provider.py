"""What every AI provider offers the assets: extraction, chunking, embedding, connection config."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from dagster import ConfigurableResource

from doc_pipeline.core.books import ExtractedBook
from doc_pipeline.core.bridges import BridgeConfig, BridgeRequest, JudgedBridges
from doc_pipeline.core.chunking import TextChunk
from doc_pipeline.core.extraction import extract_book
from doc_pipeline.core.semantic import SemanticConfig
from doc_pipeline.db.ledger_store import LedgerScope


class Provider(ConfigurableResource):
    """Base of the `local` and `gemini` providers (the `provider` resource)."""

    connection_top_k: int = 5
    # Minimum cosine similarity of a semantic connection; it depends on the embedder.
    connection_min_similarity: float = 0.5
    # How much a target chunk's importance (from the AI chunker) adds to a connection's strength.
    connection_importance_weight: float = 0.2
    embedding_batch_size: int = 100
    # AI requests of one step in flight at once (chunking windows, embedding batches, bridge
    # judgements); each answer is committed to the ledger as it arrives.
    max_concurrent_requests: int = 8

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def embedding_model(self) -> str:
        raise NotImplementedError

    @property
    def embedding_dimensions(self) -> int:
        raise NotImplementedError

    def extract(self, path: Path, name: str, scope: LedgerScope) -> ExtractedBook:
        """The book's markdown; a provider with a model also transcribes scanned PDF pages
        (through the ledger, in `scope`)."""
        return extract_book(path, name)

    def chunk(self, markdown: str, scope: LedgerScope) -> list[tuple[TextChunk, dict]]:
        """Chunks that partition the markdown, each with its metadata."""
        raise NotImplementedError

    def embed(self, texts: list[str], scope: LedgerScope) -> np.ndarray:
        """One L2-normalized vector per text (at most `embedding_batch_size` texts)."""
        raise NotImplementedError

    @property
    def bridge_judge(self) -> str | None:
        """The model that judges thematic bridges, or None when this provider has none."""
        return None

    def judge_bridges(
        self, requests: list[BridgeRequest], scope: LedgerScope, config: BridgeConfig
    ) -> JudgedBridges:
        """The bridge edges the model found in each request's pairs (through the ledger)."""
        raise NotImplementedError

    @property
    def semantic_config(self) -> SemanticConfig:
        return SemanticConfig(
            top_k=self.connection_top_k,
            min_similarity=self.connection_min_similarity,
            importance_weight=self.connection_importance_weight,
        )
