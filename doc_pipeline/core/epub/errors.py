"""The one exception the converter raises for a file that is not a readable book."""

from __future__ import annotations


class InvalidBookError(Exception):
    """The file is not a readable book. str(err) names the file and the problem, e.g.
    "bad-truncated-zip.epub: not a valid ZIP archive (truncated or corrupt: no central
    directory)"."""
