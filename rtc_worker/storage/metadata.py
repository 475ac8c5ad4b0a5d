"""File metadata and the one hasher: size, SHA-256 and MIME type in one streaming pass.

:class:`ContentHasher` is the only place in the project that hashes file content: the
channel receiver and the storage service feed it bytes as they arrive (through a
partial file), the worker's manifest job, a sender and the storage client hash files
with :func:`hash_file`. Whoever holds the bytes computes the same numbers; the receiver
answers with the SHA-256 it computed and the sender compares (source: magic-wormhole
``cli/cmd_receive.py``).
"""

from __future__ import annotations

import hashlib
import os
import threading
from dataclasses import dataclass
from datetime import UTC, datetime

import magic
from loguru import logger

__all__ = [
    "MIME_SNIFF_BYTES",
    "READ_BLOCK_BYTES",
    "ContentHasher",
    "FileMetadata",
    "detect_mime",
    "format_timestamp",
    "hash_file",
]

MIME_SNIFF_BYTES = 8192
"""How many leading bytes are kept for MIME detection. libmagic needs at least the first
2 KiB of a file to recognise most formats; 8 KiB also covers formats whose signature sits
further in (e.g. tar at offset 257, ISO images, some container formats)."""

READ_BLOCK_BYTES = 1 << 20
"""Read size of :func:`hash_file`, bytes (1 MiB)."""

_FALLBACK_MIME = "application/octet-stream"


def format_timestamp(moment: datetime) -> str:
    """Format ``moment`` as ISO 8601 UTC with second precision, e.g. ``2026-11-21T01:02:03Z``.

    A naive datetime is taken to be UTC already.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_timestamp(text: str) -> datetime:
    """The aware UTC datetime of a :func:`format_timestamp` string.

    Raises:
        ValueError: ``text`` is not ``YYYY-MM-DDTHH:MM:SSZ``.
    """
    return datetime.strptime(text, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)


@dataclass(frozen=True, slots=True)
class FileMetadata:
    """What the worker and the storage service record about a file.

    Attributes:
        size: length in bytes.
        sha256: SHA-256 of the content, lowercase hex (64 characters).
        mime_type: MIME type detected by libmagic from the first bytes (e.g. ``image/png``).
        created_at: when the metadata was computed (the file was stored), ISO 8601 UTC
            with second precision, e.g. ``"2026-11-21T01:02:03Z"``.
    """

    size: int
    sha256: str
    mime_type: str
    created_at: str

    def as_dict(self) -> dict[str, int | str]:
        """The fields as a JSON-ready dict with the same keys."""
        return {
            "size": self.size,
            "sha256": self.sha256,
            "mime_type": self.mime_type,
            "created_at": self.created_at,
        }


def detect_mime(head: bytes) -> str:
    """MIME type of content whose first bytes are ``head``, using libmagic.

    Pass at least the first 2 KiB of the file (:data:`MIME_SNIFF_BYTES` is what the
    hasher keeps); with fewer bytes some formats are misdetected. Empty content gives
    whatever libmagic says for it, ``"application/x-empty"``. If libmagic fails, the
    result is ``"application/octet-stream"`` (never raises).
    """
    try:
        mime = magic.from_buffer(bytes(head), mime=True)
    except Exception as exc:  # libmagic raises MagicException and occasionally others
        logger.warning("MIME detection failed: {error}", error=exc)
        return _FALLBACK_MIME
    return mime or _FALLBACK_MIME


class ContentHasher:
    """SHA-256, size and the first :data:`MIME_SNIFF_BYTES` of content fed in order.

    Memory stays bounded whatever the size. Not safe for concurrent use; one writer
    (a thread) at a time.

    Example::

        hasher = ContentHasher()
        for chunk in chunks:
            hasher.update(chunk)
        meta = hasher.finish()
    """

    __slots__ = ("_finished", "_hash", "_head", "_size")

    def __init__(self) -> None:
        self._hash = hashlib.sha256()
        self._head = bytearray()
        self._size = 0
        self._finished = False

    @property
    def size(self) -> int:
        """Bytes seen so far."""
        return self._size

    @property
    def head(self) -> bytes:
        """The first (up to :data:`MIME_SNIFF_BYTES`) bytes seen."""
        return bytes(self._head)

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add the next chunk of the content.

        Raises:
            RuntimeError: :meth:`finish` was already called.
        """
        if self._finished:
            raise RuntimeError("ContentHasher.update() after finish()")
        view = memoryview(chunk).cast("B")
        self._hash.update(view)
        self._size += len(view)
        missing = MIME_SNIFF_BYTES - len(self._head)
        if missing > 0:
            self._head += view[:missing]

    def hexdigest(self) -> str:
        """SHA-256 (lowercase hex) of the bytes seen so far."""
        return self._hash.hexdigest()

    def copy(self) -> ContentHasher:
        """An independent hasher in the same state."""
        twin = ContentHasher.__new__(ContentHasher)
        twin._hash = self._hash.copy()
        twin._head = bytearray(self._head)
        twin._size = self._size
        twin._finished = self._finished
        return twin

    def finish(self, created_at: datetime | None = None, *, mime: bool = True) -> FileMetadata:
        """The metadata of everything passed to :meth:`update`; no update afterwards.

        Args:
            created_at: the time to record; now when omitted. Naive datetimes are UTC.
            mime: detect the MIME type (loads libmagic); without it ``mime_type`` is "".
        """
        self._finished = True
        return FileMetadata(
            size=self._size,
            sha256=self._hash.hexdigest(),
            mime_type=detect_mime(bytes(self._head)) if mime else "",
            created_at=format_timestamp(created_at or datetime.now(UTC)),
        )


