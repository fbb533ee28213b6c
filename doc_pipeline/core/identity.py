"""Which document a file is a version of (issue: document versions): the book's own identifier,
read cheaply and never trusted alone, and how much text two versions share.

An identifier is a hint: an EPUB's package `unique-identifier` or a PDF's document ID (the first
half of its trailer /ID) or XMP DocumentID. Two different books may carry the same one by
mistake (a template's identifier, a tool that never changes it), so a file is taken for a new
version only if enough of its text is also in the document's current version (`text_overlap`).
"""

from __future__ import annotations

import hashlib
import re
import zipfile
from pathlib import Path

import pypdf
from lxml import etree

from doc_pipeline.core.epub.archive import check_archive
from doc_pipeline.core.epub.markup import xml_parser
from doc_pipeline.core.epub.safe_zip import ReaderLimits, SafeZip
from doc_pipeline.core.file_kinds import is_pdf, is_zip, read_head
from doc_pipeline.core.pdf.limits import PdfLimits

# Below this share of the new text found in the current version, an identifier match is taken
# for a collision (two books, one identifier), not for an edit.
SAME_BOOK_OVERLAP = 0.5
_SHINGLE_WORDS = 5
_WORD = re.compile(r"\w+")
_MAX_IDENTIFIER = 200


def book_identifiers(path: Path, name: str) -> tuple[str, ...]:
    """The identifiers the file carries for itself, as `epub:…`, `pdf:…` or `xmp:…`; none for a
    file that has none or cannot be read (its run says why)."""
    head = read_head(path) if path.is_file() else b""
    try:
        if is_pdf(head):
            return _pdf_identifiers(path)
        if is_zip(head):
            return _epub_identifiers(path, name)
    except Exception:  # an unreadable file has no identity; reading it fails it later, clearly
        return ()
    return ()


def _epub_identifiers(path: Path, name: str) -> tuple[str, ...]:
    limits = ReaderLimits()
    opf_path = check_archive(path, name, [], limits)
    with zipfile.ZipFile(path) as zf:
        opf = SafeZip(zf, name, limits).read(opf_path)
    root = etree.fromstring(opf, xml_parser())
    wanted = root.get("unique-identifier")
    if not wanted:
        return ()
    for element in root.iter("{http://purl.org/dc/elements/1.1/}identifier"):
        if element.get("id") == wanted and (element.text or "").strip():
            return (f"epub:{element.text.strip()[:_MAX_IDENTIFIER]}",)
    return ()


def _pdf_identifiers(path: Path) -> tuple[str, ...]:
    limits = PdfLimits()
    with pypdf.apply_configuration(
        zlib_maximum_output_length=limits.max_stream_bytes,
        maximum_declared_stream_length=limits.max_stream_bytes,
    ):
        reader = pypdf.PdfReader(path, strict=False)
        found = []
        ids = reader.trailer.get("/ID")
        if ids:
            first = ids[0].get_object()
            raw = first.original_bytes if hasattr(first, "original_bytes") else bytes(first)
            if raw:
                found.append(f"pdf:{raw.hex()[:_MAX_IDENTIFIER]}")
        xmp = reader.xmp_metadata
        document_id = xmp.xmpmm_document_id if xmp is not None else None
        if document_id:
            found.append(f"xmp:{str(document_id).strip()[:_MAX_IDENTIFIER]}")
        return tuple(found)


def _shingles(text: str) -> set[bytes]:
    words = _WORD.findall(text.lower())
    if len(words) < _SHINGLE_WORDS:
        return {" ".join(words).encode()} if words else set()
    return {
        hashlib.blake2b(" ".join(words[i : i + _SHINGLE_WORDS]).encode(), digest_size=8).digest()
        for i in range(len(words) - _SHINGLE_WORDS + 1)
    }


def text_overlap(current: str, new: str) -> float:
    """The share of the new text's five-word runs that the current text has too (1.0: every
    one). A one-word edit of a book keeps about all of them; another book, next to none."""
    new_shingles = _shingles(new)
    if not new_shingles:
        return 0.0
    return len(new_shingles & _shingles(current)) / len(new_shingles)
