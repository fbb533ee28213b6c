"""EPUB -> markdown on the real corpus (no Dagster)."""

from __future__ import annotations

import functools
import re
import zipfile
from collections import Counter
from pathlib import Path

import pytest

from doc_pipeline.core.books import ExtractedBook, InvalidBookError
from doc_pipeline.core.epub import epub_to_markdown
from doc_pipeline_tests.wordcount import body_words, coverage, words

CORPUS = Path(__file__).resolve().parents[2].parent / "shared" / "corpus"
PETER = "epub/pg14838-peter-rabbit.epub3.epub"
SHERLOCK = "epub/pg1661-sherlock-holmes.epub2.epub"
FLATLAND = "epub/se-abbott-flatland.epub3.epub"
KEYNES = "epub/se-keynes-economic-consequences-of-the-peace.epub3.epub"
GOOD_BOOKS = [PETER, SHERLOCK, FLATLAND, KEYNES]

pytestmark = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"corpus not found at {CORPUS}")

SHERLOCK_STORIES = [
    "ADVENTURE I. A SCANDAL IN BOHEMIA",
    "ADVENTURE II. THE RED-HEADED LEAGUE",
    "ADVENTURE III. A CASE OF IDENTITY",
    "ADVENTURE IV. THE BOSCOMBE VALLEY MYSTERY",
    "ADVENTURE V. THE FIVE ORANGE PIPS",
    "ADVENTURE VI. THE MAN WITH THE TWISTED LIP",
    "VII. THE ADVENTURE OF THE BLUE CARBUNCLE",
    "VIII. THE ADVENTURE OF THE SPECKLED BAND",
    "IX. THE ADVENTURE OF THE ENGINEER\u2019S THUMB",
    "X. THE ADVENTURE OF THE NOBLE BACHELOR",
    "XI. THE ADVENTURE OF THE BERYL CORONET",
    "XII. THE ADVENTURE OF THE COPPER BEECHES",
]


@functools.cache
def convert(relative: str) -> ExtractedBook:
    return epub_to_markdown(CORPUS / relative)


def headings(markdown: str) -> dict[str, int]:
    """Heading text -> level (first occurrence)."""
    found: dict[str, int] = {}
    for hashes, text in re.findall(r"^(#{1,6}) (.+)$", markdown, re.M):
        found.setdefault(text.strip(), len(hashes))
    return found


@pytest.mark.parametrize(
    ("relative", "title", "author", "language"),
    [
        (PETER, "The Tale of Peter Rabbit", "Beatrix Potter", "en"),
        (SHERLOCK, "The Adventures of Sherlock Holmes", "Arthur Conan Doyle", "en"),
        (FLATLAND, "Flatland", "Edwin A. Abbott", "en-GB"),
        (KEYNES, "The Economic Consequences of the Peace", "John Maynard Keynes", "en-GB"),
    ],
)
def test_metadata(relative: str, title: str, author: str, language: str) -> None:
    book = convert(relative)
    assert (book.title, book.author, book.language) == (title, author, language)
    assert book.chapter_count >= 1


@pytest.mark.parametrize("relative", GOOD_BOOKS)
def test_markdown_is_normalized(relative: str) -> None:
    md = convert(relative).markdown
    assert md.endswith("\n")
    assert not md.endswith("\n\n")
    assert "\n\n\n" not in md
    assert not re.search(r"[ \t]$", md, re.M)
    assert "\xa0" not in md
    assert "base64" not in md
    assert "data:" not in md
    lines = md.split("\n")
    for i, line in enumerate(lines):
        if line.startswith("#"):
            assert i == 0 or lines[i - 1] == "", f"no blank line before {line!r}"
            assert lines[i + 1] == "", f"no blank line after {line!r}"


