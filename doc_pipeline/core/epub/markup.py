"""Safe XML parsing and the element and word helpers the reader's steps share."""

from __future__ import annotations

import re

from lxml import etree

HEADING_TAGS = {f"h{n}" for n in range(1, 7)}

# A word, for matching TOC titles to headings and for telling text from bare markup.
TOKEN = re.compile(r"[^\W_]+")


def xml_parser(recover: bool = True) -> etree.XMLParser:
    # Entities stay unexpanded and no DTD or network resource is ever loaded.
    return etree.XMLParser(
        recover=recover,
        resolve_entities=False,
        no_network=True,
        load_dtd=False,
        remove_comments=True,
        remove_pis=True,
    )


def remove(el: etree._Element) -> None:
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


def tokens_of(el: etree._Element, attr: str) -> set[str]:
    return set((el.get(attr) or "").split())


def epub_types(el: etree._Element) -> set[str]:
    return tokens_of(el, "epub-type") | tokens_of(el, "epub:type")


def has_content(el: etree._Element) -> bool:
    if any(text.strip() for text in el.itertext()):
        return True
    return any((img.get("alt") or "").strip() for img in el.iter("img"))
