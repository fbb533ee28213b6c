"""Rendering: the markdownify converter, then one book's documents and notes as markdown."""

from __future__ import annotations

import posixpath
import re
from urllib.parse import urlsplit

from bs4 import Tag
from lxml import etree
from markdownify import ATX, MarkdownConverter

from doc_pipeline.core.epub.documents import Doc
from doc_pipeline.core.epub.footnotes import Notes
from doc_pipeline.core.epub.gutenberg import cut_gutenberg
from doc_pipeline.core.epub.markup import has_content, remove
from doc_pipeline.core.epub.toc import TocEntry, place_headings

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

# A run of 1-6 '#' standing alone opens an ATX heading at the start of a line; 3+ backticks or
# tildes open a code fence.
_ATX_HASHES = re.compile(r"(^|\s)(#{1,6})(?=\s|$)")
_FENCE_RUN = re.compile(r"`{3,}|~{3,}")


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
        for lst in list(el.iter("ul", "ol")):
            _wrap_loose_list_content(lst)
        el.tag = "div"
        return self.convert(etree.tostring(el, method="html", encoding="unicode", with_tail=False))

    def escape(self, text: str, parent_tags: set[str]) -> str:
        """Also escape literal text that would turn into block structure for the chunker:
        a paragraph "# 5 Main Street" became an ATX heading, "```" opened a code fence."""
        text = super().escape(text, parent_tags)
        text = _ATX_HASHES.sub(r"\1\\\2", text)
        return _FENCE_RUN.sub(lambda m: "".join("\\" + c for c in m.group()), text)

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

    # markdownify strips the spaces next to a block element and renders an empty one as "",
    # so "A <div></div> B" came out "AB". An empty block still ends the line it is on.
    def convert_div(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        return super().convert_div(el, text, parent_tags) or "\n\n"

    convert_article = convert_section = convert_div

    def convert_p(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        return super().convert_p(el, text, parent_tags) or "\n\n"

    def convert_list(self, el: Tag, text: str, parent_tags: set[str]) -> str:
        # markdownify drops the line end after a list nested in an item, so the text after
        # it joined the last sub-item: "<li>x<ul><li>y</li></ul> z</li>" gave "- yz".
        markdown = super().convert_list(el, text, parent_tags)
        return markdown + "\n\n" if "li" in parent_tags else markdown

    convert_ol = convert_ul = convert_list

    def convert_hN(self, n: int, el: Tag, text: str, parent_tags: set[str]) -> str:
        # Same loss for a heading inside a table cell or heading: "<td>A <h3>B</h3></td>"
        # came out "AB" (markdownify renders it as bare text there).
        if "_inline" in parent_tags:
            return f" {text.strip()} "
        return super().convert_hN(n, el, text, parent_tags)


def _flatten_table(table: etree._Element) -> None:
    """One header row (th if the source had a thead), then plain rows: markdownify would
    otherwise start a new pipe table at every tbody/tfoot and break on <col>/<caption>.
    Text loose between rows is moved to a paragraph before the table, as browsers show it."""
    caption = table.find("caption")
    if caption is not None:
        caption.tag = "p"
        remove(caption)
        caption.tail = None  # remove() left it in the table
        table.addprevious(caption)
    loose = [table.text]  # in document order, as far as it matters
    table.text = None
    for node in [n for n in table if n.tag in {"col", "colgroup"}]:
        remove(node)
    for group in [n for n in table if n.tag in {"thead", "tbody", "tfoot"}]:
        if group.tag == "thead":
            for cell in group.iter("td"):
                cell.tag = "th"
        loose.append(group.text)
        for row in list(group):
            group.addprevious(row)
        remove(group)
    loose.append(table.text)
    table.text = None
    for node in table:
        loose.append(node.tail)
        node.tail = None
    text = " ".join(" ".join(t.split()) for t in loose if t and t.strip())
    if text:
        paragraph = etree.Element("p")
        paragraph.text = text
        table.addprevious(paragraph)


def _wrap_loose_list_content(lst: etree._Element) -> None:
    """Put text and elements that sit in a list outside any <li> into a <div> of their own:
    markdownify glued them to the next item's marker ("<ol>Note<li>x</li>" gave "Note1. x")."""
    children = list(lst)
    run = None  # the <div> collecting the current stretch of loose content
    if (lst.text or "").strip():
        run = etree.Element("div")
        run.text, lst.text = lst.text, None
        lst.insert(0, run)
    for child in children:
        if child.tag not in {"li", "ul", "ol"}:
            if run is None:
                run = etree.Element("div")
                child.addprevious(run)
            run.append(child)  # its tail comes along
            continue
        run = None
        if (child.tail or "").strip():
            run = etree.Element("div")
            run.text, child.tail = child.tail, None
            child.addnext(run)


def render(
    docs: list[Doc], toc: list[TocEntry], notes: Notes, warnings: list[str]
) -> tuple[str, int]:
    conv = _Converter()
    by_doc: dict[str, list[TocEntry]] = {}
    for entry in toc:
        by_doc.setdefault(entry.doc, []).append(entry)
    parts: list[str] = []
    chapters = rendered = 0
    for doc in docs:
        entries = by_doc.get(doc.name, [])
        if not has_content(doc.body) and (doc.had_notes or not entries):
            continue  # e.g. the endnotes file once its notes became footnotes
        chapters += place_headings(doc, entries)
        parts.append(conv.element(doc.body))
        rendered += 1
        parts.extend(notes.definitions_for(doc.name, conv.element))
    leftovers = notes.leftovers(conv.element)
    if leftovers:
        warnings.append(f"{len(leftovers)} note(s) without a reference appended at the end")
    markdown = cut_gutenberg("\n\n".join(parts))
    markdown = "\n\n".join([markdown, *leftovers])
    return _normalize(markdown), chapters if toc else rendered


def _normalize(markdown: str) -> str:
    markdown = markdown.replace("\xa0", " ").replace("\u00ad", "").replace("\r", "")
    markdown = re.sub(r"[ \t]+$", "", markdown, flags=re.M)
    markdown = re.sub(r"\n{3,}", "\n\n", markdown)
    return markdown.strip("\n") + "\n"
