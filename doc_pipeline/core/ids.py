"""Stable identities (DESIGN rule 2): derived from content, never from position alone."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

DOCUMENT_ID_LENGTH = 16


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def document_id_for(content_sha256: str) -> str:
    """The same bytes uploaded twice are one document; it doubles as the partition key."""
    return content_sha256[:DOCUMENT_ID_LENGTH]


def chunk_ids(document_id: str, contents: Iterable[str]) -> list[str]:
    """Ids from the document and the chunk's text; repeated identical text is told apart by its
    occurrence number, so re-chunking the same text gives the same ids and changing one chapter
    changes only that chapter's ids."""
    seen: dict[str, int] = {}
    ids = []
    for content in contents:
        occurrence = seen.get(content, 0)
        seen[content] = occurrence + 1
        key = f"{document_id}\x00{occurrence}\x00{content}".encode()
        ids.append(hashlib.sha256(key).hexdigest()[:32])
    return ids
