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
3. Edit cases, for one book (issue 15): three edited copies built here as EPUBs (one word
   added in the middle chapter; that chapter's paragraphs replaced by a chapter of another
   corpus book, the donor; the donor's chapter added after it as a new file in the OPF's
   manifest and spine and in the nav). For each, a home holding the original book, then the
   edited copy ingested into it, against a fresh home where only the edited copy is ingested:
   paid requests per stage (chunks, embeddings, connections = thematic-bridge judgements),
   texts embedded (the `embeddings` materialization's `embedded_now`), chunks and USD, and the
   ratio edit / fresh, with and without the bridge judgements between the two copies.

    python bench/cost.py [--corpus ../shared/corpus/epub] [--only clean,crash,edits]
        [--crash-book NAME] [--edit-book NAME] [--edit-donor NAME] [--json]

The crash part needs the clean run's cost of its book, so `--only crash` runs the clean part too.

Every home has its own embedded Postgres, started here (so that killing an ingest's process
group does not kill it) and stopped at the end, like the fake server and every subprocess.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import html
import json
import os
import platform
import posixpath
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.parse
import zipfile
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
PARTS = ("clean", "crash", "edits")
EDIT_CASES = ("word", "chapter-replaced", "chapter-added")
EDIT_STAGES = ("chunks", "embeddings", "connections")
DEFAULT_EDIT_BOOK = DEFAULT_CRASH_BOOK
DEFAULT_EDIT_DONOR = "se-keynes-economic-consequences-of-the-peace.epub3.epub"
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
    dagster_url: str = ""  # the Dagster instance's database (its event log)
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

    def materialization(self, asset: str, document_id: str) -> dict:
        """The metadata values of the asset's last materialization for the document, from the
        Dagster event log."""
        import sqlalchemy as sa

        engine = sa.create_engine(self.dagster_url, poolclass=sa.NullPool)
        try:
            with engine.connect() as conn:
                event = conn.execute(
                    sa.text(
                        "SELECT event FROM event_logs WHERE dagster_event_type ="
                        " 'ASSET_MATERIALIZATION' AND asset_key = :key AND partition = :doc"
                        " ORDER BY id DESC LIMIT 1"
                    ),
                    {"key": json.dumps([asset]), "doc": document_id},
                ).scalar()
        finally:
            engine.dispose()
        if event is None:
            raise BenchError(f"no materialization of {asset} for {document_id}")
        record = json.loads(event)["dagster_event"]["event_specific_data"]["materialization"]
        values = {}
        for entry in record["metadata_entries"]:
            data = entry["entry_data"]
            values[entry["label"]] = data.get("value", data.get("text"))
        return values

    def text_keys(self, document_id: str | None = None) -> set[str]:
        """The text keys of the vectors (of one document, or of all)."""
        import sqlalchemy as sa

        query = "SELECT DISTINCT text_sha256 FROM embeddings"
        if document_id:
            query += " WHERE document_id = :doc"
        with self.engine.connect() as conn:
            return set(conn.scalars(sa.text(query), {"doc": document_id}))

    def chunk_ids(self, document_id: str) -> set[str]:
        import sqlalchemy as sa

        with self.engine.connect() as conn:
            return set(
                conn.scalars(
                    sa.text("SELECT id FROM chunks WHERE document_id = :doc"), {"doc": document_id}
                )
            )

    def markdown(self, document_id: str) -> str:
        path = self.path / "blobs" / "outputs" / "extracted_markdown" / f"{document_id}.json"
        return json.loads(path.read_text())["markdown"]


@contextlib.contextmanager
def fresh_home(root: Path, name: str, fake_url: str) -> Iterator[Home]:
    """Start the home's embedded Postgres here and migrate it; always stop it at the end."""
    from doc_pipeline.db import migrate, store
    from doc_pipeline.db.server import database_urls, stop_embedded
    from doc_pipeline.settings import Settings

    home = Home(root / name, fake_url)
    settings = Settings(home.path, None)
    try:
        urls = database_urls(settings)
        url, home.dagster_url = urls.app, urls.dagster
        migrate.upgrade(url)
        home.engine = store.engine_for(url)
        yield home
    finally:
        if home.engine is not None:
            home.engine.dispose()
        stop_embedded(settings.pgdata)


def ledger_totals(rows: list[dict], stages_shown: tuple[str, ...] = LEDGER_STAGES) -> dict:
    """Per stage (those shown, and any other in the rows) and in all: paid calls, hits, tokens
    and USD of a set of ai_calls rows."""

    def empty() -> dict:
        keys = ("requests", "hits", "failed", "prompt_tokens", "output_tokens", "thinking_tokens")
        return {**dict.fromkeys(keys, 0), "usd": 0.0, "saved_usd": 0.0}

    stages = {stage: empty() for stage in stages_shown}
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


# -- part 3: edit cases ------------------------------------------------------------------------

XHTML_NS = "http://www.w3.org/1999/xhtml"
_OPF = "{http://www.idpf.org/2007/opf}"
_CONTAINER = "{urn:oasis:names:tc:opendocument:xmlns:container}"
_MIN_CHAPTER_TEXT = 2_000  # characters of paragraph text: a spine document that is a chapter
_ADDED_WORD = ("the ", "very ")  # case 'word': "very " inserted after the first "the "


@dataclass
class Package:
    """An EPUB's package document: where it is, its manifest and its spine."""

    opf: str  # the OPF's path in the zip
    items: dict[str, dict]  # manifest id -> href, path (in the zip), media_type, properties
    spine: list[str]  # manifest ids in reading order
    nav: str | None  # the EPUB 3 nav document's path
    ncx: str | None  # the NCX's path

    @classmethod
    def read(cls, book: zipfile.ZipFile) -> Package:
        from lxml import etree

        container = etree.fromstring(book.read("META-INF/container.xml"))
        opf = container.find(f".//{_CONTAINER}rootfile").get("full-path")
        root = etree.fromstring(book.read(opf))
        base = posixpath.dirname(opf)
        items = {}
        for item in root.iter(f"{_OPF}item"):
            href = item.get("href")
            items[item.get("id")] = {
                "href": href,
                "path": posixpath.normpath(posixpath.join(base, urllib.parse.unquote(href))),
                "media_type": item.get("media-type"),
                "properties": (item.get("properties") or "").split(),
            }
        spine = root.find(f"{_OPF}spine")
        idrefs = [ref.get("idref") for ref in spine.iter(f"{_OPF}itemref")]
        nav = next((i["path"] for i in items.values() if "nav" in i["properties"]), None)
        ncx = next(
            (i["path"] for i in items.values() if i["media_type"] == "application/x-dtbncx+xml"),
            None,
        )
        return cls(opf, items, idrefs, nav, ncx)

    def id_of(self, path: str) -> str:
        return next(i for i, item in self.items.items() if item["path"] == path)


def _local(element) -> str:
    from lxml import etree

    return etree.QName(element).localname if isinstance(element.tag, str) else ""


def parse_xhtml(data: bytes):
    from lxml import etree

    parser = etree.XMLParser(recover=True, resolve_entities=False, no_network=True)
    return etree.fromstring(data, parser)


def body_paragraphs(root) -> list:
    """The <p> elements of the body with text, except those of headings (hgroup, header, nav)."""
    body = next((el for el in root.iter() if _local(el) == "body"), None)
    if body is None:
        return []
    return [
        p
        for p in body.iter()
        if _local(p) == "p"
        and "".join(p.itertext()).strip()
        and not any(_local(a) in ("hgroup", "header", "nav") for a in p.iterancestors())
    ]


def book_chapters(book: zipfile.ZipFile, package: Package) -> list[str]:
    """Paths of the chapters in spine order: the spine documents named 'chapter…', else those
    with at least _MIN_CHAPTER_TEXT characters of paragraph text."""
    kinds = ("application/xhtml+xml", "text/html")
    docs = [
        package.items[i]["path"]
        for i in package.spine
        if i in package.items and package.items[i]["media_type"] in kinds
    ]
    named = [d for d in docs if "chapter" in posixpath.basename(d).lower()]
    if len(named) >= 3:
        return named

    def text_length(path: str) -> int:
        paragraphs = body_paragraphs(parse_xhtml(book.read(path)))
        return sum(len("".join(p.itertext())) for p in paragraphs)

    return [d for d in docs if text_length(d) >= _MIN_CHAPTER_TEXT]


def add_word(xhtml: str) -> tuple[str, str]:
    """_ADDED_WORD's word inserted after the first 'the ' in the text (not a tag) of the first
    body paragraph of 200+ characters after the chapter's heading: the XHTML and an excerpt.
    A string edit: every other byte of the file stays as it was."""
    after, word = _ADDED_WORD
    heading = re.search(r"</(?:hgroup|header|h[1-6])\s*>", xhtml)
    start = heading.end() if heading else 0
    for paragraph in re.finditer(r"<p(?:\s[^>]*)?>(.*?)</p\s*>", xhtml[start:], re.S):
        content = paragraph.group(1)
        if len(re.sub(r"<[^>]+>", "", content)) < 200:
            continue
        offset = start + paragraph.start(1)
        for piece in re.split(r"(<[^>]+>)", content):
            found = re.search(rf"\b{after}", piece) if not piece.startswith("<") else None
            if found:
                at = offset + found.end()
                excerpt = piece[max(0, found.start() - 30) : found.end()] + word
                excerpt += piece[found.end() : found.end() + 30]
                return xhtml[:at] + word + xhtml[at:], " ".join(html.unescape(excerpt).split())
            offset += len(piece)
    raise BenchError(f"no paragraph with '{after}' to add a word to")


def _drop(element) -> None:
    """Remove an element, keeping its tail text."""
    parent, previous = element.getparent(), element.getprevious()
    if element.tail:
        if previous is not None:
            previous.tail = (previous.tail or "") + element.tail
        else:
            parent.text = (parent.text or "") + element.tail
    parent.remove(element)


def donor_chapter(donor: Path) -> tuple[str, str, list]:
    """The donor book's first chapter with _MIN_CHAPTER_TEXT characters of paragraph text:
    its path, title and body paragraphs (note references dropped, other links unwrapped, ids
    removed: they point into, or are unique in, the donor book)."""
    import copy

    from lxml import etree

    with zipfile.ZipFile(donor) as book:
        for path in book_chapters(book, Package.read(book)):
            root = parse_xhtml(book.read(path))
            paragraphs = body_paragraphs(root)
            if sum(len("".join(p.itertext())) for p in paragraphs) >= _MIN_CHAPTER_TEXT:
                break
        else:
            raise BenchError(f"no chapter of {_MIN_CHAPTER_TEXT}+ characters in {donor.name}")
    title_element = next((el for el in root.iter() if _local(el) == "title"), None)
    title = " ".join("".join(title_element.itertext()).split()) if title_element is not None else ""
    cleaned = []
    for paragraph in paragraphs:
        paragraph = copy.deepcopy(paragraph)
        for link in [el for el in paragraph.iter() if _local(el) == "a"]:
            kind = link.get("{http://www.idpf.org/2007/ops}type") or ""
            if "noteref" in kind:
                _drop(link)
        etree.strip_tags(paragraph, "{*}a")
        for el in paragraph.iter():
            el.attrib.pop("id", None)
        cleaned.append(paragraph)
    return path, title or "Added chapter", cleaned


def replace_paragraphs(data: bytes, paragraphs: list) -> tuple[bytes, int]:
    """The chapter with its body paragraphs replaced by `paragraphs` (where its first one
    was); the heading and other elements stay. Returns the XHTML and how many were replaced."""
    import copy

    from lxml import etree

    root = parse_xhtml(data)
    old = body_paragraphs(root)
    if not old:
        raise BenchError("the chapter has no body paragraphs to replace")
    parent = old[0].getparent()
    at = parent.index(old[0])
    for paragraph in old:
        _drop(paragraph)
    for k, paragraph in enumerate(paragraphs):
        parent.insert(at + k, copy.deepcopy(paragraph))
    return etree.tostring(root.getroottree(), xml_declaration=True, encoding="utf-8"), len(old)


def added_chapter(title: str, paragraphs: list) -> bytes:
    """A new XHTML chapter: the title as its heading, then the paragraphs."""
    import copy

    from lxml import etree

    escaped = html.escape(title, quote=False)
    root = etree.fromstring(
        f'<html xmlns="{XHTML_NS}" xml:lang="en"><head><title>{escaped}</title></head>'
        f'<body><section id="chapter-added"><h2>{escaped}</h2></section></body></html>'
    )
    section = root.find(f".//{{{XHTML_NS}}}section")
    for paragraph in paragraphs:
        section.append(copy.deepcopy(paragraph))
    return etree.tostring(root, xml_declaration=True, encoding="utf-8")


def _insert_after(text: str, pattern: str, closing: str, addition: str, what: str) -> str:
    """`addition` inserted after the first `closing` from the first match of `pattern`."""
    found = re.search(pattern, text)
    if found is None:
        raise BenchError(f"{what}: nothing matches {pattern}")
    end = text.index(closing, found.start()) + len(closing)
    return text[:end] + addition + text[end:]


def write_epub(book: Path, target: Path, changed: dict[str, bytes], added: dict[str, bytes]):
    """A copy of the book's zip with some files changed and some added (mimetype first and
    stored, as in the original: every entry keeps its ZipInfo)."""
    with zipfile.ZipFile(book) as source, zipfile.ZipFile(target, "w") as out:
        for info in source.infolist():
            out.writestr(info, changed.get(info.filename) or source.read(info))
        for name, data in added.items():
            info = zipfile.ZipInfo(name, date_time=(2026, 12, 2, 0, 0, 0))
            out.writestr(info, data, compress_type=zipfile.ZIP_DEFLATED)


def build_edits(book: Path, donor: Path, folder: Path) -> dict[str, dict]:
    """The three edited copies of the book, written to the folder: case -> file, description."""
    with zipfile.ZipFile(book) as source:
        package = Package.read(source)
        chapters = book_chapters(source, package)
        if not chapters:
            raise BenchError(f"no chapters found in {book.name}")
        middle = chapters[len(chapters) // 2]
        chapter = source.read(middle)
        opf = source.read(package.opf).decode("utf-8")
        tocs = {p: source.read(p).decode("utf-8") for p in (package.nav, package.ncx) if p}
        names = set(source.namelist())
    donor_path, title, donor_paragraphs = donor_chapter(donor)
    where = f"{middle} (chapter {len(chapters) // 2 + 1} of {len(chapters)} in spine order)"
    cases: dict[str, dict] = {}

    edited, excerpt = add_word(chapter.decode("utf-8"))
    target = folder / f"edit-word-{book.name}"
    write_epub(book, target, {middle: edited.encode("utf-8")}, {})
    cases["word"] = {
        "file": target,
        "what": f"'{_ADDED_WORD[1].strip()}' added in {where}, first body paragraph: “{excerpt}”",
    }

    replaced, count = replace_paragraphs(chapter, donor_paragraphs)
    target = folder / f"edit-chapter-replaced-{book.name}"
    write_epub(book, target, {middle: replaced}, {})
    cases["chapter-replaced"] = {
        "file": target,
        "what": (
            f"the {count} body paragraphs of {where} replaced by the {len(donor_paragraphs)}"
            f" of {donor.name} {donor_path} ('{title}'); its heading kept"
        ),
    }

    new_path = posixpath.join(posixpath.dirname(middle), "chapter-added.xhtml")
    if new_path in names:
        raise BenchError(f"{book.name} has a {new_path} already")
    base = posixpath.dirname(package.opf) or "."
    href = posixpath.relpath(new_path, base)
    middle_id = package.id_of(middle)
    opf = _insert_after(
        opf,
        rf'<item\b[^>]*\bid="{re.escape(middle_id)}"',
        ">",
        f'\n\t\t<item href="{href}" id="chapter-added" media-type="application/xhtml+xml"/>',
        "manifest",
    )
    opf = _insert_after(
        opf,
        rf'<itemref\b[^>]*\bidref="{re.escape(middle_id)}"',
        ">",
        '\n\t\t<itemref idref="chapter-added"/>',
        "spine",
    )
    changed = {package.opf: opf.encode("utf-8")}
    escaped = html.escape(title, quote=False)
    for toc_path, toc in tocs.items():
        toc_dir = posixpath.dirname(toc_path) or "."
        old_href = re.escape(posixpath.relpath(middle, toc_dir))
        new_href = posixpath.relpath(new_path, toc_dir)
        if toc_path == package.nav:
            changed[toc_path] = _insert_after(
                toc,
                rf'href="{old_href}(?:#[^"]*)?"',
                "</li>",
                f'\n<li><a href="{new_href}">{escaped}</a></li>',
                "nav",
            ).encode("utf-8")
        else:
            changed[toc_path] = _insert_after(
                toc,
                rf'src="{old_href}(?:#[^"]*)?"',
                "</navPoint>",
                f'\n<navPoint id="navpoint-chapter-added" playOrder="9999"><navLabel><text>'
                f'{escaped}</text></navLabel><content src="{new_href}"/></navPoint>',
                "NCX",
            ).encode("utf-8")
    target = folder / f"edit-chapter-added-{book.name}"
    write_epub(book, target, changed, {new_path: added_chapter(title, donor_paragraphs)})
    tocs_named = " and ".join(posixpath.basename(p) for p in tocs) or "no table of contents"
    cases["chapter-added"] = {
        "file": target,
        "what": (
            f"{new_path} added after {middle} (manifest, spine, {tocs_named}): the "
            f"{len(donor_paragraphs)} paragraphs of {donor.name} {donor_path} under '{title}'"
        ),
    }
    return cases


def markdown_diff(before: str, after: str) -> dict:
    """Paragraphs (blank-line separated blocks) of the extracted markdown removed and added."""
    a, b = before.split("\n\n"), after.split("\n\n")
    removed = added = 0
    matcher = difflib.SequenceMatcher(None, a, b, autojunk=False)
    for tag, i1, i2, j1, j2 in matcher.get_opcodes():
        if tag != "equal":
            removed, added = removed + i2 - i1, added + j2 - j1
    return {"removed": removed, "added": added, "paragraphs": len(b)}


def ingest_figures(home: Home, fake, book: Path) -> dict:
    """Ingest one file into the home: what that ingest paid, per stage (from ai_calls), and
    what its `embeddings` materialization embedded."""
    fake.clear_requests()
    last_id = home.last_call_id()
    texts_before = home.text_keys()
    started = time.perf_counter()
    (outcome,) = home.ingest([book])
    seconds = time.perf_counter() - started
    document_id = outcome["document_id"]
    rows = home.ledger(after_id=last_id)
    totals = ledger_totals(rows, EDIT_STAGES)
    fake_paid = len(paid_requests(fake))
    if fake_paid != totals["requests"]:
        raise BenchError(
            f"ingest of {book.name}: the fake answered {fake_paid} paid requests but the ledger"
            f" has {totals['requests']} paid rows"
        )
    embeddings = home.materialization("embeddings", document_id)
    bridges = totals["stages"]["connections"]
    return {
        "document_id": document_id,
        "stage": outcome["stage"],
        "chunks": outcome["chunks"],
        "warnings": outcome.get("warnings", []),
        "seconds": round(seconds, 2),
        "ledger": totals,
        "requests": totals["requests"],
        "usd": totals["usd"],
        "bridge_requests": bridges["requests"],
        "bridge_usd": bridges["usd"],
        "requests_without_bridges": totals["requests"] - bridges["requests"],
        "usd_without_bridges": round(totals["usd"] - bridges["usd"], 6),
        "embedded_now": embeddings["embedded_now"],
        "reused_vectors": embeddings["reused_vectors"],
        "vectors": embeddings["vectors"],
        "version": outcome.get("version", 1),
        # Texts among the document's vectors that no vector had before this ingest: what its
        # embeddings had to pay for (a count to check `embedded_now` against).
        "new_texts": len(home.text_keys(document_id) - texts_before),
        "chunk_ids": sorted(home.chunk_ids(document_id)),
        # ai_calls rows of this ingest charged to another document (expected: none)
        "other_documents": sorted({r["document_id"] for r in rows} - {document_id}),
    }


def _ratio(part: float, whole: float) -> float | None:
    return round(part / whole, 4) if whole else None


def edit_case(root: Path, fake, case: str, edit: dict, original: Path) -> dict:
    """One edit: the original then the edited copy in one home; the copy alone in another."""
    started = time.perf_counter()
    fake.clear_faults()
    with fresh_home(root, f"edit-{case}", fake.base_url) as home:
        first = ingest_figures(home, fake, original)
        before = home.markdown(first["document_id"])  # the edit is a new version of it
        edited = ingest_figures(home, fake, edit["file"])
        diff = markdown_diff(before, home.markdown(edited["document_id"]))
        edited["same_document"] = edited["document_id"] == first["document_id"]
        edited["ids_kept"] = len(set(first["chunk_ids"]) & set(edited["chunk_ids"]))
    with fresh_home(root, f"fresh-{case}", fake.base_url) as home:
        fresh = ingest_figures(home, fake, edit["file"])
    ratios = {
        key: _ratio(edited[key], fresh[key])
        for key in ("requests", "usd", "requests_without_bridges", "usd_without_bridges")
    }
    return {
        "what": edit["what"],
        "file": edit["file"].name,
        "markdown_paragraphs": diff,
        "original": first,
        "edit": edited,
        "fresh": fresh,
        "edit_over_fresh": ratios,
        "seconds": round(time.perf_counter() - started, 2),
    }


def edit_cases(root: Path, fake, book: Path, donor: Path) -> dict:
    started = time.perf_counter()
    folder = root / "edited-books"
    folder.mkdir()
    edits = build_edits(book, donor, folder)
    cases = {case: edit_case(root, fake, case, edits[case], book) for case in EDIT_CASES}
    return {
        "book": book.name,
        "donor": donor.name,
        "cases": cases,
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
    if "clean" in figures:
        print_clean(figures["clean"])
    if "crash" in figures:
        print_crash(figures["crash"])
    if "edits" in figures:
        print_edits(figures["edits"])
    print(f"\ntotal wall time {figures['wall_seconds']:.1f} s")


def print_clean(clean: dict) -> None:
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


def print_crash(crash: dict) -> None:
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


def print_edits(edits: dict) -> None:
    print(
        f"\n3. Edit cases: {edits['book']} (other text from {edits['donor']}; "
        f"{edits['seconds']:.1f} s)"
    )
    for case, c in edits["cases"].items():
        diff = c["markdown_paragraphs"]
        print(
            f"  {case}: {c['what']}\n    extracted markdown: {diff['removed']} paragraph(s)"
            f" removed, {diff['added']} added (of {diff['paragraphs']})"
        )
    print(
        f"{'case':<18}{'ingest':<16}{'chunk req':>10}{'(hits)':>8}{'embed req':>10}"
        f"{'embedded':>9}{'(reused)':>9}{'bridge req':>11}{'bridge $':>9}{'requests':>9}"
        f"{'USD':>9}{'USD w/o br':>11}{'chunks':>7}{'s':>6}"
    )

    def row(case: str, label: str, f: dict) -> str:
        stages = f["ledger"]["stages"]
        return (
            f"{case:<18}{label:<16}{stages['chunks']['requests']:>10}"
            f"{'(' + str(stages['chunks']['hits']) + ')':>8}{stages['embeddings']['requests']:>10}"
            f"{f['embedded_now']:>9}{'(' + str(f['reused_vectors']) + ')':>9}"
            f"{f['bridge_requests']:>11}{f['bridge_usd']:>9.4f}{f['requests']:>9}"
            f"{f['usd']:>9.4f}{f['usd_without_bridges']:>11.4f}{f['chunks']:>7}"
            f"{f['seconds']:>6.1f}"
        )

    def number(value: float | None) -> str:
        return "-" if value is None else f"{value:.2f}"

    first = next(iter(edits["cases"].values()))["original"]
    print(row("original", "fresh home", first))
    for case, c in edits["cases"].items():
        print(row(case, "after original", c["edit"]))
        print(row("", "fresh home", c["fresh"]))
        r = c["edit_over_fresh"]
        print(
            f"{'':<18}{'edit / fresh':<16}{'':>66}{number(r['requests']):>9}"
            f"{number(r['usd']):>9}{number(r['usd_without_bridges']):>11}"
            f"   requests w/o bridges {number(r['requests_without_bridges'])}"
        )
    print(
        "after original: the edited copy ingested into a home holding the original; fresh home:"
        " the file alone\nin an empty one. req: paid requests (ai_calls); hits: chunking"
        " requests answered from the ledger;\nembedded: the embeddings materialization's"
        " embedded_now (reused: reused_vectors); bridge: the\nconnections stage's"
        " thematic-bridge judgements; USD w/o br: USD without them."
    )
    ingests = [c[k] for c in edits["cases"].values() for k in ("original", "edit", "fresh")]
    stages = sorted({f["stage"] for f in ingests})
    checked = all(f["new_texts"] == f["embedded_now"] for f in ingests)
    print(
        f"every one of the {len(ingests)} ingests ended {' / '.join(stages)}; embedded_now"
        f" {'equals' if checked else 'differs from'} the count of the document's texts that had"
        " no vector before its ingest"
    )
    for case, c in edits["cases"].items():
        e = c["edit"]
        what = f"version {e['version']} of the original" if e["same_document"] else "a new one"
        print(
            f"  {case}: {what},"
            f" {e['ids_kept']} of its {e['chunks']} chunk ids kept from the original's"
            f" {c['original']['chunks']}"
        )
    originals = {c["original"]["usd"] for c in edits["cases"].values()}
    if len(originals) > 1:
        print(f"  note: the original's fresh ingest cost differed between homes: {originals}")
    for case, c in edits["cases"].items():
        for label in ("edit", "fresh"):
            f = c[label]
            if f["other_documents"]:
                print(f"  note: {case} {label}: ai_calls rows for {f['other_documents']}")
            if f["new_texts"] != f["embedded_now"]:
                print(
                    f"  note: {case} {label}: embedded_now {f['embedded_now']}, but"
                    f" {f['new_texts']} of its texts had no vector before its ingest"
                )
        if c["edit"]["chunks"] != c["fresh"]["chunks"]:
            print(
                f"  note: {case}: {c['edit']['chunks']} chunks after the original,"
                f" {c['fresh']['chunks']} fresh"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=ROOT.parent / "shared" / "corpus" / "epub")
    parser.add_argument(
        "--crash-book",
        default=DEFAULT_CRASH_BOOK,
        help="a file name in the corpus (or a path) for the crash part",
    )
    parser.add_argument(
        "--edit-book",
        default=DEFAULT_EDIT_BOOK,
        help="a file name in the corpus (or a path) for the edit cases",
    )
    parser.add_argument(
        "--edit-donor",
        default=DEFAULT_EDIT_DONOR,
        help="the book (name in the corpus, or a path) whose first chapter is the other text",
    )
    parser.add_argument(
        "--only",
        default=",".join(PARTS),
        help=f"parts to run, comma-separated, of {', '.join(PARTS)} (default: all)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    parts = {part.strip() for part in args.only.split(",") if part.strip()}
    if not parts or parts - set(PARTS):
        sys.exit(f"--only: parts are {', '.join(PARTS)}; got {args.only!r}")
    if "crash" in parts:
        parts.add("clean")  # the crash part's baseline is the clean run's cost of its book
    books = sorted(args.corpus.glob("*.epub"))
    if not books:
        sys.exit(f"no .epub files in {args.corpus}")

    def find(name: str, what: str) -> Path:
        path = Path(name)
        if not path.is_file():
            path = args.corpus / name
        if not path.is_file():
            sys.exit(f"no {what} {name} (in {args.corpus} or as a path)")
        return path.resolve()

    crash_book = find(args.crash_book, "crash book")
    if crash_book not in [b.resolve() for b in books]:
        books.append(crash_book)  # its clean cost is the baseline of the crash part
    if "edits" in parts:
        edit_book = find(args.edit_book, "edit book")
        donor = find(args.edit_donor, "edit donor")
        if donor == edit_book:
            sys.exit("--edit-donor must be another book than --edit-book")

    from doc_pipeline_tests.fakes import FakeGemini

    prices = Prices.defaults()
    started = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="doc-pipeline-bench-cost-"))
    measured: dict = {}
    try:
        with FakeGemini() as fake:
            if "clean" in parts:
                clean_started = time.perf_counter()
                measured["clean"] = clean = clean_run(root, fake, books, prices)
                clean["seconds"] = round(time.perf_counter() - clean_started, 2)
            if "crash" in parts:
                baseline = clean["books"][crash_book.name]
                crash_started = time.perf_counter()
                points = {}
                for point in CRASH_POINTS:
                    points[point] = crash_and_retry(root, fake, crash_book, point, baseline, prices)
                measured["crash"] = {
                    "book": crash_book.name,
                    "points": points,
                    "seconds": round(time.perf_counter() - crash_started, 2),
                }
            if "edits" in parts:
                measured["edits"] = edit_cases(root, fake, edit_book, donor)
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
        **measured,
        "wall_seconds": round(time.perf_counter() - started, 2),
    }
    if args.json:
        print(json.dumps(figures, indent=2, default=str))
        return
    print_report(figures)


if __name__ == "__main__":
    main()
