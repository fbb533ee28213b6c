"""Which files in the uploads location are ready to register, from two looks at the listing.

A file is ready when it was seen before with the same size and modification time and that time
is at least `settle` old: a file still being copied in changes between looks. Hidden files and
the temporary names that browsers, rsync and copy tools use while writing are never ready. The
state carried from look to look (the sensor's cursor) is what this module returns, as JSON-able
data; a file is reported ready once per (size, modification time), so a changed file is ready
again (a new version) and an unchanged one never again.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import PurePosixPath

# Names copy tools give a file while it is being written.
TEMPORARY_SUFFIXES = (".part", ".partial", ".tmp", ".crdownload", ".download", ".filepart")


@dataclass(frozen=True)
class ListedFile:
    path: str
    size: int
    modified: datetime | None  # None when the file system does not say


@dataclass(frozen=True)
class Look:
    ready: list[ListedFile]
    waiting: list[str]  # seen, not settled yet
    state: dict[str, list]  # path -> [size, modified ISO or None, "seen" | "done"]


def is_temporary(path: str) -> bool:
    name = PurePosixPath(path).name
    return name.startswith((".", "~")) or name.lower().endswith(TEMPORARY_SUFFIXES)


def look(
    listing: list[ListedFile], previous: dict[str, list], *, now: datetime, settle: timedelta
) -> Look:
    """Compare this listing with the previous look's state."""
    state: dict[str, list] = {}
    ready, waiting = [], []
    for file in sorted(listing, key=lambda f: f.path):
        if is_temporary(file.path):
            continue
        stamp = [file.size, file.modified.isoformat() if file.modified else None]
        before = previous.get(file.path)
        unchanged = before is not None and before[:2] == stamp
        if unchanged and before[2] == "done":
            state[file.path] = before
            continue
        settled = file.modified is None or now - file.modified >= settle
        if unchanged and settled:
            ready.append(file)
            state[file.path] = [*stamp, "done"]
        else:
            waiting.append(file.path)
            state[file.path] = [*stamp, "seen"]
    return Look(ready, waiting, state)
