"""Reading a ZIP archive that may be hostile: bounded inflation and untrusted member names.

Nothing is ever extracted to disk. Every size limit is checked against the central directory
before anything is inflated, then enforced again while streaming, because headers can lie.
"""

from __future__ import annotations

import re
import stat
import zipfile
import zlib
from dataclasses import dataclass

from doc_pipeline.core.books import InvalidBookError

_READ_BLOCK = 1 << 16
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")


@dataclass(frozen=True)
class ReaderLimits:
    """Bounds on what one book may cost to read. Real books stay far below every one."""

    max_members: int = 10_000  # entries in the archive
    max_total_bytes: int = 512 << 20  # all members together, inflated
    max_member_bytes: int = 64 << 20  # any one member (an image, a chapter), inflated
    max_chapter_bytes: int = 16 << 20  # one spine (X)HTML document
    max_ratio: int = 200  # inflated / compressed (text ~5:1, a repeated chapter 136:1) ...
    ratio_floor_bytes: int = 1 << 20  # ... for members that inflate past this


def unsafe_reason(info: zipfile.ZipInfo) -> str | None:
    """Why a member cannot be trusted as a file inside the book, or None."""
    if stat.S_ISLNK(info.external_attr >> 16):
        return "symbolic link"
    return unsafe_name_reason(info.filename)


def unsafe_name_reason(name: str) -> str | None:
    """Why a path cannot be trusted as a path inside the book, or None."""
    if "\x00" in name:
        return "NUL byte in the name"
    if name.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(name):
        return "absolute path"
    if "\\" in name:
        return "backslash in the name"
    if ".." in name.split("/"):
        return "'..' segment escapes the book"
    return None


class SafeZip:
    """A zipfile.ZipFile whose reads are bounded by ReaderLimits and refuse unsafe names.

    `book` is the file name used in error messages (the name it was uploaded under)."""

    def __init__(self, zf: zipfile.ZipFile, book: str, limits: ReaderLimits) -> None:
        self.zf, self.book, self.limits = zf, book, limits
        self.inflated = 0  # bytes handed out so far, for the archive-wide limit
        self.unsafe: dict[str, str] = {}  # member name -> reason, for every unsafe member
        self._counted: dict[str, int] = {}  # member -> bytes it added to `inflated`
        self._check_directory()

    def _check_directory(self) -> None:
        infos = self.zf.infolist()
        limits = self.limits
        if len(infos) > limits.max_members:
            raise InvalidBookError(
                f"{self.book}: archive has {len(infos):,} members, "
                f"over the limit of {limits.max_members:,}"
            )
        links = []
        for info in infos:
            reason = unsafe_reason(info)
            if reason:
                self.unsafe[info.filename] = reason
                if reason == "symbolic link":
                    links.append(info.filename.rstrip("/") + "/")
            self._check_declared(info)
        for info in infos:  # members "inside" a symlinked folder are no safer than the link
            if info.filename not in self.unsafe and info.filename.startswith(tuple(links)):
                self.unsafe[info.filename] = "inside a symbolic link"
        declared = sum(info.file_size for info in infos)
        if declared > limits.max_total_bytes:
            largest = max(infos, key=lambda info: info.file_size)
            raise InvalidBookError(
                f"{self.book}: archive declares {declared:,} uncompressed bytes in total, over "
                f"the {limits.max_total_bytes:,}-byte limit (largest member "
                f"{largest.filename!r}: {largest.file_size:,} bytes)"
            )

    def _check_declared(self, info: zipfile.ZipInfo) -> None:
        limits = self.limits
        if info.file_size > limits.max_member_bytes:
            raise InvalidBookError(
                f"{self.book}: member {info.filename!r} inflates to {info.file_size:,} bytes, "
                f"over the {limits.max_member_bytes:,}-byte limit for one member"
                f"{self._ratio_note(info)}"
            )
        if info.file_size > limits.ratio_floor_bytes and self._ratio(info) > limits.max_ratio:
            raise InvalidBookError(
                f"{self.book}: member {info.filename!r} inflates {self._ratio(info):,.0f}:1 "
                f"({info.compress_size:,} to {info.file_size:,} bytes), over the "
                f"{limits.max_ratio}:1 compression limit (a zip bomb?)"
            )

    @staticmethod
    def _ratio(info: zipfile.ZipInfo) -> float:
        return info.file_size / max(info.compress_size, 1)

    def _ratio_note(self, info: zipfile.ZipInfo) -> str:
        ratio = self._ratio(info)
        return f"; compression ratio {ratio:,.0f}:1 (a zip bomb?)" if ratio > 20 else ""

    def read(self, name: str) -> bytes:
        """The member's bytes; KeyError if absent, UnsafeMemberError if its name is unsafe,
        InvalidBookError if inflating it breaks a limit (checked while streaming)."""
        reason = self.unsafe.get(name) or unsafe_name_reason(name)
        if reason:
            raise UnsafeMemberError(name, reason)
        info = self.zf.getinfo(name)
        if info.flag_bits & 0x1:
            raise InvalidBookError(f"{self.book}: member {name!r} is encrypted (needs a password)")
        counted = self.inflated - self._counted.get(name, 0)  # a re-read counts once
        budget = min(self.limits.max_member_bytes, self.limits.max_total_bytes - counted)
        data = bytearray()
        try:
            with self.zf.open(info) as stream:
                while block := stream.read(_READ_BLOCK):
                    data += block
                    if len(data) > budget:
                        raise InvalidBookError(
                            f"{self.book}: member {name!r} inflates past {budget:,} bytes "
                            f"although its header declares {info.file_size:,}"
                        )
        except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError) as exc:
            # A CRC mismatch is also how a header that understates the size shows up: zipfile
            # stops at the declared size.
            raise InvalidBookError(f"{self.book}: member {name!r} is corrupt ({exc})") from exc
        self.inflated = counted + len(data)
        self._counted[name] = len(data)
        return bytes(data)


class UnsafeMemberError(Exception):
    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name!r}: {reason}")
        self.name, self.reason = name, reason
