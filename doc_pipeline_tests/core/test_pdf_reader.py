"""The PDF reader on real text: the corpus PDF against an independent reader (pdfminer.six),
and a real book typeset into a PDF with running headers, page numbers, words hyphenated across
line ends and an outline, against what the typesetter put on each page."""

from __future__ import annotations

import re
import unicodedata
from collections import Counter
from pathlib import Path

import pypdf
import pytest
from pdfminer.high_level import extract_pages, extract_text
from pdfminer.layout import LTTextContainer

from doc_pipeline.core.books import InvalidBookError, PageIndex
from doc_pipeline.core.chunk_rows import chunk_rows
from doc_pipeline.core.chunking import ChunkingConfig, chunk_markdown
from doc_pipeline.core.pdf import PdfLimits, page_list, pdf_to_markdown
from doc_pipeline_tests.conftest import CORPUS
from doc_pipeline_tests.pdf_files import RUNNING_HEADER, Typeset, book_blocks, typeset

ALICE = CORPUS / "pdf" / "pg11-alice-in-wonderland.pdf"
FLATLAND = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"
IMAGE_ONLY = CORPUS / "pdf-hostile" / "image-only.pdf"
HEADING = re.compile(r"^#{1,6} .*$", re.M)


def words(text: str) -> Counter[str]:
    text = unicodedata.normalize("NFKC", text).lower()  # ligatures: "ﬁ" is "fi"
    return Counter(re.findall(r"[^\W\d_]+", text))


def body_by_pdfminer(path: Path) -> str:
    text = extract_text(path)
    start = text.index("\n", text.index("*** START OF THE PROJECT GUTENBERG"))
    return text[start : text.index("*** END OF THE PROJECT GUTENBERG")]


@pytest.fixture(scope="module")
def alice():
    return pdf_to_markdown(ALICE)


def test_the_corpus_pdf_keeps_its_body_words_and_drops_the_licence(alice) -> None:
    expected = words(body_by_pdfminer(ALICE))
    found = words(alice.markdown)
    missing = expected - found
    assert sum(missing.values()) <= 0.02 * sum(expected.values()), missing.most_common(20)
    # Nothing the independent reader did not see either (no header, footer or licence text).
    assert sum((found - expected).values()) <= 0.01 * sum(expected.values())
    assert "gutenberg" not in alice.markdown.lower()
    assert (alice.title, alice.author, alice.pages) == (
        "Alice's Adventures in Wonderland",
        "Lewis Carroll",
        51,
    )
    chapters = [h for h in HEADING.findall(alice.markdown) if h.startswith("## CHAPTER")]
    assert len(chapters) == 12 and chapters[0] == "## CHAPTER I. Down the Rabbit-Hole"


def word_list(text: str) -> list[str]:
    return re.findall(r"[^\W\d_]+", unicodedata.normalize("NFKC", text).lower())


def test_every_chunk_spans_the_pages_its_words_are_printed_on(alice) -> None:
    printed = {
        number: set(
            word_list("".join(el.get_text() for el in page if isinstance(el, LTTextContainer)))
        )
        for number, page in enumerate(extract_pages(ALICE), start=1)
    }
    pieces = [(c, {}) for c in chunk_markdown(alice.markdown, ChunkingConfig(200, 400))]
    rows = chunk_rows("doc", pieces, alice.page_starts)
    assert len(rows) > 40
    for row in rows:
        start, end = row["metadata"]["page_start"], row["metadata"]["page_end"]
        assert 1 <= start <= end <= 51
        body = [p for p in row["content"].split("\n\n") if not HEADING.match(p)]
        opening, closing = word_list(body[0])[:4], word_list(body[-1])[-4:]
        # The chunk's first words are printed on its first page (or the next, when the chunk
        # opens with headings at the foot of a page), its last words on its last page.
        # (pdfminer orders a page's text its own way, so the words are compared as a set.)
        assert any(set(opening) <= printed[p] for p in (start, start + 1)), (row, opening)
        assert set(closing) <= printed[end], (row["chunk_index"], end, closing)
    assert [r["metadata"]["page_start"] for r in rows] == sorted(
        r["metadata"]["page_start"] for r in rows
    )


