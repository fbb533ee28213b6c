"""Word extraction for coverage tests, independent of doc_pipeline.core.epub and .pdf.

`body_words(path)` reads a PDF with pdfminer.six (another reader than the pipeline's pdfium),
and an EPUB with zipfile + lxml only (spine order, Project Gutenberg
header/licence cut at the START/END markers, note-reference numbers skipped because the
converter turns them into `[^label]` markers). `words(text)` is the tokenizer to apply to
markdown or chunks: lowercase alphanumeric runs, ignoring markdown syntax (`#`, `*`, `|`,
`[^12]` footnote markers, link and image targets).
"""

from __future__ import annotations

import posixpath
import re
import unicodedata
import zipfile
from collections import Counter
from pathlib import Path
from urllib.parse import unquote

import lxml.html
from lxml import etree

_WORD = re.compile(r"[^\W_]+")
_FOOTNOTE_MARK = re.compile(r"\[\^[^\]\s]*\]:?")
_LINK_TARGET = re.compile(r"\]\([^)\s]*\)")
_INVISIBLE = dict.fromkeys(map(ord, "\u00ad\u200b\u200c\u200d\u2060\ufeff"), None)
_PG_START = re.compile(r"\*\*\*\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^*]*\*\*\*", re.I)
_PG_END = re.compile(r"(?:\*\*\*\s*)?END OF (?:THE |THIS )?PROJECT GUTENBERG", re.I)
_SKIP_TAGS = {"head", "script", "style", "svg", "math", "title"}
_BLOCK_TAGS = {
    "address",
    "article",
    "aside",
    "blockquote",
    "body",
    "br",
    "dd",
    "div",
    "dl",
    "dt",
    "figcaption",
    "figure",
    "footer",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "header",
    "hgroup",
    "hr",
    "li",
    "main",
    "nav",
    "ol",
    "p",
    "pre",
    "section",
    "table",
    "td",
    "th",
    "tr",
    "ul",
}
_OPF_NS = "{http://www.idpf.org/2007/opf}"
_CONTAINER_NS = "{urn:oasis:names:tc:opendocument:xmlns:container}"


def words(text: str) -> list[str]:
    """Lowercase alphanumeric tokens of text; markdown markup contributes nothing."""
    text = _FOOTNOTE_MARK.sub(" ", text)
    text = _LINK_TARGET.sub("] ", text)
    return _WORD.findall(text.translate(_INVISIBLE).casefold())


def body_words(path: Path) -> list[str]:
    """Tokens of the book's body text in reading order, PG boilerplate excluded."""
    if path.suffix.lower() == ".pdf":
        from pdfminer.high_level import extract_text

        # NFKC: pdfminer keeps ligatures ("ﬁ") that the pipeline's reader spells out.
        return words(_cut_gutenberg(unicodedata.normalize("NFKC", extract_text(path))))
    with zipfile.ZipFile(path) as zf:
        texts = [_document_text(zf.read(name)) for name in _spine_files(zf)]
    return words(_cut_gutenberg("\n".join(texts)))


def coverage(expected: list[str], actual: list[str]) -> float:
    """Share of `expected` tokens (as a multiset) that also occur in `actual`."""
    if not expected:
        return 1.0
    have = Counter(actual)
    return sum(min(n, have[w]) for w, n in Counter(expected).items()) / len(expected)


def _parser() -> etree.XMLParser:
    return etree.XMLParser(recover=True, resolve_entities=False, no_network=True, load_dtd=False)


def _spine_files(zf: zipfile.ZipFile) -> list[str]:
    container = etree.fromstring(zf.read("META-INF/container.xml"), _parser())
    rootfile = next(container.iter(f"{_CONTAINER_NS}rootfile"))
    opf_path = rootfile.get("full-path")
    opf = etree.fromstring(zf.read(opf_path), _parser())
    hrefs = {item.get("id"): item.get("href") for item in opf.iter(f"{_OPF_NS}item")}
    members = set(zf.namelist())
    names = []
    for ref in opf.iter(f"{_OPF_NS}itemref"):
        href = hrefs.get(ref.get("idref"))
        name = posixpath.normpath(posixpath.join(posixpath.dirname(opf_path), unquote(href or "")))
        if href and name in members:
            names.append(name)
    return names


def _document_text(data: bytes) -> str:
    root = etree.fromstring(data, _parser())
    if root is None:
        root = lxml.html.document_fromstring(data)
    body = next((el for el in root.iter() if _local(el) == "body"), root)
    parts: list[str] = []
    _collect(body, parts)
    return "".join(parts)


def _collect(el: etree._Element, parts: list[str]) -> None:
    """Text in document order; block boundaries and <br> separate words, inline tags don't."""
    tag = _local(el)
    if tag in _SKIP_TAGS or _is_noteref(el):
        return
    block = " " if tag in _BLOCK_TAGS else ""
    parts.append(block + (el.text or ""))
    for child in el:
        if isinstance(child.tag, str):
            _collect(child, parts)
        parts.append(child.tail or "")
    parts.append(block)


def _is_noteref(el: etree._Element) -> bool:
    types = " ".join(v for k, v in el.attrib.items() if k.endswith("type")).split()
    return "noteref" in types or "doc-noteref" in (el.get("role") or "").split()


def _local(el: etree._Element) -> str:
    return etree.QName(el).localname if isinstance(el.tag, str) else ""


def _cut_gutenberg(text: str) -> str:
    start = _PG_START.search(text)
    if start:
        text = text[start.end() :]
    end = _PG_END.search(text)
    if end:
        text = text[: end.start()]
    return text
