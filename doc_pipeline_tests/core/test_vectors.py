"""Embedding answers (core/vectors.py): checked for shape and numbers, then L2-normalized."""

from __future__ import annotations

import re

import numpy as np
import pytest

from doc_pipeline.core.failures import KnownFailure
from doc_pipeline.core.vectors import UnusableEmbeddings, normalized_vectors


def test_vectors_are_normalized():
    vectors = normalized_vectors([[3.0, 4.0], [0.0, 2.0]], 2, 2)
    assert vectors.dtype == np.float32
    assert np.allclose(vectors, [[0.6, 0.8], [0.0, 1.0]])


@pytest.mark.parametrize(
    "values, says",
    [
        ([[1.0, 0.0]], "has shape (1, 2), expected (2, 2)"),
        ([[1.0, float("nan")], [1.0, 0.0]], "not finite numbers"),
        ([[0.0, 0.0], [1.0, 0.0]], "a zero vector"),
    ],
)
def test_an_unusable_answer_is_a_known_failure_naming_the_problem(values, says):
    with pytest.raises(UnusableEmbeddings, match=re.escape(says)) as raised:
        normalized_vectors(values, 2, 2)
    assert isinstance(raised.value, KnownFailure) and isinstance(raised.value, ValueError)

