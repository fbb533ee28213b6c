from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from doc_pipeline.core.connection_types import chunk_facts, normalize_name
from doc_pipeline.core.contradiction import (
    SKIP_NO_METADATA,
    ChunkFacts,
    ContradictionConfig,
    find_contradictions,
)


def meta(
    concepts: dict[str, float | None] | None = None,
    polarity: float | None = None,
    importance: float | None = 0.5,
) -> dict:
    """Chunk metadata shaped like the AI chunker's (see chunk_answers._clean_item)."""
    return {
        "themes": ["a theme"],
        "concepts": [{"name": n, "importance": i} for n, i in (concepts or {}).items()],
        "importance": importance,
        "summary": "s",
        "domain": "philosophy",
        "emotional_polarity": polarity,
        "primary_emotion": "joy",
        "emotional_intensity": 0.5,
    }


def chunk(chunk_id: str, document_id: str, **kwargs) -> ChunkFacts:
    return chunk_facts(chunk_id, document_id, meta(**kwargs))


def test_opposite_polarity_with_a_shared_concept_is_an_edge():
    own = [chunk("a1", "A", concepts={"Freedom": 0.8, "duty": 0.9}, polarity=0.6, importance=0.4)]
    other = [chunk("b1", "B", concepts={"freedom": 0.5, "war": 1.0}, polarity=-0.8, importance=1.0)]
    result = find_contradictions(own, other)
    assert result.skipped is None
    [edge] = result.edges
    assert (edge.source_chunk_id, edge.target_chunk_id) == ("a1", "b1")
    meta_ = edge.metadata
    assert meta_["shared_concepts"] == ["freedom"]
    assert meta_["shared_concept_count"] == 1
    assert (meta_["source_polarity"], meta_["target_polarity"]) == (0.6, -0.8)
    # concept: min(0.8, 0.5); gap: |0.6 + 0.8| / 2; importance: (0.4 + 1.0) / 2
    assert meta_["concept_score"] == pytest.approx(0.5)
    assert meta_["polarity_gap"] == pytest.approx(0.7)
    assert meta_["importance_score"] == pytest.approx(0.7)
    assert edge.strength == pytest.approx(0.5 * 0.5 + 0.3 * 0.7 + 0.2 * 0.7)


def test_several_shared_concepts_add_up_but_stay_below_one():
    own = [chunk("a1", "A", concepts={"x": 0.5, "y": 0.5, "z": 1.0}, polarity=1.0)]
    other = [chunk("b1", "B", concepts={"x": 0.5, "y": 0.5, "z": 1.0}, polarity=-1.0)]
    [edge] = find_contradictions(own, other).edges
    assert edge.metadata["concept_score"] == 1.0  # z is central to both
    own = [chunk("a1", "A", concepts={"x": 0.5, "y": 0.5}, polarity=1.0)]
    other = [chunk("b1", "B", concepts={"x": 0.5, "y": 0.5}, polarity=-1.0)]
    [edge] = find_contradictions(own, other).edges
    assert edge.metadata["concept_score"] == pytest.approx(0.75)  # 1 - 0.5 * 0.5


@pytest.mark.parametrize(
    ("own_polarity", "other_polarity"),
    [(0.7, 0.9), (-0.5, -0.9), (0.7, -0.2), (0.1, -0.9), (0.0, -1.0), (None, -1.0), (0.8, None)],
)
def test_same_weak_or_unknown_polarity_gives_no_edge(own_polarity, other_polarity):
    own = [chunk("a1", "A", concepts={"war": 1.0}, polarity=own_polarity)]
    other = [chunk("b1", "B", concepts={"war": 1.0}, polarity=other_polarity)]
    assert find_contradictions(own, other).edges == []


def test_no_shared_concept_gives_no_edge():
    own = [chunk("a1", "A", concepts={"war": 1.0}, polarity=0.9)]
    other = [chunk("b1", "B", concepts={"peace": 1.0}, polarity=-0.9)]
    assert find_contradictions(own, other).edges == []


def test_never_an_edge_within_a_document():
    own = [
        chunk("a1", "A", concepts={"war": 1.0}, polarity=0.9),
        chunk("a2", "A", concepts={"war": 1.0}, polarity=-0.9),
    ]
    # the caller may pass the document's own chunks among the others
    result = find_contradictions(own, own + [chunk("b1", "B", concepts={"war": 1}, polarity=-1)])
    assert [(e.source_chunk_id, e.target_chunk_id) for e in result.edges] == [("a1", "b1")]