def hash_file(
    source: int | str | os.PathLike[str],
    *,
    hasher: ContentHasher | None = None,
    start: int = 0,
    end: int | None = None,
    stop: threading.Event | None = None,
    block_bytes: int = READ_BLOCK_BYTES,
) -> ContentHasher:
    """Feed bytes ``[start, end)`` of a file to a hasher, ``block_bytes`` at a time.

    Args:
        source: an open descriptor (read with ``pread``: its offset does not move and
            it is not closed) or a path (opened for reading and closed again).
        hasher: the hasher to continue (a fresh one when omitted).
        start: first byte to read.
        end: byte to stop before; the end of the file when omitted.
        stop: when set (from another thread), reading stops within one block.
        block_bytes: read size, bytes.

    Returns:
        The hasher. It covers less than asked when the file is shorter or ``stop`` was
        set: compare ``hasher.size`` with what you expected.

    Raises:
        OSError: the file cannot be opened or read.
        ValueError: ``block_bytes`` is not positive, or ``start`` is negative.
    """
    if block_bytes <= 0 or start < 0:
        raise ValueError("block_bytes must be positive and start >= 0")
    hasher = hasher if hasher is not None else ContentHasher()
    if isinstance(source, int):
        _hash_fd(source, hasher, start, end, stop, block_bytes)
        return hasher
    fd = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
    try:
        _hash_fd(fd, hasher, start, end, stop, block_bytes)
    finally:
        os.close(fd)
    return hasher


def _hash_fd(
    fd: int,
    hasher: ContentHasher,
    start: int,
    end: int | None,
    stop: threading.Event | None,
    block_bytes: int,
) -> None:
    buffer = bytearray(block_bytes if end is None else max(1, min(block_bytes, end - start)))
    with memoryview(buffer) as view:
        position = start
        while end is None or position < end:
            if stop is not None and stop.is_set():
                return
            want = len(view) if end is None else min(len(view), end - position)
            n = os.preadv(fd, [view[:want]], position)
            if n == 0:
                return
            hasher.update(view[:n])
            position += n
