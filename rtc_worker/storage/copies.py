"""Private, read-only snapshots of a directory tree, copied by descriptor.

A job whose input is a directory on shared storage does not get the directory's path:
another user of the storage could swap a file or a folder in it for a symlink while
the job reads it. It gets a copy made here instead: every regular file of the source
(walked by directory descriptors, each file opened relative to its directory without
following a symlink and checked on its descriptor, see
:func:`~rtc_worker.storage.trees.iter_files`) is copied into a folder only the worker
writes, as a new read-only file. Nothing the source turns into later reaches the job.

The copy uses ``copy_file_range`` (in-kernel, a reflink or a server-side copy where the
filesystem offers one) and falls back to reading and writing.
"""

from __future__ import annotations

import errno
import os
import threading

from rtc_worker.storage.errors import as_disk_full
from rtc_worker.storage.saferoot import SafeRoot

__all__ = ["COPY_BLOCK_BYTES", "CopyLimitError", "copy_tree"]

COPY_BLOCK_BYTES = 8 << 20
"""Bytes copied per step (the stop event is looked at between steps)."""

_FALLBACK_ERRNOS = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP})

Parts = tuple[str, ...]


class CopyLimitError(Exception):
    """The tree holds more than the caps allow; what was copied is left for the caller
    to remove.

    Attributes:
        files: regular files in the tree so far (counted up to the cap).
        size: their bytes so far.
    """

    def __init__(self, message: str, files: int, size: int) -> None:
        super().__init__(message)
        self.files = files
        self.size = size


def copy_tree(
    source: SafeRoot,
    dest: SafeRoot,
    *,
    max_bytes: int,
    max_files: int,
    stop: threading.Event | None = None,
    file_mode: int = 0o444,
) -> tuple[int, int]:
    """Copy the regular files of ``source`` into the empty folder ``dest`` (blocking).

    Each file is copied up to the size it had when opened; folders are created as
    needed (0o755 before the umask); files get ``file_mode`` (before the umask), never
    the source's bits. Symlinks, special files and hard-linked files (unless
    ``source`` allows them) are skipped.

    Args:
        source: the tree to copy (its own root).
        dest: the destination folder (empty).
        max_bytes: the most bytes copied, all files together.
        max_files: the most files copied.
        stop: when set (from another thread), copying stops within one step; the
            caller looks at it and removes what was copied.
        file_mode: the copies' permission bits.

    Returns:
        ``(files, bytes)`` copied.

    Raises:
        CopyLimitError: the tree is over ``max_bytes`` or ``max_files``.
        StorageError: the source or the destination is unusable.
        DiskFullError: no space left for the copy.
        OSError: reading or writing failed otherwise.
    """
    files = 0
    total = 0
    for parts, fd, st in source.open_files(()):
        if stop is not None and stop.is_set():
            break
        files += 1
        total += st.st_size
        if files > max_files or total > max_bytes:
            raise CopyLimitError(
                f"the folder holds more than {max_files} files or {max_bytes} bytes",
                files,
                total,
            )
        try:
            with dest.create_file(parts, mode=file_mode) as out:
                out.flush()
                _copy(fd, out.fileno(), st.st_size, stop)
        except OSError as exc:
            full = as_disk_full(exc, "/".join(parts))
            if full is exc:
                raise
            raise full from exc
    return files, total


def _copy(src: int, dst: int, size: int, stop: threading.Event | None) -> None:
    """Copy ``size`` bytes (fewer if the file is shorter now) from offset 0 of ``src``."""
    copied = 0
    use_range = True
    while copied < size:
        if stop is not None and stop.is_set():
            return
        want = min(COPY_BLOCK_BYTES, size - copied)
        if use_range:
            try:
                n = os.copy_file_range(src, dst, want, copied, copied)
            except OSError as exc:
                if exc.errno not in _FALLBACK_ERRNOS:
                    raise
                use_range = False
                continue
        else:
            data = os.pread(src, want, copied)
            n = os.pwrite(dst, data, copied) if data else 0
        if n == 0:
            return
        copied += n
