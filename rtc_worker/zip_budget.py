"""ZIP-bomb limits enforced on the bytes actually read and written, never on declared sizes.

A ZIP's central directory declares each member's compressed and uncompressed sizes, and
an attacker writes it: a member can declare a compressed size larger than the archive
itself (so its declared ratio looks modest) while its real deflate stream expands a
thousand times. Checks on declared sizes can only refuse early; the limits are enforced
here, while extracting, on what really happens:

* the bytes each member really produced, and their running total
  (:attr:`ZipLimits.max_total_bytes`);
* the ratio of those bytes to the archive bytes really read for the member (counted by
  :class:`CountingReader`, which the ZIP reader reads through), and of the total to the
  archive's real size on disk (:attr:`ZipLimits.max_ratio`): whatever the headers say,
  extraction never writes more than ``max_ratio`` times the archive's size;
* the members really extracted (:attr:`ZipLimits.max_members`).

Extraction stops at the first byte over a cap (the caller removes what it wrote), so
the disk used is bounded by the caps plus one chunk.

Sources: zipfile's own warning about decompression bombs; David Fifield, "A better zip
bomb" (overlapping members, understated sizes).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import BinaryIO

__all__ = [
    "DEFAULT_ZIP_LIMITS",
    "ArchiveError",
    "ArchiveErrorKind",
    "CountingReader",
    "ExtractionBudget",
    "ZipLimits",
]


class ArchiveErrorKind(StrEnum):
    """Why an archive was refused (values are the plain strings used in logs)."""

    CORRUPTED = "corrupted"
    """Not a ZIP, truncated, bad CRC, unsupported compression, sizes that do not match."""
    UNSAFE_MEMBER = "unsafe_member"
    """A member name or type that could write outside the destination (zip slip), or
    duplicate/conflicting names."""
    TOO_LARGE = "too_large"
    """Over a :class:`ZipLimits` bound (size, ratio, member count): a possible ZIP bomb."""
    ENCRYPTED = "encrypted"
    """An encrypted member; the worker has no password."""
    CANCELLED = "cancelled"
    """The caller's stop event was set during extraction (nothing is wrong with the archive)."""


class ArchiveError(Exception):
    """The archive is unusable or unsafe.

    Attributes:
        kind: an :class:`ArchiveErrorKind` (compares equal to ``"corrupted"``,
            ``"unsafe_member"``, ``"too_large"`` or ``"encrypted"``).
        message: explanation for the worker's log (may name members; never sent to the
            client, which gets ``"File corrupted or invalid format: {path}"``).
    """

    def __init__(self, kind: ArchiveErrorKind, message: str) -> None:
        super().__init__(kind, message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return f"{self.kind.value}: {self.message}"


@dataclass(frozen=True)
class ZipLimits:
    """Bounds that protect against ZIP bombs.

    Attributes:
        max_total_bytes: largest total uncompressed size in bytes (declared, and really
            written while extracting).
        max_ratio: largest uncompressed/compressed size ratio, for the whole archive and
            for each member (really written bytes over archive bytes really read).
        max_members: largest number of entries (files and directories).
        ratio_min_bytes: ratios are only enforced for members (and archives) larger than
            this many uncompressed bytes; small, highly compressible files (text, sparse
            JSON) are harmless and commonly exceed any sensible ratio.
    """

    max_total_bytes: int = 20 * 10**9
    max_ratio: float = 200.0
    max_members: int = 100_000
    ratio_min_bytes: int = 1 << 20

    def __post_init__(self) -> None:
        if self.max_total_bytes < 0 or self.max_members < 0 or self.ratio_min_bytes < 0:
            raise ValueError("ZipLimits bounds must not be negative")
        if not self.max_ratio > 0:
            raise ValueError("ZipLimits.max_ratio must be positive")


DEFAULT_ZIP_LIMITS = ZipLimits()
"""The limits used when none are given."""


class CountingReader:
    """A seekable binary file that counts the bytes read through it.

    The ZIP reader reads the archive (headers and compressed data) through it, so
    :attr:`bytes_read` is what really left the disk, whatever the headers declare.

    Args:
        raw: the archive, opened for binary reading and seekable (not closed here).

    Attributes:
        bytes_read: bytes returned by :meth:`read` so far.
        size: the archive's size in bytes (its end, found by seeking).
    """

    def __init__(self, raw: BinaryIO) -> None:
        self._raw = raw
        self.bytes_read = 0
        here = raw.tell()
        self.size = raw.seek(0, 2)
        raw.seek(here)

    def read(self, n: int = -1) -> bytes:
        """Read up to ``n`` bytes (all with -1) and count them."""
        data = self._raw.read(n)
        self.bytes_read += len(data)
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        """Move the position (as :meth:`io.IOBase.seek`)."""
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        """The position, bytes from the start."""
        return self._raw.tell()

    def seekable(self) -> bool:
        """Always True (a ZIP is read from its end)."""
        return True


class ExtractionBudget:
    """The caps of :class:`ZipLimits`, applied to one extraction as it happens.

    Call :meth:`start_member` before each member and :meth:`spend` with each chunk
    *before* writing it; either raises once a cap is passed.

    Args:
        limits: the caps.
        reader: the counting reader the archive is read through.

    Attributes:
        members: members started so far.
        written: bytes produced so far, all members.
    """

    def __init__(self, limits: ZipLimits, reader: CountingReader) -> None:
        self.limits = limits
        self.reader = reader
        self.members = 0
        self.written = 0
        self._name = ""
        self._member_written = 0
        self._member_read_from = 0

    def start_member(self, name: str) -> None:
        """Count one more member (file or directory).

        Raises:
            ArchiveError: ``too_large``, over :attr:`ZipLimits.max_members`.
        """
        self.members += 1
        if self.members > self.limits.max_members:
            raise ArchiveError(
                ArchiveErrorKind.TOO_LARGE,
                f"more than {self.limits.max_members} members extracted",
            )
        self._name = name
        self._member_written = 0
        self._member_read_from = self.reader.bytes_read

    def spend(self, produced: int) -> None:
        """Account ``produced`` decompressed bytes of the current member.

        Raises:
            ArchiveError: ``too_large`` when the total passes ``max_total_bytes``, or
                (above ``ratio_min_bytes``) the member's bytes over the archive bytes
                read for it, or the total over the archive's size, pass ``max_ratio``.
        """
        limits = self.limits
        self.written += produced
        self._member_written += produced
        if self.written > limits.max_total_bytes:
            raise ArchiveError(
                ArchiveErrorKind.TOO_LARGE,
                f"extracted content exceeds {limits.max_total_bytes} bytes",
            )
        read = max(self.reader.bytes_read - self._member_read_from, 1)
        if self._member_written > limits.ratio_min_bytes and (
            self._member_written / read > limits.max_ratio
        ):
            raise ArchiveError(
                ArchiveErrorKind.TOO_LARGE,
                f"member {self._name!r} expanded {read} bytes read into more than "
                f"{self._member_written} bytes, over the limit of {limits.max_ratio:g}x",
            )
        if self.written > limits.ratio_min_bytes and (
            self.written / max(self.reader.size, 1) > limits.max_ratio
        ):
            raise ArchiveError(
                ArchiveErrorKind.TOO_LARGE,
                f"archive of {self.reader.size} bytes expanded into more than "
                f"{self.written} bytes, over the limit of {limits.max_ratio:g}x",
            )
