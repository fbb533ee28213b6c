"""Benchmark: what the gemini provider pays per book and stage, and what a retry after a crash pays.

All AI requests go to the local fake Gemini server (doc_pipeline_tests.fakes.FakeGemini), so the
token counts are realistic estimates (about one token per four characters; the fake answers a
v2 chunking request with block numbers and metadata, as the model is asked to) priced at the
list prices of the GeminiProvider's default models.

1. Clean run: each book of the corpus is ingested (`python -m doc_pipeline ingest --json`, the
   gemini provider, one call per book so the fake's requests can be told apart) in one fresh
   home; per book and stage, the requests, tokens and USD recorded in `ai_calls`, and the paid
   requests the fake answered (they must match the ledger's paid rows).
2. Crash and retry, for one book: for each crash point (extracting, chunking, embedding,
   connecting) a fresh home, the ingest SIGKILLed there (its whole process group), then the
   ingest run again to completion. Printed: what was paid before the crash, what the retry
   paid, the clean cost, the ratio (before + retry) / clean (1.00: nothing paid twice; the old
   system, which re-paid everything on a retry, would show 1 + before / clean) and the requests
   paid twice (fake requests whose body was answered before), at most those in flight.
   A delay fault on the stage's AI method keeps the kill inside the stage; 'connecting' lasts
   milliseconds, so the bench holds a lock on `connections` until the step waits on it.

    python bench/cost.py [--corpus ../shared/corpus/epub] [--crash-book NAME] [--json]

Every home has its own embedded Postgres, started here (so that killing an ingest's process
group does not kill it) and stopped at the end, like the fake server and every subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # doc_pipeline_tests (the fake server) lives in the checkout

API_KEY = "bench-cost-fake-key"
PAID_METHODS = {"generateContent": "chunks", "batchEmbedContents": "embeddings"}
LEDGER_STAGES = ("chunks", "embeddings")
CRASH_POINTS = ("extracting", "chunking", "embedding", "connecting")
# The delay fault that keeps the AI requests of a stage slow enough for the kill to land in it.
CRASH_DELAYS = {
    "extracting": ("generateContent", 1.0),  # no request must be answered before the kill
    "chunking": ("generateContent", 0.3),
    "embedding": ("batchEmbedContents", 1.0),
    "connecting": (None, 0.0),
}
DEFAULT_CRASH_BOOK = "se-abbott-flatland.epub3.epub"
TIMEOUT = 300.0


class BenchError(RuntimeError):
    """The benchmark could not measure what it meant to (a run failed, a wait timed out)."""


@dataclass(frozen=True)
class Prices:
    """USD per million tokens: the list prices of the GeminiProvider's default models."""

    chunking_model: str
    embedding_model: str
    input: float
    output: float  # thinking tokens are billed as output
    embedding: float

    @classmethod
    def defaults(cls) -> Prices:
        from doc_pipeline.core.models import PRICES
        from doc_pipeline.resources.gemini_provider import GeminiProvider

        p = GeminiProvider()
        chunking, embedding = PRICES[p.chunking_model], PRICES[p.embedding_model_name]
        return cls(
            p.chunking_model,
            p.embedding_model_name,
            chunking.input_per_million,
            chunking.output_per_million,
            embedding.input_per_million,
        )

    def of(self, request: dict) -> float:
        """What the fake's logged request would be billed."""
        prompt = request.get("prompt_tokens") or 0
        if request["api_method"] == "batchEmbedContents":
            return prompt * self.embedding / 1e6
        output = (request.get("output_tokens") or 0) + (request.get("thoughts_tokens") or 0)
        return (prompt * self.input + output * self.output) / 1e6


def paid_requests(fake) -> list[dict]:
    """The fake's answered (billable) requests, in the order they were answered."""
    return [
        r for r in fake.requests if r.get("api_method") in PAID_METHODS and r.get("status") == 200
    ]


def fake_summary(requests: list[dict], prices: Prices) -> dict:
    by_stage: dict[str, dict] = {}
    for stage in LEDGER_STAGES:
        mine = [r for r in requests if PAID_METHODS[r["api_method"]] == stage]
        by_stage[stage] = {
            "requests": len(mine),
            "prompt_tokens": sum(r.get("prompt_tokens") or 0 for r in mine),
            "output_tokens": sum(r.get("output_tokens") or 0 for r in mine),
            "thinking_tokens": sum(r.get("thoughts_tokens") or 0 for r in mine),
            "usd": round(sum(prices.of(r) for r in mine), 6),
        }
    return {
        "requests": len(requests),
        "usd": round(sum(prices.of(r) for r in requests), 6),
        "stages": by_stage,
    }


