"""From the lines of a PDF's pages to markdown: running headers and page numbers removed,
lines reflowed into paragraphs, words hyphenated across a line end joined, headings from the
outline or from the fonts, Project Gutenberg's licence dropped. Pure: lines in, text out.

Every paragraph remembers the pages its text came from, so the markdown carries where each
page begins (`page_starts`) and a chunk can say which pages it spans."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from doc_pipeline.core.epub.gutenberg import is_pg_end, is_pg_start
from doc_pipeline.core.pdf.text_layer import Line, Outline, Page

# A line that is only a page number: "12", "- 12 -", "xiv", "Page 12", "12 of 300".
_PAGE_NUMBER = re.compile(
    r"^[\s\-–—(\[]*(?:page\s+)?(?:\d{1,5}|[ivxlcdm]{1,8})(?:\s*(?:of|/)\s*\d{1,5})?[\s\-–—)\]]*$",
    re.I,
)
_SENTENCE_END = re.compile(r"[.!?:;\"”’»)\]…]$")
# Line-end hyphens; \x02 is pdfium's mark for a soft one (never part of the word).
_HYPHENS = ("-", "\u00ad", "\u2010", "\x02")
_PDFIUM_HYPHEN = re.compile(r"([^\W\d_]+)\ufffe\s*([^\W\d_]+)")
_WORD = re.compile(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*")
# A block whose first characters markdown would read as structure is escaped.
_STRUCTURE = re.compile(r"^(?:#{1,6}(?:\s|$)|>|[-*+]\s|\d{1,9}[.)]\s|```|~~~|=+\s*$|-+\s*$|\|)")
# Share of the pages between a header's first and last appearance it must appear on.
_RUNNING_DENSITY = 0.4
_MAX_HEADING_WORDS = 20
_MAX_BOLD_HEADING_WORDS = 12


@dataclass
class _Block:
    kind: str  # "heading" or "paragraph"
    level: int = 0
    parts: list[tuple[int, str]] = field(default_factory=list)  # (page, text) in order
    closed: bool = False

    @property
    def page(self) -> int:
        return self.parts[0][0]


@dataclass(frozen=True)
class Laid:
    markdown: str
    page_starts: tuple[tuple[int, int], ...]
    headings: int
    title: str | None  # the first heading, for a PDF without a title in its metadata
    removed_running_lines: int


def lay_out(
    pages: Sequence[Page],
    outline: Sequence[Outline] = (),
    transcribed: Mapping[int, str] | None = None,
) -> Laid:
    """The markdown of `pages`; the pages in `transcribed` (page -> markdown, from a model) have
    no text layer and are laid out from their transcription."""
    running = _running_lines(pages)
    lines = [line for page in pages for line in page.lines if id(line) not in running]
    lines = _between_gutenberg_markers(lines)
    dictionary = _words(lines)
    # pdfium joins a line ending in a hyphen to the next and marks the hyphen U+FFFE.
    lines = [
        replace(line, text=_PDFIUM_HYPHEN.sub(lambda m: _rejoin(m, dictionary), line.text))
        for line in lines
    ]
    if not lines and not transcribed:
        return Laid("", (), 0, None, len(running))
    body_size = _body_size(lines)
    margins = _left_margins(lines, body_size)
    right_edge = _right_edge(lines, body_size)
    heading_of = (
        _outline_headings(lines, outline) if outline else _font_headings(lines, body_size)
    )
    blocks = _blocks(lines, heading_of, body_size, margins, right_edge, dictionary)
    blocks = _insert_missing_outline_headings(blocks, lines, outline)
    blocks = _insert_transcribed_pages(blocks, transcribed or {})
    markdown, page_starts = _render(blocks)
    headings = [b for b in blocks if b.kind == "heading"]
    title = " ".join(text for _, text in headings[0].parts) if headings else None
    return Laid(markdown, page_starts, len(headings), title, len(running))


def _running_lines(pages: Sequence[Page]) -> set[int]:
    """Ids of the lines that are running headers or footers or page numbers: the top-most and
    bottom-most two lines of a page whose text (digits aside) comes back on most pages."""
    candidates: list[tuple[int, Line, str, bool]] = []
    for page in pages:
        by_height = sorted(page.lines, key=lambda line: -line.top)
        edge = by_height[:2] + [line for line in by_height[-2:] if line not in by_height[:2]]
        highest, lowest = (by_height[0].top, by_height[-1].top) if by_height else (0.0, 0.0)
        for line in edge:
            outermost = line.top in (highest, lowest)  # also beside another line on that row
            candidates.append((page.number, line, _running_key(line.text), outermost))
    running: set[int] = set()
    seen_on: dict[str, set[int]] = {}
    for number, _, key, _ in candidates:
        seen_on.setdefault(key, set()).add(number)
    for _, line, key, outermost in candidates:
        on = seen_on[key]
        span = max(on) - min(on) + 1
        repeated = len(on) >= 3 and len(on) >= _RUNNING_DENSITY * span
        if repeated or (outermost and _PAGE_NUMBER.match(line.text)):
            running.add(id(line))
    return running


def _running_key(text: str) -> str:
    return re.sub(r"\s+", " ", re.sub(r"\d+", "#", text.lower())).strip()


def _between_gutenberg_markers(lines: list[Line]) -> list[Line]:
    start = next((i for i, line in enumerate(lines) if is_pg_start(line.text)), None)
    if start is not None:
        lines = lines[start + 1 :]
    end = next((i for i, line in enumerate(lines) if is_pg_end(line.text)), None)
    return lines[:end] if end is not None else lines


def _body_size(lines: Sequence[Line]) -> float:
    sizes: Counter[float] = Counter()
    for line in lines:
        sizes[round(line.size, 1)] += len(line.text)
    return sizes.most_common(1)[0][0] if sizes else 0.0


def _left_margins(lines: Sequence[Line], body_size: float) -> dict[int, float]:
    """Each page's left margin: the left edge most of its body lines start at."""
    by_page: dict[int, Counter[int]] = {}
    for line in lines:
        if abs(line.size - body_size) <= 0.5:
            by_page.setdefault(line.page, Counter())[round(line.left)] += 1
    everywhere = Counter()
    for counts in by_page.values():
        everywhere.update(counts)
    default = float(everywhere.most_common(1)[0][0]) if everywhere else 0.0
    margins = {}
    for page, counts in by_page.items():
        left, times = counts.most_common(1)[0]
        margins[page] = float(left) if times >= 3 else default
    return margins


