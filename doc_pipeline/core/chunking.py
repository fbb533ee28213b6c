"""Structural chunker for markdown books.

The markdown is cut into blocks (ATX headings, and blank-line separated paragraphs; a fenced
code block is kept whole even across blank lines). Blocks larger than the maximum are cut into
sentences, and sentences still too large into runs of words (or characters, for text without
spaces). The resulting units are then packed:

1. Sections start at every heading of level <= 2. A section smaller than the minimum is merged
   with the next one when the result fits in the maximum, when the next section is too big
   anyway (it will be split, the small one becomes the head of its first chunk), or when it has
   no body text (a lone "# Part I" heading). Otherwise it stays a chunk of its own, and the
   same holds for a short section at the end of the document.
2. Each merged group of sections is cut into ceil(size / max) chunks of balanced size, choosing
   cut points near the balanced target and preferring headings > paragraph breaks > sentence
   breaks > word/character breaks. A heading is not left as the last unit of a chunk (unless
   it and the unit after it cannot fit together).

A chunk's heading path is the heading stack after the headings that open it, so a chunk
starting "# Part I" / "## Chapter 1" gets ("Part I", "Chapter 1").

Sizes are word counts, or, for documents written without spaces (Chinese, Japanese, Thai),
letter counts. The mode is decided once per document (see `is_no_space`): a mostly-English
book with a quoted Chinese passage is sized in words, a Chinese book with English terms in
letters. A chunk's `word_count` is measured in the document's mode.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from itertools import pairwise


@dataclass(frozen=True)
class TextChunk:
    index: int  # 0-based position in the document
    content: str  # == markdown[start:end]
    start: int  # offsets into the markdown string (Python str indices)
    end: int
    heading_path: tuple[str, ...]  # enclosing headings at the chunk's start
    word_count: int  # words, or letters for documents without spaces
    char_count: int


@dataclass(frozen=True)
class ChunkingConfig:
    min_words: int = 500
    max_words: int = 1200
    # for text without spaces (CJK), size by characters instead:
    min_chars_no_spaces: int = 800
    max_chars_no_spaces: int = 2000

    def __post_init__(self) -> None:
        for low, high in (
            (self.min_words, self.max_words),
            (self.min_chars_no_spaces, self.max_chars_no_spaces),
        ):
            if high < 1 or not 0 <= low <= high:
                raise ValueError(f"chunk limits need 0 <= min <= max and max >= 1: {self}")


_DEFAULT_CONFIG = ChunkingConfig()

# --- counting -------------------------------------------------------------------------------

# `[^\W_]` is exactly str.isalnum(): letters and digits of any script.
_NOT_ALNUM_RE = re.compile(r"[\W_]+")
_ALNUM_RE = re.compile(r"[^\W_]")
# One match per whitespace-separated token that holds a letter or digit; the lookbehind pins
# matches to token starts, so the scan stays linear even for long tokens without letters.
_WORD_RE = re.compile(r"(?<!\S)\S*?[^\W_]")
# Scripts written without spaces between words (Hangul is written with spaces, so left out).
_NOT_CJK_RE = re.compile(
    r"[^\u3040-\u30ff\u31f0-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff66-\uff9f"
    r"\U00020000-\U0003134f]+"
)
_CJK_SHARE = 0.3  # CJK letters / all letters above which a text counts as "no spaces"
_LETTERS_PER_WORD = 12  # ... or more letters per token than any spaced language averages


def count_tokens(text: str) -> int:
    return len(_WORD_RE.findall(text))


def count_alnum(text: str) -> int:
    return len(_NOT_ALNUM_RE.sub("", text))


def is_no_space(text: str) -> bool:
    """True for text written (almost) without spaces, sized by letters rather than words."""
    letters = count_alnum(text)
    if letters == 0:
        return False
    cjk = len(_NOT_CJK_RE.sub("", text))
    return cjk >= _CJK_SHARE * letters or letters > _LETTERS_PER_WORD * count_tokens(text)


def count_words(text: str) -> int:
    """Whitespace-separated tokens holding a letter or digit; letters and digits for text
    written without spaces (decided on `text` as a whole)."""
    return count_alnum(text) if is_no_space(text) else count_tokens(text)


# --- blocks ---------------------------------------------------------------------------------

_ATX_RE = re.compile(r" {0,3}(#{1,6})(?=[ \t\r]|$)(.*)")
_FENCE_RE = re.compile(r" {0,3}(`{3,}|~{3,})(.*)")
_CLOSING_HASHES_RE = re.compile(r"(?:^|\s)#+\s*$")
_ATTRIBUTES_RE = re.compile(r"\s*\{[#.][^}]*\}\s*$")  # pandoc-style "{#id .class}"
_LINK_RE = re.compile(r"!?\[([^\]]*)\]\([^)]*\)")
_EMPHASIS_RE = re.compile(r"\*+|~~|(?<!\w)_+|_+(?!\w)")
_SPACES_RE = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class Block:
    start: int
    end: int
    level: int  # heading level 1..6, 0 for a paragraph
    title: str


def _heading_title(raw: str) -> str:
    text = _CLOSING_HASHES_RE.sub("", raw.strip())
    text = _ATTRIBUTES_RE.sub("", text)
    text = _LINK_RE.sub(r"\1", text)
    text = _EMPHASIS_RE.sub("", text)
    return _SPACES_RE.sub(" ", text).strip()


def _fence_opener(line: str) -> tuple[str, int] | None:
    match = _FENCE_RE.match(line)
    if not match:
        return None
    marker = match.group(1)
    if marker[0] == "`" and "`" in match.group(2):
        return None  # inline code at the start of a line, not a fence
    return marker[0], len(marker)


def _closes_fence(line: str, fence: tuple[str, int]) -> bool:
    match = _FENCE_RE.match(line)
    if not match or match.group(2).strip():
        return False
    marker = match.group(1)
    return marker[0] == fence[0] and len(marker) >= fence[1]


def trimmed_span(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The span with surrounding whitespace removed, or None if nothing is left."""
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return None
    lead = len(piece) - len(piece.lstrip())
    return start + lead, start + lead + len(stripped)


