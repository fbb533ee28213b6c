"""AI semantic chunking as a plan: which requests, and what each answer means.

The plan is pure. It says which windows of the markdown to ask about (`ChunkingPlan.requests`)
and judges each answer (`ChunkingPlan.judge`): accept its anchored chunks, ask again for the
two halves of the window (an unusable answer, at most `max_splits` times), or refuse the
document (the model blocked it, or its answers stayed unusable). The provider only sends one
request and returns its answer; `chunk_with_model` drives the plan, with requests in flight
concurrently, and `ChunkingPlan.assemble` cuts the chunks from the markdown, so that no text is
lost and none is invented, whatever the model returns.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from doc_pipeline.core.blocks import NumberedText, numbered_blocks
from doc_pipeline.core.chunk_answers import (
    AnchoredChunk,
    anchor_boundaries,
    anchor_chunks,
    boundary_schema,
    chunk_schema,
    parse_answer,
    parse_boundaries,
)
from doc_pipeline.core.chunking import (
    ChunkingConfig,
    TextChunk,
    chunk_markdown,
    count_alnum,
    count_tokens,
    is_no_space,
    trimmed_span,
)
from doc_pipeline.core.failures import InvalidSettings, KnownFailure
from doc_pipeline.core.model_text import BLOCKED_FINISH_REASONS, MalformedAnswer, build_prompt
from doc_pipeline.core.parallel import BoundedRequests
from doc_pipeline.core.windows import HeadingPaths, Window, chapter_windows, split_window

# v1: the model copies each chunk's text; v2: it names the block each chunk starts with (its
# output is metadata only, a fraction of v1's, which is most of what chunking costs).
PROMPT_VERSIONS = ("v1", "v2")
DEFAULT_PROMPT_VERSION = "v2"
DOCUMENT_TYPES = ("fiction", "non-fiction", "academic", "technical", "essay")
_MIN_SPLIT_CHARS = 200  # a window this small is not halved again
logger = logging.getLogger(__name__)


class SafetyBlocked(KnownFailure, RuntimeError):
    """The model refused a window; the message names the chapter."""


class ChunkingFailed(KnownFailure, RuntimeError):
    """A window's answer stayed unusable after splitting it as far as allowed."""


def load_prompt(document_type: str, version: str = DEFAULT_PROMPT_VERSION) -> str:
    """The chunking prompt template for a document type, of a prompt version."""
    if document_type not in DOCUMENT_TYPES:
        raise InvalidSettings(
            f"unknown document type {document_type!r}; valid types: {', '.join(DOCUMENT_TYPES)}"
        )
    if version not in PROMPT_VERSIONS:
        raise InvalidSettings(
            f"unknown prompt version {version!r}; one of {', '.join(PROMPT_VERSIONS)}"
        )
    folder = resources.files("doc_pipeline.prompts").joinpath("chunking", version)
    return folder.joinpath(f"{document_type}.md").read_text(encoding="utf-8")


def prompt_version_key(version: str, document_type: str) -> str:
    """The prompt version as the AI ledger keys requests by it, e.g. "chunking-v2/fiction"."""
    return f"chunking-{version}/{document_type}"


