"""EPUB -> markdown, the "local provider" converter (pure Python, no Dagster).

ebooklib reads the package (OPF, spine, nav/NCX); every spine document is re-parsed with a
safe lxml parser (no entity expansion, no DTD, no network), cleaned (Project Gutenberg
boilerplate, scripts, SVG), given table-of-contents headings and markdown footnotes, then
rendered with a markdownify subclass.
"""

from __future__ import annotations

import html.entities
import posixpath
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlsplit

import lxml.html
from bs4 import Tag
from ebooklib import epub
from lxml import etree
from markdownify import ATX, MarkdownConverter

__all__ = ["ExtractedBook", "InvalidBookError", "epub_to_markdown"]

# Declared uncompressed size above which we refuse the archive before ebooklib inflates
# every member into memory (full zip-bomb hardening is a separate piece of work).
MAX_UNCOMPRESSED_BYTES = 1 << 30
# A single spine document above this is skipped (with a warning): parsing and rendering a
# 60 MB chapter takes about a minute and hundreds of MB, and no real book needs it.
MAX_DOCUMENT_BYTES = 16 << 20

_OPS_NS = "{http://www.idpf.org/2007/ops}"
_CONTAINER_NS = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_HTML_MEDIA_TYPES = {"application/xhtml+xml", "text/html"}

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

_HEADING_TAGS = {f"h{n}" for n in range(1, 7)}
_HEADINGISH_XPATH = " or ".join(f"self::{t}" for t in sorted(_HEADING_TAGS | {"hgroup"}))
_DROP_TAGS = {
    "head",
    "script",
    "style",
    "svg",
    "math",
    "template",
    "noscript",
    "object",
    "iframe",
    "link",
    "meta",
    "title",
}
_BLOCKISH_TAGS = {
    "header",
    "footer",
    "aside",
    "nav",
    "figure",
    "main",
    "hgroup",
    "address",
    "center",
    "details",
    "summary",
    "body",
}
_INLINE_TAGS = {
    "a",
    "span",
    "em",
    "i",
    "b",
    "strong",
    "sup",
    "sub",
    "small",
    "abbr",
    "cite",
    "u",
    "q",
    "code",
    "mark",
    "s",
    "bdi",
    "bdo",
    "dfn",
    "kbd",
    "var",
    "time",
}

_PG_IDS = {
    "pg-header",
    "pg-footer",
    "pg-machine-header",
    "pg-start-separator",
    "pg-end-separator",
    "project-gutenberg-license",
}
_PG_CLASSES = {"pg-boilerplate", "pgheader", "pgfooter"}
_PG_LICENCE_TITLE = re.compile(r"full\s+project\s+gutenberg\W{0,3}\s*licen[cs]e", re.I)
_PG_START = re.compile(
    r"^[\\* ]*\*[\\* ]*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.I | re.M
)
_PG_END = re.compile(
    r"^[\\* ]*END OF (?:THE |THIS )?PROJECT GUTENBERG(?:'S| E-?BOOK).*$", re.I | re.M
)

_NOTE_TYPES = {"footnote", "endnote", "rearnote"}
_NOTE_ROLES = {"doc-footnote", "doc-endnote"}
_NOTES_CONTAINER_TYPES = {"footnotes", "endnotes", "rearnotes"}
_NOTES_CONTAINER_ROLES = {"doc-endnotes", "doc-footnotes"}
_BACKLINK_TEXT = {"↩", "↩\ufe0e", "↩\ufe0f", "↑", "^", "back"}

_ENTITY_REF = re.compile(rb"&([A-Za-z][A-Za-z0-9]{1,31});")
_XML_BUILTIN_ENTITIES = {b"amp", b"lt", b"gt", b"quot", b"apos"}
_TOKEN = re.compile(r"[^\W_]+")
_SPACE_RUN = re.compile(r"\s+")
_HEADING_MD = re.compile(r"^#{1,6} .*$", re.M)
_IMAGE_MD = re.compile(r"!\[(?:\\.|[^\]])*\]\([^)]*\)")


