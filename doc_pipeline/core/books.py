"""What a reader makes of a book file, whatever its format, and the one error it raises."""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from dataclasses import dataclass


class InvalidBookError(Exception):
    """The file is not a readable book. str(err) names the file and the problem, e.g.
    "bad-truncated-zip.epub: not a valid ZIP archive (truncated or corrupt: no central
    directory)"."""


@dataclass(frozen=True)
class ExtractedBook:
    title: str
    author: str | None
    language: str | None
    markdown: str  # the whole book as markdown
    chapter_count: int  # table-of-contents headings emitted (non-empty documents if no TOC)
    warnings: tuple[str, ...]  # human-readable notes about anything skipped
    markup_errors: int = 0  # parser errors recovered from in malformed XHTML
    # Paged formats (PDF): (offset in the markdown, page number from 1) where each page's text
    # begins, in offset order; empty for a reflowable book.
    page_starts: tuple[tuple[int, int], ...] = ()
    pages: int = 0  # pages in the file (0: a reflowable book)


class PageIndex:
    """Which pages a span of a paged book's markdown covers, from its `page_starts` (built
    once per book: a span is a bisection)."""

    def __init__(self, page_starts: Sequence[Sequence[int]]) -> None:
        self._pages = [page for _, page in page_starts]
        self._offsets = [offset for offset, _ in page_starts]

    def span(self, start: int, end: int) -> tuple[int, int] | None:
        """The first and last page of the markdown span [start, end), or None for a book
        without pages."""
        if not self._pages:
            return None
        return self._page_at(start), self._page_at(max(end - 1, start))

    def _page_at(self, offset: int) -> int:
        return self._pages[max(bisect.bisect_right(self._offsets, offset) - 1, 0)]
