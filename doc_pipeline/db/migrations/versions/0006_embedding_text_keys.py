"""each vector keyed by the text it embeds, so a text embedded once is never paid again

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("embeddings", sa.Column("text_sha256", sa.String(64)))
    # Existing vectors embed their chunk's content: keyed by it, as new ones are.
    op.execute(
        "UPDATE embeddings e SET text_sha256 = encode(sha256(convert_to(c.content, 'UTF8')), 'hex')"
        " FROM chunks c WHERE c.id = e.chunk_id"
    )
    op.alter_column("embeddings", "text_sha256", nullable=False)
    op.create_index("ix_embeddings_text", "embeddings", ["model", "dimensions", "text_sha256"])


def downgrade() -> None:
    op.drop_index("ix_embeddings_text", table_name="embeddings")
    op.drop_column("embeddings", "text_sha256")