@dataclass
class Home:
    """A fresh DOC_PIPELINE_HOME with its embedded Postgres and the env of its ingest runs."""

    path: Path
    fake_url: str
    engine: object = None
    runs: int = 0
    env: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        drop = (
            "DATABASE_URL",
            "DAGSTER_HOME",
            "GOOGLE_API_KEY",
            "DOC_PIPELINE_DAGSTER_DATABASE_URL",
        )
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in drop},
            "DOC_PIPELINE_HOME": str(self.path),
            "DOC_PIPELINE_PROVIDER": "gemini",
            "GEMINI_API_KEY": API_KEY,
            "GOOGLE_GEMINI_BASE_URL": self.fake_url,
        }

    def start_ingest(
        self, books: list[Path], options: tuple[str, ...] = ()
    ) -> tuple[subprocess.Popen, Path, Path]:
        self.runs += 1
        stdout = self.path.parent / f"{self.path.name}-run{self.runs}.out"
        stderr = self.path.parent / f"{self.path.name}-run{self.runs}.err"
        command = [sys.executable, "-m", "doc_pipeline", "ingest", "--json", *options]
        command += map(str, books)
        with stdout.open("w") as out, stderr.open("w") as err:
            process = subprocess.Popen(
                command,
                cwd=ROOT,
                env=self.env,
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,  # its own process group, killed as one
            )
        return process, stdout, stderr

    def ingest(
        self, books: list[Path], options: tuple[str, ...] = (), timeout: float = TIMEOUT
    ) -> list[dict]:
        """Run the ingest (with `options`, e.g. `--config FILE`) to completion; every document
        must end `connected`."""
        from doc_pipeline_tests.processes import stop_process_group

        process, stdout, stderr = self.start_ingest(books, options)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired as error:
            raise BenchError(
                f"ingest of {[b.name for b in books]} took over {timeout:.0f} s; see {stderr}"
            ) from error
        finally:
            stop_process_group(process)
        if process.returncode != 0:
            tail = stderr.read_text(errors="replace")[-3000:]
            raise BenchError(f"ingest exited with {process.returncode}:\n{tail}")
        outcomes = json.loads(stdout.read_text())
        unfinished = [(o["source_file"], o["stage"]) for o in outcomes if o["stage"] != "connected"]
        if unfinished:
            raise BenchError(f"documents not connected after the ingest: {unfinished}")
        return outcomes

    def stage(self) -> str | None:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return conn.execute(sa.text("SELECT stage FROM documents LIMIT 1")).scalar()

    def ledger(self, after_id: int = 0) -> list[dict]:
        """ai_calls rows (after the given id), summed per document, stage and outcome."""
        import sqlalchemy as sa

        query = sa.text(
            "SELECT document_id, stage, outcome, count(*) AS calls,"
            " sum(prompt_tokens) AS prompt_tokens, sum(output_tokens) AS output_tokens,"
            " sum(thinking_tokens) AS thinking_tokens, sum(cost_usd) AS cost_usd,"
            " sum(saved_usd) AS saved_usd"
            " FROM ai_calls WHERE id > :after GROUP BY document_id, stage, outcome"
        )
        with self.engine.connect() as conn:
            return [dict(row._mapping) for row in conn.execute(query, {"after": after_id})]

    @contextlib.contextmanager
    def hold_connections(self) -> Iterator[None]:
        """Lock the connections table until the block ends: the connections step, which writes
        it inside its transaction after marking the document 'connecting', waits there to be
        killed (the embeddings check before that step reads vectors, not connections)."""
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            conn.execute(sa.text("SET LOCAL lock_timeout = '30s'"))
            conn.execute(sa.text("LOCK TABLE connections IN ACCESS EXCLUSIVE MODE"))
            try:
                yield
            finally:
                conn.rollback()

    def paid_calls(self, stage: str) -> int:
        import sqlalchemy as sa

        query = sa.text("SELECT count(*) FROM ai_calls WHERE stage = :stage AND outcome = 'paid'")
        with self.engine.connect() as conn:
            return conn.execute(query, {"stage": stage}).scalar()

    def last_call_id(self) -> int:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return conn.execute(sa.text("SELECT coalesce(max(id), 0) FROM ai_calls")).scalar()


