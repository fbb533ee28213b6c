"""documents with versions: a stable document, its contents by hash, and what identifies it

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column(
        "documents", sa.Column("version", sa.Integer(), server_default="1", nullable=False)
    )
    op.add_column("documents", sa.Column("current_version", sa.Integer()))
    op.create_table(
        "document_versions",
        sa.Column(
            "document_id",
            sa.String(32),
            sa.ForeignKey("documents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("version", sa.Integer(), primary_key=True),
        sa.Column("content_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("source_file", sa.Text(), nullable=False),
        sa.Column("byte_size", sa.Integer(), nullable=False),
        sa.Column(
            "registered_at",
            sa.DateTime(timezone=True),
            server_default=sa.func.now(),
            nullable=False,
        ),
        sa.Column("current_since", sa.DateTime(timezone=True)),
        sa.Column("superseded_at", sa.DateTime(timezone=True)),
        sa.Column("changes", JSONB()),
    )
    op.create_table(
        "document_identities",
        sa.Column("identity", sa.Text(), primary_key=True),
        sa.Column(
            "document_id",
            sa.String(32),
            sa.ForeignKey("documents.id", ondelete="CASCADE"),
            primary_key=True,
        ),
    )
    op.create_index("ix_document_identities_document_id", "document_identities", ["document_id"])
    # Every existing document is its one version; the chunks it has are that version's.
    op.execute(
        "INSERT INTO document_versions"
        " (document_id, version, content_sha256, source_file, byte_size, registered_at,"
        " current_since)"
        " SELECT id, 1, content_sha256, source_file, byte_size, registered_at, chunked_at"
        " FROM documents"
    )
    op.execute(
        "UPDATE documents d SET current_version = 1"
        " WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.document_id = d.id)"
    )


def downgrade() -> None:
    # One content per document again: the current version's (or the newest, if none is current
    # yet). Superseded versions' stored files stay in the blob store, unlisted.
    op.execute(
        "UPDATE documents d SET content_sha256 = v.content_sha256, source_file = v.source_file,"
        " byte_size = v.byte_size FROM document_versions v"
        " WHERE v.document_id = d.id AND v.version = coalesce(d.current_version, d.version)"
        " AND d.content_sha256 <> v.content_sha256"
    )
    op.drop_index("ix_document_identities_document_id", table_name="document_identities")
    op.drop_table("document_identities")
    op.drop_table("document_versions")
    op.drop_column("documents", "current_version")
    op.drop_column("documents", "version")
