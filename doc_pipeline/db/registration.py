"""Registering an uploaded file: hash it, keep a copy in the blob store, add its document row."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.engine import Engine

from doc_pipeline.core.atomic_write import copy_atomically
from doc_pipeline.core.book_files import stored_source_path
from doc_pipeline.core.ids import document_id_for, file_sha256
from doc_pipeline.db import store


@dataclass(frozen=True)
class RegisteredFile:
    document_id: str
    content_sha256: str
    source_file: str
    stored_path: Path
    is_new: bool


def register_file(engine: Engine, blob_dir: Path, path: Path) -> RegisteredFile:
    """Copy the file into the blob store under its content's id and register the document."""
    sha256 = file_sha256(path)
    document_id = document_id_for(sha256)
    target = stored_source_path(blob_dir, document_id, path.name)
    if not target.exists():
        # All or nothing: a copy cut short (full disk) is never there to be read back.
        copy_atomically(path, target)
    is_new = store.register_document(
        engine,
        document_id=document_id,
        content_sha256=sha256,
        source_file=path.name,
        byte_size=path.stat().st_size,
    )
    return RegisteredFile(document_id, sha256, path.name, target, is_new)
