"""PDFs made for the tests: a real book typeset with running headers, page numbers, words
hyphenated across line ends and an outline (reportlab), and hostile files written object by
object, as the EPUB hostile files were made. Each builder says what it put where, so a test can
check the reader against what is known to be on each page."""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

from reportlab.lib.pagesizes import A5
from reportlab.pdfbase.pdfmetrics import stringWidth
from reportlab.pdfgen.canvas import Canvas

from doc_pipeline.core.epub import epub_to_markdown

RUNNING_HEADER = "FLATLAND: A ROMANCE OF MANY DIMENSIONS"
_BODY_FONT, _BODY_SIZE, _LEADING = "Times-Roman", 10.5, 13.5
_HEADING_FONT, _HEADING_SIZE = "Times-Bold", 16
_MARGIN = 48


@dataclass
class Typeset:
    """What the builder put in the file."""

    pages: int = 0
    headings: list[str] = field(default_factory=list)
    hyphenated: list[str] = field(default_factory=list)  # words split across a line end
    first_words: dict[int, str] = field(default_factory=dict)  # page -> its first words
    words: list[str] = field(default_factory=list)  # every word of the body, in order


def book_blocks(epub: Path) -> list[tuple[str, str]]:
    """A real book as ("heading" | "paragraph", plain text) blocks, from the EPUB reader."""
    blocks = []
    for block in epub_to_markdown(epub).markdown.split("\n\n"):
        text = re.sub(r"[*_`\\]|\[\^?\d+\]|!\[[^\]]*\]\([^)]*\)", "", block).strip()
        text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", text)
        text = " ".join(text.split())
        if not text or text.startswith(("|", "---")):
            continue
        if text.startswith("#"):
            blocks.append(("heading", text.lstrip("# ")))
        else:
            blocks.append(("paragraph", text))
    return blocks


def typeset(path: Path, blocks: list[tuple[str, str]], *, outline: bool = True) -> Typeset:
    """Set `blocks` on A5 pages: a running header and a page number on every page, first-line
    indents, long words hyphenated at line ends, bold headings (and bookmarks, if `outline`)."""
    width, height = A5
    canvas = Canvas(str(path), pagesize=A5, pageCompression=1)
    canvas.setTitle("Flatland (typeset for the tests)")
    made = Typeset(pages=1)
    line_width = width - 2 * _MARGIN
    y = height - _MARGIN - 24

    def furniture() -> None:
        canvas.setFont("Helvetica", 8)
        canvas.drawCentredString(width / 2, height - _MARGIN + 12, RUNNING_HEADER)
        canvas.drawCentredString(width / 2, _MARGIN - 24, f"— {made.pages} —")

    def new_page() -> None:
        nonlocal y
        canvas.showPage()
        made.pages += 1
        y = height - _MARGIN - 24
        furniture()

    def line(text: str, font: str, size: float, x: float) -> None:
        nonlocal y
        if y < _MARGIN:
            new_page()
        if made.pages not in made.first_words:
            made.first_words[made.pages] = " ".join(text.split()[:4])
        canvas.setFont(font, size)
        canvas.drawString(x, y, text)
        y -= _LEADING if size == _BODY_SIZE else size * 1.4

    furniture()
    for number, (kind, text) in enumerate(blocks):
        if kind == "heading":
            if y < _MARGIN + 80:
                new_page()
            y -= 10
            if outline:
                canvas.bookmarkPage(f"h{number}")
                canvas.addOutlineEntry(text, f"h{number}", level=0)
            made.headings.append(text)
            line(text, _HEADING_FONT, _HEADING_SIZE, _MARGIN)
            continue
        made.words.extend(text.split())
        indent = 14.0
        for piece in _wrap(text, line_width - indent, line_width, made):
            line(piece, _BODY_FONT, _BODY_SIZE, _MARGIN + indent)
            indent = 0.0
    canvas.save()
    return made


def _wrap(text: str, first_width: float, width: float, made: Typeset) -> list[str]:
    lines: list[str] = []
    current = ""
    limit = first_width
    words = text.split()
    i = 0
    while i < len(words):
        word = words[i]
        candidate = f"{current} {word}".strip()
        if stringWidth(candidate, _BODY_FONT, _BODY_SIZE) <= limit:
            current = candidate
            i += 1
            continue
        head = _hyphen_head(word, current, limit)
        if head:  # split the word: its head ends this line, its tail starts the next
            lines.append(f"{current} {head}-".strip())
            made.hyphenated.append(word)
            words[i] = word[len(head) :]
        elif current:
            lines.append(current)
        else:
            lines.append(word)
            i += 1
        current = ""
        limit = width
    if current:
        lines.append(current)
    return lines