def test_sherlock_story_titles_are_headings() -> None:
    book = convert(SHERLOCK)
    found = headings(book.markdown)
    for story in SHERLOCK_STORIES:
        assert found.get(story) == 2, story  # under the NCX's "CONTENTS" entry
    # a TOC anchor into the middle of a file (story IV shares a file with story III)
    md = book.markdown
    positions = [md.index(f"## ADVENTURE {n}.") for n in ("III", "IV", "V")]
    assert positions == sorted(positions)
    # the story's own <h3> was replaced, not duplicated
    assert md.count("A SCANDAL IN BOHEMIA") == 1


def test_flatland_part_and_section_headings() -> None:
    found = headings(convert(FLATLAND).markdown)
    assert found["Part I: This World"] == 2
    assert found["Part II: Other Worlds"] == 2
    assert found["I: Of the Nature of Flatland"] == 3
    assert found["XIII: How I Had a Vision of Lineland"] == 3
    assert found["Preface to the Second and Revised Edition, 1884"] == 1
    sections = [t for t, level in found.items() if level == 3]
    assert len(sections) == 22


def test_keynes_chapter_and_fragment_headings() -> None:
    found = headings(convert(KEYNES).markdown)
    for chapter in [
        "I: Introductory",
        "II: Europe Before the War",
        "III: The Conference",
        "IV: The Treaty",
        "V: Reparation",
        "VI: Europe After the Treaty",
        "VII: Remedies",
    ]:
        assert found.get(chapter) == 2, chapter
    # sub-chapters addressed by #fragment anchors inside one file
    assert found.get("I: Population") == 3
    assert found.get("III: Germany\u2019s Capacity to Pay") == 3


@pytest.mark.parametrize(
    ("relative", "story"),
    [
        (PETER, "Mr. McGregor"),
        (SHERLOCK, "Irene Adler"),
    ],
)
def test_gutenberg_boilerplate_dropped(relative: str, story: str) -> None:
    md = convert(relative).markdown
    assert story in md
    assert "Peter" in md or relative != PETER
    lowered = md.lower()
    for boilerplate in [
        "project gutenberg license",
        "project gutenberg™ license",
        "start of the project gutenberg",
        "start of this project gutenberg",
        "end of the project gutenberg",
        "end of this project gutenberg",
        "project gutenberg-tm",
    ]:
        assert boilerplate not in lowered, boilerplate


def footnotes(markdown: str) -> tuple[list[str], list[str]]:
    refs = re.findall(r"\[\^([^\]\s]+)\](?!:)", markdown)
    definitions = re.findall(r"^\[\^([^\]\s]+)\]:", markdown, re.M)
    return refs, definitions


def test_keynes_endnotes_become_footnotes() -> None:
    md = convert(KEYNES).markdown
    refs, definitions = footnotes(md)
    assert len(refs) >= 171
    assert len(definitions) == len(set(definitions)) == len(set(refs))
    assert set(refs) == set(definitions)
    assert "↩" not in md
    # the endnotes file is not emitted a second time as plain text
    note_1 = "In 1913 there were 25,843 emigrants from Germany"
    assert md.count(note_1) == 1
    assert re.search(r"^\[\^note-1\]: In 1913 there were", md, re.M)


def test_flatland_endnotes_become_footnotes() -> None:
    md = convert(FLATLAND).markdown
    refs, definitions = footnotes(md)
    assert sorted(refs) == sorted(definitions) == ["note-1", "note-2", "note-3", "note-4"]
    assert re.search(r"^\[\^note-1\]: The author desires me to add", md, re.M)
    # a multi-paragraph note keeps its later paragraphs indented under the definition
    assert "\n\n    Nevertheless, we perfectly well recognize" in md
    assert "# Endnotes" not in md


def test_keynes_tables_are_pipe_tables() -> None:
    md = convert(KEYNES).markdown
    # 9 tables in chapters, 4 inside endnotes (indented under their footnote definition)
    separators = re.findall(r"^(?: {4})?\|(?: --- \|)+$", md, re.M)
    assert len(separators) == 13
    assert re.search(r"^\| Railways \| 18,000,000 \| tons\. \|$", md, re.M)


def test_images_keep_alt_text_only() -> None:
    md = convert(FLATLAND).markdown
    assert "![A diagram of three triangles, points downwards." in md
    assert "](illustration-1.svg)" in md


