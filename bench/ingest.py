"""Benchmark: ingest the corpus through Dagster and the embedded Postgres, and read PDFs.

Prints, per stage, the seconds of the pure core work (timed directly on the same books in the
same process) and of the Dagster steps that do it, then words/s, chunks/s and the share of wall
time spent outside extraction, chunking and embedding (framework and database overhead): for the
EPUBs, then for the PDFs in a second ingest into the same home (so the EPUB figures mean what
they meant before PDFs were read).

PDF extraction: for each PDF (the corpus's, and Flatland typeset at run time with running
headers, page numbers and hyphenation by `doc_pipeline_tests.pdf_files.typeset`),
`pdf_to_markdown` against pypdfium2's raw text extraction (every page's
`get_textpage().get_text_range()`, no layout), in this process, best of `--repeat` each, taking
turns so that the machine's load falls on both; also the screen (pypdf), text layer (pdfium)
and layout of ours on their own.

    python bench/ingest.py [--corpus ../shared/corpus/epub] [--pdf-corpus ../shared/corpus/pdf]
                           [--repeat 5] [--json]
    python bench/ingest.py --library [--jobs 1,2] [--whole-books] [--json]

`--library`: the corpus's EPUBs and their parts repackaged as EPUBs of their own (33 documents,
bench/library.py) ingested by `doc-pipeline ingest --jobs N` (a subprocess, as a user runs it,
each N into a database of its own on the same server), against the bare script of
bench/library.py (ebooklib, markdownify, hashed vectors, COPY, HNSW neighbours; also a
subprocess) on the same books in the same run: wall time, words/s, the ratio to the bare
script, and the sessions each run opened on the Dagster instance's database. `--whole-books`:
the four books alone (fewer, larger documents: less of the cost per run).

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
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
STAGES = ["source_document", "extracted_markdown", "chunks", "embeddings", "connections"]
TYPESET_FROM = "se-abbott-flatland.epub3.epub"


def core_seconds(books: list[Path]) -> tuple[dict[str, float], int, int]:
    """The pure work of each stage, with no Dagster and no database."""
    from doc_pipeline.core.chunking import chunk_markdown, count_words
    from doc_pipeline.core.extraction import extract_book
    from doc_pipeline.core.local_embedding import embed_texts

    seconds: dict[str, float] = defaultdict(float)
    words = chunks = 0
    for book in books:
        started = time.perf_counter()
        markdown = extract_book(book, book.name).markdown
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


def ingest(settings, books: list[Path]) -> dict:
    """Core work on `books` (the baseline), then `Ingestion.run` on them; the figures."""
    from doc_pipeline.ingest import Ingestion
    from doc_pipeline.instance import open_instance

    core, words, chunk_count = core_seconds(books)
    started = time.perf_counter()
    outcomes = Ingestion(settings).run(books)
    wall = time.perf_counter() - started
    failed = [o.source_file for o in outcomes if o.failed]
    if failed:
        sys.exit(f"ingest failed for {failed}")
    with open_instance(settings) as instance:
        steps = step_seconds(instance, [r for o in outcomes for r in o.run_ids])
    core_total = sum(core.values())
    return {
        "books": [book.name for book in books],
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


def _best(repeat: int, works: dict[str, Callable[[], object]]) -> dict[str, tuple[float, object]]:
    """Each work's fastest of `repeat` calls and what it returned, the works taking turns in
    every round, so that load on the machine falls on all of them alike."""
    times: dict[str, list[float]] = defaultdict(list)
    results: dict[str, object] = {}
    for _ in range(repeat):
        for name, work in works.items():
            started = time.perf_counter()
            results[name] = work()
            times[name].append(time.perf_counter() - started)
    return {name: (min(times[name]), results[name]) for name in works}


def raw_pdfium_text(path: Path) -> tuple[int, str]:
    """The baseline: pypdfium2's own text of every page, as a plain script would read it."""
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(path)
    try:
        texts = []
        for index in range(len(document)):
            page = document[index]
            text_page = page.get_textpage()
            texts.append(text_page.get_text_range())
            text_page.close()
            page.close()
        return len(texts), "\n".join(texts)
    finally:
        document.close()


