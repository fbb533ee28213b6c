"""Benchmark: how long a book takes to be usable on the gemini provider at the real API's pace,
and what it costs, against today's behaviour (one request at a time, the v1 prompt) in the
same run.

The fake Gemini server (doc_pipeline_tests.fakes) holds each answer as long as the real API
takes: `--latency` seconds to the first token plus the answer's output tokens at
`--tokens-per-second`, and `--embedding-seconds` per embedding batch. Each book is ingested
(`python -m doc_pipeline ingest --json`) in a fresh home with its own embedded Postgres and
an empty ledger, in two configurations:

- now: the defaults (v2 prompt: the model names block numbers; up to
  `max_concurrent_requests` requests in flight; the default models and their thinking);
- baseline: today's behaviour before this change: the v1 prompt (the model copies every
  chunk), one request at a time, gemini-2.5-flash with its own thinking, temperature 0.

Per book and configuration: seconds from the ingest's start to `embedded` and to `connected`
(the documents' own timestamps), the most requests in flight at once, the summed time of all
requests (what they take one after another), prompt / output / thinking tokens per stage
(from the ledger), and USD of all of it at the default chunking model's list price (equal
prices for both, so the ratio is what the change saves; thinking is billed as output).

The baseline of a long book takes as long as its requests one after another (Sherlock Holmes:
about 18 minutes), so by default it is run at the real pace for the first book only; the other
books' baselines run without latency (their tokens and dollars do not depend on it) and their
request times are the latency model applied to the requests they made, marked "modelled".

    python bench/time_to_ready.py [--books NAME ...] [--timed-baselines N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/cost.py: homes, ledger sums
from cost import ROOT, BenchError, fresh_home, ledger_totals  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus" / "epub"
DEFAULT_BOOKS = (
    "pg1661-sherlock-holmes.epub2.epub",
    "se-abbott-flatland.epub3.epub",
    "se-keynes-economic-consequences-of-the-peace.epub3.epub",
    "pg14838-peter-rabbit.epub3.epub",
)
BASELINE = {
    "prompt_version": "v1",
    "max_concurrent_requests": 1,
    "chunking_model": "gemini-2.5-flash",
    "bridge_model": "gemini-2.5-flash",
    "chunking_thinking": "model_default",
}
BASELINE_CONNECTIONS = {"bridge_thinking": "model_default"}
TIMEOUT = 3_600.0


def run_config(root: Path, name: str, baseline: bool) -> Path:
    provider = dict(BASELINE) if baseline else {}
    config = {"resources": {"provider": {"config": provider}}}
    if baseline:
        config["ops"] = {"connections": {"config": BASELINE_CONNECTIONS}}
    path = root / f"{name}.yaml"
    path.write_text(json.dumps(config))
    return path


def stage_times(home, started: datetime) -> dict:
    import sqlalchemy as sa

    with home.engine.connect() as conn:
        row = conn.execute(sa.text("SELECT embedded_at, connected_at FROM documents")).one()
    return {
        "to_embedded": round((row.embedded_at - started).total_seconds(), 2),
        "to_connected": round((row.connected_at - started).total_seconds(), 2),
    }


def request_figures(fake, latency, timed: bool) -> dict:
    """Peak in flight and the summed time of the answered requests (measured from the fake's
    log when the run was timed, else the latency model applied to each answer)."""
    answered = [r for r in fake.requests if r.get("status") == 200 and r.get("api_method")]
    if timed:
        summed = sum(r["finished"] - r["started"] for r in answered)
    else:
        summed = 0.0
        for r in answered:
            if r["api_method"] in ("batchEmbedContents", "embedContent"):
                summed += latency.embedding_seconds
            elif r["api_method"] in ("generateContent", "streamGenerateContent"):
                output = (r.get("output_tokens") or 0) + (r.get("thoughts_tokens") or 0)
                summed += latency.generate_seconds(output)
    return {
        "peak_in_flight": fake.peak_in_flight(),
        "peak_generate_in_flight": fake.peak_in_flight("generateContent"),
        "requests": len(answered),
        "summed_request_seconds": round(summed, 1),
        "request_seconds_modelled": not timed,
    }


def dollars(totals: dict, price) -> float:
    chunks = totals["stages"]
    generate = [chunks.get(s, {}) for s in ("chunks", "connections")]
    usd = sum(
        s.get("prompt_tokens", 0) * price["input"]
        + (s.get("output_tokens", 0) + s.get("thinking_tokens", 0)) * price["output"]
        for s in generate
    )
    usd += chunks.get("embeddings", {}).get("prompt_tokens", 0) * price["embedding"]
    return round(usd / 1e6, 6)


def measure(root: Path, fake, latency, book: Path, baseline: bool, timed: bool, price) -> dict:
    from doc_pipeline_tests.fakes import Latency

    name = f"{'baseline' if baseline else 'now'}-{book.stem}"
    fake.clear_faults()
    fake.clear_requests()
    fake.set_latency(latency if timed else Latency())
    with fresh_home(root, name, fake.base_url) as home:
        started = datetime.now(UTC)
        config = run_config(root, name, baseline)
        (outcome,) = home.ingest([book], ("--config", str(config)), timeout=TIMEOUT)
        totals = ledger_totals(home.ledger())
        figures = {
            "chunks": outcome["chunks"],
            "connections": outcome["connections"],
            **(stage_times(home, started) if timed else {}),
            **request_figures(fake, latency, timed),
            "tokens": {
                stage: {k: f[k] for k in ("prompt_tokens", "output_tokens", "thinking_tokens")}
                for stage, f in totals["stages"].items()
            },
            "usd": dollars(totals, price),
        }
    chunking = figures["tokens"].get("chunks", {})
    prompt = chunking.get("prompt_tokens") or 1
    figures["chunking_output_share"] = round(chunking.get("output_tokens", 0) / prompt, 3)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--books", nargs="+", default=list(DEFAULT_BOOKS))
    parser.add_argument("--latency", type=float, default=1.5, help="seconds to the first token")
    parser.add_argument("--tokens-per-second", type=float, default=180.0)
    parser.add_argument("--embedding-seconds", type=float, default=0.4)
    parser.add_argument(
        "--timed-baselines",
        type=int,
        default=1,
        help="how many books (the first ones) get their baseline at the real pace (default 1)",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    books = [Path(b) if Path(b).is_file() else CORPUS / b for b in args.books]
    missing = [str(b) for b in books if not b.is_file()]
    if missing:
        sys.exit(f"no such books: {', '.join(missing)}")

    from doc_pipeline.core.models import PRICES
    from doc_pipeline.resources.gemini_provider import GeminiProvider
    from doc_pipeline_tests.fakes import FakeGemini, Latency

    provider = GeminiProvider()
    chunking, embedding = PRICES[provider.chunking_model], PRICES[provider.embedding_model_name]
    price = {
        "model": provider.chunking_model,
        "input": chunking.input_per_million,
        "output": chunking.output_per_million,
        "embedding": embedding.input_per_million,
    }
    latency = Latency(args.latency, args.tokens_per_second, args.embedding_seconds)
    root = Path(tempfile.mkdtemp(prefix="doc-pipeline-bench-ready-"))
    started = time.perf_counter()
    results: dict[str, dict] = {}
    try:
        with FakeGemini() as fake:
            for index, book in enumerate(books):
                now = measure(root, fake, latency, book, False, True, price)
                print(f"{book.name}: now done", file=sys.stderr, flush=True)
                timed = index < args.timed_baselines
                then = measure(root, fake, latency, book, True, timed, price)
                print(f"{book.name}: baseline done", file=sys.stderr, flush=True)
                results[book.name] = {"now": now, "baseline": then}
    except BenchError as error:
        sys.exit(f"bench/time_to_ready.py: {error}\n(homes and ingest logs kept in {root})")
    shutil.rmtree(root, ignore_errors=True)
    for figures in results.values():
        figures["usd_ratio"] = round(figures["now"]["usd"] / (figures["baseline"]["usd"] or 1), 3)
    report = {
        "machine": (
            f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
        ),
        "latency": {
            "first_token_seconds": latency.first_token_seconds,
            "output_tokens_per_second": latency.output_tokens_per_second,
            "embedding_seconds": latency.embedding_seconds,
        },
        "defaults": {
            "chunking_model": provider.chunking_model,
            "prompt_version": provider.prompt_version,
            "max_concurrent_requests": provider.max_concurrent_requests,
        },
        "price": price,
        "books": results,
        "wall_seconds": round(time.perf_counter() - started, 1),
    }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print_report(report)


def print_report(report: dict) -> None:
    print(f"machine: {report['machine']}; latency {report['latency']}")
    print(f"defaults: {report['defaults']}; USD at {report['price']}")
    head = (
        f"{'book':<44} {'run':<8} {'embedded s':>10} {'connected s':>11} {'peak':>4} "
        f"{'reqs':>4} {'summed s':>9} {'out/prompt':>10} {'USD':>9}"
    )
    print(head)
    for name, figures in report["books"].items():
        for run in ("now", "baseline"):
            f = figures[run]
            summed = f"{f['summed_request_seconds']:.0f}" + (
                "*" if f["request_seconds_modelled"] else ""
            )
            print(
                f"{name[:44]:<44} {run:<8} {f.get('to_embedded', '-'):>10} "
                f"{f.get('to_connected', '-'):>11} {f['peak_in_flight']:>4} {f['requests']:>4} "
                f"{summed:>9} {f['chunking_output_share']:>10} {f['usd']:>9.4f}"
            )
        print(f"{'':<44} USD now / baseline: {figures['usd_ratio']}")
    print("* modelled: the latency model applied to the run's requests (run without latency)")
    print(f"wall: {report['wall_seconds']} s")


if __name__ == "__main__":
    main()
