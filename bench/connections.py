"""Benchmark: connecting one book against libraries of 10k, 100k and 1M chunks: the production
search against the one before issue 16 and against exact search, for 768- and 256-wide vectors.

A synthetic library is loaded into the real schema (documents, chunks, embeddings) of an
embedded Postgres and grown step by step to each size; every chunk has a vector of each width
(one model per width: `gemini` embeds 768 wide, the `local` WordLlama embedder 256). At each size:

- load: COPY of the new documents, chunks and embeddings, then VACUUM ANALYZE; the HNSW indexes
  are dropped before the load (inserting row by row is far slower than building);
- per width, the configuration before issue 16: migration 0001's index (full vectors, pgvector's
  default m 16 and ef_construction 64) built, the query of that time on one connection with
  ef_search 100 (OLD_QUERY), the index dropped again;
- per width, the production configuration: the migration's own index definition (read from
  pg_indexes) built, then `find_semantic_edges` (doc_pipeline/db/semantic_search.py) for a
  600-chunk book with top_k 10, nothing filtered by similarity, with the production ef_search
  and connections (SemanticConfig's defaults) and at other ef_search values. Each connect is
  the median of 5, timed in rounds over the ef_search values after one that warms the caches
  (the before configuration's: the median of 3). Index builds use maintenance_work_mem 6GB and
  one parallel worker besides the leader (both cores), and end with a CHECKPOINT;
- the baseline: the production query for the book on one connection, in a transaction with
  index scans disabled, which the planner answers with a sequential scan and a top-N sort per
  chunk: exact search. When that is projected (from the previous size) to take longer than
  --max-exact-minutes, it is timed on evenly spaced chunks of the book and scaled to the whole
  book (each chunk is one full scan). The figures to watch: exact / production and
  before / production;
- recall@10: the mean over the book's chunks of |found top 10 ∩ exact top 10| / 10, the exact
  top 10 computed by brute force in numpy on the same vectors (and checked against the
  database's exact search on the chunks it ran);
- the plan of each query (EXPLAIN): HNSW index scan or not;
- memory: the peak of the summed PSS of the server's processes (sampled from /proc) during the
  builds and the connects, the VmHWM of the caller's connection's backend (a fresh connection per
  connect; the production call's other connections are fresh too), and this process's peak RSS.

Synthetic vectors: per width, 300 random unit topic centroids; each document (300-600 chunks)
has 8 of them as themes; a chunk is one of its document's themes plus variation in a
48-dimension subspace of that topic plus a little isotropic noise, L2-normalized. Like real
embeddings, the variation has a low intrinsic dimension, so nearest neighbours are meaningful;
purely isotropic noise would make all chunks of a topic equidistant. The documents and each
chunk's theme are the same for every width. The book is a new document drawn the same way; its
own chunks are among its nearest neighbours, which the query skips (`document_id <> ...`), so
HNSW relies on its iterative scan.

    python bench/connections.py [--sizes 10000,100000,1000000] [--dimensions 768,256]
        [--book-chunks 600] [--ef-search 40,100,400] [--max-build-minutes 60]
        [--max-exact-minutes 15] [--json]

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
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

TOP_K = 10
TOPICS = 300
THEMES_PER_DOCUMENT = 8
LATENT = 48  # intrinsic dimensions of the variation within a topic
SPREAD = 0.8  # norm of the variation, against the unit topic centroid
NOISE = 0.2  # norm of the isotropic noise
DOCUMENT_CHUNKS = (300, 600)
BLOCK = 10_000  # rows generated (and seeded) together, whatever the sizes asked for
SEED = 20261128
BOOK_ID = "book"
PRODUCTION_INDEX_NAME = "ix_embeddings_hnsw_halfvec_{width}"  # migration 0008
# Before issue 16: migration 0001's index (the first 0008 made the same for 256), full vectors
# and pgvector's default graph (m 16, ef_construction 64); the query of that time, on one
# connection with ef_search 100.
OLD_INDEX_NAME = "bench_before_hnsw_{width}"
OLD_INDEX = (
    "CREATE INDEX bench_before_hnsw_{width} ON embeddings"
    " USING hnsw ((embedding::vector({width})) vector_cosine_ops) WHERE dimensions = {width}"
)
OLD_EF_SEARCH = 100
OLD_SETTINGS = {"hnsw.iterative_scan": "relaxed_order", "hnsw.ef_search": str(OLD_EF_SEARCH)}
OLD_QUERY = """
    SELECT s.chunk_id AS source, n.chunk_id AS target, 1 - n.distance AS similarity
    FROM embeddings s
    CROSS JOIN LATERAL (
        SELECT o.chunk_id,
               o.embedding::vector({width}) <=> s.embedding::vector({width}) AS distance
        FROM embeddings o
        WHERE o.dimensions = {width} AND o.model = s.model
          AND o.document_id <> s.document_id
        ORDER BY o.embedding::vector({width}) <=> s.embedding::vector({width})
        LIMIT :top_k
    ) n
    WHERE s.document_id = :document_id AND s.model = :model AND s.dimensions = {width}
