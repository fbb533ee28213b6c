"""What the Dagster UI's catalog shows of each asset, in Dagster's own terms: its kinds, its
owners, and the table it writes with its columns (`dagster/column_schema`), taken from the
app database's models so it cannot drift from the schema."""

from __future__ import annotations

from typing import Any

from dagster import TableColumn, TableColumnConstraints, TableSchema
from sqlalchemy import Table
from sqlalchemy.dialects import postgresql

from doc_pipeline.db.models import Chunk, Connection, Document, Embedding
from doc_pipeline.settings import Settings

OWNERS = ["team:doc_pipeline"]
TABLES = {
    "documents": Document.__table__,
    "chunks": Chunk.__table__,
    "embeddings": Embedding.__table__,
    "connections": Connection.__table__,
}


def kinds(*, ai: bool = False) -> set[str]:
    """Python and Postgres; and the AI provider for the stages that call it."""
    return {"python", "postgres", Settings.provider()} if ai else {"python", "postgres"}


def _column(table: Table, name: str) -> TableColumn:
    column = table.columns[name]
    return TableColumn(
        name=name,
        type=column.type.compile(dialect=postgresql.dialect()).lower(),
        description=_foreign_keys(column),
        constraints=TableColumnConstraints(
            nullable=bool(column.nullable),
            unique=bool(column.unique) or list(table.primary_key.columns) == [column],
        ),
    )


def _foreign_keys(column: Any) -> str | None:
    targets = sorted(key.target_fullname for key in column.foreign_keys)
    return f"references {', '.join(targets)}" if targets else None


def table_metadata(table_name: str) -> dict[str, Any]:
    """Definition metadata naming the table an asset writes, and its columns."""
    table = TABLES[table_name]
    return {
        "dagster/table_name": table_name,
        "dagster/column_schema": TableSchema(
            columns=[_column(table, column.name) for column in table.columns]
        ),
    }
