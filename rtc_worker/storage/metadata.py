"""File metadata: size, SHA-256, MIME type and creation time, computed in one streaming pass.

The same numbers are computed by whoever holds the bytes: a receiver as chunks arrive
(:class:`MetadataBuilder`), a sender or the storage service from a file on disk
(:func:`file_metadata`). The receiver answers with the SHA-256 it computed and the sender
compares (source: magic-wormhole ``cli/cmd_receive.py``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import magic
from loguru import logger

__all__ = [
    "MIME_SNIFF_BYTES",
    "FileMetadata",
    "MetadataBuilder",
    "detect_mime",
    "file_metadata",
    "format_timestamp",
    "sha256_file",
]

MIME_SNIFF_BYTES = 8192
"""How many leading bytes are kept for MIME detection. libmagic needs at least the first
2 KiB of a file to recognise most formats; 8 KiB also covers formats whose signature sits
further in (e.g. tar at offset 257, ISO images, some container formats)."""

_FALLBACK_MIME = "application/octet-stream"


def format_timestamp(moment: datetime) -> str:
    """Format ``moment`` as ISO 8601 UTC with second precision, e.g. ``2026-11-21T01:02:03Z``.

    A naive datetime is taken to be UTC already.
    """
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


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
    builders keep); with fewer bytes some formats are misdetected. Empty content gives
    whatever libmagic says for it, ``"application/x-empty"``. If libmagic fails, the
    result is ``"application/octet-stream"`` (never raises).
    """
    try:
        mime = magic.from_buffer(bytes(head), mime=True)
    except Exception as exc:  # libmagic raises MagicException and occasionally others
        logger.warning("MIME detection failed: {error}", error=exc)
        return _FALLBACK_MIME
    return mime or _FALLBACK_MIME


class MetadataBuilder:
    """Compute :class:`FileMetadata` incrementally as the bytes of a file arrive in order.

    Hashes everything, counts the size and keeps only the first :data:`MIME_SNIFF_BYTES`
    for MIME detection, so memory stays bounded whatever the file size.

    Example::

        builder = MetadataBuilder()
        for chunk in chunks:
            builder.update(chunk)
        meta = builder.finish()
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

    def update(self, chunk: bytes | bytearray | memoryview) -> None:
        """Add the next chunk of the content.

        Raises:
            RuntimeError: :meth:`finish` was already called.
        """
        if self._finished:
            raise RuntimeError("MetadataBuilder.update() after finish()")
        view = memoryview(chunk).cast("B")
        self._hash.update(view)
        self._size += len(view)
        missing = MIME_SNIFF_BYTES - len(self._head)
        if missing > 0:
            self._head += view[:missing]

    def hexdigest(self) -> str:
        """SHA-256 (lowercase hex) of the bytes seen so far."""
        return self._hash.hexdigest()

    def finish(self, created_at: datetime | None = None) -> FileMetadata:
        """Return the metadata of everything passed to :meth:`update`.

        Args:
            created_at: the time to record; now when omitted. Naive datetimes are UTC.
        """
        self._finished = True
        return FileMetadata(
            size=self._size,
            sha256=self._hash.hexdigest(),
            mime_type=detect_mime(bytes(self._head)),
            created_at=format_timestamp(created_at or datetime.now(UTC)),
        )


def _iter_file(path: Path, chunk_size: int) -> Iterator[memoryview]:
    """Yield views of successive chunks; each view is only valid until the next one."""
    if chunk_size <= 0:
        raise ValueError("chunk_size must be positive")
    buffer = bytearray(chunk_size)
    view = memoryview(buffer)
    with open(path, "rb") as file:
        while n := file.readinto(buffer):
            yield view[:n]


def sha256_file(path: Path, chunk_size: int = 1 << 20) -> str:
    """SHA-256 (lowercase hex) of the file at ``path``, read in chunks of ``chunk_size`` bytes.

    Raises:
        OSError: the file cannot be read.
        ValueError: ``chunk_size`` is not positive.
    """
    digest = hashlib.sha256()
    for chunk in _iter_file(path, chunk_size):
        digest.update(chunk)
    return digest.hexdigest()


def file_metadata(
    path: Path, chunk_size: int = 1 << 20, *, created_at: datetime | None = None
) -> FileMetadata:
    """Metadata of the file at ``path`` in one streaming pass (never whole in memory).

    Args:
        path: an absolute path the caller has already validated.
        chunk_size: read size in bytes.
        created_at: the time to record; now when omitted.

    Raises:
        OSError: the file cannot be read.
        ValueError: ``chunk_size`` is not positive.
    """
    builder = MetadataBuilder()
    for chunk in _iter_file(path, chunk_size):
        builder.update(chunk)
    return builder.finish(created_at)
