"""The stages a user sees in `documents.stage`, and what moving to one changes."""

from __future__ import annotations

from datetime import datetime
from typing import Any

STAGES = (
    "pending",
    "extracting",
    "extracted",
    "chunking",
    "chunked",
    "embedding",
    "embedded",
    "connecting",
    "connected",
    "failed",
)
# The column that records when a stage finished.
STAGE_TIMESTAMPS = {
    "extracted": "extracted_at",
    "chunked": "chunked_at",
    "embedded": "embedded_at",
    "connected": "connected_at",
    "failed": "failed_at",
}


def stage_change(stage: str, now: datetime, **fields: Any) -> dict[str, Any]:
    """The document's new values on moving to `stage`: a finished stage also stamps its time,
    and any stage but `failed` clears the last error."""
    if stage not in STAGES:
        raise ValueError(f"unknown stage {stage!r}")
    values: dict[str, Any] = {"stage": stage, **fields}
    if stage in STAGE_TIMESTAMPS:
        values[STAGE_TIMESTAMPS[stage]] = now
    if stage != "failed":
        values.update(error_class=None, error_message=None)
    return values