def _right_edge(lines: Sequence[Line], body_size: float) -> dict[int, float]:
    by_page: dict[int, list[float]] = {}
    for line in lines:
        if abs(line.size - body_size) <= 0.5:
            by_page.setdefault(line.page, []).append(line.right)
    edges = {page: _high(rights) for page, rights in by_page.items()}
    return edges


def _high(values: list[float]) -> float:
    values = sorted(values)
    return values[int(0.9 * (len(values) - 1))]


def _words(lines: Iterable[Line]) -> set[str]:
    """Every word as printed inside a line: the document's own spelling, for hyphenation."""
    found: set[str] = set()
    for line in lines:
        found.update(word.lower() for word in _WORD.findall(line.text.replace("\ufffe", " ")))
    return found


def _rejoin(match: re.Match, dictionary: set[str]) -> str:
    head, tail = match.group(1), match.group(2)
    return head + ("-" if _keeps_hyphen(head, tail, dictionary) else "") + tail


def _keeps_hyphen(head: str, tail: str, dictionary: set[str]) -> bool:
    """A word hyphenated across a line end keeps its hyphen when the document prints it with
    one elsewhere ("daisy-chain") and never without; otherwise the hyphen was the line's."""
    return f"{head}-{tail}".lower() in dictionary and (head + tail).lower() not in dictionary


def _font_headings(lines: Sequence[Line], body_size: float) -> dict[int, tuple[int, int]]:
    """(Heading level, -1) by line id: lines set larger than the body (or bold and short);
    consecutive lines of one size make one heading."""
    candidates = [
        line
        for line in lines
        if len(line.text.split()) <= _MAX_HEADING_WORDS
        and (
            line.size >= 1.15 * body_size
            or (line.bold and line.size >= body_size - 0.5 and _looks_like_a_title(line.text))
        )
        and not line.text.strip().startswith(("*", "•"))
    ]
    sizes = sorted({round(line.size) for line in candidates if line.size >= 1.15 * body_size})
    sizes.reverse()
    levels = {size: min(rank + 1, 3) for rank, size in enumerate(sizes)}
    bold_level = min(len(sizes) + 1, 4)
    return {id(line): (levels.get(round(line.size), bold_level), -1) for line in candidates}


