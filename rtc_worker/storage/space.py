"""Free space on a store's file system, and the reserve a writer must leave.

A shared disk that fills up fails everyone's jobs and leaves nothing to delete with;
writers that take bytes from peers (channel transfers, uploads) stop ``reserve`` bytes
before the end instead (``ENOSPC`` early, so a DiskFullError). Measured by descriptor
(``fstatvfs``), as the unprivileged process sees it (``f_bavail``).
"""

from __future__ import annotations

import errno
import os

from rtc_worker.storage.resolver import DIR_FLAGS

__all__ = ["ensure_room", "free_bytes", "free_bytes_of"]


def free_bytes(fd: int) -> int:
    """Bytes available to this process on the file system of the open file ``fd``.

    Raises:
        OSError: ``fstatvfs`` failed.
    """
    st = os.fstatvfs(fd)
    return st.f_bavail * st.f_frsize


def free_bytes_of(folder: str | os.PathLike[str]) -> int:
    """:func:`free_bytes` of a folder, opened without following a final symlink.

    Raises:
        OSError: the folder cannot be opened or measured.
    """
    fd = os.open(folder, DIR_FLAGS)
    try:
        return free_bytes(fd)
    finally:
        os.close(fd)


def ensure_room(fd: int, incoming: int, reserve: int) -> None:
    """Refuse to write ``incoming`` more bytes that would leave less than ``reserve``
    bytes free on the file system of ``fd``.

    Raises:
        OSError: ``ENOSPC`` (as a full disk would) when the write would eat into the
            reserve; an error of ``fstatvfs``.
    """
    if free_bytes(fd) - incoming < reserve:
        raise OSError(errno.ENOSPC, f"{os.strerror(errno.ENOSPC)} (free-space reserve)")
