"""PDF -> markdown from the text layer (pure Python over pdfium; no Dagster, no network).

Every PDF is untrusted. `pdf_to_markdown` checks, in this order: the header (a PDF at all),
the end-of-file marker (truncation), then `screen` reads the structure under `PdfLimits`
with pypdf (password, page tree, page count, stream sizes, scripts and launch actions, which
are named in a warning and never run); only then does pdfium read the text layer
(`text_layer`), and `layout` makes paragraphs and headings of it. Pages with no text layer
(scans) are transcribed by a model when the provider has one (`transcription`); otherwise
they are named, and a PDF that has none at all fails, since reading it needs OCR.
"""

from __future__ import annotations

from pathlib import Path

from doc_pipeline.core.books import ExtractedBook, InvalidBookError
from doc_pipeline.core.file_kinds import is_pdf, looks_like, read_head
from doc_pipeline.core.pdf.layout import lay_out
from doc_pipeline.core.pdf.limits import PdfLimits
from doc_pipeline.core.pdf.screen import screen_pdf
from doc_pipeline.core.pdf.text_layer import read_text_layer
from doc_pipeline.core.pdf.transcription import Transcriber, transcribe

__all__ = ["PdfLimits", "Transcriber", "page_list", "pdf_to_markdown"]

# Where readers look for the %%EOF marker: the file's last KiB.
_EOF_WINDOW = 1024


def pdf_to_markdown(
    path: Path,
    name: str | None = None,
    limits: PdfLimits | None = None,
    transcriber: Transcriber | None = None,
) -> ExtractedBook:
    """Convert one PDF's text layer to markdown; raise InvalidBookError for a file that is not
    a readable PDF or breaks one of `limits` (default PdfLimits()). Pages with no text layer
    are transcribed by `transcriber`'s model; without one they are missing (with a warning),
    and a PDF that has no text layer at all is refused."""
    path = Path(path)
    name = name or path.name
    limits = limits or PdfLimits()
    _check_container(path, name)
    screened = screen_pdf(path, name, limits)
    layer = read_text_layer(path, name)
    warnings = list(screened.warnings)
    textless = [page.number for page in layer.pages if page.characters == 0]
    total = len(layer.pages)
    transcribed: dict[int, str] = {}
    if textless and transcriber is not None:
        transcribed = transcribe(path, textless, transcriber)
        warnings.append(
            f"no text layer on {len(textless)} of {total} pages ({page_list(textless)}); "
            f"transcribed by {transcriber.model}"
        )
    elif len(textless) == total:
        raise InvalidBookError(
            f"{name}: no text layer on {total} of {total} pages; OCR needs an AI provider"
        )
    elif textless:
        warnings.append(
            f"no text layer on {len(textless)} of {total} pages ({page_list(textless)}); "
            "their text is missing (OCR needs an AI provider)"
        )
    laid = lay_out(layer.pages, layer.outline, transcribed)
    if not laid.markdown.strip():
        raise InvalidBookError(f"{name}: no extractable text (only licence boilerplate)")
    if laid.removed_running_lines:
        warnings.append(
            f"{laid.removed_running_lines} running header, footer and page-number lines removed"
        )
    return ExtractedBook(
        title=layer.metadata.get("Title") or laid.title or Path(name).stem,
        author=layer.metadata.get("Author"),
        language=None,
        markdown=laid.markdown,
        chapter_count=laid.headings,
        warnings=tuple(warnings),
        page_starts=laid.page_starts,
        pages=total,
    )


def _check_container(path: Path, name: str) -> None:
    if not path.is_file():
        raise InvalidBookError(f"{name}: file not found or not a regular file")
    head = read_head(path)
    if not head:
        raise InvalidBookError(f"{name}: not a PDF (the file is empty)")
    if not is_pdf(head):
        raise InvalidBookError(f"{name}: not a PDF (looks like {looks_like(head)})")
    with path.open("rb") as fh:
        fh.seek(max(path.stat().st_size - _EOF_WINDOW, 0))
        tail = fh.read()
    if b"%%EOF" not in tail:
        raise InvalidBookError(
            f"{name}: broken or truncated PDF (no %%EOF marker at its end: the file was cut "
            "short or is not a finished PDF)"
        )


def page_list(pages: list[int]) -> str:
    """ "pages 1-3, 7" for [1, 2, 3, 7]."""
    ranges: list[str] = []
    start = previous = pages[0]
    for page in [*pages[1:], None]:
        if page is not None and page == previous + 1:
            previous = page
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if page is not None:
            start = previous = page
    return ("page " if len(pages) == 1 else "pages ") + ", ".join(ranges)