def scan_blocks(md: str) -> list[Block]:
    """Headings and blank-line separated paragraphs, with trimmed spans, in order."""
    blocks: list[Block] = []
    para: list[int] | None = None  # trimmed [start, end] of the open paragraph
    fence: tuple[str, int] | None = None
    pos = 0
    for line in md.split("\n"):
        # spans are trimmed from each line's own whitespace: no substring of md is built
        stripped = line.strip()
        start = pos + len(line) - len(line.lstrip())
        end = start + len(stripped)
        if fence is not None and para is not None:  # inside a fence nothing else is markdown
            para[1] = end if stripped else para[1]
            if _closes_fence(line, fence):
                fence = None
        elif not stripped:
            _close(blocks, para)
            para = None
        elif stripped[0] == "#" and (heading := _ATX_RE.match(line)):
            _close(blocks, para)
            para = None
            title = _heading_title(heading.group(2))
            blocks.append(Block(start, end, len(heading.group(1)), title))
        else:
            if para is None:
                para = [start, end]
            para[1] = end
            fence = _fence_opener(line) if stripped[0] in "`~" else None
        pos += len(line) + 1
    _close(blocks, para)
    return blocks


def _close(blocks: list[Block], para: list[int] | None) -> None:
    if para is not None:
        blocks.append(Block(para[0], para[1], 0, ""))


# --- units ----------------------------------------------------------------------------------

# Kinds of break before a unit, best first; cost of cutting there, as a fraction of the limit.
_MAJOR, _MINOR, _PARAGRAPH, _SENTENCE, _WORD = range(5)
_CUT_COST = {_MAJOR: -0.15, _MINOR: -0.08, _PARAGRAPH: 0.0, _SENTENCE: 0.1, _WORD: 1.0}
# 1.0 makes word/character cuts a last resort: no distance from the target costs as much.
_WORD_RUNS_PER_LIMIT = 50  # granularity of word/character runs when a sentence is too big