def test_min_shared_concepts_and_min_strength():
    own = [chunk("a1", "A", concepts={"war": 0.2, "law": 0.2}, polarity=0.4, importance=0.1)]
    other = [chunk("b1", "B", concepts={"war": 0.2}, polarity=-0.4, importance=0.1)]
    assert find_contradictions(own, other, ContradictionConfig(min_strength=0.0)).edges
    assert not find_contradictions(own, other, ContradictionConfig(min_shared_concepts=2)).edges
    assert not find_contradictions(own, other, ContradictionConfig(min_strength=0.5)).edges


def test_strength_ordering_follows_the_weights():
    own = [chunk("a1", "A", concepts={"war": 0.9}, polarity=0.5)]
    # b1: the concept is central to it, a mild opposite tone; b2: peripheral, a strong tone
    others = [
        chunk("b1", "B", concepts={"war": 0.9}, polarity=-0.3),
        chunk("b2", "B", concepts={"war": 0.1}, polarity=-1.0),
    ]
    by_concepts = ContradictionConfig(
        concept_weight=1, polarity_weight=0, importance_weight=0, min_strength=0
    )
    by_polarity = ContradictionConfig(
        concept_weight=0, polarity_weight=1, importance_weight=0, min_strength=0
    )
    first = [e.target_chunk_id for e in find_contradictions(own, others, by_concepts).edges]
    assert first == ["b1", "b2"]
    first = [e.target_chunk_id for e in find_contradictions(own, others, by_polarity).edges]
    assert first == ["b2", "b1"]


def test_importance_weight_prefers_important_chunks():
    own = [chunk("a1", "A", concepts={"war": 0.5}, polarity=0.5)]
    others = [
        chunk("b1", "B", concepts={"war": 0.5}, polarity=-0.5, importance=0.1),
        chunk("b2", "B", concepts={"war": 0.5}, polarity=-0.5, importance=0.9),
    ]
    edges = find_contradictions(own, others, ContradictionConfig(min_strength=0)).edges
    assert [e.target_chunk_id for e in edges] == ["b2", "b1"]
    assert edges[0].strength > edges[1].strength


def test_top_k_keeps_the_strongest_per_source_chunk():
    own = [
        chunk("a1", "A", concepts={"war": 1.0}, polarity=0.9),
        chunk("a2", "A", concepts={"war": 1.0}, polarity=0.9),
    ]
    others = [
        chunk(f"b{i}", "B", concepts={"war": 1.0}, polarity=-0.3 - i * 0.05) for i in range(10)
    ]
    edges = find_contradictions(own, others, ContradictionConfig(top_k=3)).edges
    assert [(e.source_chunk_id, e.target_chunk_id) for e in edges] == [
        ("a1", "b9"),
        ("a1", "b8"),
        ("a1", "b7"),
        ("a2", "b9"),
        ("a2", "b8"),
        ("a2", "b7"),
    ]


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"chunker": "structural"},  # the local provider
        None,
        [],
        "text",
        meta(concepts={"war": 1.0}, polarity=None),  # concepts without polarity
        meta(concepts={}, polarity=0.9),  # polarity without concepts
    ],
)
def test_documents_without_usable_metadata_are_skipped_with_a_reason(metadata):
    own = [chunk_facts("a1", "A", metadata)]
    other = [chunk("b1", "B", concepts={"war": 1.0}, polarity=-1.0)]
    result = find_contradictions(own, other)
    assert result.edges == []
    assert result.skipped == SKIP_NO_METADATA
    assert "local provider" in result.skipped


def test_a_document_with_metadata_but_no_partner_is_not_skipped():
    own = [chunk("a1", "A", concepts={"war": 1.0}, polarity=0.1)]  # too weak, but usable
    result = find_contradictions(own, [chunk_facts("b1", "B", {"chunker": "structural"})])
    assert result.edges == [] and result.skipped is None


def test_malformed_metadata_values_never_crash():
    odd = {
        "concepts": [{"name": "War"}, {"importance": 1}, "peace", 7, {"name": " "}, None],
        "emotional_polarity": "0.9",
        "importance": math.nan,
    }
    facts = chunk_facts("a1", "A", odd)
    assert dict(facts.concepts) == {"war": None, "peace": None}
    assert facts.polarity is None and facts.importance is None
    clamped = chunk_facts("a2", "A", {"emotional_polarity": 7, "importance": True})
    assert clamped.polarity == 1.0 and clamped.importance is None
    own = [chunk_facts("a3", "A", {"concepts": [{"name": "war"}], "emotional_polarity": 0.8})]
    other = [chunk_facts("b1", "B", {"concepts": ["WAR"], "emotional_polarity": -0.8})]
    [edge] = find_contradictions(own, other).edges  # default importances fill the gaps
    assert edge.metadata["concept_score"] == 0.5 and edge.metadata["importance_score"] == 0.5


