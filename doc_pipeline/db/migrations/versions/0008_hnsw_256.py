"""an HNSW index for 256-wide vectors: the `local` provider's semantic embedder

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


def upgrade() -> None:
    # One partial expression index per width in use (see 0001): 768 for `gemini`, 256 for
    # `local` (WordLlama). Queries use the same expression, `embedding::vector(256)`.
    op.execute(
        "CREATE INDEX ix_embeddings_hnsw_256 ON embeddings "
        "USING hnsw ((embedding::vector(256)) vector_cosine_ops) WHERE dimensions = 256"
    )


def downgrade() -> None:
    op.execute("DROP INDEX ix_embeddings_hnsw_256")
