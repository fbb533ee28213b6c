"""What the AI ledger's calls (`ai_calls`) say, counted, for the tests' assertions."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import Engine

_COLUMNS = ("key", "document_id", "stage", "run_id", "outcome")


def ai_call_counts(engine: Engine, by: str, **where: str) -> dict[str, int]:
    """Calls counted by one column (`by`), among those whose columns equal `where`; {} while
    the ingest has not made the ledger's tables yet."""
    if by not in _COLUMNS or not set(where) <= set(_COLUMNS):
        raise ValueError(f"ai_calls columns to count by: {', '.join(_COLUMNS)}")
    condition = " AND ".join(f"{column} = :{column}" for column in where) or "TRUE"
    query = f"SELECT {by}, count(*) FROM ai_calls WHERE {condition} GROUP BY {by}"
    try:
        with engine.connect() as conn:
            return dict(conn.execute(sa.text(query), where).all())
    except sa.exc.ProgrammingError:  # no ai_calls table yet
        return {}


def keys_paid_twice(engine: Engine) -> list[str]:
    """Ledger keys paid more than once: none, whatever crashed or raced."""
    return sorted(k for k, n in ai_call_counts(engine, "key", outcome="paid").items() if n > 1)