@pytest.fixture(scope="module", params=[True, False], ids=["outline", "fonts"])
def typeset_flatland(request, tmp_path_factory) -> tuple[Typeset, object]:
    path = tmp_path_factory.mktemp("typeset") / "flatland.pdf"
    made = typeset(path, book_blocks(FLATLAND), outline=request.param)
    return made, pdf_to_markdown(path)


def test_running_headers_page_numbers_and_hyphens_leave_exactly_the_books_words(
    typeset_flatland,
) -> None:
    made, book = typeset_flatland
    assert made.pages > 60 and len(made.hyphenated) > 100
    body = HEADING.sub("", book.markdown)
    assert words(body) == words(" ".join(made.words))
    assert RUNNING_HEADER not in book.markdown
    assert not re.search(r"— \d+ —", book.markdown)
    joined = words(book.markdown)
    assert [w for w in made.hyphenated if not joined[w.lower()]] == []
    assert any("running header" in warning for warning in book.warnings)


def test_headings_come_from_the_outline_or_the_fonts(typeset_flatland) -> None:
    made, book = typeset_flatland
    headings = [line.lstrip("#").strip() for line in HEADING.findall(book.markdown)]
    assert headings == made.headings
    assert book.chapter_count == len(made.headings)


def test_each_page_starts_where_the_typesetter_began_it(typeset_flatland) -> None:
    made, book = typeset_flatland
    assert [page for _, page in book.page_starts] == list(range(1, made.pages + 1))
    for offset, page in book.page_starts:
        assert book.markdown[offset:].lstrip("# ").startswith(made.first_words[page][:12])


def test_a_pdf_with_some_scanned_pages_is_read_with_a_warning_naming_them(tmp_path) -> None:
    writer = pypdf.PdfWriter(clone_from=ALICE)
    writer.append(IMAGE_ONLY, pages=(0, 2))
    path = tmp_path / "alice-with-scans.pdf"
    writer.write(path)
    book = pdf_to_markdown(path)
    assert any(
        w.startswith("no text layer on 2 of 53 pages (pages 52-53)") for w in book.warnings
    ), book.warnings
    assert words(book.markdown) == words(pdf_to_markdown(ALICE).markdown)


def test_an_owner_password_alone_does_not_stop_reading(tmp_path) -> None:
    writer = pypdf.PdfWriter(clone_from=ALICE)
    writer.encrypt(user_password="", owner_password="owner-secret", algorithm="AES-128")
    path = tmp_path / "restricted.pdf"
    writer.write(path)
    assert pdf_to_markdown(path).markdown == pdf_to_markdown(ALICE).markdown


def test_a_user_password_is_refused_without_guessing(tmp_path) -> None:
    writer = pypdf.PdfWriter(clone_from=ALICE)
    writer.encrypt(user_password="reader-secret", algorithm="AES-128")
    path = tmp_path / "locked.pdf"
    writer.write(path)
    with pytest.raises(InvalidBookError, match=r"^locked\.pdf: password-protected PDF"):
        pdf_to_markdown(path)


@pytest.mark.parametrize(
    ("limits", "says"),
    [
        (PdfLimits(max_pages=50), "51 pages; the limit is 50 (PdfLimits.max_pages)"),
        (PdfLimits(max_stream_bytes=10_000), "PdfLimits.max_stream_bytes"),
        (PdfLimits(max_inflated_bytes=500_000), "PdfLimits.max_inflated_bytes"),
        (PdfLimits(max_objects=100), "the limit is 100 (PdfLimits.max_objects)"),
    ],
)
def test_each_limit_refuses_a_pdf_over_it(limits: PdfLimits, says: str) -> None:
    with pytest.raises(InvalidBookError) as refused:
        pdf_to_markdown(ALICE, limits=limits)
    assert str(refused.value).startswith("pg11-alice-in-wonderland.pdf: ")
    assert says in str(refused.value)


def test_page_spans_and_page_lists() -> None:
    pages = PageIndex(((0, 1), (100, 2), (250, 4)))
    assert pages.span(0, 100) == (1, 1)
    assert pages.span(50, 101) == (1, 2)
    assert pages.span(260, 300) == (4, 4)
    assert PageIndex(()).span(0, 10) is None
    assert page_list([1, 2, 3, 7]) == "pages 1-3, 7"
    assert page_list([5]) == "page 5"
