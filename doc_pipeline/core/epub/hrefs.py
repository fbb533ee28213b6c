"""Resolving an href inside the book to a document path and fragment."""

from __future__ import annotations

import posixpath
from urllib.parse import unquote, urlsplit


def resolve_href(href: str, base_dir: str) -> tuple[str | None, str | None]:
    """(document path relative to the OPF dir, fragment); (None, None) for external links."""
    parts = urlsplit(href)
    if parts.scheme or parts.netloc:
        return None, None
    path = unquote(parts.path)
    doc = posixpath.normpath(posixpath.join(base_dir, path)) if path else None
    return doc, unquote(parts.fragment) or None