class InvalidBookError(Exception):
    """The file is not a readable book. str(err) names the file and the problem, e.g.
    "bad-truncated-zip.epub: not a valid ZIP archive (truncated or corrupt: no central
    directory)"."""


@dataclass(frozen=True)
class ExtractedBook:
    title: str
    author: str | None
    language: str | None
    markdown: str  # the whole book as markdown
    chapter_count: int  # table-of-contents headings emitted (non-empty documents if no TOC)
    warnings: tuple[str, ...]  # human-readable notes about anything skipped


def epub_to_markdown(path: Path, name: str | None = None) -> ExtractedBook:
    """Convert one EPUB (2 or 3) file to markdown; raise InvalidBookError if it is unreadable.

    `name` is the file name used in messages (the name it was uploaded under), by default the
    path's own."""
    path = Path(path)
    name = name or path.name
    warnings: list[str] = []
    opf_path = _check_archive(path, name, warnings)
    book, reader = _read_package(path, name, opf_path, warnings)
    if not book.spine:
        raise InvalidBookError(f"{name}: empty spine: no reading order (OPF lists no documents)")
    try:
        docs, image_count = _load_documents(book, reader, warnings)
        notes = _Notes(docs)
        toc = _flatten_toc(book.toc, _toc_base_dir(book), 1)
        markdown, chapters = _render(docs, toc, notes, warnings)
    except (etree.LxmlError, KeyError, ValueError, RecursionError) as exc:
        # Bugs or pathological markup must still surface as "this book failed, because".
        raise InvalidBookError(f"{name}: conversion failed ({type(exc).__name__}: {exc})") from exc
    if not _TOKEN.search(_HEADING_MD.sub("", _IMAGE_MD.sub("", markdown))):
        detail = f" (image-only, {image_count} images)" if image_count else ""
        raise InvalidBookError(f"{name}: no extractable text{detail}")
    title = _first_dc(book, "title")
    if not title:
        warnings.append("no dc:title in the OPF metadata; using the file name")
    return ExtractedBook(
        title=title or Path(name).stem,
        author=_authors(book),
        language=_first_dc(book, "language"),
        markdown=markdown,
        chapter_count=chapters,
        warnings=tuple(warnings),
    )


# ---------------------------------------------------------------- archive and package


def _check_archive(path: Path, name: str, warnings: list[str]) -> str:
    """Validate the ZIP container cheaply and return the OPF path named by container.xml."""
    if not path.is_file():
        raise InvalidBookError(f"{name}: file not found or not a regular file")
    try:
        with path.open("rb") as fh:
            head = fh.read(128)
        if not zipfile.is_zipfile(path):
            raise InvalidBookError(f"{name}: {_not_zip_reason(head)}")
        with zipfile.ZipFile(path) as zf:
            return _check_members(zf, name, warnings)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        OSError,
        EOFError,
        ValueError,
        zlib.error,
    ) as exc:
        raise InvalidBookError(f"{name}: not a valid ZIP archive ({exc})") from exc


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


def _check_members(zf: zipfile.ZipFile, name: str, warnings: list[str]) -> str:
    members = set(zf.namelist())
    if "META-INF/container.xml" not in members:
        also = "" if "mimetype" in members else " (and no mimetype)"
        raise InvalidBookError(f"{name}: not an EPUB: no META-INF/container.xml{also}")
    declared = sum(info.file_size for info in zf.infolist())
    if declared > MAX_UNCOMPRESSED_BYTES:
        raise InvalidBookError(
            f"{name}: archive declares {declared:,} uncompressed bytes, "
            f"over the {MAX_UNCOMPRESSED_BYTES:,}-byte limit"
        )
    if "mimetype" in members:
        mimetype = zf.read("mimetype").decode("ascii", "replace").strip()
        if mimetype != "application/epub+zip":
            warnings.append(f"mimetype is {mimetype!r}, expected 'application/epub+zip'")
    else:
        warnings.append("no mimetype file in the archive")
    opf_path = _opf_path(zf.read("META-INF/container.xml"), name)
    if opf_path not in members:
        raise InvalidBookError(
            f"{name}: OPF package file {opf_path!r} named in container.xml is missing"
        )
    return opf_path


