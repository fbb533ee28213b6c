"""Run the book reader (EPUB or PDF, as the pipeline chooses) on untrusted files in a child
process with a memory cap and a time limit, so a hang or a memory blow-up fails a test
instead of taking the test run down.

`python -m doc_pipeline_tests.bounded_reader MEMORY_BYTES` reads a JSON list of paths on
stdin and prints one JSON line per book: the outcome, the seconds it took and the child's
peak RSS so far.
"""

from __future__ import annotations

import json
import re
import resource
import subprocess
import sys
import time
import traceback
from pathlib import Path

# Lines of /etc/passwd, whatever the machine's root entry looks like.
PASSWD_LINE = re.compile(r"root:[^:\n]*:0:0:|/bin/bash|/usr/sbin/nologin")


def read_books(paths: list[Path], memory_bytes: int, timeout: float) -> list[dict]:
    """One result per path, in order: {"path", "outcome": "book"|"invalid"|"crash", ...}.
    Raises AssertionError if the child dies, runs out of time or breaks the memory cap."""
    try:
        child = subprocess.run(
            [sys.executable, "-m", "doc_pipeline_tests.bounded_reader", str(memory_bytes)],
            input=json.dumps([str(path) for path in paths]),
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:  # subprocess.run kills the child
        raise AssertionError(f"reader took over {timeout} s on {paths}") from exc
    results = [json.loads(line) for line in child.stdout.splitlines() if line.startswith("{")]
    if child.returncode != 0 or len(results) != len(paths):
        done = len(results)
        raise AssertionError(
            f"reader child exited {child.returncode} after {done} of {len(paths)} books "
            f"(next: {paths[done] if done < len(paths) else '-'}): {child.stderr[-2000:]}"
        )
    return results


def read_one(path: Path) -> dict:
    """Convert one untrusted book and say how it went: {"outcome": "book" (with words,
    warnings, markup_errors, leaked_passwd) | "invalid" (with error) | "crash" (with error and
    traceback), "seconds", "peak_rss_bytes"}. Never raises for what the book does."""
    from doc_pipeline.core.books import InvalidBookError
    from doc_pipeline.core.extraction import extract_book

    started = time.perf_counter()
    result: dict = {"path": str(path)}
    try:
        book = extract_book(path, path.name)
    except InvalidBookError as error:
        result.update(outcome="invalid", error=str(error))
    except MemoryError:
        result.update(outcome="crash", error="MemoryError (over the child's memory cap)")
    except Exception as error:  # noqa: BLE001 - the point is to report any other failure
        result.update(
            outcome="crash",
            error=f"{type(error).__name__}: {error}"[:2000],
            traceback=traceback.format_exc()[-3000:],
        )
    else:
        result.update(
            outcome="book",
            words=len(book.markdown.split()),
            warnings=list(book.warnings),
            markup_errors=book.markup_errors,
            leaked_passwd=any(PASSWD_LINE.search(text) for text in (book.markdown, *book.warnings)),
        )
    result["seconds"] = round(time.perf_counter() - started, 3)
    result["peak_rss_bytes"] = peak_rss_bytes()
    return result


def peak_rss_bytes() -> int:
    """This process's own peak RSS since it started its program. Not getrusage's ru_maxrss:
    Linux carries that over fork and exec, so a child of a big test worker would report the
    worker's size."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def main() -> None:
    memory_bytes = int(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    for path in json.loads(sys.stdin.read()):
        print(json.dumps(read_one(Path(path))), flush=True)


if __name__ == "__main__":
    main()


def assert_outcome(
    result: dict,
    name: str,
    expected: tuple[str, str],
    *,
    min_words: int,
    max_seconds: float,
    max_peak_rss: int,
) -> None:
    """The reader's result for a hostile file is the one documented: refused with a one-line
    reason that names the file and says `says`, or read with a warning that says it; within
    the time and memory bounds."""
    outcome, says = expected
    assert result["outcome"] == outcome, result
    if outcome == "invalid":
        assert result["error"].startswith(f"{name}: "), result["error"]
        assert says in result["error"] and "\n" not in result["error"], result["error"]
    else:
        assert result["words"] >= min_words
        assert any(says in warning for warning in result["warnings"]), result["warnings"]
        assert not result["leaked_passwd"]
    assert result["seconds"] < max_seconds
    assert result["peak_rss_bytes"] < max_peak_rss, f"{result['peak_rss_bytes']:,} bytes"


def assert_readme_rows(readme: str, outcomes: dict[str, tuple[str, str]]) -> None:
    """README's table of bad inputs has one row per file, saying what the tests check."""
    for name, (outcome, says) in outcomes.items():
        rows = [line for line in readme.splitlines() if re.match(rf"\|\s*`{name}`", line)]
        assert len(rows) == 1, f"README has {len(rows)} table rows for {name}"
        assert says in rows[0], rows[0]
        assert ("fails" if outcome == "invalid" else "processed") in rows[0], rows[0]
