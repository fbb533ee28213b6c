"""A library for the ingest benchmark, and the bare script it is compared with.

`make_library` writes the corpus's EPUBs and their parts, each part repackaged as an EPUB of its
own (the same files, a spine of a few consecutive documents, its own identifier and title), so
that a library of 30 and more documents exists offline. `bare_ingest` is what a data engineer
would write without a framework: ebooklib and markdownify, chunks of about a thousand words at
paragraph ends, hashed word vectors (256 wide), COPY into pgvector, an HNSW index and each
chunk's 5 nearest chunks of other documents, written back. No ledger, no checks, no retries.

    python bench/library.py FOLDER                     # writes the library into FOLDER
    python bench/library.py --bare DATABASE_URL FOLDER # the bare script on it, figures as JSON
"""

from __future__ import annotations

import copy
import json
import re
import sys
import time
import zipfile
import zlib
from pathlib import Path

import numpy as np

PART_SPINE_ITEMS = 2
MIN_PART_WORDS = 300
BARE_DIMENSIONS = 256
_TAG = re.compile(r"<[^>]+>")
_WORD = re.compile(r"[^\W_]+")
_LICENCE = "END OF THE PROJECT GUTENBERG"


def _opf_path(archive: zipfile.ZipFile) -> str:
    container = archive.read("META-INF/container.xml").decode("utf-8")
    return re.search(r'full-path="([^"]+)"', container).group(1)


def _words_of(archive: zipfile.ZipFile, folder: str, opf: str, idref: str) -> int:
    """The words of a spine document; 0 for Project Gutenberg's licence, which every reader of
    Gutenberg books (ours included) leaves out, so a part of it alone would be no book."""
    item = re.search(rf'<item\b[^>]*\bid="{re.escape(idref)}"[^>]*>', opf)
    href = re.search(r'href="([^"]+)"', item.group(0)).group(1) if item else None
    if href is None:
        return 0
    try:
        text = archive.read(f"{folder}{href}").decode("utf-8", "replace")
    except (KeyError, zipfile.BadZipFile):
        return 0
    if _LICENCE in text.upper():
        return 0
    return len(_TAG.sub(" ", text).split())


def make_library(books: list[Path], folder: Path, parts: bool = True) -> list[Path]:
    """The books, then (unless `parts` is false) each book's parts (PART_SPINE_ITEMS spine
    documents each, those with at least MIN_PART_WORDS words) as EPUBs of their own."""
    folder.mkdir(parents=True, exist_ok=True)
    made = []
    for book in books:
        whole = folder / book.name
        whole.write_bytes(book.read_bytes())
        made.append(whole)
        if not parts:
            continue
        with zipfile.ZipFile(book) as archive:
            opf_name = _opf_path(archive)
            opf = archive.read(opf_name).decode("utf-8")
            base = opf_name.rsplit("/", 1)[0] + "/" if "/" in opf_name else ""
            spine = re.search(r"<spine\b[^>]*>(.*?)</spine>", opf, re.S)
            refs = re.findall(r"<itemref\b[^>]*/>", spine.group(1))
            groups = [refs[i : i + PART_SPINE_ITEMS] for i in range(0, len(refs), PART_SPINE_ITEMS)]
            for number, group in enumerate(groups, 1):
                ids = [re.search(r'idref="([^"]+)"', ref).group(1) for ref in group]
                if sum(_words_of(archive, base, opf, i) for i in ids) < MIN_PART_WORDS:
                    continue
                part_opf = opf.replace(spine.group(1), "\n" + "\n".join(group) + "\n")
                identifier = r"(<dc:identifier\b[^>]*>)([^<]*)"
                part_opf = re.sub(identifier, rf"\g<1>\g<2>-part-{number}", part_opf, count=1)
                part_opf = re.sub(
                    r"(<dc:title\b[^>]*>)([^<]*)", rf"\g<1>\g<2> (part {number})", part_opf, count=1
                )
                target = folder / f"{book.stem}-part-{number:02d}.epub"
                try:
                    with zipfile.ZipFile(target, "w") as part:
                        for info in archive.infolist():
                            data = archive.read(info)
                            if info.filename == opf_name:
                                data = part_opf.encode("utf-8")
                            # A ZipInfo written is changed (its offset): the source's stays as is.
                            part.writestr(copy.copy(info), data)
                except zipfile.BadZipFile:  # an entry Python's zipfile cannot read: no parts
                    target.unlink()
                    break
                made.append(target)
    return made


