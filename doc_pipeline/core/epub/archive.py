"""The ZIP container: cheap archive checks, then the OPF package path from container.xml."""

from __future__ import annotations

import errno
import zipfile
import zlib
from pathlib import Path

from lxml import etree

from doc_pipeline.core.epub.errors import InvalidBookError
from doc_pipeline.core.epub.markup import xml_parser
from doc_pipeline.core.epub.safe_zip import ReaderLimits, SafeZip

_CONTAINER_NS = "{urn:oasis:names:tc:opendocument:xmlns:container}"

_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"%PDF", "a PDF document"),
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


def check_archive(path: Path, name: str, warnings: list[str], limits: ReaderLimits) -> str:
    """Validate the ZIP container cheaply and return the OPF path named by container.xml."""
    if not path.is_file():
        raise InvalidBookError(f"{name}: file not found or not a regular file")
    try:
        with path.open("rb") as fh:
            head = fh.read(128)
        if not zipfile.is_zipfile(path):
            raise InvalidBookError(f"{name}: {_not_zip_reason(head)}")
        with zipfile.ZipFile(path) as zf:
            return _check_members(SafeZip(zf, name, limits), warnings)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        ValueError,
        zlib.error,
        NotImplementedError,  # a compression method or ZIP version zipfile cannot read
    ) as exc:
        reason = str(exc)
        if isinstance(exc, OSError) and exc.errno == errno.EINVAL:  # a seek before the start
            reason = "corrupt: an offset in its directory points outside the file"
        raise InvalidBookError(f"{name}: not a valid ZIP archive ({reason})") from exc


def _not_zip_reason(head: bytes) -> str:
    if not head:
        return "not a ZIP archive (the file is empty)"
    if head.startswith(b"PK\x03\x04"):
        return "not a valid ZIP archive (truncated or corrupt: no central directory)"
    for magic, what in _MAGIC:
        if head.startswith(magic):
            return f"not a ZIP/EPUB archive (looks like {what})"
    if head[60:68] == b"BOOKMOBI":
        return "not a ZIP/EPUB archive (looks like a MOBI/AZW e-book)"
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n").lower()
    if text.startswith((b"<?xml", b"<!doctype", b"<html")):
        return "not a ZIP/EPUB archive (looks like an HTML/XML text file)"
    if b"\x00" not in head:
        return "not a ZIP/EPUB archive (looks like a plain text file)"
    return "not a ZIP/EPUB archive (unrecognised binary data)"


def _check_members(archive: SafeZip, warnings: list[str]) -> str:
    name, members = archive.book, archive.zf.namelist()
    if "META-INF/container.xml" not in members:
        also = "" if "mimetype" in members else " (and no mimetype)"
        raise InvalidBookError(f"{name}: not an EPUB: no META-INF/container.xml{also}")
    if archive.unsafe:
        first = list(archive.unsafe.items())[:8]
        listed = ", ".join(f"{member!r} ({why})" for member, why in first)
        more = len(archive.unsafe) - 8
        warnings.append(
            f"ignored {len(archive.unsafe)} archive member(s) with unsafe paths: {listed}"
            + (f" and {more} more" if more > 0 else "")
        )
    if "mimetype" in members:
        mimetype = archive.read("mimetype").decode("ascii", "replace").strip()
        if mimetype != "application/epub+zip":
            warnings.append(f"mimetype is {mimetype[:80]!r}, expected 'application/epub+zip'")
        if members[0] != "mimetype":
            warnings.append("mimetype is not the archive's first member")
    else:
        warnings.append("no mimetype file in the archive")
    opf_path = _opf_path(archive.read("META-INF/container.xml"), name)
    if opf_path in archive.unsafe:
        raise InvalidBookError(
            f"{name}: unsafe OPF package path {opf_path!r} ({archive.unsafe[opf_path]})"
        )
    if opf_path not in members:
        raise InvalidBookError(
            f"{name}: OPF package file {opf_path!r} named in container.xml is missing"
        )
    return opf_path


def _opf_path(container: bytes, name: str) -> str:
    try:
        root = etree.fromstring(container, xml_parser(recover=False))
    except etree.XMLSyntaxError as exc:
        raise InvalidBookError(f"{name}: META-INF/container.xml is unparsable ({exc})") from exc
    for rootfile in root.iter(f"{_CONTAINER_NS}rootfile", "rootfile"):
        full_path = rootfile.get("full-path")
        if full_path and rootfile.get("media-type") in (None, "application/oebps-package+xml"):
            return full_path
    raise InvalidBookError(f"{name}: META-INF/container.xml names no OPF package file")
