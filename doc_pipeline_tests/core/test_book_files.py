"""Which files `ingest` takes from the folders it is given."""

from __future__ import annotations

from pathlib import Path

from doc_pipeline.core.book_files import find_book_files


def test_folders_give_their_epub_and_pdf_files_in_name_order(tmp_path: Path) -> None:
    (tmp_path / "shelf" / "papers").mkdir(parents=True)
    for name in ("b.EPUB", "papers/a.pdf", "c.Pdf", "notes.txt", "cover.png", "papers/d.epub"):
        (tmp_path / "shelf" / name).write_bytes(b"x")
    single = tmp_path / "given-directly.txt"
    single.write_bytes(b"x")
    found = find_book_files([tmp_path / "shelf", single, tmp_path / "shelf" / "c.Pdf"])
    names = [path.relative_to(tmp_path).as_posix() for path in found]
    # A file given by name is taken whatever it is (the reader says what it is not); from a
    # folder only books; each once.
    assert names == [
        "shelf/b.EPUB",
        "shelf/c.Pdf",
        "shelf/papers/a.pdf",
        "shelf/papers/d.epub",
        "given-directly.txt",
    ]
