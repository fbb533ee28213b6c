"""Pure logic around AI semantic chunking: windows, prompt, answer parsing and assembly.

The `gemini` provider sends one request per window (a chapter, or an overlapping piece of a
long one) and gets back JSON chunks whose text the model copied from the window, with metadata.
That answer is untrusted: its text is only used to FIND chunk boundaries in the markdown
(`anchor_chunks`), and the stored chunks are spans of the markdown (`assemble_chunks`), so no
text is lost and none is invented, whatever the model returns.

Sizes here are characters for windows (what a request costs) and words for chunks (as in
`chunking.py`, letters for text written without spaces).
"""

from __future__ import annotations

import json
import math
import re
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from typing import Any

from doc_pipeline.core.chunking import (
    ChunkingConfig,
    TextChunk,
    chunk_markdown,
    count_alnum,
    count_tokens,
    is_no_space,
    scan_blocks,
    trimmed_span,
)

PROMPT_VERSION = "chunking-v1"
DOCUMENT_TYPES = ("fiction", "non-fiction", "academic", "technical", "essay")
TEXT_START, TEXT_END = "<<<TEXT", "TEXT>>>"
TEXT_PLACEHOLDER = "{text_block}"

# A marker inside the book text would end the data block early (or open a second one). It is
# defused by a WORD JOINER (U+2060, invisible, not whitespace) inside it, so each marker is a
# unique line of the prompt; `anchor_chunks` undoes this on the model's copy.
_JOINER = "\u2060"
_DEFUSED = ((TEXT_START, "<<<" + _JOINER + "TEXT"), (TEXT_END, "TEXT" + _JOINER + ">>>"))

_TINY_CHAPTER_SHARE = 0.1  # chapters under this share of max_chars merge with the next one


# --- headings -------------------------------------------------------------------------------


class _Headings:
    """Heading paths at any span of a markdown text, from chunking.py's block scan."""

    def __init__(self, markdown: str) -> None:
        self.blocks = scan_blocks(markdown)
        self.starts = [block.start for block in self.blocks]
        self.paths: list[tuple[str, ...]] = []  # heading stack after each block
        stack: list[tuple[int, str]] = []
        for block in self.blocks:
            if block.level:
                while stack and stack[-1][0] >= block.level:
                    stack.pop()
                if block.title:  # an empty heading closes deeper ones but names nothing
                    stack.append((block.level, block.title))
            self.paths.append(tuple(title for _, title in stack))

    def path(self, start: int, end: int) -> tuple[str, ...]:
        """The heading stack after the headings that open [start, end), as in chunking.py."""
        j = bisect_left(self.starts, start)
        if j > 0 and self.blocks[j - 1].end > start:
            j -= 1  # the span starts inside this block
        k = j
        while k < len(self.blocks) and self.blocks[k].start < end and self.blocks[k].level:
            k += 1
        if k < len(self.blocks) and self.blocks[k].start < end:
            return self.paths[k]  # the first body block
        if k > j:
            return self.paths[k - 1]  # only headings in the span
        return self.paths[j - 1] if j > 0 else ()

    def only_headings(self, start: int, end: int) -> bool:
        """True if [start, end) holds heading lines and whitespace only."""
        j = bisect_left(self.starts, start)
        if j > 0 and self.blocks[j - 1].end > start:
            j -= 1
        k = j
        while k < len(self.blocks) and self.blocks[k].start < end:
            if not self.blocks[k].level:
                return False
            k += 1
        return True


# --- cut points -----------------------------------------------------------------------------

# Where a piece may start, best first: after a blank line or before a heading line, after a
# sentence end, after any whitespace. Each candidate is a match's end.
_PARAGRAPH_CUT = re.compile(r"\n[ \t]*\n\s*|\n(?=[ \t]{0,3}#{1,6}[ \t])")
_SENTENCE_CUT = re.compile(r"[.!?\u2026\u3002\uff01\uff1f][\"'\u201d\u2019\u00bb)\]*_]*\s+")
_SPACE_CUT = re.compile(r"\s+")
_LOOKBACK = 200  # a separator may begin before the range its end falls into


