"""The blob store: files kept by URL in a local folder or any fsspec object store (s3://, gs://,
az://, ...), so that every process (CLI, daemon, run workers on other hosts) reads and writes
the same blobs.

Writes are whole or nothing: a local file is written to a temporary name, fsynced and renamed;
an object store makes an object visible whole on a single put (or a completed multipart
upload). A store that cannot be reached raises BlobStoreUnavailable (a ConnectionError, so it is
classified transient); any other refusal by an object store raises BlobStoreError, with one
line naming the object. A missing object is FileNotFoundError, for the caller to name. Errors
of a local folder pass unchanged (a full disk is a StorageWriteError, as before).
"""

from __future__ import annotations

import hashlib
import socket
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import BinaryIO

import fsspec
from fsspec.implementations.local import LocalFileSystem

from doc_pipeline.core.atomic_write import COPY_BLOCK, copy_atomically, write_atomically
from doc_pipeline.core.failures import KnownFailure

# Errors from these are the program's own (bugs), also when raised while the store is used.
_PROGRAM_MODULES = frozenset({"builtins", "json", "doc_pipeline", "dagster", "dagster_shared"})


class BlobStoreError(KnownFailure):
    """The object store refused an operation (permissions, a missing bucket, bad credentials)."""


class BlobStoreUnavailable(BlobStoreError, ConnectionError):
    """The object store could not be reached: retrying later may succeed."""


def join(base: str, key: str) -> str:
    """`key` (a relative, /-separated name) under the store location `base`."""
    return f"{str(base).rstrip('/')}/{key}"


def is_local(url: str) -> bool:
    return isinstance(_fs(url)[0], LocalFileSystem)


def exists(url: str) -> bool:
    fs, path = _fs(url)
    with store_errors(url):
        return fs.exists(path)


def store_file(source: Path, url: str) -> None:
    """Copy a local file to `url`, whole or not at all."""
    fs, path = _fs(url)
    if isinstance(fs, LocalFileSystem):
        copy_atomically(source, Path(path))
        return
    with store_errors(url, missing_is_refusal=True):
        # Creates a missing bucket where the store allows it, as the IO manager does.
        fs.makedirs(str(PurePosixPath(path).parent), exist_ok=True)
        fs.put_file(str(source), path)


def store_bytes(url: str, payload: bytes) -> None:
    """Write `payload` as the file `url`, whole or not at all."""
    fs, path = _fs(url)
    if isinstance(fs, LocalFileSystem):
        write_atomically(Path(path), [payload])
        return
    with store_errors(url, missing_is_refusal=True):
        fs.pipe_file(path, payload)  # one put (or a multipart upload completed at its end)


def sha256_of(url: str) -> str:
    """The SHA-256 of the stored bytes, read block by block (never whole in memory)."""
    digest = hashlib.sha256()
    for block in read_blocks(url):
        digest.update(block)
    return digest.hexdigest()


def copy_to(url: str, target: BinaryIO) -> None:
    """Stream the stored bytes into `target` (errors writing it are the caller's own)."""
    for block in read_blocks(url):
        target.write(block)


def read_blocks(url: str) -> Iterator[bytes]:
    """The stored bytes, block by block; only opening and reading are the store's errors."""
    fs, path = _fs(url)
    with store_errors(url):
        handle = fs.open(path, "rb")
    with handle:
        while True:
            with store_errors(url):
                block = handle.read(COPY_BLOCK)
            if not block:
                return
            yield block


@contextmanager
def local_copy(url: str) -> Iterator[Path]:
    """The stored file as a local path, for readers that need one (EPUB and PDF libraries): the
    file itself in a local store, else a temporary copy that is removed afterwards."""
    fs, path = _fs(url)
    if isinstance(fs, LocalFileSystem):
        yield Path(path)
        return
    with tempfile.TemporaryDirectory(prefix="doc-pipeline-blob-") as folder:
        local = Path(folder) / PurePosixPath(path).name
        with store_errors(url):
            fs.get_file(path, str(local))
        yield local


@contextmanager
def store_errors(url: str, *, missing_is_refusal: bool = False) -> Iterator[None]:
    """Raise an object store's failures as BlobStoreUnavailable or BlobStoreError. A missing
    object stays FileNotFoundError, unless it can only mean a missing bucket or prefix (a
    write). A local folder's errors pass unchanged."""
    try:
        yield
    except (BlobStoreError, KeyboardInterrupt):
        raise
    except FileNotFoundError as error:
        if not missing_is_refusal or is_local(url):
            raise
        raise BlobStoreError(f"blob store refused {url}: {_reason(error)}") from error
    except Exception as error:
        if is_local(url):
            raise
        if _unreachable(error):
            raise BlobStoreUnavailable(
                f"blob store unreachable for {url}: {_reason(error)}"
            ) from error
        if not _from_the_store(error):
            raise  # a bug around the store (its trace is worth showing)
        raise BlobStoreError(f"blob store refused {url}: {_reason(error)}") from error


def _fs(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    try:
        return fsspec.core.url_to_fs(str(url))
    except (ImportError, ValueError) as error:  # an unknown protocol, or its package missing
        raise BlobStoreError(f"cannot open the blob store at {url}: {_reason(error)}") from error


def _unreachable(error: BaseException) -> bool:
    """A connection that failed or timed out, anywhere in what the error wraps or interrupted
    (SDKs raise their own classes, e.g. botocore's EndpointConnectionError, around the OS's)."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [error]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if any("Connect" in c.__name__ or "Timeout" in c.__name__ for c in type(current).__mro__):
            return True
        todo += [current.__cause__, current.__context__]
    return False


def _from_the_store(error: BaseException) -> bool:
    """An error of the store or of its SDK (s3fs turns most S3 errors into OSErrors; botocore,
    gcsfs, adlfs raise their own), not a Python or Dagster error of the code around it."""
    if isinstance(error, OSError):
        return True
    return type(error).__module__.partition(".")[0] not in _PROGRAM_MODULES


def _reason(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())
