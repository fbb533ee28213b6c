"""Rendering: the markdownify converter, one book's markdown, the Gutenberg cut, normalizing."""

from __future__ import annotations

import posixpath
import re
from urllib.parse import urlsplit

from bs4 import Tag
from lxml import etree
from markdownify import ATX, MarkdownConverter

from doc_pipeline.core.epub.documents import _Doc, _has_content, _remove
from doc_pipeline.core.epub.footnotes import _Notes
from doc_pipeline.core.epub.toc import _place_headings, _TocEntry

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

_PG_START = re.compile(
    r"^[\\* ]*\*[\\* ]*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.I | re.M
)
_PG_END = re.compile(
    r"^[\\* ]*END OF (?:THE |THIS )?PROJECT GUTENBERG(?:'S| E-?BOOK).*$", re.I | re.M
)


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
