"""documents, chunks, embeddings and connections

Revision ID: 0001
Revises:
Create Date: 2026-11-28
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from pgvector.sqlalchemy import Vector
from sqlalchemy.dialects.postgresql import ARRAY, JSONB

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.execute("CREATE EXTENSION IF NOT EXISTS vector")
    op.create_table(
        "documents",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("content_sha256", sa.String(64), nullable=False, unique=True),
        sa.Column("title", sa.Text),
        sa.Column("author", sa.Text),
        sa.Column("language", sa.String(35)),
        sa.Column("source_file", sa.Text, nullable=False),
        sa.Column("byte_size", sa.Integer, nullable=False),
        sa.Column("stage", sa.String(16), nullable=False, server_default="pending"),
        sa.Column("registered_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.Column("extracted_at", TZ),
        sa.Column("chunked_at", TZ),
        sa.Column("embedded_at", TZ),
        sa.Column("connected_at", TZ),
        sa.Column("failed_at", TZ),
        sa.Column("error_class", sa.String(32)),
        sa.Column("error_message", sa.Text),
        sa.Column("updated_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.CheckConstraint(
            "stage IN ('pending', 'extracting', 'extracted', 'chunking', 'chunked', 'embedding',"
            " 'embedded', 'connecting', 'connected', 'failed')",
            name="ck_documents_stage",
        ),
    )
    op.create_table(
        "chunks",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column(
            "document_id",
            sa.String(32),
            sa.ForeignKey("documents.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("chunk_index", sa.Integer, nullable=False),
        sa.Column("content", sa.Text, nullable=False),
        sa.Column("start_offset", sa.Integer, nullable=False),
        sa.Column("end_offset", sa.Integer, nullable=False),
        sa.Column("word_count", sa.Integer, nullable=False),
        sa.Column("char_count", sa.Integer, nullable=False),
        sa.Column("heading_path", ARRAY(sa.Text), nullable=False),
        sa.Column("metadata", JSONB, nullable=False, server_default="{}"),
        sa.UniqueConstraint(
            "document_id",
            "chunk_index",
            name="uq_chunks_document_index",
            deferrable=True,
            initially="DEFERRED",
        ),
    )
    op.create_index("ix_chunks_document_id", "chunks", ["document_id"])
    op.create_table(
        "embeddings",
        sa.Column(
            "chunk_id",
            sa.String(32),
            sa.ForeignKey("chunks.id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("model", sa.String(128), primary_key=True),
        sa.Column(
            "document_id",
            sa.String(32),
            sa.ForeignKey("documents.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("dimensions", sa.SmallInteger, nullable=False),
        sa.Column("embedding", Vector(), nullable=False),
        sa.CheckConstraint("vector_dims(embedding) = dimensions", name="ck_embeddings_dims"),
    )
    op.create_index("ix_embeddings_document_id", "embeddings", ["document_id"])
    # HNSW needs a fixed width: one partial expression index per width in use (768 for both
    # providers). Queries must use the same expression, `embedding::vector(768)`.
    op.execute(
        "CREATE INDEX ix_embeddings_hnsw_768 ON embeddings "
        "USING hnsw ((embedding::vector(768)) vector_cosine_ops) WHERE dimensions = 768"
    )
    op.create_table(
        "connections",
        sa.Column("id", sa.BigInteger, sa.Identity(), primary_key=True),
        sa.Column(
            "source_chunk_id",
            sa.String(32),
            sa.ForeignKey("chunks.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column(
            "target_chunk_id",
            sa.String(32),
            sa.ForeignKey("chunks.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("connection_type", sa.String(32), nullable=False),
        sa.Column("strength", sa.Float, nullable=False),
        sa.Column("metadata", JSONB, nullable=False, server_default="{}"),
        sa.Column("created_at", TZ, nullable=False, server_default=sa.func.now()),
        sa.UniqueConstraint(
            "source_chunk_id", "target_chunk_id", "connection_type", name="uq_connections_edge"
        ),
        sa.CheckConstraint(
            "source_chunk_id <> target_chunk_id", name="ck_connections_no_self_link"
        ),
        sa.CheckConstraint("strength >= 0 AND strength <= 1", name="ck_connections_strength"),
    )
    op.create_index("ix_connections_source_chunk_id", "connections", ["source_chunk_id"])
    op.create_index("ix_connections_target_chunk_id", "connections", ["target_chunk_id"])


def downgrade() -> None:
    op.drop_table("connections")
    op.drop_table("embeddings")
    op.drop_table("chunks")
    op.drop_table("documents")
    # The vector extension stays: other schemas in the same database may use it.
