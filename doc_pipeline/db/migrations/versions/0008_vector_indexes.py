"""HNSW indexes at half precision for 768- and 256-wide vectors, with a denser graph

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# One partial expression index per width in use: 768 for `gemini`, 256 for `local` (WordLlama).
# halfvec halves the index (1M chunks, 768 wide: 3.9 GB as vectors, 2.0 GB) and finds the same
# neighbours; m 24 and ef_construction 128 (pgvector's defaults: 16 and 64) give recall@10 above
# 0.95 at a million chunks with ef_search 130 (BENCHMARKS.md, "Connections at library scale").
# Queries must use the same expression, `embedding::halfvec(N)` (db/semantic_search.py).
WIDTHS = (768, 256)
HNSW_PARAMETERS = "m = 24, ef_construction = 128"


def upgrade() -> None:
    op.execute("DROP INDEX ix_embeddings_hnsw_768")
    for width in WIDTHS:
        op.execute(
            f"CREATE INDEX ix_embeddings_hnsw_halfvec_{width} ON embeddings USING hnsw "
            f"((embedding::halfvec({width})) halfvec_cosine_ops) WITH ({HNSW_PARAMETERS}) "
            f"WHERE dimensions = {width}"
        )


def downgrade() -> None:
    for width in WIDTHS:
        op.execute(f"DROP INDEX ix_embeddings_hnsw_halfvec_{width}")
    # 0001's index, as it was.
    op.execute(
        "CREATE INDEX ix_embeddings_hnsw_768 ON embeddings "
        "USING hnsw ((embedding::vector(768)) vector_cosine_ops) WHERE dimensions = 768"
    )
