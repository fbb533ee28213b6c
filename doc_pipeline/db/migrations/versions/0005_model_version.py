"""the model version the API says answered each AI request

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL for answers stored before (and for embeddings: their answers name no version).
    op.add_column("ai_responses", sa.Column("model_version", sa.String(128)))
    op.add_column("ai_calls", sa.Column("model_version", sa.String(128)))


def downgrade() -> None:
    op.drop_column("ai_calls", "model_version")
    op.drop_column("ai_responses", "model_version")
