"""Project Gutenberg boilerplate: the licence document, header/footer elements, marker lines."""

from __future__ import annotations

import re

from lxml import etree

from doc_pipeline.core.epub.markup import remove, tokens_of

_PG_IDS = {
    "pg-header",
    "pg-footer",
    "pg-machine-header",
    "pg-start-separator",
    "pg-end-separator",
    "project-gutenberg-license",
}
_PG_CLASSES = {"pg-boilerplate", "pgheader", "pgfooter"}
PG_LICENCE_TITLE = re.compile(r"full\s+project\s+gutenberg\W{0,3}\s*licen[cs]e", re.I)

_PG_START = re.compile(
    r"^[\\* ]*\*[\\* ]*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK.*$", re.I | re.M
)
_PG_END = re.compile(
    r"^[\\* ]*END OF (?:THE |THIS )?PROJECT GUTENBERG(?:'S| E-?BOOK).*$", re.I | re.M
)


def drop_pg_boilerplate(body: etree._Element) -> bool:
    doomed = [
        el for el in body.iter() if el.get("id") in _PG_IDS or tokens_of(el, "class") & _PG_CLASSES
    ]
    for el in doomed:
        if el.getparent() is not None:
            remove(el)
    return bool(doomed)


def is_pg_start(line: str) -> bool:
    """The "*** START OF THE PROJECT GUTENBERG EBOOK …" line."""
    return _PG_START.match(line.strip()) is not None


def is_pg_end(line: str) -> bool:
    return _PG_END.match(line.strip()) is not None


def cut_gutenberg(markdown: str) -> str:
    """Drop anything before a PG START marker line and after a PG END marker line."""
    start = _PG_START.search(markdown)
    if start:
        markdown = markdown[start.end() :]
    end = _PG_END.search(markdown)
    if end:
        markdown = markdown[: end.start()]
    return markdown