# --- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class WindowRequest:
    """One request of the plan: a window's prompt, and how often its text was halved."""

    window: Window
    prompt: str
    depth: int = 0
    blocks: NumberedText | None = None  # v2: where the window's numbered blocks start

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
        version: str = DEFAULT_PROMPT_VERSION,
        window_chars: int = 24_000,
        overlap_chars: int = 1_500,
        max_splits: int = 4,
        max_chunk_words: int = 1_500,
    ) -> None:
        if version not in PROMPT_VERSIONS:
            raise ValueError(f"unknown prompt version {version!r}")
        self.markdown = markdown
        self.template = template
        self.version = version
        self.max_splits = max_splits
        self.max_chunk_words = max_chunk_words
        self.windows = chapter_windows(
            markdown, max_chars=window_chars, overlap_chars=overlap_chars
        )

    def requests(self) -> list[WindowRequest]:
        """The first request of each window, in the markdown's order."""
        return [self._request(window, 0) for window in self.windows]

    @property
    def answer_schema(self) -> dict:
        """The JSON schema the model is asked to answer in."""
        return boundary_schema() if self.version == "v2" else chunk_schema()

    def _request(self, window: Window, depth: int) -> WindowRequest:
        if self.version == "v1":
            text = self.markdown[window.start : window.end]
            return WindowRequest(window, build_prompt(self.template, text), depth)
        numbered = numbered_blocks(self.markdown, window)
        return WindowRequest(window, build_prompt(self.template, numbered.text), depth, numbered)

    def _anchors(self, request: WindowRequest, text: str | None, finish_reason: str | None):
        """(anchors, refused, items) of an answer; MalformedAnswer when it has none."""
        if request.blocks is None:
            parsed = parse_answer(text, finish_reason)
            anchored, refused = anchor_chunks(self.markdown, request.window, parsed)
            nothing = "no chunk text of the answer is in the source"
        else:
            parsed = parse_boundaries(text, finish_reason)
            anchored, refused = anchor_boundaries(request.blocks, request.window, parsed)
            nothing = "no chunk of the answer starts at a block of the text, in order"
        return anchored, refused, len(parsed), nothing

    def judge(self, request: WindowRequest, answer: Mapping[str, Any]) -> Verdict:
        """What the answer ({"text", "finish_reason"}) to the request means."""
        finish_reason = answer.get("finish_reason")
        if finish_reason in BLOCKED_FINISH_REASONS:
            message = f"the model refused to chunk {request.chapter!r} ({finish_reason})"
            return Refused(SafetyBlocked(message))
        refused = items = 0
        try:
            text = answer.get("text")
            anchored, refused, items, nothing = self._anchors(request, text, finish_reason)
            if not anchored:  # e.g. a model that followed instructions inside the book
                raise MalformedAnswer("unanchored", nothing)
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


@dataclass
class _Asked:
    """A request of the plan, and what became of it: its anchors, or its halves'."""

    request: WindowRequest
    anchors: tuple[AnchoredChunk, ...] = ()
    halves: list[_Asked] = field(default_factory=list)

    def in_text_order(self) -> Iterator[AnchoredChunk]:
        yield from self.anchors
        for half in self.halves:
            yield from half.in_text_order()


def chunk_with_model(
    plan: ChunkingPlan,
    ask: Callable[[WindowRequest], Mapping[str, Any]],
    *,
    max_concurrent: int = 1,
) -> list[tuple[TextChunk, dict]]:
    """Run the plan: `ask` sends one request and returns its answer, on up to
    `max_concurrent` requests at once. Each answer is judged as it arrives; a window asked
    again in halves takes its halves' place, so the anchors are put together in text order and
    the chunks are the same whatever order the answers came in. A refusal stops the plan: no
    new request starts, those in flight finish (their answers are kept by `ask`), then the
    refusal is raised."""
    roots = [_Asked(request) for request in plan.requests()]
    with BoundedRequests[_Asked](max_concurrent, name="chunking") as requests:
        for asked in roots:
            requests.submit(asked, ask, asked.request)
        for asked, answer in requests.completed():
            verdict = plan.judge(asked.request, answer)
            if not isinstance(verdict, Refused) and verdict.refused:
                what = (
                    "chunk texts of the answer are not in the source"
                    if plan.version == "v1"
                    else "chunks of the answer start at no block of the text, in order,"
                )
                logger.warning(
                    f"chunking {asked.request.chapter!r}: {verdict.refused} of {verdict.items} "
                    f"{what} and were refused"
                )
            if isinstance(verdict, Refused):
                requests.fail(verdict.error)
            elif isinstance(verdict, AskAgain):
                asked.halves = [_Asked(half) for half in verdict.halves]
                # Ahead of the other windows, first half first: a window that stays unusable
                # is given up after max_splits requests, not after a round of every window.
                for half in reversed(asked.halves):
                    requests.submit(half, ask, half.request, ahead=True)
            else:
                asked.anchors = verdict.anchors
    return plan.assemble(anchor for asked in roots for anchor in asked.in_text_order())


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
