"""Which files are books to ingest, and where a registered file's copy is kept."""

from __future__ import annotations

from pathlib import Path

SUPPORTED_SUFFIXES = (".epub", ".pdf")


def stored_source_path(blob_dir: Path, document_id: str, source_file: str) -> Path:
    # Only the suffix of the untrusted upload name is used in the path.
    return blob_dir / "sources" / f"{document_id}{Path(source_file).suffix.lower()}"


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
