"""What a semantic neighbour is worth (core/semantic.py): similarity, blended with the target's
importance where there is one, kept from the threshold up; the search is db/semantic_search.py."""

from __future__ import annotations

import math

import pytest

from doc_pipeline.core.semantic import Neighbour, SemanticConfig, semantic_edges


def test_neighbours_below_the_threshold_are_dropped_and_similarity_clamped():
    config = SemanticConfig(min_similarity=0.5, importance_weight=0.2)
    neighbours = [Neighbour("a", "x", 0.4), Neighbour("a", "y", 1.2), Neighbour("b", "x", 0.5)]
    edges = semantic_edges(neighbours, {}, "m", config)
    assert [(e.source_chunk_id, e.target_chunk_id, e.strength) for e in edges] == [
        ("a", "y", 1.0),
        ("b", "x", 0.5),
    ]
    assert edges[0].metadata == {"similarity": 1.0, "model": "m"}


def test_the_target_importance_is_blended_in_where_it_is_known_and_finite():
    config = SemanticConfig(min_similarity=0.0, importance_weight=0.2)
    neighbours = [Neighbour("a", t, 0.8) for t in ("known", "nan", "high", "none")]
    importances = {"known": 0.3, "nan": math.nan, "high": 7.0}
    edges = {e.target_chunk_id: e for e in semantic_edges(neighbours, importances, "m", config)}
    assert edges["known"].strength == pytest.approx(0.8 * 0.8 + 0.2 * 0.3)
    assert edges["known"].metadata["target_importance"] == 0.3
    assert edges["high"].strength == pytest.approx(0.8 * 0.8 + 0.2 * 1.0)  # clamped to 1
    assert edges["nan"].strength == edges["none"].strength == 0.8
    assert "target_importance" not in edges["nan"].metadata