def _cut(md: str, pattern: re.Pattern[str], lo: int, hi: int, target: int) -> int | None:
    """The candidate of `pattern` in [lo, hi] closest to target, or None."""
    best: int | None = None
    for match in pattern.finditer(md, max(0, lo - _LOOKBACK), hi):
        pos = match.end()
        if lo <= pos <= hi and (best is None or abs(pos - target) < abs(best - target)):
            best = pos
    return best


def _best_cut(md: str, lo: int, hi: int, target: int) -> int | None:
    for pattern in (_PARAGRAPH_CUT, _SENTENCE_CUT, _SPACE_CUT):
        if (pos := _cut(md, pattern, lo, hi, target)) is not None:
            return pos
    return None


# --- windows --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Window:
    """A piece of the markdown sent in one request."""

    start: int  # offsets into the markdown
    end: int
    heading_path: tuple[str, ...]


def chapter_windows(
    markdown: str, *, max_chars: int = 24_000, overlap_chars: int = 1_500
) -> list[Window]:
    """Windows covering the markdown in order: one per chapter (level 1/2 heading), tiny
    chapters merged with the next; a chapter over max_chars is cut into windows of at most
    max_chars overlapping by about overlap_chars, at paragraph breaks where possible (else
    sentence ends, else whitespace; a run of max_chars without whitespace is cut mid-word, so
    the max_chars bound holds even for a single giant paragraph). Blank markdown -> []."""
    if max_chars < 1 or overlap_chars < 0 or 2 * overlap_chars >= max_chars:
        raise ValueError("need max_chars >= 1 and 0 <= 2 * overlap_chars < max_chars")
    if not markdown.strip():
        return []
    headings = _Headings(markdown)
    windows = []
    for start, end in _chapters(markdown, headings, max_chars):
        for piece_start, piece_end in _window_spans(markdown, start, end, max_chars, overlap_chars):
            windows.append(Window(piece_start, piece_end, headings.path(piece_start, piece_end)))
    return windows


def _chapters(md: str, headings: _Headings, max_chars: int) -> list[tuple[int, int]]:
    """Chapter spans, split at level 1/2 headings. A tiny chapter is merged with the next when
    the result fits in max_chars or the next is windowed anyway (as is one of headings only,
    like a lone "# Part I"); a tiny last chapter joins the one before if that fits."""
    starts = [b.start for b in headings.blocks if 1 <= b.level <= 2 and b.start > 0]
    if starts and not md[: starts[0]].strip():
        starts.pop(0)  # nothing but whitespace before the first chapter
    bounds = [0, *starts, len(md)]
    tiny = max_chars * _TINY_CHAPTER_SHARE
    chapters, group = [], 0
    for cut, following in zip(bounds[1:-1], bounds[2:], strict=True):
        fits = following - group <= max_chars or following - cut > max_chars
        if (cut - group < tiny and fits) or headings.only_headings(group, cut):
            continue
        chapters.append((group, cut))
        group = cut
    if chapters and len(md) - group < tiny and len(md) - chapters[-1][0] <= max_chars:
        group = chapters.pop()[0]
    chapters.append((group, len(md)))
    return chapters


