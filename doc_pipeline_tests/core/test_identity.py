"""What identifies a book across versions (core/identity.py): the identifiers a file carries for
itself, and how much text two versions share."""

from __future__ import annotations

import shutil

from doc_pipeline.core.identity import SAME_BOOK_OVERLAP, book_identifiers, text_overlap
from doc_pipeline_tests.conftest import CORPUS
from doc_pipeline_tests.pdf_files import _stream, raw_pdf, text_page_objects

FLATLAND = CORPUS / "epub" / "se-abbott-flatland.epub3.epub"

XMP = (
    b'<?xpacket begin="" id="W5M0MpCehiHzreSzNTczkc9d"?><x:xmpmeta xmlns:x="adobe:ns:meta/">'
    b'<rdf:RDF xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description'
    b' xmlns:xmpMM="http://ns.adobe.com/xap/1.0/mm/" xmpMM:DocumentID="uuid:1b2c-paper"/>'
    b'</rdf:RDF></x:xmpmeta><?xpacket end="w"?>'
)


def _pdf(path, *, trailer_extra: bytes = b"", xmp: bool = False) -> None:
    catalog = b"<< /Type /Catalog /Pages 2 0 R" + (b" /Metadata 6 0 R" if xmp else b"") + b" >>"
    objects = [catalog, b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>"]
    objects += text_page_objects("A paper with an identity.", 3)
    if xmp:
        objects.append(_stream(XMP, b" /Type /Metadata /Subtype /XML"))
    path.write_bytes(raw_pdf(objects, trailer_extra=trailer_extra))


def test_an_epub_is_identified_by_its_package_unique_identifier(tmp_path):
    assert book_identifiers(FLATLAND, FLATLAND.name) == (
        "epub:https://standardebooks.org/ebooks/edwin-a-abbott/flatland",
    )
    # The name does not matter, the content does.
    renamed = tmp_path / "whatever.bin"
    shutil.copyfile(FLATLAND, renamed)
    assert book_identifiers(renamed, renamed.name) == book_identifiers(FLATLAND, FLATLAND.name)


def test_a_pdf_is_identified_by_its_document_id_and_xmp_document_id(tmp_path):
    both = tmp_path / "paper.pdf"
    _pdf(both, trailer_extra=b"/ID [<0a1b2c3d> <ffeeddcc>] ", xmp=True)
    # The first half of /ID is the permanent one; the second changes with every save.
    assert book_identifiers(both, both.name) == ("pdf:0a1b2c3d", "xmp:uuid:1b2c-paper")
    bare = tmp_path / "bare.pdf"
    _pdf(bare)
    assert book_identifiers(bare, bare.name) == ()


def test_files_that_are_not_books_have_no_identity(tmp_path):
    png = tmp_path / "photo.epub"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 100)
    truncated = tmp_path / "cut.epub"
    truncated.write_bytes(FLATLAND.read_bytes()[:5000])
    for path in (png, truncated, tmp_path / "missing.epub"):
        assert book_identifiers(path, path.name) == ()


def test_text_overlap_tells_an_edit_from_another_book():
    text = " ".join(f"word{i} of the book, sentence {i}." for i in range(2000))
    edited = text.replace("word1000 of", "word1000 very much of")
    assert text_overlap(text, text) == 1.0
    assert text_overlap(text, edited) > 0.99
    half = text[: len(text) // 2] + " ".join(f"other{i} text here now." for i in range(1000))
    assert 0.3 < text_overlap(text, half) < 0.7
    other = " ".join(f"elsewhere{i} something else entirely, line {i}." for i in range(2000))
    assert text_overlap(text, other) < 0.05 < SAME_BOOK_OVERLAP
    assert text_overlap(text, "") == 0.0
