"""Expiry of a blob store's partial files and temporary files (tus "expiration").

A partial that nobody touched for the store's TTL is abandoned: it and its sidecar go,
unless a writer holds it. Temporary files are left only by a crash while writing; they
go once they are :data:`STRAY_TEMP_AGE_S` old.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from contextlib import suppress

from loguru import logger

from rtc_worker.storage.atomic import is_temp_name
from rtc_worker.storage.resolver import DIR_FLAGS

__all__ = ["PART_SUFFIX", "SIDECAR_SUFFIX", "STRAY_TEMP_AGE_S", "expire", "remove_stray_temps"]

STRAY_TEMP_AGE_S = 60.0
"""A temporary file older than this many seconds is left over from a crash."""
PART_SUFFIX = ".part"
"""A partial file is ``<key>.part``..."""
SIDECAR_SUFFIX = ".json"
"""... and its sidecar ``<key>.json``."""

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")


def _mtime(entry: os.DirEntry[str]) -> float | None:
    try:
        return entry.stat(follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return None


def expire(
    partial_fd: int, cutoff: float, now: float, remove_if_idle: Callable[[str], bool]
) -> int:
    """Remove what is stale in the partials folder ``partial_fd``.

    A partial goes (through ``remove_if_idle(key)``, which leaves a held one alone) when
    neither it nor its sidecar was modified after ``cutoff``; a sidecar without a
    partial goes after ``cutoff`` too; temporary files (new ``.rtcw-*.tmp`` and the
    older ``.<name>.<hex>.tmp``) once older than ``now - STRAY_TEMP_AGE_S``.

    Args:
        partial_fd: the partials folder, opened for reading.
        cutoff: Unix time, seconds; older partials expire.
        now: the current Unix time, seconds.
        remove_if_idle: removes a partial by key unless held; says whether it did.

    Returns:
        How many partial files were removed.

    Raises:
        OSError: the folder cannot be read or an entry removed.
    """
    removed = 0
    with os.scandir(partial_fd) as it:
        entries = {entry.name: _mtime(entry) for entry in it}
    for name, mtime in entries.items():
        if mtime is None:
            continue
        if name.endswith(PART_SUFFIX):
            key = name[: -len(PART_SUFFIX)]
            touched = max(mtime, entries.get(key + SIDECAR_SUFFIX) or mtime)
            if touched <= cutoff and _KEY.fullmatch(key) and remove_if_idle(key):
                removed += 1
                logger.info("expired partial {}", key)
        elif name.startswith(".") and name.endswith(".tmp"):
            if mtime <= now - STRAY_TEMP_AGE_S:
                with suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=partial_fd)
        elif (
            name.endswith(SIDECAR_SUFFIX)
            and mtime <= cutoff
            and name[: -len(SIDECAR_SUFFIX)] + PART_SUFFIX not in entries
        ):
            with suppress(FileNotFoundError):
                os.unlink(name, dir_fd=partial_fd)
    if removed:
        logger.info("cleanup removed {} expired partial(s)", removed)
    return removed


def each_bucket(objects_fd: int) -> Iterator[int]:
    """Open each bucket folder (``ab/``) of an objects folder in name order, without
    following links; yields its descriptor, closed after the step. Buckets that cannot
    be opened are skipped."""
    with os.scandir(objects_fd) as buckets:
        names = sorted(b.name for b in buckets if b.is_dir(follow_symlinks=False))
    for bucket in names:
        try:
            fd = os.open(bucket, DIR_FLAGS, dir_fd=objects_fd)
        except OSError:
            continue
        try:
            yield fd
        finally:
            os.close(fd)


def remove_stray_temps(objects_fd: int, now: float) -> int:
    """Remove temporary files older than :data:`STRAY_TEMP_AGE_S` from the objects'
    bucket folders (a crash while publishing); returns how many."""
    removed = 0
    for fd in each_bucket(objects_fd):
        with os.scandir(fd) as entries:
            stale = [
                e.name
                for e in entries
                if is_temp_name(e.name) and (_mtime(e) or now) <= now - STRAY_TEMP_AGE_S
            ]
        for name in stale:
            with suppress(FileNotFoundError):
                os.unlink(name, dir_fd=fd)
                removed += 1
    return removed
