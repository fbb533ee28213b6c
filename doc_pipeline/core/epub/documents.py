"""Spine documents: safe parsing, entity defusing and cleanup into plain element trees."""

from __future__ import annotations

import html.entities
import posixpath
import re
from dataclasses import dataclass, field

import lxml.html
from ebooklib import epub
from lxml import etree

from doc_pipeline.core.books import InvalidBookError
from doc_pipeline.core.epub.gutenberg import PG_LICENCE_TITLE, drop_pg_boilerplate
from doc_pipeline.core.epub.markup import remove, xml_parser
from doc_pipeline.core.epub.package import Package
from doc_pipeline.core.epub.safe_zip import ReaderLimits

_OPS_NS = "{http://www.idpf.org/2007/ops}"

_HTML_MEDIA_TYPES = {"application/xhtml+xml", "text/html"}

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

_ENTITY_REF = re.compile(rb"&([A-Za-z][A-Za-z0-9]{1,31});")
_XML_BUILTIN_ENTITIES = {b"amp", b"lt", b"gt", b"quot", b"apos"}

_SPACE_RUN = re.compile(r"\s+")
# C0 control characters other than tab, newline and carriage return: XML forbids them, so lxml
# refuses them in text. Never part of a multi-byte UTF-8 (or any 8-bit) character.
_CONTROL_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f]")


@dataclass
class Doc:
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


@dataclass
class _Loaded:
    docs: list[Doc]
    images: int  # <img>/<image> elements in the spine documents
    markup_errors: int  # parser errors recovered from (malformed markup), all documents


def load_documents(
    package: Package, warnings: list[str], book_name: str, limits: ReaderLimits
) -> _Loaded:
    book = package.book
    loaded = _Loaded([], 0, 0)
    pg_dropped = False
    for idref, _linear in book.spine:
        item = book.get_item_with_id(idref)
        if item is None:
            warnings.append(f"spine item {idref!r} is not in the manifest; skipped")
            continue
        path = posixpath.normpath(posixpath.join(package.opf_dir, item.file_name))
        if path in package.unsafe:
            warnings.append(
                f"spine item {item.file_name!r} has an unsafe path "
                f"({package.unsafe[path]}); skipped"
            )
            continue
        if path in package.missing:
            warnings.append(f"spine item {item.file_name!r} is missing from the archive; skipped")
            continue
        if isinstance(item, epub.EpubNav) or item.media_type not in _HTML_MEDIA_TYPES:
            continue
        if len(item.content or b"") > limits.max_chapter_bytes:
            raise InvalidBookError(
                f"{book_name}: chapter {item.file_name!r} is {len(item.content):,} bytes, "
                f"larger than the {limits.max_chapter_bytes:,}-byte limit for one chapter"
            )
        # item.content is the raw file; EpubHtml.get_content() would re-serialize it.
        try:
            parsed = _parse_document(item.content or b"", item.file_name, warnings)
        except _TooDeep:
            raise InvalidBookError(
                f"{book_name}: chapter {item.file_name!r} nests elements deeper than the "
                "parser allows (256 levels)"
            ) from None
        if parsed is None:
            continue
        body, title, n_images, n_errors = parsed
        loaded.images += n_images
        loaded.markup_errors += n_errors
        if PG_LICENCE_TITLE.search(title):
            pg_dropped = True
            continue
        pg_dropped |= drop_pg_boilerplate(body)
        doc = Doc(item.file_name, body)
        doc.index_ids()
        loaded.docs.append(doc)
    if pg_dropped:
        warnings.append("dropped Project Gutenberg header/licence boilerplate")
    return loaded


def _parse_document(
    data: bytes, name: str, warnings: list[str]
) -> tuple[etree._Element, str, int, int] | None:
    """Parse one spine document; return (body, <title> text, image count, markup errors
    recovered from) or None. Well-formed XHTML goes through the XML parser; anything else
    through the HTML parser, which is built for tag soup and recovers more of the text."""
    data = _defuse_entities(data, name, warnings)
    xhtml_parser = xml_parser()
    try:
        root = etree.fromstring(data, xhtml_parser)
    except (etree.XMLSyntaxError, ValueError):
        root = None
    errors = [e for e in xhtml_parser.error_log if e.level >= etree.ErrorLevels.ERROR]
    if any("depth" in e.message.lower() for e in errors):
        raise _TooDeep
    if errors or root is None or _localname(root) != "html":
        try:  # the HTML parser never loads DTDs either
            parser = lxml.html.HTMLParser(no_network=True, remove_comments=True, remove_pis=True)
            root = lxml.html.document_fromstring(data, parser=parser)
        except (etree.ParserError, etree.XMLSyntaxError, ValueError) as exc:
            warnings.append(f"spine item {name!r} is not parsable HTML ({exc}); skipped")
            return None
        if any("depth" in e.message.lower() for e in parser.error_log):
            raise _TooDeep
    if errors:
        warnings.append(
            f"{name}: malformed XHTML, recovered from {len(errors)} markup error(s) "
            f"(first: line {errors[0].line}: {errors[0].message.strip()})"
        )
    _strip_namespaces(root, name, warnings)
    title = " ".join(str(root.xpath("string(head/title)")).split())
    body = root.find("body")
    if body is None:
        body = root
    images = sum(1 for el in body.iter("img", "image"))
    for el in [el for el in body.iter() if el.tag in _DROP_TAGS]:
        remove(el)
    _collapse_whitespace(body)
    return body, title, images, len(errors)


class _TooDeep(Exception):
    """The parser gave up on a document nested deeper than it allows (libxml2's 256 levels,
    both parsers); its recovery would silently drop the rest of the document."""


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
    data, controls = _CONTROL_BYTES.subn(b"", data)
    if controls:
        warnings.append(f"{name}: removed {controls} control character(s)")
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
        remove(el)
    etree.cleanup_namespaces(root)