@pytest.mark.parametrize("relative", GOOD_BOOKS)
def test_word_coverage(relative: str) -> None:
    expected = body_words(CORPUS / relative)
    actual = words(convert(relative).markdown)
    assert len(expected) > 500
    assert coverage(expected, actual) >= 0.98


def test_words_ignores_markdown_syntax() -> None:
    text = (
        "## A *bold* | table |[^note-12] ![Alt text](pic.png) [link](http://x.org/y)\n"
        "[^note-12]: The note."
    )
    assert words(text) == ["a", "bold", "table", "alt", "text", "link", "the", "note"]


@pytest.mark.parametrize(
    ("relative", "cause"),
    [
        ("malformed/bad-truncated-zip_from-pg1661-sherlock.epub", "truncated"),
        ("malformed/bad-no-container-xml_from-se-flatland.epub", "no META-INF/container.xml"),
    ],
)
def test_broken_books_raise_invalid_book_error(relative: str, cause: str) -> None:
    path = CORPUS / relative
    with pytest.raises(InvalidBookError) as excinfo:
        epub_to_markdown(path)
    message = str(excinfo.value)
    assert message.startswith(f"{path.name}: ")
    assert cause in message


@pytest.mark.parametrize(
    ("content", "cause"),
    [(b"", "empty"), (b"%PDF-1.7\n...", "PDF"), (b"just some text\n", "plain text")],
)
def test_not_a_zip_says_what_it_looks_like(tmp_path: Path, content: bytes, cause: str) -> None:
    path = tmp_path / "book.epub"
    path.write_bytes(content)
    with pytest.raises(InvalidBookError, match=rf"^book\.epub: .*{cause}"):
        epub_to_markdown(path)


def test_missing_opf_and_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "no-opf.epub"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mimetype", "application/epub+zip")
        zf.writestr(
            "META-INF/container.xml",
            (
                '<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container" version="1.0">'
                '<rootfiles><rootfile full-path="OEBPS/content.opf" '
                'media-type="application/oebps-package+xml"/></rootfiles></container>'
            ),
        )
    with pytest.raises(InvalidBookError, match=r"^no-opf\.epub: OPF .*missing"):
        epub_to_markdown(path)
    with pytest.raises(InvalidBookError, match=r"^absent\.epub: file not found"):
        epub_to_markdown(tmp_path / "absent.epub")


def test_unparsable_opf(tmp_path: Path) -> None:
    path = tmp_path / "bad-opf.epub"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("mimetype", "application/epub+zip")
        zf.writestr(
            "META-INF/container.xml",
            (
                '<container xmlns="urn:oasis:names:tc:opendocument:xmlns:container" version="1.0">'
                '<rootfiles><rootfile full-path="content.opf" '
                'media-type="application/oebps-package+xml"/></rootfiles></container>'
            ),
        )
        zf.writestr("content.opf", "this is not XML at all")
    with pytest.raises(InvalidBookError, match=r"^bad-opf\.epub: OPF package .*unparsable"):
        epub_to_markdown(path)


def _flatland_edited(tmp_path: Path, edit, member: str = "epub/text/chapter-4.xhtml") -> Path:
    """Flatland with `edit` applied to the text of one member (chapter 4 unless told);
    everything else untouched."""
    path = tmp_path / "flatland-edited.epub"
    with zipfile.ZipFile(CORPUS / FLATLAND) as source, zipfile.ZipFile(path, "w") as target:
        for info in source.infolist():
            data = source.read(info)
            if info.filename == member:
                data = edit(data.decode()).encode()
            target.writestr(info, data, zipfile.ZIP_DEFLATED)
    return path


def _nested(depth: int):
    """An edit that wraps a paragraph "deep" and chapter 4's first section in `depth` divs."""

    def nest(text: str) -> str:
        return text.replace("<section", "<div>" * depth + "<p>deep</p><section", 1).replace(
            "</section>", "</section>" + "</div>" * depth, 1
        )

    return nest