def _window_spans(
    md: str, start: int, end: int, max_chars: int, overlap: int
) -> Iterator[tuple[int, int]]:
    cur, prev_end = start, start
    while end - cur > max_chars:
        hi = cur + max_chars
        lo = max(cur + max_chars // 2, prev_end + 1)  # windows are at least half full
        cut = _best_cut(md, lo, hi, hi)
        cut = hi if cut is None else cut
        yield cur, cut
        prev_end = cut
        if overlap:
            lo = max(cur + 1, cut - 2 * overlap)
            nxt = _best_cut(md, lo, cut - 1, cut - overlap)
            cur = max(lo, cut - overlap) if nxt is None else nxt
        else:
            cur = cut
    yield cur, end


def split_window(markdown: str, window: Window) -> tuple[Window, Window]:
    """Halves of a window, cut at a paragraph break near the middle, else a sentence end,
    else whitespace, else the middle; both halves hold text. ValueError if it cannot be cut."""
    span = trimmed_span(markdown, window.start, window.end)
    if span is None or span[1] - span[0] < 2:
        raise ValueError(f"window {window.start}-{window.end} is too small to split")
    lo, hi = span  # a cut strictly inside the trimmed span leaves text on both sides
    mid, quarter = lo + (hi - lo) // 2, max(1, (hi - lo) // 4)
    cut = _cut(markdown, _PARAGRAPH_CUT, lo + quarter, hi - quarter, mid)
    if cut is None:
        cut = _cut(markdown, _SENTENCE_CUT, lo + quarter, hi - quarter, mid)
    if cut is None:
        cut = _cut(markdown, _SPACE_CUT, lo + 1, hi - 1, mid)
    if cut is None:
        cut = mid
    second = Window(cut, window.end, _Headings(markdown).path(cut, window.end))
    return Window(window.start, cut, window.heading_path), second


# --- prompt ---------------------------------------------------------------------------------


def load_prompt(document_type: str) -> str:
    """The chunking prompt template for a document type."""
    if document_type not in DOCUMENT_TYPES:
        raise ValueError(
            f"unknown document type {document_type!r}; valid types: {', '.join(DOCUMENT_TYPES)}"
        )
    folder = resources.files("doc_pipeline.prompts").joinpath("chunking", "v1")
    return folder.joinpath(f"{document_type}.md").read_text(encoding="utf-8")


def build_prompt(template: str, text: str) -> str:
    """The template with `text` in place of {text_block}, on lines between TEXT_START and
    TEXT_END. Markers inside the text are defused (see _DEFUSED), so the marker lines of the
    result are unique and the data block cannot be closed from inside."""
    if template.count(TEXT_PLACEHOLDER) != 1:
        raise ValueError(f"the template needs {TEXT_PLACEHOLDER} exactly once")
    if TEXT_START in template or TEXT_END in template:
        raise ValueError("the template must not contain the text markers itself")
    for marker, defused in _DEFUSED:
        text = text.replace(marker, defused)
    return template.replace(TEXT_PLACEHOLDER, f"{TEXT_START}\n{text}\n{TEXT_END}")


def _undefuse(text: str) -> str:
    for marker, defused in _DEFUSED:
        text = text.replace(defused, marker)
    return text


# --- answer ---------------------------------------------------------------------------------


def _unit_number(description: str) -> dict[str, Any]:
    return {"type": "number", "minimum": 0, "maximum": 1, "description": description}


def chunk_schema() -> dict:
    """JSON schema of the answer (for `response_json_schema`)."""
    item = {
        "type": "object",
        "properties": {
            "content": {
                "type": "string",
                "description": "The chunk's text copied verbatim from the source.",
            },
            "themes": {"type": "array", "items": {"type": "string"}, "minItems": 2, "maxItems": 5},
            "concepts": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string"},
                        "importance": _unit_number("How central the concept is to the chunk."),
                    },
                    "required": ["name", "importance"],
                },
            },
            "importance": _unit_number("How important the chunk is to the whole work."),
            "summary": {"type": "string"},
            "domain": {"type": "string"},
            "emotional_polarity": {"type": "number", "minimum": -1, "maximum": 1},
            "primary_emotion": {"type": "string"},
            "emotional_intensity": _unit_number("How strong the emotion is."),
        },
        "required": [
            "content",
            "themes",
            "concepts",
            "importance",
            "summary",
            "domain",
            "emotional_polarity",
            "primary_emotion",
            "emotional_intensity",
        ],
    }
    return {
        "type": "object",
        "properties": {"chunks": {"type": "array", "items": item}},
        "required": ["chunks"],
    }