def _bare_chunks(markdown: str, target_words: int = 1000) -> list[str]:
    chunks, current, words = [], [], 0
    for paragraph in markdown.split("\n\n"):
        count = len(paragraph.split())
        if not count:
            continue
        current.append(paragraph)
        words += count
        if words >= target_words:
            chunks.append("\n\n".join(current))
            current, words = [], 0
    if current:
        chunks.append("\n\n".join(current))
    return chunks


def _hashed_vector(text: str) -> np.ndarray:
    vector = np.zeros(BARE_DIMENSIONS, dtype=np.float32)
    for word in _WORD.findall(text.lower()):
        vector[zlib.crc32(word.encode()) % BARE_DIMENSIONS] += 1.0
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm else vector


def bare_ingest(database_url: str, books: list[Path]) -> dict:
    """The bare script on `books` into an empty database; its figures."""
    import warnings

    import ebooklib
    import psycopg
    from ebooklib import epub
    from markdownify import markdownify

    started = time.perf_counter()
    words = 0
    rows = []
    for number, path in enumerate(books):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            book = epub.read_epub(str(path), options={"ignore_ncx": True})
        parts = []
        for idref, _ in book.spine:
            item = book.get_item_with_id(idref)
            if item is not None and item.get_type() == ebooklib.ITEM_DOCUMENT:
                parts.append(markdownify(item.get_content().decode("utf-8", "replace")))
        markdown = "\n\n".join(parts)
        words += len(markdown.split())
        for index, chunk in enumerate(_bare_chunks(markdown)):
            vector = "[" + ",".join(map(str, _hashed_vector(chunk))) + "]"
            rows.append((f"{number}-{index}", number, chunk, vector))
    with psycopg.connect(database_url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            f"CREATE TABLE bare_chunks (id text PRIMARY KEY, document int, content text,"
            f" embedding vector({BARE_DIMENSIONS}))"
        )
        conn.execute("CREATE TABLE bare_connections (source text, target text, similarity float)")
        with conn.cursor().copy("COPY bare_chunks FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)
        conn.execute("CREATE INDEX ON bare_chunks USING hnsw (embedding vector_cosine_ops)")
        conn.execute("SET hnsw.iterative_scan = relaxed_order")
        conn.execute(
            "INSERT INTO bare_connections SELECT s.id, n.id, 1 - n.distance FROM bare_chunks s"
            " CROSS JOIN LATERAL (SELECT o.id, o.embedding <=> s.embedding AS distance"
            " FROM bare_chunks o WHERE o.document <> s.document"
            " ORDER BY o.embedding <=> s.embedding LIMIT 5) n"
        )
        conn.commit()
    return {
        "documents": len(books),
        "words": words,
        "chunks": len(rows),
        "wall_seconds": round(time.perf_counter() - started, 2),
    }


def main() -> None:
    if len(sys.argv) == 4 and sys.argv[1] == "--bare":
        books = sorted(Path(sys.argv[3]).glob("*.epub"))
        print(json.dumps(bare_ingest(sys.argv[2], books)))
        return
    corpus = Path(__file__).resolve().parents[2] / "shared" / "corpus" / "epub"
    library = make_library(sorted(corpus.glob("*.epub")), Path(sys.argv[1]))
    print(f"{len(library)} EPUBs in {sys.argv[1]}")


if __name__ == "__main__":
    main()