@contextlib.contextmanager
def fresh_home(root: Path, name: str, fake_url: str) -> Iterator[Home]:
    """Start the home's embedded Postgres here and migrate it; always stop it at the end."""
    from doc_pipeline.db import migrate, store
    from doc_pipeline.db.server import database_urls, stop_embedded
    from doc_pipeline.settings import Settings

    home = Home(root / name, fake_url)
    settings = Settings(home.path, None)
    try:
        url = database_urls(settings).app
        migrate.upgrade(url)
        home.engine = store.engine_for(url)
        yield home
    finally:
        if home.engine is not None:
            home.engine.dispose()
        stop_embedded(settings.pgdata)


def ledger_totals(rows: list[dict]) -> dict:
    """Per stage and in all: paid calls, hits, tokens and USD of a set of ai_calls rows."""

    def empty() -> dict:
        keys = ("requests", "hits", "failed", "prompt_tokens", "output_tokens", "thinking_tokens")
        return {**dict.fromkeys(keys, 0), "usd": 0.0, "saved_usd": 0.0}

    stages = {stage: empty() for stage in LEDGER_STAGES}
    for row in rows:
        figures = stages.setdefault(row["stage"], empty())
        if row["outcome"] == "paid":
            figures["requests"] += row["calls"]
            for key in ("prompt_tokens", "output_tokens", "thinking_tokens"):
                figures[key] += int(row[key] or 0)
        elif row["outcome"] == "hit":
            figures["hits"] += row["calls"]
        else:
            figures["failed"] += row["calls"]
        figures["usd"] += float(row["cost_usd"] or 0)
        figures["saved_usd"] += float(row["saved_usd"] or 0)
    total = empty()
    for figures in stages.values():
        for key, value in figures.items():
            total[key] += value
    for figures in [*stages.values(), total]:
        figures["usd"] = round(figures["usd"], 6)
        figures["saved_usd"] = round(figures["saved_usd"], 6)
    return {**total, "stages": stages}


# -- part 1: clean run -----------------------------------------------------------------------


def clean_run(root: Path, fake, books: list[Path], prices: Prices) -> dict:
    fake.clear_faults()
    per_book: dict[str, dict] = {}
    with fresh_home(root, "clean", fake.base_url) as home:
        for book in books:
            fake.clear_requests()
            started = time.perf_counter()
            (outcome,) = home.ingest([book])
            seconds = time.perf_counter() - started
            per_book[book.name] = {
                "document_id": outcome["document_id"],
                "chunks": outcome["chunks"],
                "ingest_seconds": round(seconds, 2),
                "fake": fake_summary(paid_requests(fake), prices),
            }
        rows = home.ledger()
    for figures in per_book.values():
        figures["ledger"] = ledger_totals(
            [r for r in rows if r["document_id"] == figures["document_id"]]
        )
    total_fake = sum(f["fake"]["requests"] for f in per_book.values())
    totals = ledger_totals(rows)
    if totals["requests"] != total_fake:
        raise BenchError(
            f"the fake answered {total_fake} paid requests but the ledger has "
            f"{totals['requests']} paid rows"
        )
    return {
        "books": per_book,
        "totals": totals,
        "fake_paid_requests": total_fake,
        "fake_usd": round(sum(f["fake"]["usd"] for f in per_book.values()), 6),
    }


# -- part 2: crash and retry -----------------------------------------------------------------