class MalformedAnswer(ValueError):
    """The model's answer cannot be used as is."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        # "truncated" | "invalid_json" | "schema" | "empty" | "unanchored"
        self.reason = reason
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:  # pickles (e.g. across processes) keep the reason
        return type(self), (self.reason, self.detail)


class SafetyBlocked(RuntimeError):
    """The model refused a window (raised by the caller; the message names the chapter)."""


_FENCE = re.compile(r"\A\s*```[A-Za-z]*[ \t]*\n?(.*?)\n?\s*(?:```\s*)?\Z", re.S)
_NAME_CHARS, _SUMMARY_CHARS = 200, 1_000
_MAX_THEMES, _MAX_CONCEPTS = 5, 20
_SURROGATE = re.compile("[\ud800-\udfff]")  # a str holds them only unpaired (not UTF-8)
_RISKY_ESCAPE = re.compile(r"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")  # NUL, surrogates


def storable(text: str) -> str:
    """The text without NUL characters and with unpaired surrogates replaced (U+FFFD):
    Postgres refuses both in text and JSON, and a model's answer may hold them."""
    return _SURROGATE.sub("\ufffd", text.replace("\x00", ""))


def _storable_value(value: Any) -> Any:
    if isinstance(value, str):
        return storable(value)
    if isinstance(value, list):
        return [_storable_value(v) for v in value]
    if isinstance(value, dict):
        return {storable(k): _storable_value(v) for k, v in value.items()}
    return value


def clean_answer_text(text: str | None) -> str | None:
    """A model's answer text made safe to store and parse: NUL characters and unpaired
    surrogates go (`storable`), also those the JSON only escapes, which parsing would bring
    back: a JSON answer (fenced or not) is written again with its strings cleaned. Anything
    else (a truncated answer, prose) keeps its text, cleaned as it is."""
    if text is None:
        return None
    text = storable(text)
    if not _RISKY_ESCAPE.search(text):
        return text  # the common case: kept verbatim
    fenced = _FENCE.match(text)
    try:
        value = json.loads(fenced.group(1) if fenced else text)
        return json.dumps(_storable_value(value), ensure_ascii=False)
    except (ValueError, RecursionError):
        return text


def parse_answer(text: str | None, finish_reason: str | None) -> list[dict]:
    """The chunk items of an answer, metadata clamped and cleaned; MalformedAnswer otherwise."""
    if str(finish_reason or "").upper().endswith("MAX_TOKENS"):
        raise MalformedAnswer("truncated", "the answer hit the output token limit")
    if not isinstance(text, str) or not text.strip():
        raise MalformedAnswer("empty", "no answer text")
    if fenced := _FENCE.match(text):
        text = fenced.group(1)
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as problem:
        raise MalformedAnswer("invalid_json", str(problem)[:200]) from None
    chunks = value.get("chunks") if isinstance(value, dict) else None
    if not isinstance(chunks, list):
        raise MalformedAnswer("schema", "no list of chunks")
    if not all(isinstance(c, dict) and isinstance(c.get("content"), str) for c in chunks):
        raise MalformedAnswer("schema", "a chunk without string content")
    items = [_clean_item(c) for c in chunks if c["content"].strip()]
    if not items:
        raise MalformedAnswer("empty", "no chunks")
    return items


def _number(value: Any, low: float, high: float) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    value = float(value)
    return min(max(value, low), high) if math.isfinite(value) else None


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
            concepts.append({"name": name, "importance": _number(concept.get("importance"), 0, 1)})
    return concepts[:_MAX_CONCEPTS]


def _clean_item(item: dict) -> dict:
    """Known keys only, each of the right type and range (None when unusable)."""
    return {
        "content": item["content"],
        "themes": _strings(item.get("themes"), _NAME_CHARS, _MAX_THEMES),
        "concepts": _concepts(item.get("concepts")),
        "importance": _number(item.get("importance"), 0, 1),
        "summary": _string(item.get("summary"), _SUMMARY_CHARS),
        "domain": _string(item.get("domain"), _NAME_CHARS),
        "emotional_polarity": _number(item.get("emotional_polarity"), -1, 1),
        "primary_emotion": _string(item.get("primary_emotion"), _NAME_CHARS),
        "emotional_intensity": _number(item.get("emotional_intensity"), 0, 1),
    }


