"""Registering an uploaded file: hash it, keep a copy in the blob store, and add it as a new
document or as the newest version of the document it is a version of.

Identical bytes are the version they already are (a renamed file pays nothing). Otherwise the
file is a version of a document when the user says so (`version_of`), when it was saved under
a name a version of the document had in the uploads location, or when it carries the book's own
identifier and enough of its text is in the document's current version (a document not chunked
yet has none to compare with: a file is not made its version on the identifier's word alone).
An identifier shared by a different book makes a new document, with a warning."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy.engine import Engine

from doc_pipeline import blob_store
from doc_pipeline.core.book_files import stored_source_key
from doc_pipeline.core.books import InvalidBookError
from doc_pipeline.core.extraction import extract_book
from doc_pipeline.core.identity import SAME_BOOK_OVERLAP, book_identifiers, text_overlap
from doc_pipeline.core.ids import document_id_for, file_sha256
from doc_pipeline.db import store

UPLOAD_IDENTITY = "upload:"


@dataclass(frozen=True)
class RegisteredFile:
    document_id: str
    content_sha256: str
    source_file: str
    stored_url: str  # the copy in the blob store (a local path or a URL)
    is_new: bool  # bytes never seen before (a new document or a new version)
    version: int = 1
    warnings: tuple[str, ...] = field(default=())


class UnknownDocumentError(LookupError):
    """`version_of` names no registered document."""


def register_file(
    engine: Engine,
    blob_url: str | os.PathLike[str],
    path: Path,
    *,
    version_of: str | None = None,
    upload_name: str | None = None,
) -> RegisteredFile:
    """Copy the file into the blob store at `blob_url` (a folder or any fsspec URL) under its
    content's id and register it.

    `version_of`: the document it is a new version of (the user said so). `upload_name`: its
    path in the uploads location, an identity of its own (the same name again is a version)."""
    sha256 = file_sha256(path)
    target = blob_store.join(str(blob_url), stored_source_key(document_id_for(sha256), path.name))
    known = store.find_version(engine, sha256)
    if known is not None:
        document_id, version = known
        return RegisteredFile(document_id, sha256, path.name, target, False, version)
    if version_of is not None and store.get_document(engine, version_of) is None:
        raise UnknownDocumentError(f"--version-of {version_of}: no such document")
    if not blob_store.exists(target):
        # All or nothing: a copy cut short (full disk, outage) is never there to be read back.
        blob_store.store_file(path, target)
    identities = [*book_identifiers(path, path.name)]
    if upload_name:
        identities.append(UPLOAD_IDENTITY + upload_name)
    warnings: list[str] = []
    document_id = version_of or _version_of(engine, path, identities, warnings)
    fields = {"content_sha256": sha256, "source_file": path.name, "byte_size": path.stat().st_size}
    if document_id is not None:
        version = store.add_version(engine, document_id, identities=identities, **fields)
        return RegisteredFile(
            document_id, sha256, path.name, target, True, version, tuple(warnings)
        )
    document_id = document_id_for(sha256)
    is_new = store.register_document(
        engine, document_id=document_id, identities=identities, **fields
    )
    return RegisteredFile(document_id, sha256, path.name, target, is_new, 1, tuple(warnings))


def _version_of(
    engine: Engine, path: Path, identities: Sequence[str], warnings: list[str]
) -> str | None:
    """The document this file is a new version of, if any (see the module's docstring)."""
    uploads = [i for i in identities if i.startswith(UPLOAD_IDENTITY)]
    by_name = store.documents_with_identities(engine, uploads)
    if by_name:
        return by_name[0]  # saved again under its name: the user replaced it
    candidates = store.documents_with_identities(engine, identities)
    new_text: str | None = None
    best: tuple[float, str] | None = None
    for document_id in candidates:
        current = store.current_text(engine, document_id)
        if not current:
            continue  # nothing to compare with (not chunked yet): not taken on trust
        if new_text is None:
            try:
                new_text = extract_book(path, path.name).markdown
            except InvalidBookError:
                return None  # unreadable: a document of its own, which its run fails
        overlap = text_overlap(current, new_text)
        if overlap >= SAME_BOOK_OVERLAP:
            return document_id
        best = max(best or (overlap, document_id), (overlap, document_id))
    if best is not None:
        shared = ", ".join(sorted(set(identities) - set(uploads)))
        warnings.append(
            f"shares its identifier ({shared}) with document {best[1]}, but only {best[0]:.0%} "
            f"of its text (at least {SAME_BOOK_OVERLAP:.0%} makes a version): registered as a "
            "new document"
        )
    return None
