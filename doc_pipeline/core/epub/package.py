"""The OPF package, read by a lenient ebooklib reader over SafeZip, and its DC metadata."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass
from pathlib import Path

from ebooklib import epub

from doc_pipeline.core.books import InvalidBookError
from doc_pipeline.core.epub.safe_zip import ReaderLimits, SafeZip, UnsafeMemberError


@dataclass(frozen=True)
class Package:
    """The parsed book and what the spine loader must know about its manifest files."""

    book: epub.EpubBook
    opf_dir: str  # manifest hrefs are relative to it
    missing: frozenset[str]  # manifest files absent from the ZIP (normalized paths)
    unsafe: dict[str, str]  # manifest files refused: path -> reason


class _LenientReader(epub.EpubReader):
    """ebooklib reader whose every read goes through SafeZip (bounded, safe names only). It
    records manifest files missing from the ZIP or with unsafe paths instead of raising, and
    survives a broken nav/NCX (the book is still readable without a TOC)."""

    def __init__(self, file_name: str, book_name: str, limits: ReaderLimits) -> None:
        super().__init__(file_name, {"ignore_ncx": True})
        self.book_name, self.limits = book_name, limits
        self.missing: list[str] = []
        self.unsafe: dict[str, str] = {}  # manifest files refused: path -> reason
        self.toc_errors: list[str] = []
        self._lenient = False
        self._archive: SafeZip | None = None

    def read_file(self, name: str) -> bytes:
        name = posixpath.normpath(name)
        if self._archive is None:
            self._archive = SafeZip(self.zf, self.book_name, self.limits)
        try:
            return self._archive.read(name)
        except KeyError:
            if not self._lenient:
                raise
            self.missing.append(name)
        except UnsafeMemberError as unsafe:
            if not self._lenient:
                raise InvalidBookError(
                    f"{self.book_name}: unsafe path {unsafe.name!r} ({unsafe.reason})"
                ) from unsafe
            self.unsafe[name] = unsafe.reason
        return b""

    def _load_manifest(self) -> None:
        self._lenient = True
        try:
            super()._load_manifest()
        finally:
            self._lenient = False

    def _parse_ncx(self, data: bytes) -> None:
        try:
            super()._parse_ncx(data)
        except Exception as exc:  # noqa: BLE001 - any NCX defect just costs us the TOC
            self.book.toc = []
            self.toc_errors.append(f"NCX table of contents unreadable ({type(exc).__name__})")

    def _parse_nav(self, data: bytes, base_path: str, navtype: str = "toc") -> None:
        try:
            super()._parse_nav(data, base_path, navtype)
        except Exception as exc:  # noqa: BLE001 - any nav defect just costs us the TOC
            if navtype == "toc":
                self.book.toc = []
                self.toc_errors.append(f"nav table of contents unreadable ({type(exc).__name__})")


def read_package(
    path: Path, name: str, opf_path: str, warnings: list[str], limits: ReaderLimits
) -> Package:
    reader = _LenientReader(str(path), name, limits)
    try:
        book = reader.load()
    except InvalidBookError:
        raise
    except Exception as exc:  # ebooklib raises anything from KeyError to lxml errors
        raise InvalidBookError(
            f"{name}: OPF package {opf_path!r} is unparsable or incomplete "
            f"({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        if reader.zf is not None:
            reader.zf.close()
    warnings.extend(reader.toc_errors)
    return Package(book, reader.opf_dir, frozenset(reader.missing), reader.unsafe)


def first_dc(book: epub.EpubBook, field_name: str) -> str | None:
    for value, _attrs in book.get_metadata("DC", field_name):
        text = " ".join((value or "").split())
        if text:
            return text
    return None


def authors(book: epub.EpubBook) -> str | None:
    names: list[str] = []
    for value, _attrs in book.get_metadata("DC", "creator"):
        text = " ".join((value or "").split())
        if text and text not in names:
            names.append(text)
    return ", ".join(names) or None
