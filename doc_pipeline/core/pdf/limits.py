"""Bounds on what one PDF may cost to read. Real books and papers stay far below every one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PdfLimits:
    max_pages: int = 10_000  # a 2,000-page reference book is big; 50,000 is an attack
    max_objects: int = 2_000_000  # indirect objects in the cross-reference table
    max_stream_bytes: int = 64 << 20  # any one stream the text layer needs, inflated
    max_inflated_bytes: int = 512 << 20  # all those streams together, inflated