"""
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
    larger size at once. The documents and each chunk's theme do not depend on the width: every
    width embeds the same chunks (one model per width), each width with its own topics."""

    def __init__(self, max_chunks: int, book_chunks: int) -> None:
        rng = np.random.default_rng([SEED, 3])
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
        self._spaces: dict[int, tuple[np.ndarray, np.ndarray]] = {}

    def space(self, dimensions: int) -> tuple[np.ndarray, np.ndarray]:
        """The topic centroids of a width and, per topic, the LATENT-dimension subspace of its
        variation (rows of about unit norm and nearly orthogonal)."""
        if dimensions not in self._spaces:
            rng = np.random.default_rng([SEED, 4, dimensions])
            topics = unit(rng.standard_normal((TOPICS, dimensions)))
            bases = rng.standard_normal((TOPICS, LATENT, dimensions)).astype(np.float32)
            self._spaces[dimensions] = (topics, bases / np.sqrt(dimensions))
        return self._spaces[dimensions]

    def _vectors(self, themes: np.ndarray, dimensions: int, seed: list[int]) -> np.ndarray:
        """One vector per row, on the topic given for the row."""
        topics, bases = self.space(dimensions)
        rng = np.random.default_rng([SEED, 5, dimensions, *seed])
        out = topics[themes].copy()
        for topic in np.unique(themes):
            rows = np.flatnonzero(themes == topic)
            latent = rng.standard_normal((len(rows), LATENT), dtype=np.float32)
            out[rows] += latent @ bases[topic] * (SPREAD / np.sqrt(LATENT))
        noise = rng.standard_normal(out.shape, dtype=np.float32)
        return unit(out + noise * (NOISE / np.sqrt(dimensions)))

    def _block_themes(self, number: int) -> tuple[np.ndarray, np.ndarray]:
        """Library rows [number * BLOCK, (number + 1) * BLOCK): document index and topic."""
        rng = np.random.default_rng([SEED, 0, number])
        rows = np.arange(number * BLOCK, (number + 1) * BLOCK)
        owners = np.searchsorted(self.starts, rows, side="right") - 1
        picks = rng.integers(0, THEMES_PER_DOCUMENT, len(rows))
        return owners, self.themes[owners, picks]

    def rows(
        self, start: int, end: int, dimensions: int | None = None
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
        """(first global row, document indexes, vectors of the width or None) for the library
        rows [start, end)."""
        for number in range(start // BLOCK, (end - 1) // BLOCK + 1):
            lo = max(start, number * BLOCK) - number * BLOCK
            hi = min(end, (number + 1) * BLOCK) - number * BLOCK
            owners, themes = self._block_themes(number)
            vectors = None
            if dimensions is not None:
                vectors = self._vectors(themes, dimensions, [0, number])[lo:hi]
            yield number * BLOCK + lo, owners[lo:hi], vectors

    def book_vectors(self, dimensions: int) -> np.ndarray:
        rng = np.random.default_rng([SEED, 2])
        picks = rng.integers(0, THEMES_PER_DOCUMENT, self.book.size)
        return self._vectors(self.book.themes[picks], dimensions, [2])


def model_name(dimensions: int) -> str:
    return f"bench-synthetic-{dimensions}"


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


def copy_embedding_rows(
    conn, dimensions: int, document_ids: list[str], ids: list[str], vectors
) -> None:
    # Binary COPY: formatting 768 floats as text would cost more than the load itself.
    columns = "chunk_id, model, document_id, dimensions, embedding, text_sha256"
    model = model_name(dimensions)
    with conn.cursor().copy(f"COPY embeddings ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
        copy.set_types(["text", "text", "text", "int2", "vector", "text"])
        for cid, did, vector in zip(ids, document_ids, vectors, strict=True):
            text_key = hashlib.sha256(f"chunk {cid}".encode()).hexdigest()
            copy.write_row((cid, model, did, dimensions, vector, text_key))


def load_book(conn, data: Synthetic, widths: list[int]) -> None:
    ids = [book_chunk_id(i) for i in range(data.book.size)]
    with conn.transaction():
        copy_document_rows(conn, [data.book])
        copy_chunk_rows(conn, [BOOK_ID] * len(ids), list(range(len(ids))), ids)
        for dimensions in widths:
            vectors = data.book_vectors(dimensions)
            copy_embedding_rows(conn, dimensions, [BOOK_ID] * len(ids), ids, vectors)


def load_library(conn, data: Synthetic, start: int, end: int, widths: list[int]) -> None:
    """Library rows [start, end), one transaction per block, with a vector of each width; a
    document is registered with its first chunk, so growing the library may append chunks to
    the last document."""
    for first, owners, _ in data.rows(start, end):
        rows = range(first, first + len(owners))
        documents = [data.documents[o] for o in owners]
        with conn.transaction():
            starting = [d for d, row in zip(documents, rows, strict=True) if row == d.first]
            copy_document_rows(conn, starting)
            ids = [chunk_id(row) for row in rows]
            document_ids = [d.id for d in documents]
            indexes = [row - d.first for d, row in zip(documents, rows, strict=True)]
            copy_chunk_rows(conn, document_ids, indexes, ids)
            for dimensions in widths:
                rows_of_width = data.rows(first, first + len(owners), dimensions)
                vectors = np.concatenate([block for _, _, block in rows_of_width])
                copy_embedding_rows(conn, dimensions, document_ids, ids, vectors)
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


def production_config(ef_search: int | None = None, connections: int | None = None):
    """The production SemanticConfig, with top_k 10, nothing filtered by similarity, and the
    ef_search or connection count given."""
    from doc_pipeline.core.semantic import SemanticConfig

    config = SemanticConfig(min_similarity=-1.0, top_k=TOP_K)
    return replace(
        config,
        ef_search=config.ef_search if ef_search is None else ef_search,
        search_connections=config.search_connections if connections is None else connections,
    )


def connect_book(engine, postmaster: int, dimensions: int, ef_search: int) -> Run:
    """The production call for the book, from a fresh connection (so its backend's VmHWM is
    this call's; the searching connections it opens are fresh too)."""
    from doc_pipeline.db.semantic_search import find_semantic_edges

    config = production_config(ef_search)

    def query(conn) -> list[tuple[str, str]]:
        edges = find_semantic_edges(conn, BOOK_ID, model_name(dimensions), config)
        return [(e.source_chunk_id, e.target_chunk_id) for e in edges]

    return timed(engine, postmaster, query)


def connect_book_before(engine, postmaster: int, dimensions: int) -> Run:
    """The search before issue 16 for the book: OLD_QUERY on one connection with its settings."""
    import sqlalchemy as sa

    params = {"document_id": BOOK_ID, "model": model_name(dimensions), "top_k": TOP_K}

    def query(conn) -> list[tuple[str, str]]:
        set_local(conn, OLD_SETTINGS)
        rows = conn.execute(sa.text(OLD_QUERY.format(width=dimensions)), params)
        return [(row.source, row.target) for row in rows]

    return timed(engine, postmaster, query)


def connect_exactly(engine, postmaster: int, dimensions: int, chunks: list[str]) -> Run:
    """Exact search for the book's chunks given: the production query on one fresh connection,
    with index scans disabled in its transaction."""
    from doc_pipeline.db.semantic_search import nearest_other_documents

    params = {"chunk_ids": chunks, "model": model_name(dimensions)}

    def query(conn) -> list[tuple[str, str]]:
        set_local(conn, EXACT_SETTINGS)
        rows = conn.execute(nearest_other_documents(dimensions, TOP_K), params)
        return [(row.source, row.target) for row in rows]

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


def plan(
    engine,
    dimensions: int,
    ef_search: int,
    book_chunks: int,
    before: bool = False,
    exact: bool = False,
) -> dict:
    """How the planner runs the query (production, or the one before issue 16) for the book:
    the scan of `embeddings o` inside the lateral subquery (HNSW index scan, or sequential scan
    and sort)."""
    import sqlalchemy as sa

    from doc_pipeline.db.semantic_search import nearest_other_documents, set_search_settings

    model = model_name(dimensions)
    chunks = [book_chunk_id(i) for i in range(book_chunks)]
    if before:
        text = OLD_QUERY.format(width=dimensions)
        params = {"document_id": BOOK_ID, "model": model, "top_k": TOP_K}
    else:
        text = nearest_other_documents(dimensions, TOP_K).text
        params = {"chunk_ids": chunks, "model": model}
    with engine.begin() as conn:
        if exact:
            set_local(conn, EXACT_SETTINGS)
        elif before:
            set_local(conn, OLD_SETTINGS)
        else:
            set_search_settings(conn, production_config(ef_search))
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
    return {"inner_scan": described + (" + sort" if sort else "")}


def numpy_exact(data: Synthetic, size: int, dimensions: int) -> dict[str, list[str]]:
    """The exact top 10 of each book chunk among the library's first `size` chunks, by brute
    force in numpy on the same vectors."""
    book = data.book_vectors(dimensions)
    best_scores = np.full((len(book), 0), -np.inf, dtype=np.float32)
    best_rows = np.zeros((len(book), 0), dtype=np.int64)
    for first, _, vectors in data.rows(0, size, dimensions):
        scores = np.concatenate([best_scores, book @ vectors.T], axis=1)
        block_rows = np.tile(np.arange(first, first + len(vectors)), (len(book), 1))
        rows = np.concatenate([best_rows, block_rows], axis=1)
        keep = np.argpartition(-scores, TOP_K - 1, axis=1)[:, :TOP_K]
        best_scores = np.take_along_axis(scores, keep, axis=1)
        best_rows = np.take_along_axis(rows, keep, axis=1)
    return {book_chunk_id(i): [chunk_id(r) for r in best_rows[i]] for i in range(len(book))}


def relation_sizes(engine) -> dict[str, int]:
    import sqlalchemy as sa

    query = sa.text("SELECT pg_table_size('embeddings'), pg_total_relation_size('embeddings')")
    with engine.connect() as conn:
        table, total = conn.execute(query).one()
    return {"table_bytes": table, "total_bytes": total}


def index_bytes(engine, name: str) -> int:
    import sqlalchemy as sa

    with engine.connect() as conn:
        return conn.execute(
            sa.text("SELECT pg_relation_size(CAST(:name AS regclass))"), {"name": name}
        ).scalar()


class BuildTooSlow(RuntimeError):
    """The index build was projected to take longer than allowed and was cancelled."""


def build_index(engine, index_sql: str, postmaster: int, max_minutes: float) -> dict:
    """CREATE INDEX with the given definition, watched through pg_stat_progress_create_index:
    cancelled once its projected time passes `max_minutes`."""
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
        conn.execute(sa.text("ANALYZE embeddings"))
        # The build leaves the index's pages dirty: written out now, not by the checkpointer
        # while the connects are timed (that made ef 150 slower than ef 200 in one run).
        conn.execute(sa.text("CHECKPOINT"))
        conn.commit()
    return {"seconds": seconds, "server_peak_pss": memory.peak, "parallel_workers": memory.workers}


def drop_index(engine, name: str) -> None:
    import sqlalchemy as sa

    with engine.begin() as conn:
        conn.execute(sa.text(f"DROP INDEX IF EXISTS {name}"))


@dataclass
class Bench:
    """The running benchmark: its database, data and options."""

    engine: object
    postmaster: int
    data: Synthetic
    ef_values: list[int]
    production_ef: int
    max_build_minutes: float
    max_exact_minutes: float
    index_sql: dict[int, str]  # the migration's index definition per width
    # seconds per (book chunk x library row) of exact search, per width
    exact_cost: dict[int, float] = field(default_factory=dict)

    def exact_sample(self, dimensions: int, size: int) -> list[str] | None:
        """None (the whole book) unless exact search of the whole book is projected, from the
        previous size (or a probe of this one), to take longer than allowed: then evenly spaced
        chunks that fit."""
        chunks = self.data.book.size
        projected = self.exact_cost[dimensions] * chunks * size
        if projected <= self.max_exact_minutes * 60:
            return None
        count = max(30, int(chunks * self.max_exact_minutes * 60 / projected))
        return self.evenly_spaced(count)

    def evenly_spaced(self, count: int) -> list[str]:
        """`count` of the book's chunk ids, from its first chunk to its last."""
        chunks = self.data.book.size
        return [book_chunk_id(i) for i in np.linspace(0, chunks - 1, count).astype(int)]

    def exactly(self, dimensions: int, size: int, chunk_ids: list[str]) -> Run:
        """Exact search for those chunks, its cost per chunk and library row kept for the
        projections of `exact_sample`."""
        run = connect_exactly(self.engine, self.postmaster, dimensions, chunk_ids)
        self.exact_cost[dimensions] = run.seconds / (len(run.neighbours) * size)
        return run

    def median(self, connect, repeats: int = 3) -> Run:
        """The median of a few connects: they take seconds, and the machine is shared."""
        runs = [connect() for _ in range(repeats)]
        return sorted(runs, key=lambda r: r.seconds)[repeats // 2]

    @staticmethod
    def median_per_ef(connect, ef_values: list[int], rounds: int = 5) -> dict[int, Run]:
        """The median connect at each ef_search, timed in rounds that take each value in turn,
        so that a slow spell of the shared machine falls on all of them alike."""
        runs: dict[int, list[Run]] = {ef: [] for ef in ef_values}
        for _ in range(rounds):
            for ef in ef_values:
                runs[ef].append(connect(ef))
        return {ef: sorted(r, key=lambda run: run.seconds)[rounds // 2] for ef, r in runs.items()}

    def build(self, index_sql: str) -> dict:
        return build_index(self.engine, index_sql, self.postmaster, self.max_build_minutes)

    def measure_before(self, dimensions: int, truth: dict[str, list[str]]) -> dict:
        """The configuration before issue 16: its index built, the book connected (after one
        connect that warms the caches), the index dropped again."""
        engine, postmaster = self.engine, self.postmaster
        name = OLD_INDEX_NAME.format(width=dimensions)
        built = self.build(OLD_INDEX.format(width=dimensions))
        size = index_bytes(engine, name)
        log(f"  before: index built in {built['seconds']:.0f} s ({size / 2**20:,.0f} MB)")
        first = connect_book_before(engine, postmaster, dimensions)
        run = self.median(lambda: connect_book_before(engine, postmaster, dimensions))
        figures = {
            "build": built,
            "index_bytes": size,
            "first_seconds": first.seconds,
            "seconds": run.seconds,
            "recall_at_10": recall(run.neighbours, truth),
            "plan": plan(engine, dimensions, OLD_EF_SEARCH, self.data.book.size, before=True),
        }
        drop_index(engine, name)
        log(f"  before: {run.seconds:.2f} s, recall@10 {figures['recall_at_10']:.3f}")
        return figures

    def measure_production(self, dimensions: int, size: int, truth) -> dict:
        """The migration's index built and the production call at each ef_search, then exact
        search as the baseline; the index stays."""
        engine, postmaster, chunks = self.engine, self.postmaster, self.data.book.size
        built = self.build(self.index_sql[dimensions])
        index_size = index_bytes(engine, PRODUCTION_INDEX_NAME.format(width=dimensions))
        log(f"  production: index built in {built['seconds']:.0f} s ({index_size / 2**20:,.0f} MB)")
        # The first connect after the build pays for cold caches: reported, not compared.
        first = connect_book(engine, postmaster, dimensions, self.production_ef)
        runs = self.median_per_ef(
            lambda ef: connect_book(engine, postmaster, dimensions, ef), self.ef_values
        )
        plans = {ef: plan(engine, dimensions, ef, chunks) for ef in self.ef_values}
        log("  production: " + ", ".join(f"ef {ef} {r.seconds:.2f} s" for ef, r in runs.items()))
        if dimensions not in self.exact_cost:
            # No smaller size was measured (--sizes starts large): a few chunks first, so that
            # a whole book of full scans at 1M is not started blind (600 x 11 s at 768 wide).
            self.exactly(dimensions, size, self.evenly_spaced(3))
        sample = self.exact_sample(dimensions, size)
        if sample is None:
            sample = [book_chunk_id(i) for i in range(chunks)]
        else:
            log(f"  exact search of {len(sample)} of the {chunks} chunks (projected too long)")
        exact = self.exactly(dimensions, size, sample)
        exact_plan = plan(engine, dimensions, self.production_ef, chunks, exact=True)
        measured = len(exact.neighbours)
        exact_seconds = exact.seconds * chunks / measured  # linear: one full scan per chunk
        production = runs[self.production_ef]
        figures = {
            "build": built,
            "index_bytes": index_size,
            "first_seconds": first.seconds,
            "seconds": production.seconds,
            "recall_at_10": recall(production.neighbours, truth),
            "plan": plans[self.production_ef],
            "exact_seconds": exact_seconds,
            "exact_chunks_measured": measured,
            "exact_measured_seconds": exact.seconds,
            "ratio": exact_seconds / production.seconds,
            "exact_vs_numpy": recall(exact.neighbours, truth, over=exact.neighbours),
            "plan_exact": exact_plan,
            "fewer_than_top_k": {
                "production": sum(len(v) < TOP_K for v in production.neighbours.values())
                + chunks
                - len(production.neighbours),
                "exact": sum(len(v) < TOP_K for v in exact.neighbours.values()),
            },
            "memory": {
                "server_peak_pss": production.server_peak_pss,
                "server_peak_pss_exact": exact.server_peak_pss,
                "backend_hwm": production.backend_hwm,
                "backend_hwm_exact": exact.backend_hwm,
            },
            "ef_search": {
                ef: {
                    "seconds": r.seconds,
                    "recall_at_10": recall(r.neighbours, truth),
                    "plan": plans[ef]["inner_scan"],
                }
                for ef, r in runs.items()
            },
        }
        log(
            f"  production: {production.seconds:.2f} s, recall@10 {figures['recall_at_10']:.3f};"
            f" exact {exact_seconds:.1f} s ({measured} chunks measured), ratio"
            f" {figures['ratio']:.1f}, exact vs numpy {figures['exact_vs_numpy']:.3f}"
        )
        return figures

    def measure(self, dimensions: int, size: int) -> dict:
        truth = numpy_exact(self.data, size, dimensions)
        figures: dict = {}
        try:
            figures["before"] = self.measure_before(dimensions, truth)
            figures["production"] = self.measure_production(dimensions, size, truth)
        except BuildTooSlow as error:
            figures["cancelled"] = json.loads(str(error))
            log(f"  index build cancelled: {error}")
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


def server_facts(engine, widths: list[int]) -> tuple[dict[int, str], dict]:
    """The HNSW index definition of each width as the migration created it, and the server's
    settings."""
    import sqlalchemy as sa

    with engine.connect() as conn:
        index_sql = {
            width: conn.execute(
                sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :name"),
                {"name": PRODUCTION_INDEX_NAME.format(width=width)},
            ).scalar_one()
            for width in widths
        }
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

    sizes, widths = sorted(args.sizes), args.dimensions
    data = Synthetic(sizes[-1], args.book_chunks)
    home = Path(tempfile.mkdtemp(prefix="doc-pipeline-bench-connections-"))
    results: dict[int, dict] = {}
    try:
        with embedded_database(home) as (url, postmaster):
            # No pool: every connection is a new backend, so a query backend's VmHWM is that
            # query's (a pooled one would remember the index build's peak).
            engine = sa.create_engine(url, poolclass=sa.NullPool)
            index_sql, server = server_facts(engine, widths)
            bench = Bench(
                engine,
                postmaster,
                data,
                args.ef_search,
                args.production_ef,
                args.max_build_minutes,
                args.max_exact_minutes,
                index_sql,
            )
            libpq_url = sa.make_url(url).set(drivername="postgresql")
            with psycopg.connect(libpq_url.render_as_string(hide_password=False)) as loader:
                register_vector(loader)
                load_book(loader, data, widths)
                loaded = 0
                for size in sizes:
                    log(f"library of {size:,} chunks: loading {size - loaded:,} more")
                    # Inserting into an HNSW index row by row is far slower than building it.
                    for dimensions in widths:
                        drop_index(engine, PRODUCTION_INDEX_NAME.format(width=dimensions))
                    started = time.perf_counter()
                    load_library(loader, data, loaded, size, widths)
                    loader.autocommit = True
                    loader.execute("VACUUM ANALYZE documents, chunks, embeddings")
                    loader.autocommit = False
                    figures: dict = {"load_seconds": time.perf_counter() - started}
                    loaded = size
                    results[size] = figures
                    log(f"  loaded in {figures['load_seconds']:.0f} s")
                    figures.update(relation_sizes(engine))
                    for dimensions in widths:
                        log(f"  {dimensions} wide:")
                        figures[dimensions] = bench.measure(dimensions, size)
                    if any("cancelled" in figures[dimensions] for dimensions in widths):
                        break
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
        f"book of {figures['book_chunks']} chunks, top {TOP_K}; production: ef_search"
        f" {figures['production_ef']}, {figures['search_connections']} connections, indexes:"
    )
    for index_sql in figures["index_sql"].values():
        print(f"  {index_sql}")
    print(f"before: {OLD_INDEX.format(width='N')}; ef_search {OLD_EF_SEARCH}, one connection")
    sizes = figures["sizes"]
    print(
        f"\n{'library':>10}{'width':>6}{'load s':>8}"
        f"  {'before: build s':>15}{'MB':>7}{'s':>7}{'recall':>8}"
        f"  {'production: build s':>19}{'MB':>7}{'s':>7}{'recall':>8}"
        f"{'exact s':>10}{'exact/prod':>11}{'before/prod':>12}"
    )
    measured = []
    for size, f in sizes.items():
        for dimensions in figures["dimensions"]:
            w = f.get(dimensions, {})
            row = f"{size:>10,}{dimensions:>6}{f['load_seconds']:>8.0f}"
            if "production" not in w:
                progress = w.get("cancelled")
                if progress:
                    print(
                        f"{row}  index build cancelled after"
                        f" {progress['elapsed_seconds'] / 60:.0f} min, projected"
                        f" {progress['projected_seconds'] / 60:.0f} min"
                    )
                continue
            measured.append((size, dimensions, w))
            b, p = w["before"], w["production"]
            exact = f"{p['exact_seconds']:.1f}"
            if p["exact_chunks_measured"] < figures["book_chunks"]:
                exact += "*"
            print(
                f"{row}  {b['build']['seconds']:>15.0f}{mb(b['index_bytes']):>7}"
                f"{b['seconds']:>7.2f}{b['recall_at_10']:>8.3f}"
                f"  {p['build']['seconds']:>19.0f}{mb(p['index_bytes']):>7}"
                f"{p['seconds']:>7.2f}{p['recall_at_10']:>8.3f}"
                f"{exact:>10}{p['ratio']:>11.1f}{b['seconds'] / p['seconds']:>12.1f}"
            )
    if not measured:
        print(f"total wall time {figures['wall_seconds']:.0f} s")
        return
    print("\ninner scan (EXPLAIN): before / production / exact")
    for size, dimensions, w in measured:
        p = w["production"]
        print(
            f"{size:>10,}{dimensions:>6}  {w['before']['plan']['inner_scan']} /"
            f" {p['plan']['inner_scan']} / {p['plan_exact']['inner_scan']}"
        )
    for size, dimensions, w in measured:
        p = w["production"]
        if p["exact_chunks_measured"] < figures["book_chunks"]:
            print(
                f"* {size:,}, {dimensions} wide: exact search timed on"
                f" {p['exact_chunks_measured']} evenly spaced chunks"
                f" ({p['exact_measured_seconds']:.1f} s) and scaled to the book"
            )
    print(
        f"\nmemory, MB{'':>6}{'server: build before':>21}{'production':>11}{'connect':>9}"
        f"{'exact':>7}{'backend: connect':>18}{'exact':>7}{'build workers':>15}"
    )
    for size, dimensions, w in measured:
        b, p = w["before"], w["production"]
        m = p["memory"]
        print(
            f"{size:>10,}{dimensions:>6}{mb(b['build']['server_peak_pss']):>21}"
            f"{mb(p['build']['server_peak_pss']):>11}{mb(m['server_peak_pss']):>9}"
            f"{mb(m['server_peak_pss_exact']):>7}{mb(m['backend_hwm']):>18}"
            f"{mb(m['backend_hwm_exact']):>7}{p['build']['parallel_workers']:>15}"
        )
    print(
        "server: peak summed PSS of the Postgres processes; backend: the VmHWM of the backend of"
        f" the caller's connection;\nthis process's peak RSS {mb(figures['bench_peak_rss'])} MB"
    )
    print(
        f"\nproduction at other ef_search values\n{'library':>10}{'width':>6}{'ef_search':>11}"
        f"{'s':>7}{'recall@10':>11}  plan"
    )
    for size, dimensions, w in measured:
        for ef, e in w["production"]["ef_search"].items():
            print(
                f"{size:>10,}{dimensions:>6}{ef:>11}{e['seconds']:>7.2f}"
                f"{e['recall_at_10']:>11.3f}  {e['plan']}"
            )
    print()
    for size, dimensions, w in measured:
        b, p = w["before"], w["production"]
        short = p["fewer_than_top_k"]
        print(
            f"{size:,}, {dimensions} wide: first connect after the build: before"
            f" {b['first_seconds']:.2f} s, production {p['first_seconds']:.2f} s; exact search vs"
            f" numpy {p['exact_vs_numpy']:.3f}; chunks with fewer than {TOP_K} neighbours:"
            f" production {short['production']}, exact {short['exact']}"
        )
    print(f"total wall time {figures['wall_seconds']:.0f} s")


def main() -> None:
    from doc_pipeline.core.semantic import SemanticConfig

    production = SemanticConfig(min_similarity=0.0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])

    def integers(text: str) -> list[int]:
        return [int(part) for part in text.split(",") if part]

    parser.add_argument("--sizes", type=integers, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--dimensions", type=integers, default=[768, 256])
    parser.add_argument("--book-chunks", type=int, default=600)
    parser.add_argument(
        "--ef-search",
        type=integers,
        default=[40, 100, 400],
        help="the production call is also timed at these (its own ef_search is always added)",
    )
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
    args.production_ef = production.ef_search
    args.ef_search = sorted({*args.ef_search, production.ef_search})
    os.environ.pop("DATABASE_URL", None)  # always the embedded server of a temporary home

    started = time.perf_counter()
    figures = run(args)
    figures.update(
        {
            "machine": (
                f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}"
            ),
            "book_chunks": args.book_chunks,
            "dimensions": args.dimensions,
            "production_ef": production.ef_search,
            "search_connections": production.search_connections,
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
