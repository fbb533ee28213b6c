"""The text layer of each page, as lines with their position and font, read by pdfium.

pypdfium2 binds pdfium, Chrome's PDF engine, built without a JavaScript engine: forms are never
initialised, so nothing in the file runs. Lines come in pdfium's text order (the content
order, which is the reading order for the PDFs books and papers are made as); `layout` turns
them into paragraphs and headings.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass
from pathlib import Path

import pypdfium2 as pdfium
import pypdfium2.raw as pdfium_c

from doc_pipeline.core.books import InvalidBookError

# pdfium's weight of a bold face (FPDFText_GetFontWeight: 400 regular, 700 bold).
_BOLD_WEIGHT = 600
# A generated space narrower than this share of the font size is letter spacing, not a space.
_SPURIOUS_SPACE_EM = 0.15


@dataclass(frozen=True)
class Line:
    page: int  # from 1
    text: str
    left: float  # PDF points; y grows upwards
    right: float
    top: float
    bottom: float
    size: float  # font size of its first letters
    bold: bool


@dataclass(frozen=True)
class Page:
    number: int  # from 1
    width: float
    height: float
    lines: tuple[Line, ...]
    characters: int  # text characters on the page (0: no text layer, e.g. a scan)


@dataclass(frozen=True)
class Outline:
    level: int  # 0 for a top entry
    title: str
    page: int | None  # from 1


@dataclass(frozen=True)
class TextLayer:
    pages: tuple[Page, ...]
    outline: tuple[Outline, ...]
    metadata: dict[str, str]


def read_text_layer(path: Path, name: str) -> TextLayer:
    try:
        document = pdfium.PdfDocument(path)
    except pdfium.PdfiumError as exc:
        raise InvalidBookError(f"{name}: broken PDF ({exc})") from exc
    try:
        pages = tuple(_read_page(document, index) for index in range(len(document)))
        return TextLayer(pages, _outline(document), _metadata(document))
    finally:
        document.close()


def _read_page(document: pdfium.PdfDocument, index: int) -> Page:
    page = document[index]
    try:
        width, height = page.get_size()
        text_page = page.get_textpage()
        try:
            lines, characters = _lines(text_page, index + 1)
        finally:
            text_page.close()
    finally:
        page.close()
    return Page(index + 1, width, height, tuple(lines), characters)


def _lines(text_page: pdfium.PdfTextPage, page_number: int) -> tuple[list[Line], int]:
    count = text_page.count_chars()
    if count <= 0:
        return [], 0
    text = text_page.get_text_range(0, count)
    if len(text) != count:  # characters outside the BMP: one per index instead
        text = "".join(chr(pdfium_c.FPDFText_GetUnicode(text_page.raw, i)) for i in range(count))
    text = text.replace("\x00", " ")  # same length: indices still match pdfium's
    lines: list[Line] = []
    characters = 0
    start = 0
    for raw_line in text.split("\r\n"):
        body = raw_line.strip()
        if body:
            characters += len("".join(body.split()))
            first = start + len(raw_line) - len(raw_line.lstrip())
            lines.append(_line(text_page, text, first, first + len(body) - 1, page_number))
        start += len(raw_line) + 2
    return lines, characters


def _line(text_page: pdfium.PdfTextPage, text: str, first: int, last: int, page: int) -> Line:
    boxes = [_box(text_page, i) for i in (first, last)]
    middle = (first + last) // 2
    while text[middle].isspace():  # a visible glyph: a space has no weight
        middle += 1
    sampled = {first, middle, last}
    weights = [pdfium_c.FPDFText_GetFontWeight(text_page.raw, i) for i in sampled]
    size = pdfium_c.FPDFText_GetFontSize(text_page.raw, first)
    return Line(
        page=page,
        text=_without_spurious_spaces(text_page, text, first, last, size),
        left=boxes[0][0],  # the first glyph's: pdfium joins a hyphenated line to the next
        right=boxes[1][1],
        top=max(b[2] for b in boxes),
        bottom=min(b[3] for b in boxes),
        size=round(size, 2),
        bold=all(w >= _BOLD_WEIGHT for w in weights),
    )


def _without_spurious_spaces(
    text_page: pdfium.PdfTextPage, text: str, first: int, last: int, size: float
) -> str:
    """The line's text without the spaces pdfium made up inside letter-spaced words (a title
    set as "A l i c e"): a generated space between glyphs closer than a sixth of an em."""
    dropped = []
    space = text.find(" ", first, last + 1)
    while space != -1:
        if pdfium_c.FPDFText_IsGenerated(text_page.raw, space) == 1:
            gap = _box(text_page, space + 1)[0] - _box(text_page, space - 1)[1]
            if gap < _SPURIOUS_SPACE_EM * size:
                dropped.append(space)
        space = text.find(" ", space + 1, last + 1)
    pieces, start = [], first
    for index in dropped:
        pieces.append(text[start:index])
        start = index + 1
    pieces.append(text[start : last + 1])
    return "".join(pieces)


def _box(text_page: pdfium.PdfTextPage, index: int) -> tuple[float, float, float, float]:
    left, right, bottom, top = (ctypes.c_double() for _ in range(4))
    pdfium_c.FPDFText_GetCharBox(text_page.raw, index, left, right, bottom, top)
    return left.value, right.value, top.value, bottom.value


def _outline(document: pdfium.PdfDocument) -> tuple[Outline, ...]:
    entries = []
    try:
        for item in document.get_toc(max_depth=6):
            title = (item.get_title() or "").strip()
            if title:
                index = item.get_dest().get_index() if item.get_dest() else None
                entries.append(Outline(item.level, title, None if index is None else index + 1))
    except (pdfium.PdfiumError, ValueError, AttributeError):
        return ()  # a broken outline: headings come from the fonts instead
    return tuple(entries)


def _metadata(document: pdfium.PdfDocument) -> dict[str, str]:
    try:
        found = document.get_metadata_dict(skip_empty=True)
    except pdfium.PdfiumError:
        return {}
    return {key: " ".join(value.split()) for key, value in found.items() if value.strip()}