def _opf_path(container: bytes, name: str) -> str:
    try:
        root = etree.fromstring(container, _xml_parser(recover=False))
    except etree.XMLSyntaxError as exc:
        raise InvalidBookError(f"{name}: META-INF/container.xml is unparsable ({exc})") from exc
    for rootfile in root.iter(f"{_CONTAINER_NS}rootfile", "rootfile"):
        full_path = rootfile.get("full-path")
        if full_path and rootfile.get("media-type") in (None, "application/oebps-package+xml"):
            return full_path
    raise InvalidBookError(f"{name}: META-INF/container.xml names no OPF package file")


class _LenientReader(epub.EpubReader):
    """ebooklib reader that records manifest files missing from the ZIP instead of raising
    KeyError, and survives a broken nav/NCX (the book is still readable without a TOC)."""

    def __init__(self, file_name: str) -> None:
        super().__init__(file_name, {"ignore_ncx": True})
        self.missing: list[str] = []
        self.toc_errors: list[str] = []
        self._lenient = False

    def read_file(self, name: str) -> bytes:
        try:
            return super().read_file(name)
        except KeyError:
            if not self._lenient:
                raise
            self.missing.append(posixpath.normpath(name))
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


def _read_package(
    path: Path, name: str, opf_path: str, warnings: list[str]
) -> tuple[epub.EpubBook, _LenientReader]:
    reader = _LenientReader(str(path))
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
    return book, reader


def _first_dc(book: epub.EpubBook, field_name: str) -> str | None:
    for value, _attrs in book.get_metadata("DC", field_name):
        text = " ".join((value or "").split())
        if text:
            return text
    return None


def _authors(book: epub.EpubBook) -> str | None:
    names: list[str] = []
    for value, _attrs in book.get_metadata("DC", "creator"):
        text = " ".join((value or "").split())
        if text and text not in names:
            names.append(text)
    return ", ".join(names) or None


# ---------------------------------------------------------------- spine documents


@dataclass
class _Doc:
    name: str  # path relative to the OPF directory, as manifest hrefs are
    body: etree._Element
    ids: dict[str, etree._Element] = field(default_factory=dict)
    had_notes: bool = False

    def index_ids(self) -> None:
        self.ids = {}
        for el in self.body.iter():
            key = el.get("id") or (el.get("name") if el.tag == "a" else None)
            if key and key not in self.ids:
                self.ids[key] = el


def _load_documents(
    book: epub.EpubBook, reader: _LenientReader, warnings: list[str]
) -> tuple[list[_Doc], int]:
    missing = set(reader.missing)
    docs: list[_Doc] = []
    images = 0
    pg_dropped = False
    for idref, _linear in book.spine:
        item = book.get_item_with_id(idref)
        if item is None:
            warnings.append(f"spine item {idref!r} is not in the manifest; skipped")
            continue
        if posixpath.normpath(posixpath.join(reader.opf_dir, item.file_name)) in missing:
            warnings.append(f"spine item {item.file_name!r} is missing from the archive; skipped")
            continue
        if isinstance(item, epub.EpubNav) or item.media_type not in _HTML_MEDIA_TYPES:
            continue
        if len(item.content or b"") > MAX_DOCUMENT_BYTES:
            warnings.append(
                f"spine item {item.file_name!r} is {len(item.content):,} bytes, "
                f"over the {MAX_DOCUMENT_BYTES:,}-byte chapter limit; skipped"
            )
            continue
        # item.content is the raw file; EpubHtml.get_content() would re-serialize it.
        parsed = _parse_document(item.content or b"", item.file_name, warnings)
        if parsed is None:
            continue
        body, title, n_images = parsed
        images += n_images
        if _PG_LICENCE_TITLE.search(title):
            pg_dropped = True
            continue
        pg_dropped |= _drop_pg_boilerplate(body)
        doc = _Doc(item.file_name, body)
        doc.index_ids()
        docs.append(doc)
    if pg_dropped:
        warnings.append("dropped Project Gutenberg header/licence boilerplate")
    return docs, images


