"""What the connection engines read from a chunk's metadata, whatever state it is in.

Chunk metadata comes from the AI chunker (`chunk_answers._clean_item`: themes, concepts with
importance, importance, domain, emotional polarity, ...) or from the local provider, whose
chunks have none of these keys. It is stored as JSON and may also predate the current cleaning,
so every value is read defensively here: a missing, None, mistyped or non-finite value becomes
None or empty, never an error.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from types import MappingProxyType
from typing import Any

MAX_NAME_CHARS = 200  # as chunk_answers caps names; a longer "name" is not a concept


def normalize_name(value: Any) -> str | None:
    """A concept, theme or domain name for matching: NFKC, casefolded, whitespace collapsed.
    None for a non-string or blank value."""
    if not isinstance(value, str):
        return None
    name = " ".join(unicodedata.normalize("NFKC", value).casefold().split())
    return name[:MAX_NAME_CHARS] or None


def unit_number(value: Any, low: float, high: float) -> float | None:
    """A finite number clamped to [low, high]; None for anything else (bool included)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return min(max(number, low), high) if math.isfinite(number) else None


def _concepts(value: Any) -> dict[str, float | None]:
    """Normalized concept name -> importance (None when the chunker gave none); a name given
    twice keeps its highest importance. Bare strings are accepted as concepts too."""
    concepts: dict[str, float | None] = {}
    if not isinstance(value, list):
        return concepts
    for item in value:
        raw_name, importance = (
            (item.get("name"), unit_number(item.get("importance"), 0.0, 1.0))
            if isinstance(item, dict)
            else (item, None)
        )
        name = normalize_name(raw_name)
        if name is None:
            continue
        known = concepts.get(name)
        if name not in concepts or (
            importance is not None and (known is None or importance > known)
        ):
            concepts[name] = importance
    return concepts


def _themes(value: Any) -> frozenset[str]:
    if not isinstance(value, list):
        return frozenset()
    return frozenset(name for name in map(normalize_name, value) if name)


@dataclass(frozen=True)
class ChunkFacts:
    """One chunk as the connection engines see it: plain values, each possibly unknown.

    Build it with `chunk_facts`, which normalizes names and clamps numbers."""

    chunk_id: str
    document_id: str
    # normalized concept name -> importance in [0, 1], None when the chunker gave none
    concepts: Mapping[str, float | None] = field(default_factory=dict, hash=False)
    polarity: float | None = None  # emotional polarity in [-1, 1]
    importance: float | None = None  # importance of the chunk to its work, in [0, 1]
    domain: str | None = None  # normalized
    themes: frozenset[str] = frozenset()  # normalized

    @cached_property  # read per candidate pair: computed once
    def terms(self) -> frozenset[str]:
        """Themes and concept names together: what two chunks can visibly share."""
        return self.themes | frozenset(self.concepts)


def chunk_facts(chunk_id: str, document_id: str, metadata: Any) -> ChunkFacts:
    """The facts of a chunk from its stored metadata (any JSON value, or None)."""
    meta: Mapping[str, Any] = metadata if isinstance(metadata, Mapping) else {}
    return ChunkFacts(
        chunk_id=chunk_id,
        document_id=document_id,
        concepts=MappingProxyType(_concepts(meta.get("concepts"))),
        polarity=unit_number(meta.get("emotional_polarity"), -1.0, 1.0),
        importance=unit_number(meta.get("importance"), 0.0, 1.0),
        domain=normalize_name(meta.get("domain")),
        themes=_themes(meta.get("themes")),
    )