# Sentence ends: . ! ? 。！？ (and closing quotes/brackets) before whitespace or the end. In
# text without spaces the full-width marks end a sentence whatever follows, as CJK puts no
# space after them; in spaced text a cut must stay at whitespace so that no word is broken.
_CLOSERS = "\"'\u201d\u2019\u00bb\u300d\u300f\uff09)\\]*_"
_SPACED_SENTENCE_END_RE = re.compile(rf"[.!?\u3002\uff01\uff1f]+[{_CLOSERS}]*(?=\s|$)")
_UNSPACED_SENTENCE_END_RE = re.compile(
    rf"[.!?]+[{_CLOSERS}]*(?=\s|$)|[\u3002\uff01\uff1f]+[{_CLOSERS}]*"
)
_TOKEN_RE = re.compile(r"\S+")

Measure = Callable[[str], int]


@dataclass(frozen=True, slots=True)
class _Mode:
    """How a document is sized: in words, or in letters for text without spaces."""

    measure: Measure
    sentence_end: re.Pattern[str]
    low: int
    limit: int


def _mode(markdown: str, config: ChunkingConfig) -> _Mode:
    if is_no_space(markdown):
        return _Mode(
            count_alnum,
            _UNSPACED_SENTENCE_END_RE,
            config.min_chars_no_spaces,
            config.max_chars_no_spaces,
        )
    return _Mode(count_tokens, _SPACED_SENTENCE_END_RE, config.min_words, config.max_words)


@dataclass(frozen=True, slots=True)
class _Unit:
    start: int
    end: int
    size: int
    brk: int  # kind of break before this unit
    heading: bool  # a whole heading line: never ends a chunk
    path: tuple[str, ...]  # heading stack at this unit, including the unit if a heading


def _sentences(md: str, start: int, end: int, mode: _Mode) -> Iterator[tuple[int, int]]:
    cur = start
    for match in mode.sentence_end.finditer(md, start, end):
        if span := trimmed_span(md, cur, match.end()):
            yield span
        cur = match.end()
    if span := trimmed_span(md, cur, end):
        yield span


def _char_runs(md: str, start: int, end: int, run: int) -> Iterator[tuple[int, int, int]]:
    """Cut one token into pieces of `run` letters (text without spaces)."""
    cuts, count = [start], 0
    for match in _ALNUM_RE.finditer(md, start, end):
        if count == run:
            cuts.append(match.start())
            count = 0
        count += 1
    cuts.append(end)
    for i in range(len(cuts) - 1):
        yield cuts[i], cuts[i + 1], run if i < len(cuts) - 2 else count


def _word_runs(
    md: str, start: int, end: int, run: int, measure: Measure
) -> Iterator[tuple[int, int, int]]:
    """Cut a sentence into runs of at most `run` size at whitespace, or inside tokens bigger
    than that (only possible for letter-sized text)."""
    cur: list[int] | None = None  # [start, end, size] of the open run
    for match in _TOKEN_RE.finditer(md, start, end):
        size = measure(match.group())
        if cur is not None and cur[2] + size > run:
            yield cur[0], cur[1], cur[2]
            cur = None
        if size > run:
            yield from _char_runs(md, match.start(), match.end(), run)
        elif cur is None:
            cur = [match.start(), match.end(), size]
        else:
            cur[1], cur[2] = match.end(), cur[2] + size
    if cur is not None:
        yield cur[0], cur[1], cur[2]


