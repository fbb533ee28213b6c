"""Pages without a text layer (scans) transcribed by a model: which page ranges to ask for,
what an answer must be, and the halving of a range whose answer is unusable. Pure: the model
is a function (`ask`) given by the provider, which sends one request through the AI ledger.

A range is sent as a PDF of its own pages only (never the whole file), cut locally; the pages
are counted here, never by the model: an answer must hold exactly one text per page. Ranges go
out concurrently; the texts come back in page order, whatever order the answers arrive in.
"""

from __future__ import annotations

import functools
import io
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pypdf

from doc_pipeline.core.failures import KnownFailure
from doc_pipeline.core.model_text import (
    BLOCKED_FINISH_REASONS,
    MalformedAnswer,
    answer_json,
    storable,
)
from doc_pipeline.core.parallel import BoundedRequests

PROMPT_VERSION = "transcription-v1"
MAX_PAGE_CHARS = 40_000  # a dense page holds about 5,000 characters; more is not a page


@functools.cache
def _template() -> str:
    folder = resources.files("doc_pipeline.prompts").joinpath("transcription", "v1")
    return folder.joinpath("pages.md").read_text(encoding="utf-8")


class TranscriptionFailed(KnownFailure, RuntimeError):
    """A page's transcription stayed unusable, even asked for alone."""


@dataclass(frozen=True)
class PageRange:
    first: int  # page numbers from 1, inclusive
    last: int
    pdf: bytes  # a PDF of exactly these pages

    @property
    def pages(self) -> int:
        return self.last - self.first + 1

    @property
    def prompt(self) -> str:
        return _template().format(pages=self.pages, first=self.first, last=self.last)

    @property
    def schema(self) -> dict[str, Any]:
        return {
            "type": "object",
            "properties": {
                "pages": {
                    "type": "array",
                    "items": {"type": "string"},
                    "minItems": self.pages,
                    "maxItems": self.pages,
                }
            },
            "required": ["pages"],
        }


@dataclass(frozen=True)
class Transcriber:
    """The model, as the PDF reader uses it: `ask(range)` sends one range (through the
    ledger) and returns its answer {"text", "finish_reason"}."""

    ask: Callable[[PageRange], Mapping[str, Any]]
    model: str
    max_concurrent: int = 8
    pages_per_request: int = 4


def page_ranges(pages: Sequence[int], per_request: int) -> list[tuple[int, int]]:
    """Runs of consecutive pages, each at most `per_request` long."""
    ranges: list[tuple[int, int]] = []
    for page in sorted(pages):
        if ranges and page == ranges[-1][1] + 1 and page - ranges[-1][0] < per_request:
            ranges[-1] = (ranges[-1][0], page)
        else:
            ranges.append((page, page))
    return ranges


class PageCutter:
    """PDFs of page ranges of one file, byte for byte the same each time (the ledger keys the
    request by them): page objects copied as they are, nothing decoded, no timestamp. The file
    is parsed once; the concurrent requests' threads take turns at it (pypdf reads lazily from
    one open file)."""

    def __init__(self, path: Path) -> None:
        self._reader = pypdf.PdfReader(path, strict=False)
        self._lock = threading.Lock()

    def cut(self, first: int, last: int) -> bytes:
        """A PDF of pages first..last."""
        writer = pypdf.PdfWriter()
        buffer = io.BytesIO()
        with self._lock:
            for index in range(first - 1, last):
                writer.add_page(self._reader.pages[index])
            writer.write(buffer)
        return buffer.getvalue()


def parse_transcription(answer: Mapping[str, Any], pages: int) -> list[str]:
    """One text per page, cleaned; MalformedAnswer when the answer is not exactly that."""
    finish_reason = answer.get("finish_reason")
    if finish_reason in BLOCKED_FINISH_REASONS:
        raise MalformedAnswer("blocked", f"the model refused ({finish_reason})")
    value = answer_json(answer.get("text"), finish_reason)
    texts = value.get("pages") if isinstance(value, dict) else None
    if not isinstance(texts, list) or not all(isinstance(t, str) for t in texts):
        raise MalformedAnswer("schema", "no `pages` array of strings")
    if len(texts) != pages:
        raise MalformedAnswer("schema", f"{len(texts)} page texts for {pages} pages")
    if any(len(t) > MAX_PAGE_CHARS for t in texts):
        raise MalformedAnswer("schema", f"a page text over {MAX_PAGE_CHARS:,} characters")
    return [storable(text).strip() for text in texts]


def transcribe(path: Path, pages: Sequence[int], model: Transcriber) -> dict[int, str]:
    """The text of each page in `pages`, asked for in ranges; a range whose answer is unusable
    is asked again in two halves, down to single pages."""
    texts: dict[int, str] = {}
    cutter = PageCutter(path)

    def ask(first: int, last: int) -> Mapping[str, Any]:
        return model.ask(PageRange(first, last, cutter.cut(first, last)))

    with BoundedRequests[tuple[int, int]](model.max_concurrent, name="transcription") as pending:
        for first, last in page_ranges(pages, model.pages_per_request):
            pending.submit((first, last), ask, first, last)
        for (first, last), answer in pending.completed():
            try:
                found = parse_transcription(answer, last - first + 1)
            except MalformedAnswer as problem:
                if first == last:
                    pending.fail(
                        TranscriptionFailed(f"unusable transcription of page {first} ({problem})")
                    )
                    continue
                middle = (first + last) // 2
                pending.submit((first, middle), ask, first, middle, ahead=True)
                pending.submit((middle + 1, last), ask, middle + 1, last, ahead=True)
                continue
            texts.update(zip(range(first, last + 1), found, strict=True))
    return dict(sorted(texts.items()))
