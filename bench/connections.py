"""Benchmark: connecting one book against libraries of 10k, 100k and 1M chunks, HNSW against exact.

A synthetic library of 768-dimension embeddings is loaded into the real schema (documents, chunks,
embeddings) of an embedded Postgres, and grown step by step to each size. At each size:

- load: COPY of the new documents, chunks and embeddings, then VACUUM ANALYZE; the HNSW index is
  dropped before the load and rebuilt after it with the migration's own definition (read from
  pg_indexes), so each size has a freshly built index (maintenance_work_mem 6GB, one parallel
  worker besides the leader: both cores);
- the production query: `find_semantic_edges` (doc_pipeline/core/semantic.py) for a 600-chunk
  book, top_k 10, nothing filtered by similarity, with the production ef_search 100 and others
  (median of 3 runs each, after one run that warms the caches);
- the baseline: the same call in a transaction with index scans disabled, which the planner
  answers with a sequential scan and a top-N sort per chunk: exact search. When that is
  projected (from the previous size) to take longer than --max-exact-minutes, it is timed on
  evenly spaced chunks of the book and scaled to the whole book (each chunk is one full scan).
  The figure to watch is the ratio exact / HNSW;
- recall@10: the mean over the book's chunks of |HNSW top 10 ∩ exact top 10| / 10, the exact
  top 10 computed by brute force in numpy on the same vectors (and checked against the
  database's exact search on the chunks it ran);
- the plan of the production query at each ef_search (EXPLAIN): HNSW index scan or not;
- memory: the peak of the summed PSS of the server's processes (sampled from /proc) during the
  build and each query, the query backend's VmHWM (a fresh connection per query), and this
  process's peak RSS.

Synthetic vectors: 300 random unit topic centroids; each document (300-600 chunks) has 8 of
them as themes; a chunk is one of its document's themes plus variation in a 48-dimension
subspace of that topic plus a little isotropic noise, L2-normalized. Like real embeddings, the
variation has a low intrinsic dimension, so nearest neighbours are meaningful; purely isotropic
768-dimension noise would make all chunks of a topic equidistant. The book is a new document
drawn the same way; its own chunks are among its nearest neighbours, which the query skips
(`document_id <> ...`), so HNSW relies on its iterative scan.

    python bench/connections.py [--sizes 10000,100000,1000000] [--book-chunks 600]
        [--ef-search 40,100,200,400] [--max-build-minutes 60] [--max-exact-minutes 15] [--json]

An index build projected (from pg_stat_progress_create_index) to take longer than
--max-build-minutes is cancelled and that size reported as not measured.

Runs in a temporary home with its own embedded Postgres, always stopped at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import platform
import resource
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DIMENSIONS = 768
MODEL = "bench-synthetic-768"
TOP_K = 10
TOPICS = 300
THEMES_PER_DOCUMENT = 8
LATENT = 48  # intrinsic dimensions of the variation within a topic
SPREAD = 0.8  # norm of that variation, against the unit topic centroid
NOISE = 0.2  # norm of the isotropic noise
DOCUMENT_CHUNKS = (300, 600)
BLOCK = 10_000  # rows generated (and seeded) together, whatever the sizes asked for
SEED = 20261128
BOOK_ID = "book"
INDEX_NAME = "ix_embeddings_hnsw_768"
PRODUCTION_EF_SEARCH = 100  # SemanticConfig's default
BUILD_SETTINGS = {"maintenance_work_mem": "6GB", "max_parallel_maintenance_workers": "1"}
# Exact search: the same query with the index made unavailable to the planner.
EXACT_SETTINGS = {"enable_indexscan": "off", "enable_bitmapscan": "off"}


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


# -- synthetic library -------------------------------------------------------------------------


@dataclass(frozen=True)
class Document:
    id: str
    first: int  # global index of its first chunk
    size: int
    themes: np.ndarray


class Synthetic:
    """A deterministic library of up to `max_chunks` chunks plus one book, generated in blocks
    so that growing the library from one size to the next adds the same rows as loading the
    larger size at once."""

    def __init__(self, max_chunks: int, book_chunks: int) -> None:
        rng = np.random.default_rng(SEED)
        self.topics = unit(rng.standard_normal((TOPICS, DIMENSIONS)))
        # Rows of about unit norm and nearly orthogonal: a random LATENT-dimension subspace.
        self.bases = rng.standard_normal((TOPICS, LATENT, DIMENSIONS)).astype(np.float32)
        self.bases /= np.sqrt(DIMENSIONS)
        self.documents: list[Document] = []
        first = 0
        while first < max_chunks:
            size = int(rng.integers(DOCUMENT_CHUNKS[0], DOCUMENT_CHUNKS[1] + 1))
            themes = rng.choice(TOPICS, THEMES_PER_DOCUMENT, replace=False)
            self.documents.append(Document(f"lib{len(self.documents):06d}", first, size, themes))
            first += size
        self.starts = np.array([d.first for d in self.documents])
        self.themes = np.array([d.themes for d in self.documents])
        # Its own generator: the same book whatever the largest library asked for.
        book_rng = np.random.default_rng([SEED, 1])
        themes = book_rng.choice(TOPICS, THEMES_PER_DOCUMENT, replace=False)
        self.book = Document(BOOK_ID, 0, book_chunks, themes)

    def _vectors(self, themes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One vector per row, on the topic given for the row."""
        out = self.topics[themes].copy()
        for topic in np.unique(themes):
            rows = np.flatnonzero(themes == topic)
            latent = rng.standard_normal((len(rows), LATENT), dtype=np.float32)
            out[rows] += latent @ self.bases[topic] * (SPREAD / np.sqrt(LATENT))
        noise = rng.standard_normal(out.shape, dtype=np.float32)
        return unit(out + noise * (NOISE / np.sqrt(DIMENSIONS)))

    def block(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Library rows [number * BLOCK, (number + 1) * BLOCK): document index and vector."""
        rng = np.random.default_rng([SEED, 0, number])
        rows = np.arange(number * BLOCK, (number + 1) * BLOCK)
        owners = np.searchsorted(self.starts, rows, side="right") - 1
        picks = rng.integers(0, THEMES_PER_DOCUMENT, len(rows))
        return owners, self._vectors(self.themes[owners, picks], rng)

    def rows(self, start: int, end: int) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """(first global row, document indexes, vectors) for the library rows [start, end)."""
        for number in range(start // BLOCK, (end - 1) // BLOCK + 1):
            owners, vectors = self.block(number)
            lo = max(start, number * BLOCK) - number * BLOCK
            hi = min(end, (number + 1) * BLOCK) - number * BLOCK
            yield number * BLOCK + lo, owners[lo:hi], vectors[lo:hi]

    def book_vectors(self) -> np.ndarray:
        rng = np.random.default_rng([SEED, 2])
        picks = rng.integers(0, THEMES_PER_DOCUMENT, self.book.size)
        return self._vectors(self.book.themes[picks], rng)


def chunk_id(row: int) -> str:
    return f"c{row:09d}"


def book_chunk_id(index: int) -> str:
    return f"book-{index:05d}"


# -- loading -----------------------------------------------------------------------------------


def copy_document_rows(conn, documents: list[Document]) -> None:
    columns = "id, content_sha256, title, source_file, byte_size, stage"
    with conn.cursor().copy(f"COPY documents ({columns}) FROM STDIN") as copy:
        for d in documents:
            sha = hashlib.sha256(d.id.encode()).hexdigest()
            copy.write_row((d.id, sha, f"synthetic {d.id}", f"{d.id}.epub", 1, "embedded"))


def copy_chunk_rows(conn, document_ids: list[str], indexes: list[int], ids: list[str]) -> None:
    columns = (
        "id, document_id, chunk_index, content, start_offset, end_offset, word_count,"
        " char_count, heading_path, metadata"
    )
    with conn.cursor().copy(f"COPY chunks ({columns}) FROM STDIN") as copy:
        for cid, did, index in zip(ids, document_ids, indexes, strict=True):
            copy.write_row((cid, did, index, f"chunk {cid}", 0, 10, 2, 10, "{}", "{}"))


def copy_embedding_rows(conn, document_ids: list[str], ids: list[str], vectors) -> None:
    # Binary COPY: formatting 768 floats as text would cost more than the load itself.
    query = "COPY embeddings (chunk_id, model, document_id, dimensions, embedding) FROM STDIN"
    with conn.cursor().copy(query + " (FORMAT BINARY)") as copy:
        copy.set_types(["text", "text", "text", "int2", "vector"])
        for cid, did, vector in zip(ids, document_ids, vectors, strict=True):
            copy.write_row((cid, MODEL, did, DIMENSIONS, vector))


def load_book(conn, data: Synthetic) -> None:
    ids = [book_chunk_id(i) for i in range(data.book.size)]
    with conn.transaction():
        copy_document_rows(conn, [data.book])
        copy_chunk_rows(conn, [BOOK_ID] * len(ids), list(range(len(ids))), ids)
        copy_embedding_rows(conn, [BOOK_ID] * len(ids), ids, data.book_vectors())


def load_library(conn, data: Synthetic, start: int, end: int) -> None:
    """Library rows [start, end), one transaction per block; a document is registered with its
    first chunk, so growing the library may append chunks to the last document."""
    for first, owners, vectors in data.rows(start, end):
        rows = range(first, first + len(owners))
        documents = [data.documents[o] for o in owners]
        with conn.transaction():
            starting = [d for d, row in zip(documents, rows, strict=True) if row == d.first]
            copy_document_rows(conn, starting)
            ids = [chunk_id(row) for row in rows]
            document_ids = [d.id for d in documents]
            indexes = [row - d.first for d, row in zip(documents, rows, strict=True)]
            copy_chunk_rows(conn, document_ids, indexes, ids)
            copy_embedding_rows(conn, document_ids, ids, vectors)
        log(f"  loaded {first + len(owners):,} of {end:,} library chunks")


# -- measuring ---------------------------------------------------------------------------------


class MemorySampler:
    """Peak of the summed PSS (proportional set size: shared pages split between the processes
    that map them, so shared_buffers is counted once) of the postmaster and its children, and
    the most parallel workers seen at once."""

    def __init__(self, postmaster_pid: int, interval: float = 0.2) -> None:
        self.pid = postmaster_pid
        self.interval = interval
        self.peak = 0
        self.workers = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def sample(self) -> None:
        import psutil

        total = workers = 0
        root = psutil.Process(self.pid)
        for process in [root, *root.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += process.memory_full_info().pss
                workers += "parallel worker" in " ".join(process.cmdline())
        self.peak = max(self.peak, total)
        self.workers = max(self.workers, workers)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(self.interval)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


def vm_hwm(pid: int) -> int:
    """A process's peak resident set size in bytes (VmHWM), counting the shared pages it
    touched."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def set_local(conn, settings: dict[str, str]) -> None:
    import sqlalchemy as sa

    for name, value in settings.items():
        conn.execute(sa.text(f"SET LOCAL {name} = {value}"))


@dataclass
class Run:
    """One connect of the book (or of some of its chunks): neighbours per chunk, seconds and
    memory."""

    seconds: float
    neighbours: dict[str, list[str]]
    server_peak_pss: int
    backend_hwm: int


def connect_book(engine, postmaster: int, ef_search: int, exact: bool = False) -> Run:
    """The production call for the book, on a fresh connection (so its backend's VmHWM is this
    query's); with `exact`, index scans are disabled in its transaction."""
    from doc_pipeline.core.semantic import SemanticConfig
    from doc_pipeline.db.semantic_search import find_semantic_edges

    config = SemanticConfig(min_similarity=-1.0, top_k=TOP_K, ef_search=ef_search)

    def query(conn) -> list[tuple[str, str]]:
        if exact:
            set_local(conn, EXACT_SETTINGS)
        edges = find_semantic_edges(conn, BOOK_ID, MODEL, config)
        return [(e.source_chunk_id, e.target_chunk_id) for e in edges]

    return timed(engine, postmaster, query)


def connect_sample_exactly(engine, postmaster: int, sample: list[str]) -> Run:
    """Exact search for some of the book's chunks: the production query with its source chunks
    restricted (the planner pushes the condition down to `embeddings s`)."""
    import sqlalchemy as sa

    from doc_pipeline.db.semantic_search import nearest_other_documents

    restricted = sa.text(
        f"SELECT source, target FROM ({nearest_other_documents(DIMENSIONS).text}) q"
        " WHERE q.source = ANY(:sample)"
    )
    params = {"document_id": BOOK_ID, "model": MODEL, "top_k": TOP_K, "sample": sample}

    def query(conn) -> list[tuple[str, str]]:
        set_local(conn, EXACT_SETTINGS)
        return [(row.source, row.target) for row in conn.execute(restricted, params)]

    return timed(engine, postmaster, query)


def timed(engine, postmaster: int, query) -> Run:
    import sqlalchemy as sa

    with engine.connect() as conn:
        backend = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        conn.commit()
        with MemorySampler(postmaster) as memory:
            started = time.perf_counter()
            with conn.begin():
                pairs = query(conn)
            seconds = time.perf_counter() - started
        hwm = vm_hwm(backend)
    neighbours: dict[str, list[str]] = {}
    for source, target in pairs:
        neighbours.setdefault(source, []).append(target)
    return Run(seconds, neighbours, memory.peak, hwm)


def recall(found: dict[str, list[str]], exact: dict[str, list[str]], over=None) -> float:
    """Mean over the chunks (`over`, else all of `exact`) of the share of their exact top 10
    that `found` has; a chunk missing from `found` counts 0."""
    chunks = exact if over is None else over
    return float(np.mean([len(set(found.get(c, ())) & set(exact[c])) / TOP_K for c in chunks]))


def plan(engine, ef_search: int, exact: bool = False, sample: bool = False) -> dict:
    """How the planner runs the production query: the scan of `embeddings o` inside the
    lateral subquery (HNSW index scan, or sequential scan and sort)."""
    import sqlalchemy as sa

    from doc_pipeline.db.semantic_search import nearest_other_documents

    text = nearest_other_documents(DIMENSIONS).text
    if sample:
        text = f"SELECT source, target FROM ({text}) q WHERE q.source = ANY(:sample)"
    params = {"document_id": BOOK_ID, "model": MODEL, "top_k": TOP_K, "sample": [""]}
    with engine.begin() as conn:
        set_local(conn, {"hnsw.iterative_scan": "relaxed_order", "hnsw.ef_search": str(ef_search)})
        if exact:
            set_local(conn, EXACT_SETTINGS)
        tree = conn.execute(sa.text(f"EXPLAIN (FORMAT JSON) {text}"), params).scalar()[0]["Plan"]
    nodes = []

    def walk(node: dict) -> None:
        nodes.append(node)
        for child in node.get("Plans", ()):
            walk(child)

    walk(tree)
    scan = next((n for n in nodes if n.get("Alias") == "o"), {})
    sort = any(n["Node Type"] == "Sort" for n in nodes)
    described = " ".join(filter(None, [scan.get("Node Type"), scan.get("Index Name")]))
    return {
        "inner_scan": described + (" + sort" if sort else ""),
        "uses_hnsw": scan.get("Index Name") == INDEX_NAME,
    }


def numpy_exact(data: Synthetic, size: int) -> dict[str, list[str]]:
    """The exact top 10 of each book chunk among the library's first `size` chunks, by brute
    force in numpy on the same vectors."""
    book = data.book_vectors()
    best_scores = np.full((len(book), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(book), 0), dtype=np.int64)
    for first, _, vectors in data.rows(0, size):
        scores = np.concatenate([best_scores, book @ vectors.T], axis=1)
        block_rows = np.tile(np.arange(first, first + len(vectors)), (len(book), 1))
        rows = np.concatenate([best_rows, block_rows], axis=1)
        keep = np.argpartition(-scores, TOP_K - 1, axis=1)[:, :TOP_K]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_rows = np.take_along_axis(rows, keep, axis=1)
    return {book_chunk_id(i): [chunk_id(r) for r in best_rows[i]] for i in range(len(book))}


def relation_sizes(engine) -> dict[str, int]:
    import sqlalchemy as sa

    query = sa.text(
        "SELECT pg_table_size('embeddings'), pg_total_relation_size('embeddings'),"
        " coalesce(pg_relation_size(to_regclass(:index)), 0)"
    )
    with engine.connect() as conn:
        table, total, index = conn.execute(query, {"index": INDEX_NAME}).one()
    return {"table_bytes": table, "total_bytes": total, "index_bytes": index}


class BuildTooSlow(RuntimeError):
    """The index build was projected to take longer than allowed and was cancelled."""


def build_index(engine, index_sql: str, postmaster: int, max_minutes: float) -> dict:
    """CREATE INDEX with the migration's definition, watched through
    pg_stat_progress_create_index: cancelled once its projected time passes `max_minutes`."""
    import sqlalchemy as sa

    progress: dict[str, float] = {}
    done = threading.Event()

    def watch(builder: int) -> None:
        # pgvector reports the heap blocks it has read into the graph, not tuples.
        query = sa.text(
            "SELECT phase, blocks_done, blocks_total FROM pg_stat_progress_create_index"
            " WHERE pid = :pid"
        )
        with engine.connect() as conn:
            while not done.wait(30):
                row = conn.execute(query, {"pid": builder}).first()
                conn.commit()
                elapsed = time.perf_counter() - started
                if row is None or not row.blocks_total or not row.blocks_done:
                    continue
                # Linear: an underestimate, inserts slow down as the graph grows.
                projected = elapsed * row.blocks_total / row.blocks_done
                progress.update(projected_seconds=projected, elapsed_seconds=elapsed)
                log(
                    f"  building: {row.phase}, {row.blocks_done:,} of {row.blocks_total:,}"
                    f" blocks after {elapsed / 60:.1f} min; projected {projected / 60:.1f} min"
                )
                if elapsed > 120 and projected > max_minutes * 60:
                    conn.execute(sa.text("SELECT pg_cancel_backend(:pid)"), {"pid": builder})
                    progress["cancelled"] = 1
                    return

    with engine.connect() as conn:
        builder = conn.execute(sa.text("SELECT pg_backend_pid()")).scalar()
        conn.commit()
        watcher = threading.Thread(target=watch, args=(builder,), daemon=True)
        with MemorySampler(postmaster, interval=1.0) as memory:
            started = time.perf_counter()
            watcher.start()
            try:
                with conn.begin():
                    set_local(conn, {k: f"'{v}'" for k, v in BUILD_SETTINGS.items()})
                    conn.execute(sa.text(index_sql))
            except sa.exc.OperationalError as error:
                if progress.get("cancelled"):
                    raise BuildTooSlow(json.dumps(progress)) from error
                raise
            finally:
                done.set()
                watcher.join()
            seconds = time.perf_counter() - started
    return {"seconds": seconds, "server_peak_pss": memory.peak, "parallel_workers": memory.workers}


@dataclass
class Bench:
    """The running benchmark: its database, data and options."""

    engine: object
    postmaster: int
    data: Synthetic
    ef_values: list[int]
    max_exact_minutes: float
    exact_cost: float | None = None  # seconds per (book chunk x library row) of exact search

    def exact_sample(self, size: int) -> list[str] | None:
        """None (the whole book) unless exact search of the whole book is projected, from the
        previous size, to take longer than allowed: then evenly spaced chunks that fit."""
        chunks = self.data.book.size
        if self.exact_cost is None:
            return None
        projected = self.exact_cost * chunks * size
        if projected <= self.max_exact_minutes * 60:
            return None
        count = max(30, int(chunks * self.max_exact_minutes * 60 / projected))
        return [book_chunk_id(i) for i in np.linspace(0, chunks - 1, count).astype(int)]

    def median_connect(self, ef_search: int, repeats: int = 3) -> Run:
        """The median of a few HNSW connects: they take seconds, and the machine is shared."""
        runs = [connect_book(self.engine, self.postmaster, ef_search) for _ in range(repeats)]
        return sorted(runs, key=lambda r: r.seconds)[repeats // 2]

    def measure(self, size: int) -> dict:
        engine, postmaster, chunks = self.engine, self.postmaster, self.data.book.size
        truth = numpy_exact(self.data, size)
        # The first connect after the build pays for cold caches: reported, not compared.
        first = connect_book(engine, postmaster, PRODUCTION_EF_SEARCH)
        runs = {ef: self.median_connect(ef) for ef in self.ef_values}
        plans = {ef: plan(engine, ef) for ef in self.ef_values}
        log("  HNSW: " + ", ".join(f"ef {ef} {r.seconds:.2f} s" for ef, r in runs.items()))
        sample = self.exact_sample(size)
        if sample is None:
            exact = connect_book(engine, postmaster, PRODUCTION_EF_SEARCH, exact=True)
            exact_plan = plan(engine, PRODUCTION_EF_SEARCH, exact=True)
        else:
            log(f"  exact search of {len(sample)} of the {chunks} chunks (projected too long)")
            exact = connect_sample_exactly(engine, postmaster, sample)
            exact_plan = plan(engine, PRODUCTION_EF_SEARCH, exact=True, sample=True)
        measured = len(exact.neighbours)
        self.exact_cost = exact.seconds / (measured * size)
        exact_seconds = exact.seconds * chunks / measured  # linear: one full scan per chunk
        production = runs.get(PRODUCTION_EF_SEARCH, first)
        figures = {
            "hnsw_first_seconds": first.seconds,
            "hnsw_seconds": production.seconds,
            "exact_seconds": exact_seconds,
            "exact_chunks_measured": measured,
            "exact_measured_seconds": exact.seconds,
            "ratio": exact_seconds / production.seconds,
            "recall_at_10": recall(production.neighbours, truth),
            "exact_vs_numpy": recall(exact.neighbours, truth, over=exact.neighbours),
            "plan_hnsw": plans.get(PRODUCTION_EF_SEARCH, plan(engine, PRODUCTION_EF_SEARCH)),
            "plan_exact": exact_plan,
            "fewer_than_top_k": {
                "hnsw": sum(len(v) < TOP_K for v in production.neighbours.values())
                + chunks
                - len(production.neighbours),
                "exact": sum(len(v) < TOP_K for v in exact.neighbours.values()),
            },
            "memory": {
                "server_peak_pss_hnsw": production.server_peak_pss,
                "server_peak_pss_exact": exact.server_peak_pss,
                "backend_hwm_hnsw": production.backend_hwm,
                "backend_hwm_exact": exact.backend_hwm,
            },
            "ef_search": {
                ef: {
                    "seconds": r.seconds,
                    "ratio": exact_seconds / r.seconds,
                    "recall_at_10": recall(r.neighbours, truth),
                    "plan": plans[ef]["inner_scan"],
                }
                for ef, r in runs.items()
            },
        }
        log(
            f"  exact {exact_seconds:.1f} s ({measured} chunks measured),"
            f" ratio {figures['ratio']:.1f}, recall@10 {figures['recall_at_10']:.3f},"
            f" exact vs numpy {figures['exact_vs_numpy']:.3f}"
        )
        return figures


@contextlib.contextmanager
def embedded_database(home: Path) -> Iterator[tuple[str, int]]:
    """The app database of a fresh home, migrated: (URL, postmaster pid); always stopped."""
    from doc_pipeline.db import migrate
    from doc_pipeline.db.server import database_urls, stop_embedded
    from doc_pipeline.settings import Settings

    settings = Settings(home=home, database_url=None)
    try:
        urls = database_urls(settings)
        migrate.upgrade(urls.app)
        yield urls.app, urls.embedded_pid
    finally:
        stop_embedded(settings.pgdata)


def server_facts(engine) -> tuple[str, dict]:
    """The HNSW index's definition as the migration created it, and the server's settings."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        index_sql = conn.execute(
            sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
            {"name": INDEX_NAME},
        ).scalar_one()
        server = {
            name: conn.execute(sa.text(f"SHOW {name}")).scalar()
            for name in ("server_version", "shared_buffers", "work_mem")
        }
        server["pgvector"] = conn.execute(
            sa.text("SELECT extversion FROM pg_extension WHERE extname = 'vector'")
        ).scalar()
    return index_sql, server


def run(args: argparse.Namespace) -> dict:
    import psycopg
    import sqlalchemy as sa
    from pgvector.psycopg import register_vector

    sizes = sorted(args.sizes)
    data = Synthetic(sizes[-1], args.book_chunks)
    home = Path(tempfile.mkdtemp(prefix="doc-pipeline-bench-connections-"))
    results: dict[int, dict] = {}
    try:
        with embedded_database(home) as (url, postmaster):
            # No pool: every connection is a new backend, so a query backend's VmHWM is that
            # query's (a pooled one would remember the index build's peak).
            engine = sa.create_engine(url, poolclass=sa.NullPool)
            bench = Bench(engine, postmaster, data, args.ef_search, args.max_exact_minutes)
            index_sql, server = server_facts(engine)
            libpq_url = sa.make_url(url).set(drivername="postgresql")
            with psycopg.connect(libpq_url.render_as_string(hide_password=False)) as loader:
                register_vector(loader)
                load_book(loader, data)
                loaded = 0
                for size in sizes:
                    log(f"library of {size:,} chunks: loading {size - loaded:,} more")
                    # Inserting into an HNSW index row by row is far slower than building it.
                    with engine.begin() as conn:
                        conn.execute(sa.text(f"DROP INDEX IF EXISTS {INDEX_NAME}"))
                    started = time.perf_counter()
                    load_library(loader, data, loaded, size)
                    loader.autocommit = True
                    loader.execute("VACUUM ANALYZE documents, chunks, embeddings")
                    loader.autocommit = False
                    figures: dict = {"load_seconds": time.perf_counter() - started}
                    loaded = size
                    results[size] = figures
                    log(f"  loaded in {figures['load_seconds']:.0f} s; building the index")
                    try:
                        figures["build"] = build_index(
                            engine, index_sql, postmaster, args.max_build_minutes
                        )
                    except BuildTooSlow as error:
                        figures["build"] = {"cancelled": json.loads(str(error))}
                        figures.update(relation_sizes(engine))
                        log(f"  index build cancelled: {error}")
                        break
                    log(f"  index built in {figures['build']['seconds']:.0f} s")
                    with engine.begin() as conn:
                        conn.execute(sa.text("ANALYZE embeddings"))
                    figures.update(relation_sizes(engine))
                    figures.update(bench.measure(size))
            engine.dispose()
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return {"server": server, "index_sql": index_sql, "sizes": results}


# -- report ------------------------------------------------------------------------------------


def mb(value: int) -> str:
    return f"{value / 2**20:,.0f}"


def print_report(figures: dict) -> None:
    server = figures["server"]
    print(
        f"{figures['machine']}; Postgres {server['server_version']}, pgvector"
        f" {server['pgvector']}, shared_buffers {server['shared_buffers']}"
    )
    print(
        f"book of {figures['book_chunks']} chunks, top {TOP_K}, production ef_search"
        f" {PRODUCTION_EF_SEARCH}; index: {figures['index_sql']}"
    )
    sizes = figures["sizes"]
    print(
        f"\n{'library':>10}{'load s':>8}{'build s':>9}{'index MB':>10}{'table MB':>10}"
        f"{'HNSW s':>8}{'exact s':>10}{'ratio':>8}{'recall@10':>11}  inner scan: HNSW / exact"
    )
    for size, f in sizes.items():
        if "hnsw_seconds" not in f:
            if "cancelled" in f.get("build", {}):
                progress = f["build"]["cancelled"]
                print(
                    f"{size:>10,}{f['load_seconds']:>8.0f}  index build cancelled after"
                    f" {progress['elapsed_seconds'] / 60:.0f} min, projected"
                    f" {progress['projected_seconds'] / 60:.0f} min"
                )
            continue
        exact = f"{f['exact_seconds']:.1f}"
        if f["exact_chunks_measured"] < figures["book_chunks"]:
            exact += "*"
        print(
            f"{size:>10,}{f['load_seconds']:>8.0f}{f['build']['seconds']:>9.0f}"
            f"{mb(f['index_bytes']):>10}{mb(f['table_bytes']):>10}{f['hnsw_seconds']:>8.2f}"
            f"{exact:>10}{f['ratio']:>8.1f}{f['recall_at_10']:>11.3f}"
            f"  {f['plan_hnsw']['inner_scan']} / {f['plan_exact']['inner_scan']}"
        )
    measured = {s: f for s, f in sizes.items() if "hnsw_seconds" in f}
    if not measured:
        print(f"total wall time {figures['wall_seconds']:.0f} s")
        return
    for size, f in measured.items():
        if f["exact_chunks_measured"] < figures["book_chunks"]:
            print(
                f"* {size:,}: exact search timed on {f['exact_chunks_measured']} evenly spaced"
                f" chunks ({f['exact_measured_seconds']:.1f} s) and scaled to the book"
            )
    print(
        f"\nmemory, MB  {'server: build':>14}{'HNSW':>8}{'exact':>8}"
        f"{'backend: HNSW':>15}{'exact':>8}{'build workers':>15}"
    )
    for size, f in measured.items():
        m = f["memory"]
        print(
            f"{size:>10,}  {mb(f['build']['server_peak_pss']):>14}"
            f"{mb(m['server_peak_pss_hnsw']):>8}{mb(m['server_peak_pss_exact']):>8}"
            f"{mb(m['backend_hwm_hnsw']):>15}{mb(m['backend_hwm_exact']):>8}"
            f"{f['build']['parallel_workers']:>15}"
        )
    print(
        "server: peak summed PSS of the Postgres processes; backend: the query backend's VmHWM;"
        f"\nthis process's peak RSS {mb(figures['bench_peak_rss'])} MB"
    )
    print(
        f"\n{'library':>10}{'ef_search':>11}{'HNSW s':>8}{'exact/HNSW':>12}{'recall@10':>11}  plan"
    )
    for size, f in measured.items():
        for ef, e in f["ef_search"].items():
            print(
                f"{size:>10,}{ef:>11}{e['seconds']:>8.2f}{e['ratio']:>12.1f}"
                f"{e['recall_at_10']:>11.3f}  {e['plan']}"
            )
    print()
    for size, f in measured.items():
        short = f["fewer_than_top_k"]
        print(
            f"{size:,}: first HNSW connect after the build {f['hnsw_first_seconds']:.2f} s;"
            f" exact search vs numpy {f['exact_vs_numpy']:.3f}; chunks with fewer than {TOP_K}"
            f" neighbours: HNSW {short['hnsw']}, exact {short['exact']}"
        )
    print(f"total wall time {figures['wall_seconds']:.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])

    def integers(text: str) -> list[int]:
        return [int(part) for part in text.split(",") if part]

    parser.add_argument("--sizes", type=integers, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--book-chunks", type=int, default=600)
    parser.add_argument("--ef-search", type=integers, default=[40, PRODUCTION_EF_SEARCH, 200, 400])
    parser.add_argument(
        "--max-build-minutes",
        type=float,
        default=60.0,
        help="cancel an index build projected to take longer (that size is then not measured)",
    )
    parser.add_argument(
        "--max-exact-minutes",
        type=float,
        default=15.0,
        help="time exact search on a sample of the book when the whole would take longer",
    )
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args()
    os.environ.pop("DATABASE_URL", None)  # always the embedded server of a temporary home

    started = time.perf_counter()
    figures = run(args)
    figures.update(
        {
            "machine": (
                f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
            ),
            "book_chunks": args.book_chunks,
            "bench_peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
            "wall_seconds": time.perf_counter() - started,
        }
    )
    if args.json:
        print(json.dumps(figures, indent=2))
        return
    print_report(figures)


if __name__ == "__main__":
    main()