def test_concept_names_are_normalized():
    assert normalize_name("  Free\t\nWILL ") == "free will"
    assert normalize_name("ＦＲＥＥ will") == "free will"  # fullwidth letters (NFKC)
    assert normalize_name("Straße") == normalize_name("STRASSE")  # casefold, not lower
    assert normalize_name("   ") is None and normalize_name(3) is None
    facts = chunk("a1", "A", concepts={"Free Will": 0.2, "free  will": 0.7}, polarity=0.5)
    assert dict(facts.concepts) == {"free will": 0.7}  # the highest importance wins
    own = [chunk("a1", "A", concepts={"Free Will": 0.9}, polarity=0.5)]
    other = [chunk("b1", "B", concepts={" free\nwill": 0.9}, polarity=-0.5)]
    [edge] = find_contradictions(own, other).edges
    assert edge.metadata["shared_concepts"] == ["free will"]


def test_output_is_deterministic_whatever_the_input_order():
    rng = random.Random(7)
    names = ["war", "peace", "law", "god", "love", "death"]

    def random_chunk(chunk_id: str, document_id: str) -> ChunkFacts:
        concepts = {n: round(rng.random(), 2) for n in rng.sample(names, 3)}
        return chunk(chunk_id, document_id, concepts=concepts, polarity=rng.uniform(-1, 1))

    own = [random_chunk(f"a{i}", "A") for i in range(30)]
    others = [random_chunk(f"b{i}", f"D{i % 4}") for i in range(120)]
    first = find_contradictions(own, others)
    assert first.edges
    for _ in range(3):
        rng.shuffle(own)
        rng.shuffle(others)
        assert find_contradictions(own, others) == first
    keys = [(e.source_chunk_id, -e.strength, e.target_chunk_id) for e in first.edges]
    assert keys == sorted(keys)


def test_config_is_validated():
    with pytest.raises(ValueError):
        ContradictionConfig(concept_weight=0, polarity_weight=0, importance_weight=0)
    with pytest.raises(ValueError):
        ContradictionConfig(concept_weight=-1)
    with pytest.raises(ValueError):
        ContradictionConfig(top_k=0)
    with pytest.raises(ValueError):
        ContradictionConfig(min_polarity=1.5)


NAMES = st.sampled_from(["war", "War ", "peace", "law", "god", "LOVE", "love"])
NUMBERS = st.one_of(
    st.none(), st.floats(allow_nan=True, allow_infinity=True), st.integers(-3, 3), st.text()
)
CONCEPTS = st.lists(
    st.one_of(NAMES, st.fixed_dictionaries({"name": NAMES, "importance": NUMBERS})), max_size=4
)
# Half well-formed chunker metadata (so edges do occur), half anything.
METADATA = st.one_of(
    st.fixed_dictionaries(
        {"concepts": CONCEPTS, "emotional_polarity": st.floats(-1, 1)},
        optional={"importance": st.floats(0, 1)},
    ),
    st.fixed_dictionaries(
        {}, optional={"concepts": CONCEPTS, "emotional_polarity": NUMBERS, "importance": NUMBERS}
    ),
)
CHUNKS = st.lists(st.tuples(st.sampled_from("ABC"), METADATA), min_size=3, max_size=25)


@settings(max_examples=200, deadline=None)
@given(
    own_meta=st.lists(METADATA, min_size=1, max_size=10),
    other_chunks=CHUNKS,
    top_k=st.integers(1, 4),
)
def test_properties_of_any_edges(own_meta, other_chunks, top_k):
    config = ContradictionConfig(top_k=top_k, min_strength=0)
    own = [chunk_facts(f"a{i}", "A", m) for i, m in enumerate(own_meta)]
    others = [chunk_facts(f"o{i}", doc, m) for i, (doc, m) in enumerate(other_chunks)]
    by_id = {c.chunk_id: c for c in own + others}
    result = find_contradictions(own, others, config)
    if result.skipped:
        assert result.edges == []
    per_source: dict[str, int] = {}
    for edge in result.edges:
        source, target = by_id[edge.source_chunk_id], by_id[edge.target_chunk_id]
        assert source.document_id == "A" and target.document_id != "A"
        assert 0.0 <= edge.strength <= 1.0
        assert source.polarity * target.polarity < 0
        assert min(abs(source.polarity), abs(target.polarity)) >= config.min_polarity
        shared = set(edge.metadata["shared_concepts"])
        assert shared and shared <= set(source.concepts) & set(target.concepts)
        per_source[source.chunk_id] = per_source.get(source.chunk_id, 0) + 1
    assert all(count <= top_k for count in per_source.values())
