"""Every hostile PDF, those of corpus/pdf-hostile (see its EXPECTED.md) and those made here
object by object, gives its documented outcome, read in a child process with a memory cap,
within time and memory bounds, running nothing and writing nothing.

OUTCOMES is also the README's table of bad PDFs: a test checks that they agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from doc_pipeline_tests import pdf_files
from doc_pipeline_tests.bounded_reader import assert_outcome, assert_readme_rows, read_books
from doc_pipeline_tests.conftest import CORPUS

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = CORPUS / "pdf-hostile"
MEMORY_CAP = 1 << 30  # pdfium would need 1.5 GiB for the deflate bomb, and abort
MAX_PEAK_RSS = 400 << 20
MAX_SECONDS = 20.0
MARKER = Path("/tmp/pwned-by-pdf")  # what the scripted file's actions would write

# file -> ("invalid" or "book", text the user sees: in the error, or in one warning)
OUTCOMES: dict[str, tuple[str, str]] = {
    "truncated.pdf": ("invalid", "broken or truncated PDF (no %%EOF marker at its end"),
    "not-a-pdf.pdf": ("invalid", "not a PDF (looks like a PNG image)"),
    "encrypted-password.pdf": ("invalid", "password-protected PDF"),
    "image-only.pdf": ("invalid", "no text layer on 6 of 6 pages; OCR needs an AI provider"),
    "empty.pdf": ("invalid", "not a PDF (the file is empty)"),
    "html-page.pdf": ("invalid", "not a PDF (looks like an HTML/XML text file)"),
    "deflate-bomb.pdf": ("invalid", "a stream inflates past 64 MiB (decompression bomb?)"),
    "fifty-thousand-pages.pdf": ("invalid", "50,000 pages; the limit is 10,000"),
    "lying-page-count.pdf": ("invalid", "12,000 pages; the limit is 10,000"),
    "page-tree-loop.pdf": ("invalid", "broken PDF (PdfReadError: Detected cyclic page references"),
    "no-page-tree.pdf": ("invalid", "broken PDF (no page tree"),
    "scripted.pdf": ("book", "JavaScript (2 found) ignored: scripts and launch actions are never"),
}
MADE = {
    "empty.pdf": lambda path: path.write_bytes(b""),
    "html-page.pdf": lambda path: path.write_text("<!doctype html><html><p>a page</p></html>"),
    "deflate-bomb.pdf": pdf_files.deflate_bomb,
    "fifty-thousand-pages.pdf": lambda path: pdf_files.many_pages(path, 50_000),
    "lying-page-count.pdf": lambda path: pdf_files.many_pages(path, 12_000, declared=3),
    "page-tree-loop.pdf": pdf_files.page_tree_loop,
    "no-page-tree.pdf": pdf_files.no_page_tree,
    "scripted.pdf": lambda path: pdf_files.scripted(path, MARKER),
}


def test_every_hostile_file_has_an_expected_outcome() -> None:
    corpus_files = sorted(path.name for path in HOSTILE.glob("*.pdf"))
    assert sorted(OUTCOMES) == sorted([*corpus_files, *MADE])


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each file in a child of its own, so each peak RSS is that file's."""
    folder = tmp_path_factory.mktemp("hostile-pdfs")
    for name, make in MADE.items():
        make(folder / name)
    MARKER.unlink(missing_ok=True)
    outcomes = {
        name: read_books(
            [HOSTILE / name if name not in MADE else folder / name], MEMORY_CAP, timeout=60
        )[0]
        for name in sorted(OUTCOMES)
    }
    assert not MARKER.exists(), "a script or launch action in a PDF ran"
    return outcomes


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_hostile_pdf_gives_its_outcome_within_bounds(results: dict[str, dict], name: str) -> None:
    assert_outcome(
        results[name],
        name,
        OUTCOMES[name],
        min_words=10,
        max_seconds=MAX_SECONDS,
        max_peak_rss=MAX_PEAK_RSS,
    )


def test_the_launch_action_is_named_too(results: dict[str, dict]) -> None:
    warnings = results["scripted.pdf"]["warnings"]
    assert any(w.startswith("a launch action (1 found) ignored") for w in warnings), warnings


def test_readme_table_says_what_the_tests_check() -> None:
    assert_readme_rows((ROOT / "README.md").read_text(), OUTCOMES)