def pdf_extraction(pdfs: list[Path], repeat: int) -> list[dict]:
    """pdf_to_markdown against raw pdfium text, and the three parts of ours on their own."""
    from doc_pipeline.core.chunking import count_words
    from doc_pipeline.core.pdf import PdfLimits, pdf_to_markdown
    from doc_pipeline.core.pdf.layout import lay_out
    from doc_pipeline.core.pdf.screen import screen_pdf
    from doc_pipeline.core.pdf.text_layer import read_text_layer

    rows = []
    for path in pdfs:
        layer = read_text_layer(path, path.name)
        timed = _best(
            repeat,
            {
                "ours": lambda path=path: pdf_to_markdown(path),
                "raw": lambda path=path: raw_pdfium_text(path),
                "screen": lambda path=path: screen_pdf(path, path.name, PdfLimits()),
                "text_layer": lambda path=path: read_text_layer(path, path.name),
                "layout": lambda layer=layer: lay_out(layer.pages, layer.outline, {}),
            },
        )
        (ours_s, book), (raw_s, (pages, raw_text)) = timed["ours"], timed["raw"]
        screen_s, layer_s, layout_s = (timed[k][0] for k in ("screen", "text_layer", "layout"))
        words = count_words(book.markdown)
        rows.append(
            {
                "pdf": path.name,
                "pages": book.pages,
                "raw_pages": pages,
                "words": words,
                "raw_words": count_words(raw_text),
                "warnings": list(book.warnings),
                "ours_s": round(ours_s, 4),
                "raw_s": round(raw_s, 4),
                "pages_per_second": round(book.pages / ours_s, 1),
                "words_per_second": round(words / ours_s),
                "raw_pages_per_second": round(pages / raw_s, 1),
                "ratio": round(ours_s / raw_s, 2),
                "screen_s": round(screen_s, 4),
                "text_layer_s": round(layer_s, 4),
                "layout_s": round(layout_s, 4),
            }
        )
    return rows


def typeset_flatland(epub: Path, folder: Path) -> Path:
    from doc_pipeline_tests.pdf_files import book_blocks, typeset

    path = folder / "flatland-typeset.pdf"
    typeset(path, book_blocks(epub), outline=True)
    return path


def _print_ingest(title: str, figures: dict) -> None:
    books, words, chunks = len(figures["books"]), figures["words"], figures["chunks"]
    print(f"{title}: {books} books, {words:,} words, {chunks} chunks")
    print(f"{'stage':<20}{'core s':>10}{'dagster step s':>16}")
    for stage in STAGES:
        core, step = figures["core_seconds"].get(stage, 0.0), figures["step_seconds"][stage]
        print(f"{stage:<20}{core:>10.3f}{step:>16.3f}")
    print(f"ingest wall time        {figures['wall_seconds']:.2f} s")
    core_rate = figures["core_words_per_second"]
    print(f"words/s                 {figures['words_per_second']:,}  (core alone: {core_rate:,})")
    print(f"chunks/s                {figures['chunks_per_second']}")
    print(f"outside extract/chunk/embed: {figures['overhead_share']:.1%} of wall time")


def _sessions(server_url: str, database: str) -> int:
    import sqlalchemy as sa

    engine = sa.create_engine(server_url, poolclass=sa.NullPool)
    with engine.connect() as conn:
        opened = conn.execute(
            sa.text("SELECT sessions FROM pg_stat_database WHERE datname = :name"),
            {"name": database},
        ).scalar()
    engine.dispose()
    return int(opened or 0)