def _xml_parser(recover: bool = True) -> etree.XMLParser:
    # Entities stay unexpanded and no DTD or network resource is ever loaded.
    return etree.XMLParser(
        recover=recover,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        remove_comments=True,
        remove_pis=True,
    )


def _parse_document(
    data: bytes, name: str, warnings: list[str]
) -> tuple[etree._Element, str, int] | None:
    """Parse one spine document; return (body, <title> text, image count) or None."""
    data = _defuse_entities(data, name, warnings)
    root = None
    try:
        root = etree.fromstring(data, _xml_parser())
    except (etree.XMLSyntaxError, ValueError):
        root = None
    if root is None or _localname(root) != "html":
        try:  # not well-formed XHTML: the HTML parser never loads DTDs either
            parser = lxml.html.HTMLParser(no_network=True, remove_comments=True, remove_pis=True)
            root = lxml.html.document_fromstring(data, parser=parser)
        except (etree.ParserError, etree.XMLSyntaxError, ValueError) as exc:
            warnings.append(f"spine item {name!r} is not parsable HTML ({exc}); skipped")
            return None
    _strip_namespaces(root, name, warnings)
    title = " ".join(str(root.xpath("string(head/title)")).split())
    body = root.find("body")
    if body is None:
        body = root
    images = sum(1 for el in body.iter("img", "image"))
    for el in [el for el in body.iter() if el.tag in _DROP_TAGS]:
        _remove(el)
    _collapse_whitespace(body)
    return body, title, images


def _collapse_whitespace(body: etree._Element) -> None:
    """Source line wrapping means nothing in HTML; only <pre> keeps its whitespace."""
    keep = {el for pre in body.iter("pre") for el in pre.iter()}  # holds the proxies alive
    for el in body.iter():
        if el.text and el not in keep:
            el.text = _SPACE_RUN.sub(" ", el.text)
        parent = el.getparent()
        if el.tail and (parent is None or parent not in keep):
            el.tail = _SPACE_RUN.sub(" ", el.tail)
            if el.tag == "br":  # no indent on the line after a line break
                el.tail = el.tail.lstrip()


