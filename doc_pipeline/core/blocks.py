"""Numbered blocks of a window: what a v2 chunking prompt shows the model, and what its answer
points at.

A block is a heading, a paragraph, a list item, or a sentence of a very long paragraph; each
starts with a mark `[B<n>]` in the prompt, numbered from 1. The model answers with the number
of the block each chunk starts with, so the chunks' text is cut from the markdown by block
boundaries and nothing can be lost, invented or paraphrased. The marks are only in the prompt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from doc_pipeline.core.chunking import scan_blocks
from doc_pipeline.core.windows import Window

LONG_PARAGRAPH_WORDS = 200  # a paragraph longer than this is numbered sentence by sentence
_LIST_ITEM = re.compile(r"^[ \t]*(?:[-*+]|\d{1,9}[.)])[ \t]+", re.M)
# After a sentence end (with closing quotes or brackets), where the next sentence starts.
_SENTENCE_START = re.compile(
    r"(?<=[.!?\u2026])[\"'\u201d\u2019\u00bb)\]*_]*\s+(?=\S)|(?<=[\u3002\uff01\uff1f])(?=\S)"
)


def mark(number: int) -> str:
    return f"[B{number}]"


@dataclass(frozen=True)
class NumberedText:
    """A window's text with a mark before each block, and where block n starts in the
    markdown (`starts[n - 1]`)."""

    text: str
    starts: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.starts)


def _sentence_starts(text: str, start: int, end: int) -> list[int]:
    return [start, *(m.end() for m in _SENTENCE_START.finditer(text, start, end))]


def block_starts(text: str) -> list[int]:
    """Offsets into `text` where its blocks start, in order."""
    starts: list[int] = []
    for block in scan_blocks(text):
        if block.level:
            starts.append(block.start)
            continue
        items = [block.start]
        items += [m.start() for m in _LIST_ITEM.finditer(text, block.start, block.end)]
        items = sorted(set(items))
        for item_start, item_end in zip(items, [*items[1:], block.end], strict=True):
            if len(text[item_start:item_end].split()) > LONG_PARAGRAPH_WORDS or (
                " " not in text[item_start:item_end] and item_end - item_start > 600
            ):
                starts += _sentence_starts(text, item_start, item_end)
            else:
                starts.append(item_start)
    return sorted(set(starts))


def numbered_blocks(markdown: str, window: Window) -> NumberedText:
    """The window's text with `[B<n>] ` before each block."""
    text = markdown[window.start : window.end]
    starts = block_starts(text)
    pieces, previous = [], 0
    for number, start in enumerate(starts, start=1):
        pieces += [text[previous:start], mark(number), " "]
        previous = start
    pieces.append(text[previous:])
    return NumberedText("".join(pieces), tuple(window.start + s for s in starts))
