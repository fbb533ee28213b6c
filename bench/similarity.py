"""How alike the `local` embedder finds chunks of different books: the figures behind
`connection_min_similarity` (the local provider's default is the 99th percentile of cross-book
pairs on the corpus). Run it on your own library to choose the threshold for it.

For each book (EPUB or PDF) the structural chunks, embedded with core/local_embedding; then the
cosine similarity of every pair of chunks of two different books (percentiles), of each chunk's
best match in another book, and of pairs within one book; and the embedder's words/s.

    python bench/similarity.py [PATHS ...] [--json]     (default: ../shared/corpus/epub)
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from doc_pipeline.core.book_files import find_book_files  # noqa: E402
from doc_pipeline.core.chunking import chunk_markdown, count_words  # noqa: E402
from doc_pipeline.core.extraction import extract_book  # noqa: E402
from doc_pipeline.core.local_embedding import MODEL_NAME, embed_texts  # noqa: E402

PERCENTILES = (50, 90, 99, 99.9)


def figures(paths: list[Path]) -> dict:
    vectors, owners, words, seconds = [], [], 0, 0.0
    for number, book in enumerate(find_book_files(paths)):
        texts = [c.content for c in chunk_markdown(extract_book(book, book.name).markdown)]
        started = time.perf_counter()
        vectors.append(embed_texts(texts))
        seconds += time.perf_counter() - started
        owners += [number] * len(texts)
        words += sum(count_words(t) for t in texts)
    matrix = np.vstack(vectors)
    owner = np.asarray(owners)
    similarity = matrix @ matrix.T
    other = owner[:, None] != owner[None, :]
    same = ~other & ~np.eye(len(owner), dtype=bool)
    best = np.where(other, similarity, -1.0).max(axis=1)
    return {
        "model": MODEL_NAME,
        "books": int(owner.max() + 1),
        "chunks": len(owner),
        "words_per_second": round(words / seconds),
        "cross_book_percentiles": {
            str(q): round(float(np.percentile(similarity[other], q)), 3) for q in PERCENTILES
        },
        "best_other_book_match_median": round(float(np.median(best)), 3),
        "same_book_median": round(float(np.median(similarity[same])), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("paths", nargs="*", type=Path, default=[ROOT.parent / "shared/corpus/epub"])
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    found = figures(args.paths)
    if args.json:
        print(json.dumps(found, indent=2))
        return
    print(f"{found['books']} books, {found['chunks']} chunks, {found['model']}")
    print(f"embedding: {found['words_per_second']:,} words/s")
    for q, value in found["cross_book_percentiles"].items():
        print(f"chunks of two books, {q}th percentile: {value}")
    best = found["best_other_book_match_median"]
    print(f"each chunk's best match in another book, median: {best}")
    print(f"chunks of one book, median: {found['same_book_median']}")


if __name__ == "__main__":
    main()
