"""One entry point for every book format: the file's first bytes choose the reader."""

from __future__ import annotations

from pathlib import Path

from doc_pipeline.core.books import ExtractedBook
from doc_pipeline.core.epub import epub_to_markdown
from doc_pipeline.core.file_kinds import is_pdf, is_zip, read_head
from doc_pipeline.core.pdf import Transcriber, pdf_to_markdown


def extract_book(path: Path, name: str, transcriber: Transcriber | None = None) -> ExtractedBook:
    """The book's markdown. The content decides, not the name: a PDF named `.epub` is read as
    a PDF; a file that is neither is refused by the reader its name asks for, which says what
    the file looks like instead. `transcriber`: the model that reads a PDF's scanned pages."""
    path = Path(path)
    head = read_head(path) if path.is_file() else b""
    if is_pdf(head) or (not is_zip(head) and Path(name).suffix.lower() == ".pdf"):
        return pdf_to_markdown(path, name, transcriber=transcriber)
    return epub_to_markdown(path, name)
