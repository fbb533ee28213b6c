"""Benchmark: the hardened EPUB and PDF readers against plain ebooklib and pypdfium2.

Each book is read in a child process of its own with a 2 GiB address-space cap, by
(a) plain ebooklib, as corpus/hostile/EXPECTED.md describes it: `read_epub`, then
    `get_content()` of every spine item (no markdown), and
(b) doc_pipeline's `epub_to_markdown` (bounded ZIP reads, safe names, safe parsing, markdown).
Printed per book: outcome, seconds and peak RSS of each. On the good books the ratio (b)/(a)
is what hardening plus markdown conversion costs; a second ratio isolates the bounded ZIP
reads: SafeZip.read of every member against zipfile's own read, in the same child.

PDFs likewise: the good corpus PDF, the hostile ones of corpus/pdf-hostile and those the tests
make (`MADE` of doc_pipeline_tests/core/test_hostile_pdfs.py, built in a temporary folder), by
(a) plain pypdfium2: open the document, `get_textpage().get_text_range()` of every page, and
(b) doc_pipeline's `pdf_to_markdown` (the pypdf screen under PdfLimits, then the text layer
    and layout). A child that dies (pdfium aborts when an allocation fails under the cap) is
    reported with its signal, the parent's seconds and its peak RSS from wait4.

    python bench/reader.py [--repeat 5] [--only epub|pdf] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
MEMORY_CAP = 2 << 30
CHILD_TIMEOUT = 600
GOOD = ("epub", "pdf")  # corpus folders of good books: best of --repeat for both readers


def _plain(path: Path) -> str:
    from ebooklib import epub

    book = epub.read_epub(str(path), {"ignore_ncx": True})
    size = 0
    for idref, _linear in book.spine:
        item = book.get_item_with_id(idref)
        if item is not None:
            size += len(item.get_content())
    return f"ok, {size:,} bytes of spine"


def _refused(path: Path, error: Exception) -> str:
    return f"refused: {str(error)[len(path.name) + 2 :][:70]}"


def _hardened(path: Path) -> str:
    from doc_pipeline.core.books import InvalidBookError
    from doc_pipeline.core.epub import epub_to_markdown

    try:
        book = epub_to_markdown(path)
    except InvalidBookError as error:
        return _refused(path, error)
    return f"ok, {len(book.markdown.split()):,} words, {len(book.warnings)} warnings"


def _pdf_plain(path: Path) -> str:
    import pypdfium2 as pdfium

    document = pdfium.PdfDocument(path)
    try:
        words = 0
        for index in range(len(document)):
            page = document[index]
            text_page = page.get_textpage()
            words += len(text_page.get_text_range().split())
            text_page.close()
            page.close()
        return f"ok, {len(document):,} pages, {words:,} words"
    finally:
        document.close()


def _pdf_hardened(path: Path) -> str:
    from doc_pipeline.core.books import InvalidBookError
    from doc_pipeline.core.pdf import pdf_to_markdown

    try:
        book = pdf_to_markdown(path)
    except InvalidBookError as error:
        return _refused(path, error)
    return (
        f"ok, {book.pages:,} pages, {len(book.markdown.split()):,} words, "
        f"{len(book.warnings)} warnings"
    )


READERS = {
    "plain": _plain,
    "hardened": _hardened,
    "pdf-plain": _pdf_plain,
    "pdf-hardened": _pdf_hardened,
}


def _zip_reads(path: Path, repeat: int) -> tuple[float, float]:
    """Seconds to read every member: zipfile.read, then SafeZip.read (best of `repeat`)."""
    from doc_pipeline.core.epub.safe_zip import ReaderLimits, SafeZip

    def best(read) -> float:
        times = []
        for _ in range(repeat):
            with zipfile.ZipFile(path) as zf:
                started = time.perf_counter()
                read(zf)
                times.append(time.perf_counter() - started)
        return min(times)

    def plain(zf: zipfile.ZipFile) -> None:
        for name in zf.namelist():
            zf.read(name)

    def safe(zf: zipfile.ZipFile) -> None:
        archive = SafeZip(zf, path.name, ReaderLimits())
        for name in zf.namelist():
            if name not in archive.unsafe:
                archive.read(name)

    return best(plain), best(safe)


def child(kind: str, path: Path, repeat: int) -> dict:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))
    started = time.perf_counter()
    result: dict = {}
    try:
        if kind == "zip":
            result["zipfile_s"], result["safezip_s"] = _zip_reads(path, repeat)
        else:
            best = None
            good = path.parent.name in GOOD
            for _ in range(repeat if kind.endswith("hardened") or good else 1):
                started = time.perf_counter()
                result["outcome"] = READERS[kind](path)
                elapsed = time.perf_counter() - started
                best = elapsed if best is None else min(best, elapsed)
            result["seconds"] = best
    except BaseException as error:  # noqa: BLE001 - the plain readers' failures are the point
        result["outcome"] = f"{type(error).__name__}: {str(error)[:60]}"
        result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return result


def measure(kind: str, path: Path, repeat: int) -> dict:
    """Run the child and wait4 it, so that a child that dies still has its peak RSS."""
    command = [sys.executable, __file__, "--child", kind, str(path), "--repeat", str(repeat)]
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=ROOT)
        timer = threading.Timer(CHILD_TIMEOUT, process.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(process.pid, 0)
        finally:
            timer.cancel()
        elapsed = time.perf_counter() - started
        process.returncode = returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        lines = [line for line in out.read().splitlines() if line.startswith("{")]
        stderr = err.read()
    if lines and returncode == 0:
        return json.loads(lines[-1])
    if returncode < 0:
        how = f"signal {-returncode} ({signal.Signals(-returncode).name})"
    else:
        how = f"exit {returncode}"
    last = stderr.strip().splitlines()[-1:] or [""]
    return {
        "outcome": f"child died: {how}: {last[0][:60]}".rstrip(": "),
        "seconds": elapsed,  # the parent's: includes starting the interpreter
        "peak_rss_mb": usage.ru_maxrss // 1024,
        "died": True,
    }


def _ratio(row: dict, plain_key: str, hard_key: str) -> str:
    plain, hard = row[plain_key], row[hard_key]
    if plain.get("died") or not plain.get("seconds"):
        return "-"
    return f"{hard['seconds'] / plain['seconds']:.2f}"


def _epub_rows(repeat: int) -> list[dict]:
    books = sorted((CORPUS / "epub").glob("*.epub")) + sorted((CORPUS / "hostile").glob("*.epub"))
    rows = []
    for path in books:
        row = {"book": f"{path.parent.name}/{path.name}"}
        row["plain"] = measure("plain", path, repeat)
        row["hardened"] = measure("hardened", path, repeat)
        if path.parent.name == "epub":
            row["zip"] = measure("zip", path, repeat)
        rows.append(row)
        print(f"measured {row['book']}", file=sys.stderr)
    return rows


def make_hostile_pdfs(folder: Path) -> dict:
    """Build the tests' hostile PDFs in `folder` (run in a child of its own, so that the
    parent, whose peak RSS every reader child inherits as its floor, stays small)."""
    from doc_pipeline_tests.core.test_hostile_pdfs import MADE, MARKER

    for name, make in MADE.items():
        make(folder / name)
    return {"files": [str(folder / name) for name in MADE], "marker": str(MARKER)}


def _pdf_rows(repeat: int) -> tuple[list[dict], bool]:
    """The rows, and whether the scripted file's marker was written (it must not be)."""
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-hostile-pdfs-") as folder:
        made = subprocess.run(
            [sys.executable, __file__, "--make-hostile-pdfs", folder],
            capture_output=True,
            text=True,
            check=True,
            timeout=CHILD_TIMEOUT,
            cwd=ROOT,
        )
        built = json.loads(made.stdout.splitlines()[-1])
        marker = Path(built["marker"])
        marker.unlink(missing_ok=True)
        files = [
            *sorted((CORPUS / "pdf").glob("*.pdf")),
            *sorted((CORPUS / "pdf-hostile").glob("*.pdf")),
            *map(Path, built["files"]),
        ]
        for path in files:
            where = path.parent.name if path.parent.name in ("pdf", "pdf-hostile") else "made"
            row = {"book": f"{where}/{path.name}", "good": where == "pdf"}
            row["plain"] = measure("pdf-plain", path, repeat)
            row["hardened"] = measure("pdf-hardened", path, repeat)
            rows.append(row)
            print(f"measured {row['book']}", file=sys.stderr)
    return rows, marker.exists()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--only", choices=["epub", "pdf"], help="one format's readers only")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    parser.add_argument("--make-hostile-pdfs", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.make_hostile_pdfs:
        print(json.dumps(make_hostile_pdfs(args.make_hostile_pdfs)))
        return
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.repeat)))
        return
    rows = _epub_rows(args.repeat) if args.only != "pdf" else []
    pdf_rows, marker_written = _pdf_rows(args.repeat) if args.only != "epub" else ([], False)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.json:
        figures = {"machine": machine, "rows": rows, "pdf_rows": pdf_rows}
        if pdf_rows:
            figures["scripted_marker_written"] = marker_written
        print(json.dumps(figures, indent=2))
        return
    print(f"machine: {machine}; best of {args.repeat} for good books")
    if rows:
        print(
            "| book | plain ebooklib | s | MB | doc_pipeline | s | MB | ratio s |\n"
            "|---|---|---:|---:|---|---:|---:|---:|"
        )
    for row in rows:
        plain, hard = row["plain"], row["hardened"]
        print(
            f"| {row['book']} | {plain['outcome']} | {plain['seconds']:.3f} | "
            f"{plain['peak_rss_mb']} | {hard['outcome']} | {hard['seconds']:.3f} | "
            f"{hard['peak_rss_mb']} | {_ratio(row, 'plain', 'hardened')} |"
        )
    if rows:
        print(
            "\n| book | zipfile.read all (s) | SafeZip.read all (s) | ratio |\n|---|---:|---:|---:|"
        )
    for row in rows:
        if "zip" in row:
            plain_s, safe_s = row["zip"]["zipfile_s"], row["zip"]["safezip_s"]
            print(f"| {row['book']} | {plain_s:.4f} | {safe_s:.4f} | {safe_s / plain_s:.2f} |")
    if pdf_rows:
        print(
            "\n| pdf | plain pypdfium2 | s | MB | doc_pipeline | s | MB | ratio s |\n"
            "|---|---|---:|---:|---|---:|---:|---:|"
        )
    for row in pdf_rows:
        plain, hard = row["plain"], row["hardened"]
        ratio = _ratio(row, "plain", "hardened") if row["good"] else "-"
        print(
            f"| {row['book']} | {plain['outcome']} | {plain['seconds']:.3f} | "
            f"{plain['peak_rss_mb']} | {hard['outcome']} | {hard['seconds']:.3f} | "
            f"{hard['peak_rss_mb']} | {ratio} |"
        )
    if pdf_rows:
        print(f"\nscripted.pdf's marker written by either reader: {marker_written}")


if __name__ == "__main__":
    main()