def _looks_like_a_title(text: str) -> bool:
    """A bold line at the body's size is a heading only if it reads like one: short, starting
    with a capital or a number, not ending or opening like a sentence or a quotation."""
    text = text.strip()
    return (
        len(text.split()) <= _MAX_BOLD_HEADING_WORDS
        and (text[:1].isupper() or text[:1].isdigit())
        and not text.endswith((",", "-"))
        and not _SENTENCE_END.search(text)
    )


def _outline_headings(
    lines: Sequence[Line], outline: Sequence[Outline]
) -> dict[int, tuple[int, int]]:
    """(Heading level, outline entry) by line id: the lines an entry's title is printed as."""
    by_page: dict[int, list[Line]] = {}
    for line in lines:
        by_page.setdefault(line.page, []).append(line)
    found: dict[int, tuple[int, int]] = {}
    for number, entry in enumerate(outline):
        if entry.page is None:
            continue
        wanted = _normal(entry.title)
        for page in (entry.page, entry.page + 1):
            matched = _match_title(by_page.get(page, []), wanted)
            if matched:
                for line in matched:
                    found[id(line)] = (min(entry.level + 1, 6), number)
                break
    return found


def _match_title(lines: list[Line], wanted: str) -> list[Line]:
    """The run of consecutive lines whose text together is the title."""
    for i in range(len(lines)):
        joined = ""
        for j in range(i, min(i + 4, len(lines))):
            joined = (joined + " " + _normal(lines[j].text)).strip()
            if joined == wanted:
                return lines[i : j + 1]
            if not wanted.startswith(joined):
                break
    return []