def _hyphen_head(word: str, current: str, limit: float) -> str | None:
    """The longest head of a long plain word that still fits the line with its hyphen."""
    if len(word) < 8 or not word.isalpha() or not current:
        return None
    for cut in range(len(word) - 3, 3, -1):
        if stringWidth(f"{current} {word[:cut]}-", _BODY_FONT, _BODY_SIZE) <= limit:
            return word[:cut]
    return None


# --- hostile files, written object by object -------------------------------------------------


def raw_pdf(objects: list[bytes], *, root: int = 1, trailer_extra: bytes = b"") -> bytes:
    """A PDF of `objects` (object n is objects[n-1]) with a correct cross-reference table."""
    out = bytearray(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % number + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % offset for offset in offsets)
    out += b"trailer\n<< /Size %d /Root %d 0 R %s>>\n" % (len(objects) + 1, root, trailer_extra)
    out += b"startxref\n%d\n%%%%EOF\n" % xref
    return bytes(out)


def _stream(data: bytes, extra: bytes = b"", *, compress: bool = False) -> bytes:
    if compress:
        data = zlib.compress(data, 9)
        extra += b" /Filter /FlateDecode"
    return b"<< /Length %d%s >>\nstream\n" % (len(data), extra) + data + b"\nendstream"


_FONT = b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>"


def text_page_objects(text: str, first: int) -> list[bytes]:
    """A page (object `first`) showing `text`, with its content stream and font after it."""
    content = b"BT /F1 12 Tf 72 700 Td (" + text.encode("latin-1") + b") Tj ET"
    return [
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R "
        b"/Resources << /Font << /F1 %d 0 R >> >> >>" % (first + 1, first + 2),
        _stream(content),
        _FONT,
    ]


def deflate_bomb(path: Path, inflated_mib: int = 1536) -> None:
    """One page whose content stream inflates to `inflated_mib` MiB (about 1,000:1)."""
    packer = zlib.compressobj(9)
    chunk = b" " * (1 << 20)
    packed = packer.compress(b"BT /F1 12 Tf 72 700 Td (boom) Tj ET\n")
    for _ in range(inflated_mib):
        packed += packer.compress(chunk)
    packed += packer.flush()
    page = (
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>"
    )
    path.write_bytes(
        raw_pdf(
            [
                b"<< /Type /Catalog /Pages 2 0 R >>",
                b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
                page,
                b"<< /Length %d /Filter /FlateDecode >>\nstream\n" % len(packed)
                + packed
                + b"\nendstream",
                _FONT,
            ]
        )
    )


def many_pages(path: Path, pages: int, *, declared: int | None = None) -> None:
    """`pages` one-line pages; the page tree's /Count says `declared` (default: the truth)."""
    kids = b" ".join(b"%d 0 R" % (3 + 3 * i) for i in range(pages))
    count = pages if declared is None else declared
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, count),
    ]
    for i in range(pages):
        objects.extend(text_page_objects(f"Page {i + 1} of a very long file.", 3 + 3 * i))
    path.write_bytes(raw_pdf(objects))


def page_tree_loop(path: Path) -> None:
    """The page tree's only kid is the tree itself."""
    path.write_bytes(
        raw_pdf(
            [b"<< /Type /Catalog /Pages 2 0 R >>", b"<< /Type /Pages /Kids [2 0 R] /Count 1 >>"]
        )
    )


def no_page_tree(path: Path) -> None:
    path.write_bytes(raw_pdf([b"<< /Type /Catalog >>"]))


def scripted(path: Path, marker: Path) -> None:
    """A readable page with JavaScript run on opening and a launch action that would write
    `marker`: a viewer that runs them is attacked; a reader must name them and run nothing."""
    js = f"app.alert('pwned'); this.exportDataObject({{cName: '{marker}'}});".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R /OpenAction 6 0 R /Names << /JavaScript 7 0 R >> >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        *text_page_objects(
            "A plain page of text that a viewer would show while its scripts ran.", 3
        ),
        b"<< /S /JavaScript /JS (%s) /Next 8 0 R >>" % js,
        b"<< /Names [(open) 6 0 R] >>",
        b"<< /S /Launch /F (/bin/sh) /Win << /F (cmd.exe) /P (/c echo pwned > %s) >> >>"
        % str(marker).encode(),
    ]
    path.write_bytes(raw_pdf(objects))


def scanned(path: Path, pages: int) -> None:
    """`pages` pages with no text layer, each drawn differently (a scan stands in as shapes):
    no two pages, and no two ranges of pages, have the same bytes."""
    kids = b" ".join(b"%d 0 R" % (3 + 2 * i) for i in range(pages))
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (kids, pages),
    ]
    for i in range(pages):
        shapes = b"\n".join(
            b"%d %d %d 12 re f" % (50 + 7 * i, 100 + 37 * row, 30 + (i * row) % 200)
            for row in range(12)
        )
        objects.append(
            b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents %d 0 R >>"
            % (4 + 2 * i)
        )
        objects.append(_stream(shapes))
    path.write_bytes(raw_pdf(objects))
