"""Embedding vectors from an answer: checked, then L2-normalized (cosine search needs it)."""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

from doc_pipeline.core.failures import KnownFailure


class UnusableEmbeddings(KnownFailure, ValueError):
    """An embedding answer of the wrong shape, with values that are no finite numbers, or with
    a zero vector: storing it would break the search (pgvector refuses NaN and infinity)."""


def normalized_vectors(values: Any, count: int, dimensions: int) -> np.ndarray:
    """`count` vectors of `dimensions` each, L2-normalized; UnusableEmbeddings otherwise."""
    vectors = np.asarray(values, dtype=np.float32)
    if vectors.shape != (count, dimensions):
        raise UnusableEmbeddings(
            f"the embedding answer has shape {vectors.shape}, expected ({count}, {dimensions})"
        )
    if not np.isfinite(vectors).all():
        raise UnusableEmbeddings("the embedding answer holds values that are not finite numbers")
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if not np.all(norms > 0):
        raise UnusableEmbeddings("the embedding answer holds a zero vector")
    return vectors / norms


def text_key(text: str) -> str:
    """The key a text's vector is kept under (with the model and its dimensions)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()
