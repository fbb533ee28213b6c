"""An edge a connection engine found: what one row of the `connections` table is made of."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Edge:
    source_chunk_id: str
    target_chunk_id: str
    strength: float
    metadata: Mapping[str, Any]