def _split_block(
    md: str, block: Block, brk: int, path: tuple[str, ...], mode: _Mode
) -> Iterator[_Unit]:
    """Units of a block bigger than the limit: sentences, or runs of words for long ones."""
    run = max(1, mode.limit // _WORD_RUNS_PER_LIMIT)
    for start, end in _sentences(md, block.start, block.end, mode):
        size = mode.measure(md[start:end])
        if size <= mode.limit:
            yield _Unit(start, end, size, brk, False, path)
        else:
            pieces = _word_runs(md, start, end, run, mode.measure)
            for piece_start, piece_end, piece_size in pieces:
                yield _Unit(piece_start, piece_end, piece_size, brk, False, path)
                brk = _WORD
        brk = _SENTENCE


def _units(md: str, blocks: list[Block], mode: _Mode) -> list[_Unit]:
    units: list[_Unit] = []
    stack: list[tuple[int, str]] = []  # (level, title) of the enclosing headings
    path: tuple[str, ...] = ()
    for block in blocks:
        if block.level:
            while stack and stack[-1][0] >= block.level:
                stack.pop()
            if block.title:  # an empty heading closes deeper ones but names nothing
                stack.append((block.level, block.title))
            path = tuple(title for _, title in stack)
        brk = _PARAGRAPH if not block.level else _MAJOR if block.level <= 2 else _MINOR
        size = mode.measure(md[block.start : block.end])
        if size <= mode.limit:
            units.append(_Unit(block.start, block.end, size, brk, bool(block.level), path))
        else:  # only a paragraph (or an absurd heading) alone over the limit is split
            units.extend(_split_block(md, block, brk, path, mode))
    return units


# --- packing --------------------------------------------------------------------------------


def _groups(units: list[_Unit], low: int, limit: int) -> Iterator[tuple[int, int]]:
    """Unit ranges of sections (split at level <= 2 headings), small ones merged forward."""
    starts = [i for i, unit in enumerate(units) if i == 0 or unit.brk == _MAJOR]
    starts.append(len(units))
    cur_start, cur_size, cur_body = 0, 0, 0
    for sec_start, sec_end in pairwise(starts):
        size = sum(units[i].size for i in range(sec_start, sec_end))
        body = sum(units[i].size for i in range(sec_start, sec_end) if not units[i].heading)
        if sec_start > 0 and not (
            cur_size < low and (cur_body == 0 or cur_size + size <= limit or size > limit)
        ):
            yield cur_start, sec_start
            cur_start, cur_size, cur_body = sec_start, 0, 0
        cur_size += size
        cur_body += body
    if units:
        yield cur_start, len(units)


def _best_cut(units: list[_Unit], i: int, end: int, limit: int, target: float) -> tuple[int, int]:
    """Where to end the chunk starting at unit i: (index after its last unit, its size)."""
    best: tuple[float, int, int] | None = None
    size, j = 0, i
    while j < end and size + units[j].size <= limit:
        size += units[j].size
        j += 1
        if j < end and not units[j - 1].heading:
            score = abs(size - target) + _CUT_COST[units[j].brk] * limit
            if best is None or score < best[0]:
                best = (score, j, size)
    if best is not None:
        return best[1], best[2]
    if j == i:  # cannot happen (units fit the limit), but never loop forever
        return i + 1, units[i].size
    return j, size  # only headings fit: a chunk of headings is all we can do


def _pack(units: list[_Unit], start: int, end: int, limit: int) -> Iterator[tuple[int, int]]:
    """Cut units[start:end] into balanced chunks of at most `limit`."""
    remaining = sum(units[i].size for i in range(start, end))
    i = start
    while i < end:
        if remaining <= limit:
            yield i, end
            return
        target = remaining / math.ceil(remaining / limit)
        j, size = _best_cut(units, i, end, limit, target)
        yield i, j
        remaining -= size
        i = j


def _chunk_path(units: list[_Unit], i: int, j: int) -> tuple[str, ...]:
    """Heading path after the headings that open the chunk."""
    for k in range(i, j):
        if not units[k].heading:
            return units[k].path
    return units[j - 1].path


def chunk_markdown(markdown: str, config: ChunkingConfig = _DEFAULT_CONFIG) -> list[TextChunk]:
    """Split a markdown book into contiguous chunks along headings and paragraphs."""
    if not markdown.strip():
        return []
    mode = _mode(markdown, config)
    units = _units(markdown, scan_blocks(markdown), mode)
    chunks: list[TextChunk] = []
    for group_start, group_end in _groups(units, mode.low, mode.limit):
        for i, j in _pack(units, group_start, group_end, mode.limit):
            start, end = units[i].start, units[j - 1].end
            content = markdown[start:end]
            chunks.append(
                TextChunk(
                    index=len(chunks),
                    content=content,
                    start=start,
                    end=end,
                    heading_path=_chunk_path(units, i, j),
                    word_count=mode.measure(content),
                    char_count=len(content),
                )
            )
    return chunks
