"""Every file in corpus/hostile (see its EXPECTED.md) gives its documented outcome, read in a
child process with a memory cap, within time and memory bounds, leaking nothing.

OUTCOMES is also the README's table of bad inputs: a test checks that they agree."""

from __future__ import annotations

from pathlib import Path

import pytest

from doc_pipeline_tests.bounded_reader import assert_outcome, assert_readme_rows, read_books

ROOT = Path(__file__).resolve().parents[2]
HOSTILE = ROOT.parent / "shared" / "corpus" / "hostile"
MEMORY_CAP = 1 << 30  # the child's address space; plain ebooklib needs over 2 GiB for the bomb
MAX_PEAK_RSS = 400 << 20
MAX_SECONDS = 20.0

# file -> ("invalid" or "book", text the user sees: in the error, or in one warning)
OUTCOMES: dict[str, tuple[str, str]] = {
    "zip-bomb.epub": ("invalid", "inflates to 3,221,272,308 bytes"),
    "huge-chapter.epub": ("invalid", "larger than the 16,777,216-byte limit for one chapter"),
    "xxe-external-entity.epub": ("book", "dropped undefined entity reference(s) &xxe;"),
    "billion-laughs.epub": ("book", "dropped undefined entity reference(s) &lol9;"),
    "path-traversal.epub": ("book", "has an unsafe path ('..' segment escapes the book)"),
    "not-a-book.epub": ("invalid", "not a ZIP/EPUB archive (looks like a PNG image)"),
    "not-a-book-plain-zip.epub": (
        "invalid",
        "not an EPUB: no META-INF/container.xml (and no mimetype)",
    ),
    "empty-spine.epub": ("invalid", "empty spine: no reading order"),
    "image-only.epub": ("invalid", "no extractable text (image-only, 29 images)"),
    "wrong-mimetype.epub": ("book", "mimetype is 'application/zip'"),
    "missing-manifest-item.epub": ("book", "is missing from the archive; skipped"),
}

pytestmark = pytest.mark.skipif(not HOSTILE.is_dir(), reason=f"corpus not found at {HOSTILE}")


def test_every_hostile_file_has_an_expected_outcome() -> None:
    assert sorted(OUTCOMES) == sorted(path.name for path in HOSTILE.glob("*.epub"))


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    """Each file in a child of its own, so each peak RSS is that book's."""
    before = set(Path("/tmp").glob("pwned*"))
    outcomes = {
        name: read_books([HOSTILE / name], MEMORY_CAP, timeout=60)[0] for name in sorted(OUTCOMES)
    }
    assert set(Path("/tmp").glob("pwned*")) == before, "a hostile path reached the file system"
    return outcomes


@pytest.mark.parametrize("name", sorted(OUTCOMES))
def test_hostile_file_gives_its_outcome_within_bounds(results: dict[str, dict], name: str) -> None:
    assert_outcome(
        results[name],
        name,
        OUTCOMES[name],
        min_words=1001,
        max_seconds=MAX_SECONDS,
        max_peak_rss=MAX_PEAK_RSS,
    )


def test_path_traversal_drops_exactly_the_unsafe_chapters(results: dict[str, dict]) -> None:
    warnings = results["path-traversal.epub"]["warnings"]
    skipped = [w for w in warnings if w.startswith("spine item") and "unsafe path" in w]
    assert len(skipped) == 2
    (listing,) = [w for w in warnings if w.startswith("ignored")]
    for member in ("/tmp/pwned-absolute.txt", "OEBPS/tmp-link", "../../../tmp/pwned-encoded.css"):
        assert repr(member) in listing


def test_readme_table_says_what_the_tests_check() -> None:
    assert_readme_rows((ROOT / "README.md").read_text(), OUTCOMES)