def _defuse_entities(data: bytes, name: str, warnings: list[str]) -> bytes:
    """Remove any DOCTYPE internal subset (where XXE and billion-laughs entities live) and
    rewrite entity references: HTML names (&nbsp; ...) become character references, the
    rest are dropped and reported. Nothing is ever expanded."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):  # UTF-16: leave to the parser
        return data
    html_start = data.find(b"<html")
    doctype = re.search(rb"<!DOCTYPE[^>\[]*\[", data[:html_start]) if html_start > 0 else None
    if doctype:
        close = data.rfind(b"]", doctype.end(), html_start)
        gt = data.find(b">", close)
        if close != -1 and gt != -1:
            data = data[: doctype.start()] + b"<!DOCTYPE html>" + data[gt + 1 :]
            warnings.append(f"{name}: removed DOCTYPE internal subset (entity declarations)")
    dropped: set[str] = set()

    def repl(match: re.Match[bytes]) -> bytes:
        entity = match.group(1)
        if entity in _XML_BUILTIN_ENTITIES:
            return match.group(0)
        chars = html.entities.html5.get(entity.decode("ascii") + ";")
        if chars is None:
            dropped.add("&" + entity.decode("ascii") + ";")
            return b""
        return "".join(f"&#{ord(c)};" for c in chars).encode("ascii")

    data = _ENTITY_REF.sub(repl, data)
    if dropped:
        listed = ", ".join(sorted(dropped))
        warnings.append(f"{name}: dropped undefined entity reference(s) {listed}")
    return data


def _localname(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _strip_namespaces(root: etree._Element, name: str, warnings: list[str]) -> None:
    """Plain tag names; epub:type becomes the attribute epub-type. Entity references that
    were not expanded (possibly hostile) are removed and reported."""
    junk = []
    for el in root.iter():
        if not isinstance(el.tag, str):
            junk.append(el)
            continue
        el.tag = _localname(el)
        for key in [k for k in el.attrib if k.startswith("{") or ":" in k]:
            value = el.attrib.pop(key)
            local = key.rsplit("}", 1)[-1].rsplit(":", 1)[-1]
            if key.startswith(_OPS_NS) or key.startswith("epub:"):
                el.set(f"epub-{local}", value)
    entities = sorted({el.text for el in junk if el.tag is etree.Entity and el.text})
    if entities:
        warnings.append(f"{name}: dropped unexpanded entity reference(s) {', '.join(entities)}")
    for el in junk:
        _remove(el)
    etree.cleanup_namespaces(root)


def _remove(el: etree._Element) -> None:
    """Detach el, keeping its tail text in place."""
    parent = el.getparent()
    if parent is None:
        return
    if el.tail:
        prev = el.getprevious()
        if prev is not None:
            prev.tail = (prev.tail or "") + el.tail
        else:
            parent.text = (parent.text or "") + el.tail
    parent.remove(el)


def _tokens_of(el: etree._Element, attr: str) -> set[str]:
    return set((el.get(attr) or "").split())


def _epub_types(el: etree._Element) -> set[str]:
    return _tokens_of(el, "epub-type") | _tokens_of(el, "epub:type")


def _drop_pg_boilerplate(body: etree._Element) -> bool:
    doomed = [
        el for el in body.iter() if el.get("id") in _PG_IDS or _tokens_of(el, "class") & _PG_CLASSES
    ]
    for el in doomed:
        if el.getparent() is not None:
            _remove(el)
    return bool(doomed)


def _has_content(el: etree._Element) -> bool:
    if any(text.strip() for text in el.itertext()):
        return True
    return any((img.get("alt") or "").strip() for img in el.iter("img"))


# ---------------------------------------------------------------- footnotes


def _resolve_href(href: str, base_dir: str) -> tuple[str | None, str | None]:
    """(document path relative to the OPF dir, fragment); (None, None) for external links."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc:
        return None, None
    path = unquote(parts.path)
    doc = posixpath.normpath(posixpath.join(base_dir, path)) if path else None
    return doc, unquote(parts.fragment) or None


