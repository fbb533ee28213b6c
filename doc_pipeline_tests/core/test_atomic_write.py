"""Files of the blob store are written all or nothing (core/atomic_write.py).

The real refusal by the kernel is in test_disk_full.py; here failures are injected at each
step of a write to check that no temporary file is left and the old file is kept."""

from __future__ import annotations

import errno
import os

import pytest

from doc_pipeline.core import atomic_write
from doc_pipeline.core.atomic_write import StorageWriteError, copy_atomically, write_atomically


def _files(directory) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_a_write_replaces_the_file_whole(tmp_path):
    target = tmp_path / "out" / "a.json"
    write_atomically(target, [b"one", b"two"])
    write_atomically(target, [b"three"])
    assert target.read_bytes() == b"three"
    assert _files(target.parent) == ["a.json"]


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


class _FullDisk:
    """A file on a disk that fills up: the first bytes of a write land, then ENOSPC."""

    def __init__(self, path, mode):
        self._file = open(path, mode)  # noqa: SIM115 (closed by close())

    def write(self, data: bytes) -> int:
        self._file.write(data[:3])
        _no_space()

    def __getattr__(self, name):
        return getattr(self._file, name)


@pytest.mark.parametrize("step", ["write", "fsync", "replace"])
def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary_file(
    tmp_path, monkeypatch, step
):
    target = tmp_path / "a.json"
    target.write_bytes(b"old")
    if step == "write":
        monkeypatch.setattr(atomic_write, "open", _FullDisk, raising=False)
    else:
        monkeypatch.setattr(atomic_write.os, step, _no_space)
    with pytest.raises(StorageWriteError) as raised:
        write_atomically(target, [b"new content"])
    monkeypatch.undo()
    assert str(raised.value) == f"could not write {target}: No space left on device"
    assert raised.value.errno == errno.ENOSPC
    assert target.read_bytes() == b"old"
    assert _files(tmp_path) == ["a.json"]


def test_a_read_error_of_the_source_is_not_a_storage_error(tmp_path):
    def blocks():
        yield b"part"
        raise OSError(errno.EIO, "Input/output error")

    target = tmp_path / "copy.epub"
    with pytest.raises(OSError) as raised:
        write_atomically(target, blocks())
    assert not isinstance(raised.value, StorageWriteError)
    assert _files(tmp_path) == []


def test_copy_atomically_copies_and_a_missing_source_is_reported_as_such(tmp_path):
    source = tmp_path / "book.epub"
    source.write_bytes(os.urandom(3 * atomic_write.COPY_BLOCK + 7))
    copy_atomically(source, tmp_path / "store" / "copy.epub")
    assert (tmp_path / "store" / "copy.epub").read_bytes() == source.read_bytes()
    with pytest.raises(FileNotFoundError):
        copy_atomically(tmp_path / "missing.epub", tmp_path / "store" / "other.epub")
    assert _files(tmp_path / "store") == ["copy.epub"]
