"""Free space of the storage disk: the reserve uploads may not use, and the reserve file
that lets the database record deletes when the disk is full anyway.

Two separate amounts (settings ``disk_reserve_bytes`` and ``database_reserve_bytes``):

* :class:`DiskReserve`: an upload is refused with DISK_FULL (507) when it would leave
  less than the reserve free on the storage disk, checked before it starts (its
  announced size) and again before every piece is written (other programs share the
  disk), so one principal cannot fill the disk for everyone.
* :class:`ReserveFile`: a file of ``database_reserve_bytes`` next to the database. When
  something else filled the disk and SQLite cannot append a delete to its ``-wal`` file
  (``SQLITE_FULL``), :meth:`ReserveFile.release` removes it and the delete is tried
  again, so space can always be freed; the cleanup recreates it once there is room.

Free space is ``f_bavail * f_frsize`` of ``statvfs`` (what an unprivileged writer may
use), in bytes.
"""

from __future__ import annotations

import os
import threading
from contextlib import suppress
from pathlib import Path

from loguru import logger

__all__ = ["DiskReserve", "ReserveFile", "free_bytes"]

_WRITE_BYTES = 1 << 20


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on the filesystem of ``path``.

    Raises:
        OSError: ``path`` cannot be examined.
    """
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskReserve:
    """The free space uploads must leave on the storage disk.

    Args:
        folder: a folder on the storage disk.
        reserve_bytes: bytes to leave free (0 turns the check off).
    """

    def __init__(self, folder: Path, reserve_bytes: int) -> None:
        self.folder = folder
        self.reserve_bytes = reserve_bytes

    def room_for(self, incoming: int) -> bool:
        """Whether ``incoming`` more bytes leave at least the reserve free (blocking).

        Raises:
            OSError: the disk cannot be examined.
        """
        if self.reserve_bytes <= 0:
            return True
        return free_bytes(self.folder) - incoming >= self.reserve_bytes


class ReserveFile:
    """A file of ``size`` bytes kept to be removed when the database needs room.

    Args:
        path: the file (next to the database, on its disk).
        size: its length in bytes (0: no reserve file).

    Every method blocks; they are safe from several threads.
    """

    def __init__(self, path: Path, size: int) -> None:
        self.path = path
        self.size = size
        self._lock = threading.Lock()

    @property
    def present(self) -> bool:
        """Whether the file is there at its full size."""
        try:
            return self.path.stat().st_size == self.size and self.size > 0
        except FileNotFoundError:
            return False

    def ensure(self) -> bool:
        """Create the file at its full size when missing and the disk has room for it
        and as much again; a file that does not fit is removed again.

        Returns:
            Whether the file is in place.
        """
        with self._lock:
            if self.size <= 0:
                return False
            if self.present:
                return True
            try:
                if free_bytes(self.path.parent) < 2 * self.size:
                    return False
                self._write()
            except OSError as exc:
                logger.warning("no room for the database reserve file {}: {}", self.path, exc)
                with suppress(OSError):
                    self.path.unlink(missing_ok=True)
                return False
            return True

    def _write(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(self.path, flags, 0o600)
        try:
            block = bytes(_WRITE_BYTES)
            left = self.size
            while left > 0:
                left -= os.write(fd, block[: min(left, _WRITE_BYTES)])
            os.fsync(fd)
        finally:
            os.close(fd)

    def release(self) -> bool:
        """Remove the file, giving its space to the database.

        Returns:
            Whether there was a file to remove.
        """
        with self._lock:
            try:
                self.path.unlink()
            except FileNotFoundError:
                return False
            logger.warning("disk full: released the database reserve file {}", self.path)
            return True
