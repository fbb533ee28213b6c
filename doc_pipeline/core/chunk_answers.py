"""A chunking answer: its schema, what is kept of its metadata, and where its chunks are.

The model is asked for JSON chunks with metadata: in v2 the number of the block each chunk
starts with (`anchor_boundaries`), in v1 the chunk's text copied from the window, only used to
FIND the chunk in the markdown (`anchor_chunks`). Either way the answer is untrusted: metadata
is validated (unknown keys dropped, values clamped, strings and lists capped), numbers out of
range or order are refused, and the stored chunks are spans of the markdown.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from doc_pipeline.core.blocks import NumberedText
from doc_pipeline.core.connection_types import unit_number
from doc_pipeline.core.model_text import MalformedAnswer, answer_json, storable, undefuse
from doc_pipeline.core.windows import Window

_NAME_CHARS, _SUMMARY_CHARS = 200, 1_000
_MAX_THEMES, _MAX_CONCEPTS = 5, 20


def _unit_schema(description: str) -> dict[str, Any]:
    return {"type": "number", "minimum": 0, "maximum": 1, "description": description}


_METADATA_FIELDS = [
    "themes",
    "concepts",
    "importance",
    "summary",
    "domain",
    "emotional_polarity",
    "primary_emotion",
    "emotional_intensity",
]


def _metadata_schema() -> dict[str, Any]:
    return {
        "themes": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 5},
        "concepts": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {
                    "name": {"type": "string"},
                    "importance": _unit_schema("How central the concept is to the chunk."),
                },
                "required": ["name", "importance"],
            },
        },
        "importance": _unit_schema("How important the chunk is to the whole work."),
        "summary": {"type": "string"},
        "domain": {"type": "string"},
        "emotional_polarity": {"type": "number", "minimum": -1, "maximum": 1},
        "primary_emotion": {"type": "string"},
        "emotional_intensity": _unit_schema("How strong the emotion is."),
    }


def _answer_schema(first: str, first_schema: dict[str, Any]) -> dict:
    item = {
        "type": "object",
        "properties": {first: first_schema, **_metadata_schema()},
        "required": [first, *_METADATA_FIELDS],
    }
    return {
        "type": "object",
        "properties": {"chunks": {"type": "array", "items": item}},
        "required": ["chunks"],
    }


def chunk_schema() -> dict:
    """JSON schema of a v1 answer, chunks copied (for `response_json_schema`)."""
    content = {"type": "string", "description": "The chunk's text copied verbatim from the source."}
    return _answer_schema("content", content)


def boundary_schema() -> dict:
    """JSON schema of a v2 answer: the number of the block each chunk starts with."""
    first_block = {
        "type": "integer",
        "minimum": 1,
        "description": "The number of the block ([B<n>]) the chunk starts with.",
    }
    return _answer_schema("first_block", first_block)


def _chunk_items(text: str | None, finish_reason: str | None) -> list:
    value = answer_json(text, finish_reason)
    chunks = value.get("chunks") if isinstance(value, dict) else None
    if not isinstance(chunks, list):
        raise MalformedAnswer("schema", "no list of chunks")
    return chunks


def parse_answer(text: str | None, finish_reason: str | None) -> list[dict]:
    """The chunk items of a v1 answer, metadata clamped and cleaned; MalformedAnswer
    otherwise."""
    chunks = _chunk_items(text, finish_reason)
    if not all(isinstance(c, dict) and isinstance(c.get("content"), str) for c in chunks):
        raise MalformedAnswer("schema", "a chunk without string content")
    items = [{"content": c["content"], **_metadata(c)} for c in chunks if c["content"].strip()]
    if not items:
        raise MalformedAnswer("empty", "no chunks")
    return items


def parse_boundaries(text: str | None, finish_reason: str | None) -> list[dict]:
    """The chunk items of a v2 answer: `first_block` (an int, or None when it is not a whole
    number) and the metadata clamped and cleaned; MalformedAnswer when there are none."""
    chunks = [c for c in _chunk_items(text, finish_reason) if isinstance(c, dict)]
    if not chunks:
        raise MalformedAnswer("empty", "no chunks")
    return [{"first_block": _block_number(c.get("first_block")), **_metadata(c)} for c in chunks]


def _block_number(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value if isinstance(value, int) else None


def _string(value: Any, limit: int) -> str | None:
    return storable(value).strip()[:limit] if isinstance(value, str) else None


def _strings(value: Any, limit: int, count: int) -> list[str]:
    if not isinstance(value, list):
        return []
    cleaned = (_string(v, limit) for v in value)
    return [v for v in cleaned if v][:count]


def _concepts(value: Any) -> list[dict]:
    if not isinstance(value, list):
        return []
    concepts = []
    for concept in value:
        name = _string(concept.get("name"), _NAME_CHARS) if isinstance(concept, dict) else None
        if name:
            importance = unit_number(concept.get("importance"), 0, 1)
            concepts.append({"name": name, "importance": importance})
    return concepts[:_MAX_CONCEPTS]


def _metadata(item: dict) -> dict:
    """Known keys only, each of the right type and range (None when unusable)."""
    return {
        "themes": _strings(item.get("themes"), _NAME_CHARS, _MAX_THEMES),
        "concepts": _concepts(item.get("concepts")),
        "importance": unit_number(item.get("importance"), 0, 1),
        "summary": _string(item.get("summary"), _SUMMARY_CHARS),
        "domain": _string(item.get("domain"), _NAME_CHARS),
        "emotional_polarity": unit_number(item.get("emotional_polarity"), -1, 1),
        "primary_emotion": _string(item.get("primary_emotion"), _NAME_CHARS),
        "emotional_intensity": unit_number(item.get("emotional_intensity"), 0, 1),
    }


@dataclass(frozen=True)
class AnchoredChunk:
    start: int  # offsets into the markdown where the model's chunk text was found
    end: int
    metadata: dict


_EDGE_WORDS = 12  # words matched at each end when the whole text is not found
_MIN_EDGE_WORDS = 3  # fewer would match too much by chance
# A copy may space the text out (e.g. double line breaks), but a content longer than this is
# no copy of the window: refused before the costly whitespace-insensitive search.
_MAX_COPY_GROWTH, _COPY_SLACK_CHARS = 2, 1_000


def anchor_chunks(
    markdown: str, window: Window, items: list[dict]
) -> tuple[list[AnchoredChunk], int]:
    """Find each item's content in the window, in order, searching forward from the previous
    match (then, for out-of-order items, anywhere in the window); exact text first, then the
    same words with any whitespace, then just its first and last words. Returns the anchors
    (global offsets, metadata without content) and the number of items refused."""
    anchored: list[AnchoredChunk] = []
    refused, cursor = 0, window.start
    longest = _MAX_COPY_GROWTH * (window.end - window.start) + _COPY_SLACK_CHARS
    for item in items:
        content = undefuse(str(item.get("content", ""))).strip()
        span = None
        if content and len(content) <= longest:
            span = _find(markdown, content, cursor, window.end) or _find(
                markdown, content, window.start, window.end
            )
        if span is None:
            refused += 1
            continue
        metadata = {key: value for key, value in item.items() if key != "content"}
        anchored.append(AnchoredChunk(span[0], span[1], metadata))
        cursor = max(cursor, span[1])
    return anchored, refused


def _words_pattern(words: list[str]) -> re.Pattern[str]:
    return re.compile(r"\s+".join(re.escape(word) for word in words))


def _find(md: str, content: str, start: int, end: int) -> tuple[int, int] | None:
    if (pos := md.find(content, start, end)) >= 0:
        return pos, pos + len(content)
    words = content.split()
    if match := _words_pattern(words).search(md, start, end):
        return match.span()
    edge = min(_EDGE_WORDS, len(words) // 2)
    if edge < _MIN_EDGE_WORDS:
        return None
    head = _words_pattern(words[:edge])
    tail = _words_pattern(words[-edge:])
    # the tail must follow within about the content's length, or it is some other passage
    reach = 2 * len(content) + 200
    for first in head.finditer(md, start, end):
        if last := tail.search(md, first.end(), min(end, first.start() + reach)):
            return first.start(), last.end()
    return None


def anchor_boundaries(
    numbered: NumberedText, window: Window, items: list[dict]
) -> tuple[list[AnchoredChunk], int]:
    """Anchors where the items' blocks start: only block numbers of the window, each greater
    than the one before (the rest are refused and counted). A chunk runs to the next kept
    chunk's first block, the last one to the window's end."""
    kept: list[tuple[int, dict]] = []
    refused = 0
    for item in items:
        number = item.get("first_block")
        usable = isinstance(number, int) and 1 <= number <= numbered.count
        if not usable or (kept and number <= kept[-1][0]):
            refused += 1
            continue
        kept.append((number, {k: v for k, v in item.items() if k != "first_block"}))
    starts = [numbered.starts[number - 1] for number, _ in kept]
    ends = [*starts[1:], window.end] if starts else []
    anchors = [
        AnchoredChunk(start, end, metadata)
        for start, end, (_, metadata) in zip(starts, ends, kept, strict=True)
    ]
    return anchors, refused
