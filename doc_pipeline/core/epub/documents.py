"""Spine documents: safe parsing, entity defusing, cleanup and Gutenberg boilerplate removal."""

from __future__ import annotations

import html.entities
import posixpath
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import lxml.html
from ebooklib import epub
from lxml import etree

if TYPE_CHECKING:
    from doc_pipeline.core.epub.archive import _LenientReader


# A single spine document above this is skipped (with a warning): parsing and rendering a
# 60 MB chapter takes about a minute and hundreds of MB, and no real book needs it.
MAX_DOCUMENT_BYTES = 16 << 20

_OPS_NS = "{http://www.idpf.org/2007/ops}"

_HTML_MEDIA_TYPES = {"application/xhtml+xml", "text/html"}

_HEADING_TAGS = {f"h{n}" for n in range(1, 7)}

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

_ENTITY_REF = re.compile(rb"&([A-Za-z][A-Za-z0-9]{1,31});")
_XML_BUILTIN_ENTITIES = {b"amp", b"lt", b"gt", b"quot", b"apos"}

_SPACE_RUN = re.compile(r"\s+")


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
