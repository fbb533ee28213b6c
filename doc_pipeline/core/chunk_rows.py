"""From chunker output to the rows of the `chunks` table, with stable ids."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from doc_pipeline.core.books import PageIndex
from doc_pipeline.core.chunking import TextChunk
from doc_pipeline.core.ids import chunk_ids


def chunk_rows(
    document_id: str,
    chunks: list[tuple[TextChunk, dict]],
    page_starts: Sequence[Sequence[int]] = (),
) -> list[dict[str, Any]]:
    """The rows; a paged book's chunks also say in their metadata which pages they span
    (`page_start`, `page_end`), so a reader can go to the page."""
    ids = chunk_ids(document_id, (chunk.content for chunk, _ in chunks))
    pages = PageIndex(page_starts)
    return [
        {
            "id": chunk_id,
            "chunk_index": chunk.index,
            "content": chunk.content,
            "start_offset": chunk.start,
            "end_offset": chunk.end,
            "word_count": chunk.word_count,
            "char_count": chunk.char_count,
            "heading_path": list(chunk.heading_path),
            "metadata": _with_pages(metadata, pages.span(chunk.start, chunk.end)),
        }
        for chunk_id, (chunk, metadata) in zip(ids, chunks, strict=True)
    ]


def _with_pages(metadata: dict, span: tuple[int, int] | None) -> dict:
    if span is None:
        return metadata
    return {**metadata, "page_start": span[0], "page_end": span[1]}
