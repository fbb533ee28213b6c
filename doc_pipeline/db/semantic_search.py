"""The semantic engine's search: each chunk's nearest chunks of other documents through the
pgvector HNSW indexes (scored by `doc_pipeline.core.semantic`).

The indexes (migration 0008) hold the vectors at half precision, `embedding::halfvec(N)`, one
partial index per width in use (768: `gemini`, 256: the `local` embedder): half the size of full
vectors, so more of a large library's graph stays in memory, with the neighbours the full
vectors give (BENCHMARKS.md, "Connections at library scale"). The index only finds the
candidates: the similarity stored is computed on the full vectors. A width without an index is
searched exactly.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import sqlalchemy as sa

from doc_pipeline.core.edges import Edge
from doc_pipeline.core.semantic import Neighbour, SemanticConfig, semantic_edges

# Fewer chunks than this are not worth another connection: opening one costs milliseconds,
# searching 32 chunks tens of them.
MIN_CHUNKS_PER_CONNECTION = 32


def nearest_other_documents(dimensions: int, top_k: int) -> sa.TextClause:
    """For each of the chunks `:chunk_ids` (their vectors of `:model`), its top_k nearest chunks
    of other documents with the same model, ordered by cosine distance at half precision so that
    the planner walks the HNSW index of that width: the query must use the index's expression,
    `embedding::halfvec(N)`. The LIMIT is a literal: as a parameter, the generic plan that
    Postgres may switch to once psycopg prepares the statement (run 5 times on one connection)
    sorted the whole library for each chunk instead (measured at 100k chunks)."""
    width, limit = int(dimensions), int(top_k)
    return sa.text(
        f"""
    SELECT s.chunk_id AS source, n.chunk_id AS target, 1 - n.distance AS similarity
    FROM embeddings s
    CROSS JOIN LATERAL (
        SELECT o.chunk_id, o.embedding <=> s.embedding AS distance
        FROM embeddings o
        WHERE o.dimensions = {width} AND o.model = s.model
          AND o.document_id <> s.document_id
        ORDER BY o.embedding::halfvec({width}) <=> s.embedding::halfvec({width})
        LIMIT {limit}
    ) n
    WHERE s.chunk_id = ANY(:chunk_ids) AND s.model = :model AND s.dimensions = {width}
    """
    )


DOCUMENT_CHUNKS = sa.text(
    "SELECT dimensions, chunk_id FROM embeddings WHERE document_id = :document_id"
    " AND model = :model ORDER BY dimensions, chunk_id"
)


TARGET_IMPORTANCE = sa.text(
    """
    SELECT id, (metadata ->> 'importance')::float FROM chunks
    WHERE id = ANY(:ids) AND jsonb_typeof(metadata -> 'importance') = 'number'
    """
)


def find_semantic_edges(
    conn: sa.Connection, document_id: str, model: str, config: SemanticConfig
) -> list[Edge]:
    """For each chunk of the document, up to top_k chunks of other documents with cosine
    similarity at least min_similarity, embedded with the same model.

    The search runs on other connections of `conn`'s engine, the document's chunks split over
    up to `config.search_connections` of them searching at once; like any statement of `conn`'s
    transaction (read committed) they read the committed rows, and the planner settings they
    need stay out of it. The caller's writes keep their one transaction. The edges are the same,
    in the same order, however the chunks were split."""
    chunks: dict[int, list[str]] = {}
    for width, chunk_id in conn.execute(
        DOCUMENT_CHUNKS, {"document_id": document_id, "model": model}
    ):
        chunks.setdefault(width, []).append(chunk_id)
    parts = [
        (width, part)
        for width, ids in chunks.items()
        for part in _split(ids, config.search_connections)
    ]

    def search(part: tuple[int, list[str]]) -> list[sa.Row]:
        width, chunk_ids = part
        with conn.engine.connect() as searcher, searcher.begin():
            set_search_settings(searcher, config)
            query = nearest_other_documents(width, config.top_k)
            return searcher.execute(query, {"chunk_ids": chunk_ids, "model": model}).all()

    if len(parts) > 1:
        with ThreadPoolExecutor(max_workers=len(parts)) as pool:
            rows = [row for found in pool.map(search, parts) for row in found]
    else:
        rows = [row for part in parts for row in search(part)]
    # By the document's chunks (each one's neighbours stay nearest first): the same order
    # whatever order the planner scanned them in.
    position = {chunk_id: i for i, chunk_id in enumerate(c for _, ids in parts for c in ids)}
    rows.sort(key=lambda row: position[row.source])
    # Fetched apart: joining chunks into the search query made the planner leave the index.
    importances = dict(
        conn.execute(TARGET_IMPORTANCE, {"ids": sorted({row.target for row in rows})}).all()
    )
    neighbours = [Neighbour(row.source, row.target, row.similarity) for row in rows]
    return semantic_edges(neighbours, importances, model, config)


def _split(chunk_ids: list[str], connections: int) -> list[list[str]]:
    """Consecutive parts of about equal size, at most `connections` and at least
    MIN_CHUNKS_PER_CONNECTION chunks each (one part for a small document)."""
    count = max(1, min(connections, len(chunk_ids) // MIN_CHUNKS_PER_CONNECTION))
    size = len(chunk_ids)
    return [chunk_ids[i * size // count : (i + 1) * size // count] for i in range(count)]


def set_search_settings(conn: sa.Connection, config: SemanticConfig) -> None:
    """The search's settings, for the rest of the connection's transaction: the HNSW walk, and
    a planner that takes the index of the width whenever there is one."""
    # Iterative scans keep searching when the filter (other documents only) removes candidates.
    conn.execute(sa.text("SET LOCAL hnsw.iterative_scan = relaxed_order"))
    conn.execute(sa.text(f"SET LOCAL hnsw.ef_search = {int(max(config.ef_search, config.top_k))}"))
    # The planner does not count the TOAST reads of a sequential scan (where 768-wide vectors
    # live) and pgvector's estimate grows with ef_search and m: on a library of 3,000 chunks it
    # sorted the library for every chunk, 22 s for a book against 0.23 s on the index
    # (BENCHMARKS.md). With these off, the index is the only plan without a disabled step; a
    # width that has no index is still searched exactly.
    for setting in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
        conn.execute(sa.text(f"SET LOCAL {setting} = off"))
    # A plan for the actual chunks every time, never a generic one (see nearest_other_documents).
    conn.execute(sa.text("SET LOCAL plan_cache_mode = force_custom_plan"))
