"""From chunker output to the rows of the `chunks` table, with stable ids."""

from __future__ import annotations

from typing import Any

from doc_pipeline.core.chunking import TextChunk
from doc_pipeline.core.ids import chunk_ids


def chunk_rows(document_id: str, chunks: list[tuple[TextChunk, dict]]) -> list[dict[str, Any]]:
    ids = chunk_ids(document_id, (chunk.content for chunk, _ in chunks))
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
            "metadata": metadata,
        }
        for chunk_id, (chunk, metadata) in zip(ids, chunks, strict=True)
    ]
