"""Benchmark: the hardened EPUB reader against plain ebooklib, on good and hostile books.

Each book is read in a child process of its own with a 2 GiB address-space cap, by
(a) plain ebooklib, as corpus/hostile/EXPECTED.md describes it: `read_epub`, then
    `get_content()` of every spine item (no markdown), and
(b) doc_pipeline's `epub_to_markdown` (bounded ZIP reads, safe names, safe parsing, markdown).
Printed per book: outcome, seconds and peak RSS of each. On the good books the ratio (b)/(a)
is what hardening plus markdown conversion costs; a second ratio isolates the bounded ZIP
reads: SafeZip.read of every member against zipfile's own read, in the same child.

    python bench/reader.py [--repeat 5] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus"
MEMORY_CAP = 2 << 30


def _plain(path: Path) -> str:
    from ebooklib import epub

    book = epub.read_epub(str(path), {"ignore_ncx": True})
    size = 0
    for idref, _linear in book.spine:
        item = book.get_item_with_id(idref)
        if item is not None:
            size += len(item.get_content())
    return f"ok, {size:,} bytes of spine"


def _hardened(path: Path) -> str:
    from doc_pipeline.core.epub import InvalidBookError, epub_to_markdown

    try:
        book = epub_to_markdown(path)
    except InvalidBookError as error:
        return f"refused: {str(error)[len(path.name) + 2 :][:70]}"
    return f"ok, {len(book.markdown.split()):,} words, {len(book.warnings)} warnings"


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
            for _ in range(repeat if kind == "hardened" or "epub/" in str(path) else 1):
                started = time.perf_counter()
                result["outcome"] = (_plain if kind == "plain" else _hardened)(path)
                elapsed = time.perf_counter() - started
                best = elapsed if best is None else min(best, elapsed)
            result["seconds"] = best
    except BaseException as error:  # noqa: BLE001 - plain ebooklib's failures are the point
        result["outcome"] = f"{type(error).__name__}: {str(error)[:60]}"
        result["seconds"] = time.perf_counter() - started
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    return result


def measure(kind: str, path: Path, repeat: int) -> dict:
    done = subprocess.run(
        [sys.executable, __file__, "--child", kind, str(path), "--repeat", str(repeat)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if not lines:
        return {"outcome": f"child died ({done.returncode}): {done.stderr[-80:]}", "seconds": 0}
    return json.loads(lines[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), args.repeat)))
        return
    books = sorted((CORPUS / "epub").glob("*.epub")) + sorted((CORPUS / "hostile").glob("*.epub"))
    rows = []
    for path in books:
        row = {"book": f"{path.parent.name}/{path.name}"}
        row["plain"] = measure("plain", path, args.repeat)
        row["hardened"] = measure("hardened", path, args.repeat)
        if path.parent.name == "epub":
            row["zip"] = measure("zip", path, args.repeat)
        rows.append(row)
        print(f"measured {row['book']}", file=sys.stderr)
    machine = f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
    if args.json:
        print(json.dumps({"machine": machine, "rows": rows}, indent=2))
        return
    print(f"machine: {machine}; best of {args.repeat} for good books")
    print(
        "| book | plain ebooklib | s | MB | doc_pipeline | s | MB | ratio s |\n"
        "|---|---|---:|---:|---|---:|---:|---:|"
    )
    for row in rows:
        plain, hard = row["plain"], row["hardened"]
        ratio = hard["seconds"] / plain["seconds"] if plain.get("seconds") else float("nan")
        print(
            f"| {row['book']} | {plain['outcome']} | {plain['seconds']:.3f} | "
            f"{plain['peak_rss_mb']} | {hard['outcome']} | {hard['seconds']:.3f} | "
            f"{hard['peak_rss_mb']} | {ratio:.2f} |"
        )
    print("\n| book | zipfile.read all (s) | SafeZip.read all (s) | ratio |\n|---|---:|---:|---:|")
    for row in rows:
        if "zip" in row:
            plain_s, safe_s = row["zip"]["zipfile_s"], row["zip"]["safezip_s"]
            print(f"| {row['book']} | {plain_s:.4f} | {safe_s:.4f} | {safe_s / plain_s:.2f} |")


if __name__ == "__main__":
    main()
