"""Benchmark: ingest the corpus through Dagster and the embedded Postgres.

Prints, per stage, the seconds of the pure core work (timed directly on the same books in the
same process) and of the Dagster steps that do it, then words/s, chunks/s and the share of wall
time spent outside extraction, chunking and embedding (framework and database overhead).

    python bench/ingest.py [--corpus ../shared/corpus/epub] [--json]

Runs in a temporary home with its own embedded Postgres, stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STAGES = ["source_document", "extracted_markdown", "chunks", "embeddings", "connections"]


def core_seconds(books: list[Path]) -> tuple[dict[str, float], int, int]:
    """The pure work of each stage, with no Dagster and no database."""
    from doc_pipeline.core.chunking import chunk_markdown, count_words
    from doc_pipeline.core.epub import epub_to_markdown
    from doc_pipeline.core.lexical_embedding import embed_texts

    seconds: dict[str, float] = defaultdict(float)
    words = chunks = 0
    for book in books:
        started = time.perf_counter()
        markdown = epub_to_markdown(book).markdown
        seconds["extracted_markdown"] += time.perf_counter() - started
        started = time.perf_counter()
        pieces = chunk_markdown(markdown)
        seconds["chunks"] += time.perf_counter() - started
        started = time.perf_counter()
        embed_texts([piece.content for piece in pieces])
        seconds["embeddings"] += time.perf_counter() - started
        words += count_words(markdown)
        chunks += len(pieces)
    return dict(seconds), words, chunks


def step_seconds(instance, run_ids: list[str]) -> dict[str, float]:
    from dagster import DagsterEventType

    seconds: dict[str, float] = defaultdict(float)
    for run_id in run_ids:
        for record in instance.all_logs(run_id, of_type=DagsterEventType.STEP_SUCCESS):
            event = record.dagster_event
            seconds[event.step_key] += event.event_specific_data.duration_ms / 1000
    return dict(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "epub")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    books = sorted(args.corpus.glob("*.epub"))
    if not books:
        sys.exit(f"no .epub files in {args.corpus}")

    home = Path(tempfile.mkdtemp(prefix="doc-pipeline-bench-"))
    os.environ["DOC_PIPELINE_HOME"] = str(home)
    os.environ.pop("DATABASE_URL", None)
    from doc_pipeline.db.app import prepare_app_database
    from doc_pipeline.db.server import database_urls, stop_embedded
    from doc_pipeline.ingest import Ingestion
    from doc_pipeline.instance import open_instance
    from doc_pipeline.settings import Settings

    settings = Settings.from_env()
    try:
        core, words, chunk_count = core_seconds(books)
        database_urls(settings)  # server start is set-up, not ingest time
        prepare_app_database(settings)
        started = time.perf_counter()
        outcomes = Ingestion(settings).run(books)
        wall = time.perf_counter() - started
        failed = [o.source_file for o in outcomes if o.failed]
        if failed:
            sys.exit(f"ingest failed for {failed}")
        with open_instance(settings) as instance:
            steps = step_seconds(instance, [r for o in outcomes for r in o.run_ids])
    finally:
        stop_embedded(settings.pgdata)

    core_total = sum(core.values())
    figures = {
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "books": len(books),
        "words": words,
        "chunks": chunk_count,
        "wall_seconds": round(wall, 2),
        "core_seconds": {k: round(v, 3) for k, v in core.items()},
        "step_seconds": {k: round(steps.get(k, 0.0), 3) for k in STAGES},
        "words_per_second": round(words / wall),
        "chunks_per_second": round(chunk_count / wall, 1),
        "core_words_per_second": round(words / core_total),
        "overhead_share": round(1 - core_total / wall, 3),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print(f"{figures['machine']}; {len(books)} books, {words:,} words, {chunk_count} chunks")
    print(f"{'stage':<20}{'core s':>10}{'dagster step s':>16}")
    for stage in STAGES:
        print(f"{stage:<20}{core.get(stage, 0.0):>10.3f}{steps.get(stage, 0.0):>16.3f}")
    print(f"ingest wall time        {wall:.2f} s")
    core_rate = figures["core_words_per_second"]
    print(f"words/s                 {figures['words_per_second']:,}  (core alone: {core_rate:,})")
    print(f"chunks/s                {figures['chunks_per_second']}")
    print(f"outside extract/chunk/embed: {figures['overhead_share']:.1%} of wall time")


if __name__ == "__main__":
    main()
