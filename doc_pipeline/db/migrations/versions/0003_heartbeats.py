"""heartbeats of long-running steps

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "heartbeats",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column("step_key", sa.String(128), primary_key=True),
        sa.Column("document_id", sa.String(32), index=True),
        sa.Column("host", sa.Text, nullable=False),
        sa.Column("pid", sa.Integer, nullable=False),
        sa.Column("started_at", TZ, nullable=False),
        sa.Column("beat_at", TZ, nullable=False),
        sa.Column("ended_at", TZ),
    )


def downgrade() -> None:
    op.drop_table("heartbeats")