class _Notes:
    """Finds note references and note bodies, replaces each reference with a markdown
    footnote marker "[^label]" and detaches the bodies for rendering as definitions."""

    def __init__(self, docs: list[_Doc]) -> None:
        self.by_name = {doc.name: doc for doc in docs}
        self.bodies: dict[tuple[str, str], etree._Element] = {}
        self.labels: dict[tuple[str, str], str] = {}
        # document name (or owning note key) -> notes first referenced there, in order
        self.first_ref_in: dict[object, list[tuple[str, str]]] = {}
        self.emitted: set[tuple[str, str]] = set()
        for doc in docs:
            self._find_bodies(doc)
        for doc in docs:
            self._find_typed_ref_targets(doc)
        for doc in docs:
            self._replace_refs(doc)
        self._detach_bodies()

    def _find_bodies(self, doc: _Doc) -> None:
        for el in doc.body.iter():
            types, roles = _epub_types(el), _tokens_of(el, "role")
            if el.get("id") and (types & _NOTE_TYPES or roles & _NOTE_ROLES):
                self.bodies[(doc.name, el.get("id"))] = el
            elif types & _NOTES_CONTAINER_TYPES or roles & _NOTES_CONTAINER_ROLES:
                for child in el.iter("li"):
                    if child.get("id"):
                        self.bodies.setdefault((doc.name, child.get("id")), child)

    def _targets(self, doc: _Doc) -> Iterator[tuple[etree._Element, tuple[str, str]]]:
        base = posixpath.dirname(doc.name)
        for a in doc.body.iter("a"):
            target_doc, frag = _resolve_href(a.get("href") or "", base)
            if frag:
                yield a, (target_doc or doc.name, frag)

    def _find_typed_ref_targets(self, doc: _Doc) -> None:
        for a, key in self._targets(doc):
            typed = "noteref" in _epub_types(a) or "doc-noteref" in _tokens_of(a, "role")
            target_doc = self.by_name.get(key[0])
            if not typed or key in self.bodies or target_doc is None:
                continue
            target = target_doc.ids.get(key[1])
            if target is not None and target.tag not in {"body", "html"} and a not in target.iter():
                self.bodies[key] = target

    def _replace_refs(self, doc: _Doc) -> None:
        owner_of = {el: key for key, el in self.bodies.items() if key[0] == doc.name}
        for a, key in list(self._targets(doc)):
            if key not in self.bodies:
                continue
            if key not in self.labels:
                self.labels[key] = self._new_label(key[1])
                # A reference inside another note is defined right after that note.
                owner = next(
                    (owner_of[anc] for anc in a.iterancestors() if anc in owner_of), doc.name
                )
                self.first_ref_in.setdefault(owner, []).append(key)
            marker = f"[^{self.labels[key]}]"
            a.tail = marker + (a.tail or "")
            _remove(a)

    def _new_label(self, fragment: str) -> str:
        base = re.sub(r"[^A-Za-z0-9-]+", "-", fragment).strip("-") or "note"
        used = set(self.labels.values())
        label, n = base, 1
        while label in used:
            n += 1
            label = f"{base}-{n}"
        return label

    def _detach_bodies(self) -> None:
        containers = set()
        for (doc_name, _frag), el in self.bodies.items():
            self.by_name[doc_name].had_notes = True
            for anc in el.iterancestors():
                if _epub_types(anc) & _NOTES_CONTAINER_TYPES or _tokens_of(anc, "role") & (
                    _NOTES_CONTAINER_ROLES
                ):
                    containers.add(anc)
            if el.getparent() is not None:
                _remove(el)
            for a in [a for a in el.iter("a") if _is_backlink(a)]:
                _remove(a)
        for container in containers:
            if not _has_content_besides_headings(container) and container.getparent() is not None:
                _remove(container)

    def definitions_for(self, owner: object, conv: _Converter) -> list[str]:
        definitions = []
        for key in self.first_ref_in.get(owner, []):
            if key not in self.emitted:
                definitions.append(self._definition(key, conv))
                definitions.extend(self.definitions_for(key, conv))
        return definitions

    def leftovers(self, conv: _Converter) -> list[str]:
        keys = [key for key in self.bodies if key not in self.emitted]
        for key in keys:
            self.labels.setdefault(key, self._new_label(key[1]))
        return [self._definition(key, conv) for key in keys]

    def _definition(self, key: tuple[str, str], conv: _Converter) -> str:
        self.emitted.add(key)
        text = conv.element(self.bodies[key]).strip()
        lines = [
            line if not line or i == 0 else "    " + line
            for i, line in enumerate(text.splitlines())
        ]
        return f"[^{self.labels[key]}]: " + "\n".join(lines)


def _is_backlink(a: etree._Element) -> bool:
    if "backlink" in _epub_types(a) or "doc-backlink" in _tokens_of(a, "role"):
        return True
    return "".join(a.itertext()).strip().lower() in _BACKLINK_TEXT


