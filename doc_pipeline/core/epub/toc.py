"""The table of contents: flattening the nav/NCX and placing its titles as headings."""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from ebooklib import epub
from lxml import etree

from doc_pipeline.core.epub.documents import Doc
from doc_pipeline.core.epub.gutenberg import PG_LICENCE_TITLE
from doc_pipeline.core.epub.hrefs import resolve_href
from doc_pipeline.core.epub.markup import HEADING_TAGS, TOKEN

_HEADINGISH_XPATH = " or ".join(f"self::{t}" for t in sorted(HEADING_TAGS | {"hgroup"}))

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


@dataclass(frozen=True)
class TocEntry:
    title: str
    doc: str
    fragment: str | None
    depth: int


def toc_base_dir(book: epub.EpubBook) -> str:
    """ebooklib resolves nav hrefs against the OPF dir itself but leaves NCX hrefs relative
    to the NCX file."""
    if any(isinstance(item, epub.EpubNav) for item in book.get_items()):
        return ""
    for item in book.get_items():
        if isinstance(item, epub.EpubNcx):
            return posixpath.dirname(item.file_name)
    return ""


def flatten_toc(nodes: object, base: str, depth: int) -> list[TocEntry]:
    entries: list[TocEntry] = []
    for node in nodes if isinstance(nodes, (list, tuple)) else []:
        if isinstance(node, tuple) and len(node) == 2:
            section, children = node
            below = flatten_toc(children, base, depth + 1)
            own = _toc_entry(section, base, depth)
            if own is None and below and getattr(section, "title", None):
                # A TOC section without a link sits where its first child does.
                own = TocEntry(_clean(section.title), below[0].doc, below[0].fragment, depth)
            entries.extend([own, *below] if own else below)
        elif isinstance(node, list):
            entries.extend(flatten_toc(node, base, depth))
        else:
            entry = _toc_entry(node, base, depth)
            if entry:
                entries.append(entry)
    return entries


def _toc_entry(node: object, base: str, depth: int) -> TocEntry | None:
    title = _clean(getattr(node, "title", None) or "")
    doc, fragment = resolve_href(getattr(node, "href", None) or "", base)
    if not title or doc is None or PG_LICENCE_TITLE.search(title):
        return None
    return TocEntry(title, doc, fragment, depth)


def _clean(text: str) -> str:
    return " ".join(text.replace("\xa0", " ").split())


def _words(text: str) -> list[str]:
    return TOKEN.findall(text.casefold())


def place_headings(doc: Doc, entries: list[TocEntry]) -> int:
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
