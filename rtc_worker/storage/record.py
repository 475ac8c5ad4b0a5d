"""A partial file's durable record: its sidecar and the byte ranges it holds.

The sidecar ``<key>.json`` beside ``<key>.part`` holds ``{"sha256", "size", "name",
"created_at", "updated_at"}`` and, for a partial written by ranges, ``"ranges"``:
``[[start, end], ...]`` (bytes, end excluded), recorded only once the bytes are durable.
Without ``"ranges"`` (every sidecar written before ranges existed, and every partial
written in order) the file's length is the prefix held: the file is always truncated
back to good data, so its length can be trusted.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from loguru import logger

from rtc_worker.storage.metadata import ContentHasher, format_timestamp, hash_file

__all__ = [
    "PartialHome",
    "Range",
    "Resume",
    "consistent",
    "covered",
    "merge_range",
    "now_text",
    "prefix_ranges",
    "ranges_of",
    "resume",
]

Range = tuple[int, int]
"""A byte range ``(start, end)``, end excluded."""


def now_text() -> str:
    """Now as ISO 8601 UTC with second precision."""
    return format_timestamp(datetime.now(UTC))


def merge_range(ranges: list[Range], start: int, end: int) -> list[Range]:
    """``ranges`` (sorted, disjoint) with ``[start, end)`` added; touching ranges join."""
    if end <= start:
        return list(ranges)
    merged: list[Range] = []
    for low, high in sorted([*ranges, (start, end)]):
        if merged and low <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], high))
        else:
            merged.append((low, high))
    return merged


def covered(ranges: list[Range], start: int, end: int) -> bool:
    """Whether ``[start, end)`` lies within one of the (merged) ``ranges``."""
    return end <= start or any(low <= start and end <= high for low, high in ranges)


def prefix_ranges(length: int) -> list[Range]:
    """The ranges of a partial written in order: ``[(0, length)]`` (``[]`` when empty)."""
    return [(0, length)] if length else []


def ranges_of(meta: dict[str, Any], length: int) -> list[Range]:
    """The sidecar's ranges, clipped to the file's ``length`` bytes (junk ignored)."""
    ranges: list[Range] = []
    raw = meta.get("ranges")
    for pair in raw if isinstance(raw, list) else []:
        if (
            isinstance(pair, list)
            and len(pair) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in pair)
        ):
            ranges = merge_range(ranges, max(pair[0], 0), min(pair[1], length))
    return ranges


def consistent(meta: dict[str, Any] | None, sha256: str | None, size: int) -> bool:
    """Whether a sidecar (``None`` when missing) agrees with the digest and size.

    A missing sidecar is accepted: the partial was created just before its sidecar when
    the process stopped in between; the final digest check still protects the content.
    """
    if meta is None:
        return True
    recorded = meta.get("size")
    return (
        meta.get("sha256") == sha256
        and isinstance(recorded, int)
        and not isinstance(recorded, bool)
        and recorded == size
    )


@dataclass(slots=True)
class Resume:
    """Where an opened partial stands.

    Attributes:
        hasher: covers the in-order prefix held (empty for a partial by ranges).
        held: bytes of the in-order prefix (0 for a partial by ranges).
        ranges: the recorded ranges, or ``None`` for a partial written in order.
        sidecar: the sidecar to write now.
    """

    hasher: ContentHasher
    held: int
    ranges: list[Range] | None
    sidecar: dict[str, Any]


def resume(
    fd: int,
    meta: dict[str, Any] | None,
    *,
    key: str,
    sha256: str | None,
    size: int,
    name: str,
    by_ranges: bool = False,
) -> Resume:
    """Check a locked partial ``fd`` against its sidecar ``meta`` and say where it stands.

    An inconsistent partial (longer than ``size``, or a sidecar with another size or
    digest, or unreadable) is truncated to 0. In order, the prefix is re-hashed from
    disk in 1 MiB reads (and truncated if it shrank meanwhile); ``created_at`` is kept.
    By ranges (``by_ranges``, or a sidecar with ``"ranges"``) only the recorded ranges
    count, never the file's length.

    Raises:
        OSError: the file cannot be read or truncated.
    """
    held = os.fstat(fd).st_size
    created_at = now_text()
    if held > size or not consistent(meta, sha256, size):
        logger.info("restarting inconsistent partial {} ({} bytes held)", key, held)
        os.ftruncate(fd, 0)
        held, meta = 0, None
    elif meta and isinstance(meta.get("created_at"), str):
        created_at = meta["created_at"]
    hasher = ContentHasher()
    ranges: list[Range] | None = None
    if by_ranges or (meta and "ranges" in meta):
        ranges, held = (ranges_of(meta, held) if meta and "ranges" in meta else []), 0
    elif held:
        hash_file(fd, hasher=hasher, end=held)
        if hasher.size < held:
            os.ftruncate(fd, hasher.size)
            held = hasher.size
    sidecar: dict[str, Any] = {
        "sha256": sha256,
        "size": size,
        "name": name,
        "created_at": created_at,
        "updated_at": now_text(),
    }
    if ranges is not None:
        sidecar["ranges"] = [list(pair) for pair in ranges]
    return Resume(hasher, held, ranges, sidecar)


class PartialHome(Protocol):
    """What a partial file needs from its blob store."""

    def write_sidecar(self, key: str, payload: dict[str, Any]) -> None:
        """Write the sidecar of ``key`` atomically."""

    def remove_sidecar(self, key: str) -> None:
        """Remove the sidecar of ``key`` (missing is fine)."""

    def remove_part(self, key: str) -> None:
        """Remove the partial file of ``key`` and its sidecar (missing is fine)."""

    def remove_partial_if_idle(self, key: str) -> bool:
        """Remove the partial of ``key`` unless someone holds it."""

    def publish_object(self, fd: int, key: str, sha256: str, label: str) -> None:
        """Move the verified partial ``fd`` of ``key`` into the store as ``sha256``."""