def _has_content_besides_headings(el: etree._Element) -> bool:
    skip = {h for tag in (*_HEADING_TAGS, "hgroup") for h in el.iter(tag)}
    for node in el.iter():
        inside_heading = node in skip or any(a in skip for a in node.iterancestors())
        if not inside_heading and (node.text or "").strip():
            return True
        if node is not el and (node.tail or "").strip():
            return True
    return False


# ---------------------------------------------------------------- table of contents


@dataclass(frozen=True)
class _TocEntry:
    title: str
    doc: str
    fragment: str | None
    depth: int


def _toc_base_dir(book: epub.EpubBook) -> str:
    """ebooklib resolves nav hrefs against the OPF dir itself but leaves NCX hrefs relative
    to the NCX file."""
    if any(isinstance(item, epub.EpubNav) for item in book.get_items()):
        return ""
    for item in book.get_items():
        if isinstance(item, epub.EpubNcx):
            return posixpath.dirname(item.file_name)
    return ""


def _flatten_toc(nodes: object, base: str, depth: int) -> list[_TocEntry]:
    entries: list[_TocEntry] = []
    for node in nodes if isinstance(nodes, (list, tuple)) else []:
        if isinstance(node, tuple) and len(node) == 2:
            section, children = node
            below = _flatten_toc(children, base, depth + 1)
            own = _toc_entry(section, base, depth)
            if own is None and below and getattr(section, "title", None):
                # A TOC section without a link sits where its first child does.
                own = _TocEntry(_clean(section.title), below[0].doc, below[0].fragment, depth)
            entries.extend([own, *below] if own else below)
        elif isinstance(node, list):
            entries.extend(_flatten_toc(node, base, depth))
        else:
            entry = _toc_entry(node, base, depth)
            if entry:
                entries.append(entry)
    return entries


def _toc_entry(node: object, base: str, depth: int) -> _TocEntry | None:
    title = _clean(getattr(node, "title", None) or "")
    doc, fragment = _resolve_href(getattr(node, "href", None) or "", base)
    if not title or doc is None or _PG_LICENCE_TITLE.search(title):
        return None
    return _TocEntry(title, doc, fragment, depth)


def _clean(text: str) -> str:
    return " ".join(text.replace("\xa0", " ").split())


def _words(text: str) -> list[str]:
    return _TOKEN.findall(text.casefold())


def _place_headings(doc: _Doc, entries: list[_TocEntry]) -> int:
    """Put each TOC title at its anchor as <hN>, replacing the document's own heading when
    that heading says the same thing. Returns the number of headings placed."""
    placed = 0
    for entry in entries:
        target = doc.ids.get(entry.fragment) if entry.fragment else doc.body
        if target is None:
            continue  # anchor gone (e.g. inside removed boilerplate)
        heading = etree.Element(f"h{min(entry.depth, 6)}", {"data-toc": "1"})
        heading.text = entry.title
        existing = _matching_heading(target, entry.title)
        if existing is not None:
            heading.tail = existing.tail
            existing.getparent().replace(existing, heading)
        else:
            _insert_before(doc.body, target, heading)
        placed += 1
    return placed


def _matching_heading(target: etree._Element, title: str) -> etree._Element | None:
    wanted = _words(title)
    query = (
        f"(descendant-or-self::*[({_HEADINGISH_XPATH}) and not(@data-toc)]"
        f" | following::*[({_HEADINGISH_XPATH}) and not(@data-toc)])[position() <= 2]"
    )
    for candidate in target.xpath(query):
        pieces = list(candidate.itertext())  # both joins: <br/> splits words, <span>s don't
        if wanted in (_words("".join(pieces)), _words(" ".join(pieces))):
            return candidate
    return None


def _insert_before(body: etree._Element, target: etree._Element, heading: etree._Element) -> None:
    if target is body:
        heading.tail, body.text = body.text, None
        body.insert(0, heading)
        return
    anchor = target
    while anchor.tag in _INLINE_TAGS and anchor.getparent() is not body:
        anchor = anchor.getparent()
    anchor.addprevious(heading)