# --- anchoring ------------------------------------------------------------------------------


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
        content = _undefuse(str(item.get("content", ""))).strip()
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


# --- assembly -------------------------------------------------------------------------------


def assemble_chunks(
    markdown: str, anchored: list[AnchoredChunk], *, max_words: int = 1_500
) -> list[tuple[TextChunk, dict]]:
    """Chunks partitioning the markdown, cut where the anchors start.

    Overlapping anchors (from overlapping windows) are de-duplicated: the one starting first
    wins, on the same start the longer. Each chunk runs to the next chunk's start, so text the
    model skipped joins the chunk before it (text before the first anchor, the first chunk).
    A chunk of headings only joins the chunk after it. Spans are trimmed of surrounding
    whitespace and cut at word starts, so every word lands in exactly one chunk; a span over
    max_words is split by chunking.chunk_markdown, each piece keeping the metadata. Sizes are
    in the document's measure (words, or letters without spaces); a no-space document with a
    long spaced passage may exceed max_words there (chunk_markdown sizes each span by itself).
    """
    if max_words < 1:
        raise ValueError("max_words must be at least 1")
    if not markdown.strip():
        return []
    no_space = is_no_space(markdown)
    measure = count_alnum if no_space else count_tokens
    headings = _Headings(markdown)
    config = ChunkingConfig(
        min_words=max_words // 3,
        max_words=max_words,
        min_chars_no_spaces=max_words // 3,
        max_chars_no_spaces=max_words,
    )
    chunks: list[tuple[TextChunk, dict]] = []
    for start, end, metadata in _spans(markdown, anchored, headings, no_space):
        text = markdown[start:end]
        if measure(text) <= max_words:
            pieces = [(start, end)]
        else:
            pieces = [(start + c.start, start + c.end) for c in chunk_markdown(text, config)]
        for piece_start, piece_end in pieces:
            content = markdown[piece_start:piece_end]
            chunk = TextChunk(
                index=len(chunks),
                content=content,
                start=piece_start,
                end=piece_end,
                heading_path=headings.path(piece_start, piece_end),
                word_count=measure(content),
                char_count=len(content),
            )
            chunks.append((chunk, dict(metadata)))
    return chunks


def _spans(
    md: str, anchored: list[AnchoredChunk], headings: _Headings, no_space: bool
) -> Iterator[tuple[int, int, dict]]:
    """Trimmed spans partitioning md, with the metadata of the anchor that opens each."""
    cuts: list[tuple[int, dict]] = []  # (start, metadata) of each kept anchor
    kept_end = -1
    for anchor in _deduplicated(md, anchored, no_space):
        if anchor.start >= kept_end:
            cuts.append((anchor.start, anchor.metadata))
            kept_end = anchor.end
    if not cuts:
        cuts = [(0, {})]
    cuts[0] = (0, cuts[0][1])  # text before the first anchor joins the first chunk
    bounds = [start for start, _ in cuts] + [len(md)]
    merged: list[tuple[int, int, dict]] = []
    for (start, metadata), end in zip(cuts, bounds[1:], strict=True):
        if merged and headings.only_headings(merged[-1][0], merged[-1][1]):
            merged[-1] = (merged[-1][0], end, metadata)  # a heading opens what follows
        else:
            merged.append((start, end, metadata))
    for start, end, metadata in merged:
        if span := trimmed_span(md, start, end):
            yield span[0], span[1], metadata


def _deduplicated(md: str, anchored: list[AnchoredChunk], no_space: bool) -> list[AnchoredChunk]:
    """Anchors inside the text, started at a word start, sorted by start then longest first."""
    clean = []
    for anchor in anchored:
        start, end = max(0, anchor.start), min(len(md), anchor.end)
        while not no_space and 0 < start < end and not md[start - 1].isspace():
            start -= 1  # never cut inside a word
        if start < end:
            clean.append(AnchoredChunk(start, end, anchor.metadata))
    return sorted(clean, key=lambda a: (a.start, -a.end))
