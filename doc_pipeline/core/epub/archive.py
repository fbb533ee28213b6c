"""The ZIP container: cheap archive checks, then the OPF package path from container.xml."""

from __future__ import annotations

import errno
import zipfile
import zlib
from pathlib import Path

from lxml import etree

from doc_pipeline.core.books import InvalidBookError
from doc_pipeline.core.epub.markup import xml_parser
from doc_pipeline.core.epub.safe_zip import ReaderLimits, SafeZip
from doc_pipeline.core.file_kinds import is_zip, looks_like

_CONTAINER_NS = "{urn:oasis:names:tc:opendocument:xmlns:container}"

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
    if is_zip(head):
        return "not a valid ZIP archive (truncated or corrupt: no central directory)"
    what = looks_like(head)
    if what == "unrecognised binary data":
        return "not a ZIP/EPUB archive (unrecognised binary data)"
    return f"not a ZIP/EPUB archive (looks like {what})"


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