# ---------------------------------------------------------------- rendering


class _Converter(MarkdownConverter):
    """markdownify with book-friendly rules: internal links become plain text, images keep
    only alt text and file name, <br> is a plain newline (no trailing spaces)."""

    def __init__(self) -> None:
        super().__init__(heading_style=ATX, bullets="-", bs4_options="lxml")

    def element(self, el: etree._Element) -> str:
        for node in [n for n in el.iter() if n.tag in _BLOCKISH_TAGS]:
            node.tag = "div"
        for table in list(el.iter("table")):
            _flatten_table(table)
        el.tag = "div"
        return self.convert(etree.tostring(el, method="html", encoding="unicode", with_tail=False))

    def convert_a(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        if urlsplit(el.get("href") or "").scheme in {"http", "https", "mailto", "ftp"}:
            return super().convert_a(el, text, parent_tags)
        return text

    def convert_img(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        alt = " ".join((el.get("alt") or "").split())
        if not alt:
            return ""
        if "_inline" in parent_tags:
            return alt
        src = el.get("src") or ""
        file_name = "" if src.startswith("data:") else posixpath.basename(urlsplit(src).path)
        alt = alt.replace("[", r"\[").replace("]", r"\]")
        return f"![{alt}]({file_name})"

    def convert_br(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        return " " if "_inline" in parent_tags else "\n"


def _flatten_table(table: etree._Element) -> None:
    """One header row (th if the source had a thead), then plain rows: markdownify would
    otherwise start a new pipe table at every tbody/tfoot and break on <col>/<caption>."""
    caption = table.find("caption")
    if caption is not None:
        caption.tag = "p"
        _remove(caption)
        table.addprevious(caption)
    for node in [n for n in table if n.tag in {"col", "colgroup"}]:
        _remove(node)
    for group in [n for n in table if n.tag in {"thead", "tbody", "tfoot"}]:
        if group.tag == "thead":
            for cell in group.iter("td"):
                cell.tag = "th"
        for row in list(group):
            group.addprevious(row)
        _remove(group)
    for node in table:
        node.tail = None


def _render(
    docs: list[_Doc], toc: list[_TocEntry], notes: _Notes, warnings: list[str]
) -> tuple[str, int]:
    conv = _Converter()
    by_doc: dict[str, list[_TocEntry]] = {}
    for entry in toc:
        by_doc.setdefault(entry.doc, []).append(entry)
    parts: list[str] = []
    chapters = rendered = 0
    for doc in docs:
        entries = by_doc.get(doc.name, [])
        if not _has_content(doc.body) and (doc.had_notes or not entries):
            continue  # e.g. the endnotes file once its notes became footnotes
        chapters += _place_headings(doc, entries)
        parts.append(conv.element(doc.body))
        rendered += 1
        parts.extend(notes.definitions_for(doc.name, conv))
    leftovers = notes.leftovers(conv)
    if leftovers:
        warnings.append(f"{len(leftovers)} note(s) without a reference appended at the end")
    markdown = _cut_gutenberg("\n\n".join(parts))
    markdown = "\n\n".join([markdown, *leftovers])
    return _normalize(markdown), chapters if toc else rendered


def _cut_gutenberg(markdown: str) -> str:
    """Drop anything before a PG START marker line and after a PG END marker line."""
    start = _PG_START.search(markdown)
    if start:
        markdown = markdown[start.end() :]
    end = _PG_END.search(markdown)
    if end:
        markdown = markdown[: end.start()]
    return markdown


def _normalize(markdown: str) -> str:
    markdown = markdown.replace("\xa0", " ").replace("\u00ad", "").replace("\r", "")
    markdown = re.sub(r"[ \t]+$", "", markdown, flags=re.M)
    markdown = re.sub(r"\n{3,}", "\n\n", markdown)
    return markdown.strip("\n") + "\n"
