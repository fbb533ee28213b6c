"""Windows: the pieces of a book's markdown that are sent to a model, one request each.

One window per chapter (a level 1 or 2 heading), tiny chapters merged with the next, a long
chapter cut into overlapping windows at paragraph breaks where possible. A window whose answer
is unusable can be halved. Sizes are characters (what a request costs).
"""

from __future__ import annotations

import re
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass

from doc_pipeline.core.chunking import scan_blocks, trimmed_span

_TINY_CHAPTER_SHARE = 0.1  # chapters under this share of max_chars merge with the next one


class HeadingPaths:
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
    headings = HeadingPaths(markdown)
    windows = []
    for start, end in _chapters(markdown, headings, max_chars):
        for piece_start, piece_end in _window_spans(markdown, start, end, max_chars, overlap_chars):
            windows.append(Window(piece_start, piece_end, headings.path(piece_start, piece_end)))
    return windows


def _chapters(md: str, headings: HeadingPaths, max_chars: int) -> list[tuple[int, int]]:
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
    second = Window(cut, window.end, HeadingPaths(markdown).path(cut, window.end))
    return Window(window.start, cut, window.heading_path), second
