"""What a file is, from its first bytes: to choose a reader and to say what a non-book is."""

from __future__ import annotations

from pathlib import Path

# How far into a file the PDF header may start (readers accept leading junk up to 1 KiB).
PDF_HEADER_WINDOW = 1024

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"%PDF", "a PDF document"),
    (b"PK\x03\x04", "a ZIP archive"),
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF (WebP/WAV/AVI) file"),
    (b"\x1f\x8b", "a gzip file"),
    (b"BZh", "a bzip2 file"),
    (b"Rar!", "a RAR archive"),
    (b"7z\xbc\xaf\x27\x1c", "a 7-Zip archive"),
    (b"\xd0\xcf\x11\xe0", "an MS Office (OLE) document"),
    (b"{\\rtf", "an RTF document"),
)


def read_head(path: Path, size: int = PDF_HEADER_WINDOW) -> bytes:
    with path.open("rb") as fh:
        return fh.read(size)


def looks_like(head: bytes) -> str:
    """What the bytes look like, for a message: "a PNG image", "a plain text file"."""
    if not head:
        return "an empty file"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return what
    if head[60:68] == b"BOOKMOBI":
        return "a MOBI/AZW e-book"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<?xml", b"<!doctype", b"<html")):
        return "an HTML/XML text file"
    if b"\x00" not in head[:128]:
        return "a plain text file"
    return "unrecognised binary data"


def is_pdf(head: bytes) -> bool:
    """The PDF header `%PDF-` within the first KiB, where readers look for it."""
    return b"%PDF-" in head[:PDF_HEADER_WINDOW]


def is_zip(head: bytes) -> bool:
    return head.startswith(b"PK\x03\x04")
