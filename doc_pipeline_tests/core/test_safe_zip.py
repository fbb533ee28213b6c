"""The bounded ZIP reader on archives built to break it (no Dagster, no corpus needed)."""

from __future__ import annotations

import stat
import struct
import zipfile
from pathlib import Path

import pytest

from doc_pipeline.core.books import InvalidBookError
from doc_pipeline.core.epub.safe_zip import ReaderLimits, SafeZip, UnsafeMemberError


def _archive(path: Path, members: dict[str, bytes], **infos: zipfile.ZipInfo) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for info in infos.values():
            zf.writestr(info, b"/tmp")
    return path


DEFAULT_LIMITS = ReaderLimits()


def _open(path: Path, limits: ReaderLimits = DEFAULT_LIMITS) -> SafeZip:
    return SafeZip(zipfile.ZipFile(path), "book.epub", limits)


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("../../etc/passwd", "'..' segment"),
        ("OEBPS/../../x.html", "'..' segment"),
        ("/tmp/x.html", "absolute path"),
        ("C:/x.html", "absolute path"),
        ("OEBPS\\..\\x.html", "backslash"),
    ],
)
def test_unsafe_names_are_listed_and_never_read(tmp_path: Path, name: str, reason: str) -> None:
    archive = _open(_archive(tmp_path / "a.zip", {"ok.txt": b"fine", name: b"evil"}))
    assert reason in archive.unsafe[name]
    assert "ok.txt" not in archive.unsafe
    with pytest.raises(UnsafeMemberError):
        archive.read(name)
    assert archive.read("ok.txt") == b"fine"


def test_paths_that_escape_are_refused_before_any_lookup(tmp_path: Path) -> None:
    archive = _open(_archive(tmp_path / "a.zip", {"ok.txt": b"fine"}))
    with pytest.raises(UnsafeMemberError, match="'..' segment"):
        archive.read("../not-in-the-archive.txt")


def test_symlinks_and_what_lies_beneath_them_are_unsafe(tmp_path: Path) -> None:
    link = zipfile.ZipInfo("OEBPS/tmp-link")
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    path = _archive(tmp_path / "a.zip", {"OEBPS/tmp-link/x.txt": b"x"}, link=link)
    archive = _open(path)
    assert archive.unsafe == {
        "OEBPS/tmp-link": "symbolic link",
        "OEBPS/tmp-link/x.txt": "inside a symbolic link",
    }


def test_too_many_members(tmp_path: Path) -> None:
    path = _archive(tmp_path / "a.zip", {f"f{n}": b"" for n in range(11)})
    with pytest.raises(InvalidBookError, match=r"^book\.epub: archive has 11 members, over"):
        _open(path, ReaderLimits(max_members=10))


def test_a_member_over_the_size_limit_is_named_before_inflating(tmp_path: Path) -> None:
    path = _archive(tmp_path / "a.zip", {"small": b"x", "OEBPS/big.html": b" " * 5000})
    with pytest.raises(InvalidBookError, match=r"'OEBPS/big.html' inflates to 5,000 bytes"):
        _open(path, ReaderLimits(max_member_bytes=4096))


def test_a_compression_ratio_over_the_limit_is_refused(tmp_path: Path) -> None:
    path = _archive(tmp_path / "a.zip", {"bomb.html": b" " * 200_000})
    with pytest.raises(InvalidBookError, match=r"'bomb.html' inflates [\d,]+:1 .*\(a zip bomb"):
        _open(path, ReaderLimits(ratio_floor_bytes=100_000))


def test_the_archive_total_names_its_largest_member(tmp_path: Path) -> None:
    path = _archive(tmp_path / "a.zip", {"a": b"a" * 3000, "b": b"b" * 6000})
    with pytest.raises(InvalidBookError, match=r"9,000 uncompressed bytes .* 'b': 6,000 bytes"):
        _open(path, ReaderLimits(max_total_bytes=8000))


def test_the_total_is_enforced_while_reading_and_rereads_count_once(tmp_path: Path) -> None:
    path = _archive(tmp_path / "a.zip", {"a": b"a" * 3000, "b": b"b" * 3000})
    archive = _open(path, ReaderLimits(max_total_bytes=6000))
    assert archive.read("a") == archive.read("a") == b"a" * 3000
    assert archive.read("b") == b"b" * 3000
    assert archive.inflated == 6000


def test_a_header_that_understates_the_size_is_caught(tmp_path: Path) -> None:
    """Headers say 1,000 bytes; the deflate stream holds 1 MB. zipfile stops at the declared
    size, so the reader hands out at most what the headers promise and then fails the CRC."""
    path = _archive(tmp_path / "a.zip", {"lie.html": b"x" * 1_000_000})
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 22, 1000)  # local file header: uncompressed size
    central = raw.rfind(b"PK\x01\x02")
    struct.pack_into("<I", raw, central + 24, 1000)  # central directory: uncompressed size
    path.write_bytes(raw)
    archive = _open(path)
    with pytest.raises(InvalidBookError, match=r"^book\.epub: member 'lie.html' is corrupt"):
        archive.read("lie.html")
    assert archive.inflated == 0


def test_an_encrypted_member_is_named(tmp_path: Path) -> None:
    path = _archive(tmp_path / "a.zip", {"mimetype": b"application/epub+zip"})
    raw = bytearray(path.read_bytes())
    raw[raw.rfind(b"PK\x01\x02") + 8] |= 0x1  # central directory: "encrypted" flag
    path.write_bytes(raw)
    with pytest.raises(InvalidBookError, match=r"member 'mimetype' is encrypted"):
        _open(path).read("mimetype")
