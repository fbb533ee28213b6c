"""EPUB -> markdown, the "local provider" converter (pure Python, no Dagster).

ebooklib reads the package (OPF, spine, nav/NCX); every spine document is re-parsed with a
safe lxml parser (no entity expansion, no DTD, no network), cleaned (Project Gutenberg
boilerplate, scripts, SVG), given table-of-contents headings and markdown footnotes, then
rendered with a markdownify subclass.

The steps live in this package's modules: archive (ZIP container checks), package (OPF
package and metadata), documents (spine documents), footnotes, toc (table of contents
headings) and rendering. They share safe_zip (bounded reads of a hostile ZIP), markup (safe
XML parser, element helpers), hrefs (link resolution), gutenberg (Project Gutenberg
boilerplate); the book type and its error are in core/books.
"""

from __future__ import annotations

import re
from pathlib import Path

from lxml import etree

from doc_pipeline.core.books import ExtractedBook, InvalidBookError
from doc_pipeline.core.epub.archive import check_archive
from doc_pipeline.core.epub.documents import load_documents
from doc_pipeline.core.epub.footnotes import Notes
from doc_pipeline.core.epub.markup import TOKEN
from doc_pipeline.core.epub.package import authors, first_dc, read_package
from doc_pipeline.core.epub.rendering import render
from doc_pipeline.core.epub.safe_zip import ReaderLimits
from doc_pipeline.core.epub.toc import flatten_toc, toc_base_dir

__all__ = ["ReaderLimits", "epub_to_markdown"]

_HEADING_MD = re.compile(r"^#{1,6} .*$", re.M)
_IMAGE_MD = re.compile(r"!\[(?:\\.|[^\]])*\]\([^)]*\)")


def epub_to_markdown(
    path: Path, name: str | None = None, limits: ReaderLimits | None = None
) -> ExtractedBook:
    """Convert one EPUB (2 or 3) file to markdown; raise InvalidBookError if it is unreadable
    or breaks one of `limits` (default ReaderLimits()).

    `name` is the file name used in messages (the name it was uploaded under), by default the
    path's own."""
    path = Path(path)
    name = name or path.name
    limits = limits or ReaderLimits()
    warnings: list[str] = []
    opf_path = check_archive(path, name, warnings, limits)
    package = read_package(path, name, opf_path, warnings, limits)
    book = package.book
    if not book.spine:
        raise InvalidBookError(f"{name}: empty spine: no reading order (OPF lists no documents)")
    try:
        loaded = load_documents(package, warnings, name, limits)
        image_count = loaded.images
        notes = Notes(loaded.docs)
        toc = flatten_toc(book.toc, toc_base_dir(book), 1)
        markdown, chapters = render(loaded.docs, toc, notes, warnings)
    except (etree.LxmlError, KeyError, ValueError, RecursionError) as exc:
        # Bugs or pathological markup must still surface as "this book failed, because".
        raise InvalidBookError(f"{name}: conversion failed ({type(exc).__name__}: {exc})") from exc
    if not TOKEN.search(_HEADING_MD.sub("", _IMAGE_MD.sub("", markdown))):
        detail = f" (image-only, {image_count} images)" if image_count else ""
        raise InvalidBookError(f"{name}: no extractable text{detail}")
    title = first_dc(book, "title")
    if not title:
        warnings.append("no dc:title in the OPF metadata; using the file name")
    return ExtractedBook(
        title=title or Path(name).stem,
        author=authors(book),
        language=first_dc(book, "language"),
        markdown=markdown,
        chapter_count=chapters,
        warnings=tuple(warnings),
        markup_errors=loaded.markup_errors,
    )