def _normal(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


def _blocks(
    lines: Sequence[Line],
    heading_of: dict[int, tuple[int, int]],
    body_size: float,
    margins: dict[int, float],
    right_edge: dict[int, float],
    dictionary: set[str],
) -> list[_Block]:
    blocks: list[_Block] = []
    previous: Line | None = None
    heading_group = None
    for line in lines:
        level, group = heading_of.get(id(line), (None, None))
        current = blocks[-1] if blocks else None
        if level is not None:
            same_heading = (
                current is not None
                and current.kind == "heading"
                and current.level == level
                and group == heading_group
                and previous is not None
                and previous.page == line.page
                and previous.bottom - line.top < 0.8 * line.size  # a wrapped heading's leading
                and not current.closed
            )
            if same_heading:
                page, text = current.parts[-1]
                current.parts[-1] = (page, f"{text} {line.text}")
            else:
                blocks.append(_Block("heading", level, [(line.page, line.text)]))
        elif (
            current is None
            or current.kind == "heading"
            or current.closed
            or _starts_paragraph(line, previous, body_size, margins)
        ):
            blocks.append(_Block("paragraph", parts=[(line.page, line.text)]))
        else:
            _continue(current, line, dictionary)
        blocks[-1].closed = level is None and _ends_paragraph(line, body_size, right_edge)
        previous, heading_group = line, group
    return blocks


def _starts_paragraph(
    line: Line, previous: Line | None, body_size: float, margins: dict[int, float]
) -> bool:
    if previous is None:
        return True
    margin = margins.get(line.page, line.left)
    indented = margin + 0.3 * body_size < line.left < margin + 8 * body_size
    if indented or abs(line.size - previous.size) > 0.1 * max(body_size, 1.0):
        return True
    if previous.page == line.page:
        spacing = previous.bottom - line.top
        return spacing > 1.2 * max(body_size, 1.0)  # a blank line's worth of space
    return False


def _ends_paragraph(line: Line, body_size: float, right_edge: dict[int, float]) -> bool:
    """A line well short of the right edge that ends a sentence ends its paragraph."""
    edge = right_edge.get(line.page)
    if edge is None:
        return True
    short = line.right < edge - 2.5 * max(body_size, 1.0)
    return short and bool(_SENTENCE_END.search(line.text.rstrip()))


def _continue(block: _Block, line: Line, dictionary: set[str]) -> None:
    page, text = block.parts[-1]
    joined_word = _hyphen_join(text, line.text, dictionary)
    if joined_word is not None:
        before, after = joined_word
        if page == line.page:
            block.parts[-1] = (page, before + after)
        else:  # the word's end belongs to the next page
            block.parts[-1] = (page, before)
            block.parts.append((line.page, after))
        return
    if page == line.page:
        block.parts[-1] = (page, f"{text} {line.text}")
    else:
        block.parts[-1] = (page, text + " ")
        block.parts.append((line.page, line.text))


def _hyphen_join(text: str, next_text: str, dictionary: set[str]) -> tuple[str, str] | None:
    """(text, next text) with a word hyphenated across the line end put back together, or None
    when the line does not end in a hyphen after a letter. The hyphen is kept when the
    document prints the word with it elsewhere ("daisy-chain"), dropped otherwise."""
    if not text.endswith(_HYPHENS) or len(text) < 2 or not text[-2].isalpha():
        return None
    head = re.search(r"[^\W\d_]+(?:[-'’][^\W\d_]+)*$", text[:-1])
    tail = re.match(r"[^\W\d_]+", next_text)
    if head is None or tail is None:
        return None
    keep = _keeps_hyphen(head.group(), tail.group(), dictionary)
    if text.endswith("\x02") or text.endswith("\u00ad"):
        keep = False  # a soft hyphen is never part of the word
    return (text[:-1] + ("-" if keep else ""), next_text)


def _insert_missing_outline_headings(
    blocks: list[_Block],
    lines: Sequence[Line],
    outline: Sequence[Outline],
) -> list[_Block]:
    """An outline entry whose title is not printed on its page still starts a section there."""
    if not outline:
        return blocks
    printed = {_normal(" ".join(t for _, t in b.parts)) for b in blocks if b.kind == "heading"}
    pages_with_text = {line.page for line in lines}
    missing = [
        entry
        for entry in outline
        if entry.page in pages_with_text and _normal(entry.title) not in printed
    ]
    for entry in missing:
        at = next((i for i, b in enumerate(blocks) if b.page >= entry.page), len(blocks))
        heading = _Block("heading", min(entry.level + 1, 6), [(entry.page, entry.title)])
        blocks.insert(at, heading)
    return blocks


def _insert_transcribed_pages(blocks: list[_Block], transcribed: Mapping[int, str]) -> list[_Block]:
    """A transcribed page's paragraphs and headings, where its page falls in the document."""
    for page in sorted(transcribed):
        at = next((i for i, b in enumerate(blocks) if b.page > page), len(blocks))
        new = []
        for paragraph in re.split(r"\n\s*\n", transcribed[page]):
            text = " ".join(paragraph.split())
            heading = re.match(r"(#{1,6}) +(.+)", text)
            if heading:
                new.append(_Block("heading", len(heading.group(1)), [(page, heading.group(2))]))
            elif text:
                new.append(_Block("paragraph", parts=[(page, text)]))
        blocks[at:at] = new
    return blocks


def _render(blocks: Sequence[_Block]) -> tuple[str, tuple[tuple[int, int], ...]]:
    out: list[str] = []
    starts: list[tuple[int, int]] = []
    offset = 0
    last_page = 0
    for block in blocks:
        if out:
            out.append("\n\n")
            offset += 2
        prefix = "#" * block.level + " " if block.kind == "heading" else ""
        first = True
        for page, text in block.parts:
            piece = _clean(text)
            if first:
                piece = prefix + (piece if prefix else _escape(piece))
                first = False
            if page != last_page:
                starts.append((offset, page))
                last_page = page
            out.append(piece)
            offset += len(piece)
    return "".join(out), tuple(starts)


def _clean(text: str) -> str:
    return (
        text.replace("\x02", "-").replace("\ufffe", "-").replace("\u00ad", "").replace("\r", " ")
    )


def _escape(text: str) -> str:
    return "\\" + text if _STRUCTURE.match(text) else text

