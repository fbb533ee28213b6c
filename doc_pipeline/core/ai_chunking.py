"""AI semantic chunking as a plan: which requests, and what each answer means.

The plan is pure. It says which windows of the markdown to ask about (`ChunkingPlan.requests`)
and judges each answer (`ChunkingPlan.judge`): accept its anchored chunks, ask again for the
two halves of the window (an unusable answer, at most `max_splits` times), or refuse the
document (the model blocked it, or its answers stayed unusable). The provider only sends one
request and returns its answer; `chunk_with_model` drives the plan one request after another,
and `ChunkingPlan.assemble` cuts the chunks from the markdown, so that no text is lost and
none is invented, whatever the model returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any

from doc_pipeline.core.chunk_answers import AnchoredChunk, anchor_chunks, parse_answer
from doc_pipeline.core.chunking import (
    ChunkingConfig,
    TextChunk,
    chunk_markdown,
    count_alnum,
    count_tokens,
    is_no_space,
    trimmed_span,
)
from doc_pipeline.core.failures import KnownFailure
from doc_pipeline.core.model_text import BLOCKED_FINISH_REASONS, MalformedAnswer, build_prompt
from doc_pipeline.core.windows import HeadingPaths, Window, chapter_windows, split_window

PROMPT_VERSION = "chunking-v1"
DOCUMENT_TYPES = ("fiction", "non-fiction", "academic", "technical", "essay")
_MIN_SPLIT_CHARS = 200  # a window this small is not halved again
logger = logging.getLogger(__name__)


class SafetyBlocked(KnownFailure, RuntimeError):
    """The model refused a window; the message names the chapter."""


class ChunkingFailed(KnownFailure, RuntimeError):
    """A window's answer stayed unusable after splitting it as far as allowed."""


def load_prompt(document_type: str) -> str:
    """The chunking prompt template for a document type."""
    if document_type not in DOCUMENT_TYPES:
        raise ValueError(
            f"unknown document type {document_type!r}; valid types: {', '.join(DOCUMENT_TYPES)}"
        )
    folder = resources.files("doc_pipeline.prompts").joinpath("chunking", "v1")
    return folder.joinpath(f"{document_type}.md").read_text(encoding="utf-8")


# --- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowRequest:
    """One request of the plan: a window's prompt, and how often its text was halved."""

    window: Window
    prompt: str
    depth: int = 0

    @property
    def chapter(self) -> str:
        """The window's place in the book, for messages."""
        return " › ".join(self.window.heading_path) or f"text at offset {self.window.start}"


@dataclass(frozen=True)
class Accepted:
    anchors: tuple[AnchoredChunk, ...]
    refused: int  # chunk texts of the answer that are not in the source
    items: int  # chunks in the answer


@dataclass(frozen=True)
class AskAgain:
    """The answer is unusable: ask for each half of the window instead."""

    halves: tuple[WindowRequest, WindowRequest]
    problem: MalformedAnswer
    refused: int = 0  # as in Accepted: an answer none of whose texts is found is unusable
    items: int = 0


@dataclass(frozen=True)
class Refused:
    """The document cannot be chunked: the step fails with this error."""

    error: KnownFailure


Verdict = Accepted | AskAgain | Refused


class ChunkingPlan:
    """The requests that chunk one markdown text, and the meaning of their answers."""

    def __init__(
        self,
        markdown: str,
        template: str,
        *,
        window_chars: int = 24_000,
        overlap_chars: int = 1_500,
        max_splits: int = 4,
        max_chunk_words: int = 1_500,
    ) -> None:
        self.markdown = markdown
        self.template = template
        self.max_splits = max_splits
        self.max_chunk_words = max_chunk_words
        self.windows = chapter_windows(
            markdown, max_chars=window_chars, overlap_chars=overlap_chars
        )

    def requests(self) -> list[WindowRequest]:
        """The first request of each window, in the markdown's order."""
        return [self._request(window, 0) for window in self.windows]

    def _request(self, window: Window, depth: int) -> WindowRequest:
        text = self.markdown[window.start : window.end]
        return WindowRequest(window, build_prompt(self.template, text), depth)

    def judge(self, request: WindowRequest, answer: Mapping[str, Any]) -> Verdict:
        """What the answer ({"text", "finish_reason"}) to the request means."""
        finish_reason = answer.get("finish_reason")
        if finish_reason in BLOCKED_FINISH_REASONS:
            message = f"the model refused to chunk {request.chapter!r} ({finish_reason})"
            return Refused(SafetyBlocked(message))
        refused = items = 0
        try:
            parsed = parse_answer(answer.get("text"), finish_reason)
            items = len(parsed)
            anchored, refused = anchor_chunks(self.markdown, request.window, parsed)
            if not anchored:  # e.g. a model that followed instructions inside the book
                raise MalformedAnswer("unanchored", "no chunk text of the answer is in the source")
        except MalformedAnswer as problem:
            window = request.window
            if request.depth >= self.max_splits or window.end - window.start < _MIN_SPLIT_CHARS:
                error = ChunkingFailed(
                    f"unusable answer for {request.chapter!r} after {request.depth} splits: "
                    f"{problem}"
                )
                error.__cause__ = problem
                return Refused(error)
            # Never drop text: ask again for each half; each half is a new ledger request.
            depth = request.depth + 1
            first, second = split_window(self.markdown, window)
            halves = (self._request(first, depth), self._request(second, depth))
            return AskAgain(halves, problem, refused, items)
        return Accepted(tuple(anchored), refused, items)

    def assemble(self, anchors: Iterable[AnchoredChunk]) -> list[tuple[TextChunk, dict]]:
        """The chunks, cut from the markdown where the accepted anchors start."""
        return assemble_chunks(self.markdown, list(anchors), max_words=self.max_chunk_words)


def chunk_with_model(
    plan: ChunkingPlan, ask: Callable[[WindowRequest], Mapping[str, Any]]
) -> list[tuple[TextChunk, dict]]:
    """Run the plan one request after another: `ask` sends a request and returns its answer.
    A window asked again in halves takes its halves' place, so anchors stay in text order."""

    def resolve(request: WindowRequest) -> Iterator[AnchoredChunk]:
        verdict = plan.judge(request, ask(request))
        if not isinstance(verdict, Refused) and verdict.refused:
            logger.warning(
                f"chunking {request.chapter!r}: {verdict.refused} of {verdict.items} chunk texts "
                "of the answer are not in the source and were refused"
            )
        if isinstance(verdict, Refused):
            raise verdict.error
        if isinstance(verdict, AskAgain):
            for half in verdict.halves:
                yield from resolve(half)
            return
        yield from verdict.anchors

    return plan.assemble(anchor for request in plan.requests() for anchor in resolve(request))


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
    headings = HeadingPaths(markdown)
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
    md: str, anchored: list[AnchoredChunk], headings: HeadingPaths, no_space: bool
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