def _timed(argv: list, env: dict[str, str]):
    """Run a command; its result, wall seconds and CPU seconds (user and system, of it and
    the children it waited for: --jobs workers; not the Postgres server's)."""
    import resource
    import subprocess

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run([str(a) for a in argv], env=env, capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return result, wall, cpu


def library_figures(home: Path, server_url: str, jobs: list[int], parts: bool = True) -> dict:
    """The library through `doc-pipeline ingest --jobs N` for each N, and the bare script
    (without `parts`: the corpus's whole books only)."""
    import subprocess

    import sqlalchemy as sa

    sys.path.insert(0, str(ROOT / "bench"))
    from library import make_library

    library = home / "library"
    books = make_library(sorted((CORPUS / "epub").glob("*.epub")), library, parts)
    admin = sa.create_engine(server_url, isolation_level="AUTOCOMMIT", poolclass=sa.NullPool)
    with admin.connect() as conn:
        for name in ["bare", *(f"jobs_{n}" for n in jobs)]:
            conn.execute(sa.text(f"CREATE DATABASE {name}"))
    admin.dispose()
    url = sa.engine.make_url(server_url)
    bare, wall, cpu = _timed(
        [
            sys.executable,
            str(ROOT / "bench" / "library.py"),
            "--bare",
            url.set(database="bare").render_as_string(hide_password=False),
            str(library),
        ],
        dict(os.environ),
    )
    if bare.returncode:
        sys.exit(f"the bare script failed:\n{bare.stderr[-2000:]}")
    bare_figures = json.loads(bare.stdout) | {
        "wall_seconds": round(wall, 2),
        "cpu_seconds": round(cpu, 2),
    }
    runs = {}
    for n in jobs:
        database = url.set(database=f"jobs_{n}").render_as_string(hide_password=False)
        env = {
            **{k: v for k, v in os.environ.items() if k not in ("GEMINI_API_KEY", "DAGSTER_HOME")},
            "DOC_PIPELINE_HOME": str(home / f"home-{n}"),
            "DATABASE_URL": database,
            "DOC_PIPELINE_PROVIDER": "local",
        }
        # The instance's database made and migrated first: set-up, not ingest time.
        subprocess.run(
            [sys.executable, "-m", "doc_pipeline", "status"],
            env=env,
            check=True,
            capture_output=True,
        )
        before = _sessions(server_url, f"jobs_{n}_dagster")
        result, wall, cpu = _timed(
            [sys.executable, "-m", "doc_pipeline", "ingest", "--json", "--jobs", str(n), library],
            env,
        )
        outcomes = json.loads(result.stdout)
        failed = [
            f"{o['source_file']}: {o['stage']} ({o['error_message']})"
            for o in outcomes
            if o["stage"] != "connected"
        ]
        if failed:
            sys.exit(f"--jobs {n}: not connected: {failed}\n{result.stderr[-2000:]}")
        run_count = sum(len(o["run_ids"]) for o in outcomes)
        opened = _sessions(server_url, f"jobs_{n}_dagster") - before
        runs[n] = {
            "wall_seconds": round(wall, 2),
            "cpu_seconds": round(cpu, 2),
            "words_per_second": round(bare_figures["words"] / wall),
            "ratio_to_bare": round(wall / bare_figures["wall_seconds"], 2),
            "cpu_ratio_to_bare": round(cpu / bare_figures["cpu_seconds"], 2),
            "runs": run_count,
            "dagster_sessions": opened,
            "sessions_per_run": round(opened / run_count, 1),
            "chunks": sum(o["chunks"] for o in outcomes),
        }
    bare_figures["words_per_second"] = round(bare_figures["words"] / bare_figures["wall_seconds"])
    return {"documents": len(books), "bare": bare_figures, "ingest": runs}


def _print_library(figures: dict) -> None:
    bare = figures["bare"]
    print(f"Library: {figures['documents']} EPUBs, {bare['words']:,} words")
    print(
        "| run | wall s | words/s | wall / bare | CPU s | CPU / bare | runs | Dagster sessions"
        " | per run | chunks |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print(
        f"| bare script | {bare['wall_seconds']} | {bare['words_per_second']:,} | 1.00 |"
        f" {bare['cpu_seconds']} | 1.00 | | | | {bare['chunks']} |"
    )
    for n, row in figures["ingest"].items():
        print(
            f"| ingest --jobs {n} | {row['wall_seconds']} | {row['words_per_second']:,} |"
            f" {row['ratio_to_bare']:.2f} | {row['cpu_seconds']} | {row['cpu_ratio_to_bare']:.2f}"
            f" | {row['runs']} | {row['dagster_sessions']} | {row['sessions_per_run']} |"
            f" {row['chunks']} |"
        )


def _print_pdfs(rows: list[dict], repeat: int) -> None:
    print(f"\nPDF extraction, best of {repeat}: pdf_to_markdown (ours) against raw pypdfium2 text")
    print(
        "| pdf | pages | words (ours / raw) | ours s | raw s | ours pages/s | ours words/s "
        "| ours / raw | screen s | text layer s | layout s |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    )
    for row in rows:
        print(
            f"| {row['pdf']} | {row['pages']} | {row['words']:,} / {row['raw_words']:,} | "
            f"{row['ours_s']:.3f} | {row['raw_s']:.3f} | {row['pages_per_second']:,} | "
            f"{row['words_per_second']:,} | {row['ratio']:.2f} | {row['screen_s']:.3f} | "
            f"{row['text_layer_s']:.3f} | {row['layout_s']:.3f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=CORPUS / "epub")
    parser.add_argument("--pdf-corpus", type=Path, default=CORPUS / "pdf")
    parser.add_argument("--repeat", type=int, default=5, help="best of N for PDF extraction")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--library", action="store_true", help="the library benchmark instead")
    parser.add_argument("--jobs", default="1,2", help="--library: the --jobs values to time")
    parser.add_argument(
        "--whole-books",
        action="store_true",
        help="--library: only the corpus's whole books, not their parts as documents of their own",
    )
    args = parser.parse_args()
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.library:
        home = Path(tempfile.mkdtemp(prefix="doc-pipeline-bench-"))
        os.environ["DOC_PIPELINE_HOME"] = str(home / "server")
        os.environ.pop("DATABASE_URL", None)
        from doc_pipeline.db.server import database_urls, stop_embedded
        from doc_pipeline.settings import Settings

        settings = Settings.from_env()
        try:
            admin = database_urls(settings).admin
            jobs = [int(n) for n in args.jobs.split(",")]
            figures = library_figures(home, admin, jobs, parts=not args.whole_books)
        finally:
            stop_embedded(settings.pgdata)
        if args.json:
            print(json.dumps({"machine": machine, "library": figures}, indent=2))
        else:
            print(machine)
            _print_library(figures)
        return
    books = sorted(args.corpus.glob("*.epub"))
    if not books:
        sys.exit(f"no .epub files in {args.corpus}")
    pdfs = sorted(args.pdf_corpus.glob("*.pdf"))
    if not pdfs:
        sys.exit(f"no .pdf files in {args.pdf_corpus}")

    home = Path(tempfile.mkdtemp(prefix="doc-pipeline-bench-"))
    os.environ["DOC_PIPELINE_HOME"] = str(home)
    os.environ.pop("DATABASE_URL", None)
    from doc_pipeline.db.app import prepare_app_database
    from doc_pipeline.db.server import database_urls, stop_embedded
    from doc_pipeline.settings import Settings

    typeset_epub = args.corpus / TYPESET_FROM
    made = [typeset_flatland(typeset_epub, home)] if typeset_epub.is_file() else []
    pdf_rows = pdf_extraction(pdfs + made, args.repeat)

    settings = Settings.from_env()
    try:
        database_urls(settings)  # server start is set-up, not ingest time
        prepare_app_database(settings)
        epub_figures = ingest(settings, books)
        pdf_figures = ingest(settings, pdfs)  # the corpus's PDFs, after the EPUBs
    finally:
        stop_embedded(settings.pgdata)

    if args.json:
        figures = {
            "machine": machine,
            "epub_ingest": epub_figures,
            "pdf_ingest": pdf_figures,
            "pdf_extraction": pdf_rows,
        }
        print(json.dumps(figures, indent=2))
        return
    print(machine)
    _print_ingest("EPUB ingest", epub_figures)
    print()
    _print_ingest("PDF ingest (after the EPUBs, same home)", pdf_figures)
    _print_pdfs(pdf_rows, args.repeat)


if __name__ == "__main__":
    main()
