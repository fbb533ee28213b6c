"""Which files are books to ingest, and where a registered file's copy is kept."""

from __future__ import annotations

from pathlib import Path

SUPPORTED_SUFFIXES = (".epub", ".pdf")


def stored_source_key(document_id: str, source_file: str) -> str:
    """The copy's name in the blob store, relative to its location (a folder or a URL)."""
    # Only the suffix of the untrusted upload name is used in the name.
    return f"sources/{document_id}{Path(source_file).suffix.lower()}"


def stored_source_path(blob_dir: Path, document_id: str, source_file: str) -> Path:
    """The copy's path in a blob store that is a local folder."""
    return blob_dir / stored_source_key(document_id, source_file)


def find_book_files(paths: list[Path]) -> list[Path]:
    """Files given directly, plus supported books found under given folders, in name order."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(
                sorted(
                    p
                    for p in path.rglob("*")
                    if p.is_file() and p.suffix.lower() in SUPPORTED_SUFFIXES
                )
            )
        else:
            found.append(path)
    return list(dict.fromkeys(p.resolve() for p in found))