def test_malformed_xhtml_is_recovered_without_losing_words(tmp_path: Path) -> None:
    def unclose(text: str) -> str:  # drop closing </p> tags, open <b> tags never closed
        return text.replace("</p>", "", 5).replace("<p>", "<p><b>", 3)

    book = epub_to_markdown(_flatland_edited(tmp_path, unclose))
    assert book.markup_errors >= 3
    (warning,) = [w for w in book.warnings if "malformed XHTML" in w]
    assert warning.startswith("text/chapter-4.xhtml: malformed XHTML, recovered from ")
    assert Counter(words(book.markdown)) == Counter(words(convert(FLATLAND).markdown))
    assert convert(FLATLAND).markup_errors == 0


@pytest.mark.parametrize("depth", [300, 100_000])
def test_nesting_deeper_than_the_parser_allows_is_refused(tmp_path: Path, depth: int) -> None:
    with pytest.raises(InvalidBookError, match=r"^flatland-edited\.epub: chapter 'text/chap"):
        epub_to_markdown(_flatland_edited(tmp_path, _nested(depth)))


def test_nesting_within_the_limit_is_read(tmp_path: Path) -> None:
    book = epub_to_markdown(_flatland_edited(tmp_path, _nested(200)))
    assert "deep" in words(book.markdown)


_XXE_DOCTYPE = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    '<!DOCTYPE package [<!ENTITY xxe SYSTEM "file:///etc/passwd">'
    '<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">'
    '<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>\n'
)


@pytest.mark.parametrize("member", ["epub/content.opf", "epub/toc.xhtml"])
def test_entities_in_the_package_files_are_never_expanded(tmp_path: Path, member: str) -> None:
    """The OPF and nav are parsed by ebooklib: external entities stay unresolved there too."""

    def declare_and_use(text: str) -> str:
        text = text.split("\n", 1)[1]  # without its XML declaration
        text = text.replace(">Flatland<", ">Flatland &xxe;&lol3;<", 1)
        assert "&xxe;" in text
        return _XXE_DOCTYPE + text

    try:
        book = epub_to_markdown(_flatland_edited(tmp_path, declare_and_use, member))
    except InvalidBookError as error:  # refusing the package is fine; leaking is not
        assert "root:" not in str(error)
        return
    everything = " ".join([book.title, book.markdown, *book.warnings])
    assert "root:" not in everything and "nologin" not in everything
    assert "lollol" not in everything


def test_control_characters_are_removed_not_fatal(tmp_path: Path) -> None:
    def sprinkle(text: str) -> str:
        return text.replace("<p>", "<p>\x01", 2).replace("</p>", "\x00</p>", 1)

    book = epub_to_markdown(_flatland_edited(tmp_path, sprinkle))
    assert "text/chapter-4.xhtml: removed 3 control character(s)" in book.warnings
    assert not re.search(r"[\x00-\x08\ufffd]", book.markdown)
    assert Counter(words(book.markdown)) == Counter(words(convert(FLATLAND).markdown))


def test_a_zip_version_zipfile_cannot_read_is_invalid(tmp_path: Path) -> None:
    path = tmp_path / "v84.epub"
    raw = bytearray((CORPUS / PETER).read_bytes())
    raw[raw.rfind(b"PK\x01\x02") + 6] = 84  # "version needed to extract": 8.4
    path.write_bytes(raw)
    with pytest.raises(InvalidBookError, match=r"^v84\.epub: not a valid ZIP archive \(zip file"):
        epub_to_markdown(path)


def test_a_misplaced_mimetype_is_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "late-mimetype.epub"
    with zipfile.ZipFile(CORPUS / PETER) as source, zipfile.ZipFile(path, "w") as target:
        infos = source.infolist()
        for info in [*infos[1:], infos[0]]:  # mimetype last instead of first
            target.writestr(info, source.read(info))
    book = epub_to_markdown(path)
    assert "mimetype is not the archive's first member" in book.warnings
    assert book.markdown == convert(PETER).markdown