def wait_until(process: subprocess.Popen, done: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not done():
        if process.poll() is not None:
            raise BenchError(f"the ingest exited ({process.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise BenchError(f"no {what} within {TIMEOUT:.0f} s")
        time.sleep(0.002)


def crash_condition(home: Home, point: str, clean: dict) -> tuple[Callable[[], bool], str]:
    """When to kill, and what that is, for a crash point. An answer counts once the ingest has
    committed it to the ledger (a paid row in ai_calls); the next request is then in flight."""
    chunk_requests = clean["fake"]["stages"]["chunks"]["requests"]
    batches = clean["fake"]["stages"]["embeddings"]["requests"]
    if point == "extracting":
        return lambda: home.stage() == "extracting", "stage 'extracting'"
    if point == "chunking":
        half = max(1, chunk_requests // 2)
        return (
            lambda: home.paid_calls("chunks") >= half,
            f"{half} of {chunk_requests} chunking requests answered",
        )
    if point == "embedding":
        if batches > 1:
            return (
                lambda: home.stage() == "embedding" and home.paid_calls("embeddings") >= 1,
                f"stage 'embedding' and 1 of {batches} batches answered",
            )
        return lambda: home.stage() == "embedding", "stage 'embedding' (1 batch)"
    return lambda: home.stage() == "connecting", "stage 'connecting'"


def crash_and_retry(root: Path, fake, book: Path, point: str, clean: dict, prices: Prices) -> dict:
    from doc_pipeline_tests.processes import stop_process_group

    started = time.perf_counter()
    fake.clear_faults()
    fake.clear_requests()
    method, delay = CRASH_DELAYS[point]
    with fresh_home(root, f"crash-{point}", fake.base_url) as home:
        if method:
            fake.add_fault(method, delay_seconds=delay)
        done, what = crash_condition(home, point, clean)
        process, _, stderr = home.start_ingest([book])
        try:
            with contextlib.ExitStack() as gate:
                try:
                    if point == "connecting":
                        # The stage lasts milliseconds: hold its write of `connections`.
                        wait_until(process, lambda: home.stage() == "embedded", "stage 'embedded'")
                        gate.enter_context(home.hold_connections())
                    wait_until(process, done, what)
                except BenchError as error:
                    tail = stderr.read_text(errors="replace")[-2000:]
                    raise BenchError(f"crash at {point}: {error}\n{tail}") from error
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(30)
            stage_at_kill = home.stage()
        finally:
            stop_process_group(process)
        fake.clear_faults()
        time.sleep(delay + 0.5)  # a request in flight at the kill is still answered and logged
        before = paid_requests(fake)
        last_id = home.last_call_id()
        ledger_before = ledger_totals(home.ledger())
        fake.clear_requests()
        retry_started = time.perf_counter()
        home.ingest([book])
        retry_seconds = time.perf_counter() - retry_started
        retry = paid_requests(fake)
        ledger_retry = ledger_totals(home.ledger(after_id=last_id))

    seen = {r["body_sha256"] for r in before}
    twice = [r for r in retry if r["body_sha256"] in seen]
    repeated_in_retry = len(retry) - len({r["body_sha256"] for r in retry})
    fake_before = fake_summary(before, prices)
    fake_retry = fake_summary(retry, prices)
    clean_usd = clean["fake"]["usd"]
    return {
        "kill_when": what,
        "stage_at_kill": stage_at_kill,
        "before": {"fake": fake_before, "ledger_paid": ledger_before["requests"]},
        "retry": {
            "fake": fake_retry,
            "ledger": {
                k: ledger_retry[k] for k in ("requests", "hits", "failed", "usd", "saved_usd")
            },
            "seconds": round(retry_seconds, 2),
        },
        "clean_usd": clean_usd,
        "ratio": round((fake_before["usd"] + fake_retry["usd"]) / clean_usd, 4),
        "old_system_ratio": round(1 + fake_before["usd"] / clean_usd, 4),
        "paid_twice": len(twice) + repeated_in_retry,
        "paid_twice_usd": round(sum(prices.of(r) for r in twice), 6),
        "seconds": round(time.perf_counter() - started, 2),
    }


# -- report ------------------------------------------------------------------------------------


def print_report(figures: dict) -> None:
    prices = figures["prices"]
    print(f"{figures['machine']}; fake Gemini server, gemini provider")
    print(
        f"prices (USD per million tokens): {prices['chunking_model']} input "
        f"{prices['input']}, output and thinking {prices['output']}; "
        f"{prices['embedding_model']} {prices['embedding']}"
    )
    clean = figures["clean"]
    print(f"\n1. Clean run, from ai_calls ({len(clean['books'])} books, {clean['seconds']:.1f} s)")
    width = max(len(name) for name in clean["books"]) + 2
    print(
        f"{'book':<{width}}{'stage':<12}{'requests':>9}{'prompt tok':>12}{'output tok':>12}"
        f"{'thinking tok':>14}{'USD':>10}"
    )

    def row(name: str, stage: str, f: dict) -> str:
        return (
            f"{name:<{width}}{stage:<12}{f['requests']:>9}{f['prompt_tokens']:>12,}"
            f"{f['output_tokens']:>12,}{f['thinking_tokens']:>14,}{f['usd']:>10.4f}"
        )

    for name, book in [*clean["books"].items(), ("TOTAL", {"ledger": clean["totals"]})]:
        ledger = book["ledger"]
        for stage in LEDGER_STAGES:
            print(row(name, stage, ledger["stages"][stage]))
        print(row(name, "all", ledger))
    totals = clean["totals"]
    print(
        f"paid requests: seen by the fake {clean['fake_paid_requests']}, ledger paid rows "
        f"{totals['requests']} (hits {totals['hits']}, failed {totals['failed']})"
    )
    print(
        f"USD: ledger {totals['usd']:.4f}, the fake's token counts at list price "
        f"{clean['fake_usd']:.4f}"
    )

    crash = figures["crash"]
    print(f"\n2. Crash and retry: {crash['book']} ({crash['seconds']:.1f} s)")
    print(
        f"{'crash at':<12}{'at kill':<12}{'before':>7}{'(ledger)':>9}{'before $':>10}"
        f"{'retry':>7}{'retry $':>10}{'ledger $':>10}{'clean $':>10}{'ratio':>7}{'old':>6}"
        f"{'paid 2x':>9}{'s':>6}"
    )
    for point, c in crash["points"].items():
        before, retry = c["before"]["fake"], c["retry"]["fake"]
        print(
            f"{point:<12}{c['stage_at_kill'] or '-':<12}{before['requests']:>7}"
            f"{c['before']['ledger_paid']:>9}{before['usd']:>10.4f}{retry['requests']:>7}"
            f"{retry['usd']:>10.4f}{c['retry']['ledger']['usd']:>10.4f}{c['clean_usd']:>10.4f}"
            f"{c['ratio']:>7.2f}{c['old_system_ratio']:>6.2f}{c['paid_twice']:>9}"
            f"{c['seconds']:>6.1f}"
        )
    print(
        "before: paid requests the fake answered before the kill (ledger: of them, committed to"
        " ai_calls);\nretry: paid requests the fake answered for the retry; $: at list price;"
        " ledger $: cost_usd of\nthe retry's ai_calls; ratio = (before + retry) / clean; old ="
        " 1 + before / clean;\npaid 2x: requests whose body the fake had answered before."
    )
    for point, c in crash["points"].items():
        ledger = c["retry"]["ledger"]
        print(
            f"  {point}: killed at {c['kill_when']}; the retry's ledger: {ledger['requests']} "
            f"paid, {ledger['hits']} hits (saved ${ledger['saved_usd']:.4f})"
        )
    print(f"\ntotal wall time {figures['wall_seconds']:.1f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "epub")
    parser.add_argument(
        "--crash-book",
        default=DEFAULT_CRASH_BOOK,
        help="a file name in the corpus (or a path) for the crash part",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    books = sorted(args.corpus.glob("*.epub"))
    if not books:
        sys.exit(f"no .epub files in {args.corpus}")
    crash_book = Path(args.crash_book)
    if not crash_book.is_file():
        crash_book = args.corpus / args.crash_book
    if not crash_book.is_file():
        sys.exit(f"no crash book {args.crash_book} (in {args.corpus} or as a path)")
    crash_book = crash_book.resolve()
    if crash_book not in [b.resolve() for b in books]:
        books.append(crash_book)  # its clean cost is the baseline of the crash part

    from doc_pipeline_tests.fakes import FakeGemini

    prices = Prices.defaults()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="doc-pipeline-bench-cost-"))
    try:
        with FakeGemini() as fake:
            clean_started = time.perf_counter()
            clean = clean_run(root, fake, books, prices)
            clean["seconds"] = round(time.perf_counter() - clean_started, 2)
            baseline = clean["books"][crash_book.name]
            crash_started = time.perf_counter()
            points = {}
            for point in CRASH_POINTS:
                points[point] = crash_and_retry(root, fake, crash_book, point, baseline, prices)
            crash_seconds = time.perf_counter() - crash_started
    except BenchError as error:
        sys.exit(f"bench/cost.py: {error}\n(homes and ingest logs kept in {root})")
    shutil.rmtree(root, ignore_errors=True)
    figures = {
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "prices": {
            "chunking_model": prices.chunking_model,
            "embedding_model": prices.embedding_model,
            "input": prices.input,
            "output": prices.output,
            "embedding": prices.embedding,
        },
        "clean": clean,
        "crash": {
            "book": crash_book.name,
            "points": points,
            "seconds": round(crash_seconds, 2),
        },
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print_report(figures)


if __name__ == "__main__":
    main()
