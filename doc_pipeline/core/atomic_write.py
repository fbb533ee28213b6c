"""Writing a file so that it is either complete or absent, never half written.

The blob store keeps registered sources and the assets' outputs as files that later runs load
again (a retry resumes from them). A file cut short by a full disk, a size limit or a crash
must never be read back as if it were whole, so every write goes to a temporary name in the
same directory, is flushed to disk, and only then renamed over the final name (a rename in one
directory is atomic). A write that fails removes its temporary file and says which file it was
and why; the final name keeps what it had before.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path

COPY_BLOCK = 1024 * 1024


class StorageWriteError(OSError):
    """A file of the blob store could not be written (the disk is full, a quota or size limit
    is reached, ...). Keeps the errno of the cause, so that it is classified by it."""

    def __init__(self, path: Path, cause: OSError):
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.path = path

    def __str__(self) -> str:
        return f"could not write {self.path}: {self.strerror}"


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    try:
        yield
    except StorageWriteError:
        raise
    except OSError as error:
        raise StorageWriteError(path, error) from error


def write_atomically(path: Path, blocks: Iterable[bytes]) -> None:
    """Write the blocks as the file `path`, all or nothing. Errors raised while producing a
    block (reading a source) pass through unchanged; errors writing raise StorageWriteError."""
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    try:
        with _writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            handle = open(temporary, "wb")  # noqa: SIM115 (closed below, also on errors)
        try:
            for block in blocks:
                with _writing(path):
                    handle.write(block)
            with _writing(path):
                handle.flush()
                os.fsync(handle.fileno())  # on disk before the rename makes it visible
        finally:
            with contextlib.suppress(OSError):  # after a failed write, closing fails too
                handle.close()
        with _writing(path):
            os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink(missing_ok=True)
        raise
    _sync_directory(path.parent)


def copy_atomically(source: Path, target: Path) -> None:
    """Copy a file, all or nothing (see write_atomically); errors reading the source are
    raised as they are."""
    with open(source, "rb") as reader:
        write_atomically(target, iter(lambda: reader.read(COPY_BLOCK), b""))


def _sync_directory(directory: Path) -> None:
    # Makes the rename itself durable. Not every file system lets a directory be fsynced, and
    # the file is complete either way, so this is best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
