"""The one atomic writer: a temporary file beside the target, fsynced, then renamed.

Readers see the old content or the new one, never a part. The sequence

    temporary file in the target's directory -> write -> fsync -> rename (or, for a
    save that must not overwrite, hard link without replace) -> fsync of the directory

is performed here and nowhere else in the project: :class:`AtomicFile` makes the
temporary file and :func:`publish` does the rest (it is also the step a partial file's
commit uses to move verified content into a blob store). Everything works relative to
directory descriptors, so a directory swapped for a symlink after the caller opened it
cannot redirect a write.

``ENOSPC``/``EDQUOT`` anywhere in the sequence raise
:class:`~rtc_worker.storage.errors.DiskFullError`; on any failure the temporary file is
removed and an existing target is left as it was.

Sources: croc ``receivefs`` and magic-wormhole ``cli/cmd_receive.py`` (temporary file,
then rename).
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterable
from contextlib import suppress
from types import TracebackType
from typing import BinaryIO

from rtc_worker.storage.errors import as_disk_full

__all__ = [
    "TEMP_PREFIX",
    "TEMP_SUFFIX",
    "AtomicFile",
    "atomic_file",
    "fsync_dir",
    "is_temp_name",
    "publish",
    "write_all",
    "write_atomic",
    "write_into",
]

TEMP_PREFIX = ".rtcw-"
"""Every temporary file of the file layer starts with this (hidden, recognisable)."""
TEMP_SUFFIX = ".tmp"
"""... and ends with this."""

_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# link() is refused by filesystems without hard links; those fall back to check+rename.
_NO_LINK_ERRNOS = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK})

Bytes = bytes | bytearray | memoryview


def is_temp_name(name: str) -> bool:
    """Whether ``name`` is one of this module's temporary files (for cleanups)."""
    return name.startswith(TEMP_PREFIX) and name.endswith(TEMP_SUFFIX)


def _plain(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\x00" in name:
        raise ValueError(f"not a plain file name: {name!r}")
    return name


def fsync_dir(dir_fd: int) -> None:
    """Flush a directory's entries (creations, renames, removals) to stable storage.

    Filesystems that cannot fsync a directory (``EINVAL``/``ENOTSUP``) are tolerated.

    Raises:
        OSError: the flush failed for another reason (``dir_fd`` must be opened for
            reading, not ``O_PATH``).
    """
    try:
        os.fsync(dir_fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


def write_all(fd: int, data: Bytes, offset: int | None = None) -> int:
    """Write all of ``data`` to ``fd`` (at ``offset`` with ``pwrite`` when given).

    Returns:
        The number of bytes written (``len(data)``).

    Raises:
        OSError: the write failed; some bytes may have been written.
    """
    view = memoryview(data).cast("B")
    done = 0
    while done < len(view):
        if offset is None:
            done += os.write(fd, view[done:])
        else:
            done += os.pwrite(fd, view[done:], offset + done)
    return done


def publish(
    fd: int,
    src_dir_fd: int,
    src_name: str,
    dst_dir_fd: int,
    dst_name: str,
    *,
    replace: bool = True,
    label: str | None = None,
) -> None:
    """Make the open, fully written file ``fd`` durable under ``dst_name``.

    Steps: ``fsync(fd)``; rename ``src_name`` to ``dst_name`` (``replace``), or hard-link
    it there and unlink ``src_name`` (no ``replace``: an existing target is never
    touched; filesystems without hard links fall back to check-then-rename); fsync the
    destination directory, and the source directory when it is another one.

    Args:
        fd: the file's open descriptor (it stays open; the caller closes it).
        src_dir_fd / src_name: where the file is now (a directory opened for reading).
        dst_dir_fd / dst_name: where it goes (a directory opened for reading).
        replace: replace an existing ``dst_name``; otherwise refuse it.
        label: the name used in errors (default ``dst_name``); never an absolute path.

    Raises:
        FileExistsError: ``replace`` is false and ``dst_name`` exists (the source is
            left in place for the caller to drop or keep).
        DiskFullError: ``ENOSPC``/``EDQUOT`` while flushing or moving.
        OSError: any other failure (the source is left in place).
    """
    label = label or dst_name
    try:
        os.fsync(fd)
        if replace:
            os.replace(src_name, dst_name, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        else:
            _move_no_replace(src_dir_fd, src_name, dst_dir_fd, dst_name, label)
        fsync_dir(dst_dir_fd)
        if not os.path.samestat(os.fstat(src_dir_fd), os.fstat(dst_dir_fd)):
            fsync_dir(src_dir_fd)
    except FileExistsError:
        raise
    except OSError as exc:
        mapped = as_disk_full(exc, label)
        if mapped is exc:
            raise
        raise mapped from exc


def _move_no_replace(
    src_dir_fd: int, src_name: str, dst_dir_fd: int, dst_name: str, label: str
) -> None:
    try:
        os.link(
            src_name,
            dst_name,
            src_dir_fd=src_dir_fd,
            dst_dir_fd=dst_dir_fd,
            follow_symlinks=False,
        )
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), label) from None
    except OSError as exc:
        if exc.errno not in _NO_LINK_ERRNOS:
            raise
        with suppress(FileNotFoundError):
            os.stat(dst_name, dir_fd=dst_dir_fd, follow_symlinks=False)
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), label) from None
        os.rename(src_name, dst_name, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    os.unlink(src_name, dir_fd=src_dir_fd)


class AtomicFile:
    """A new file that appears under ``name`` in ``dir_fd`` only when :meth:`publish` ends.

    Args:
        dir_fd: the target's directory, opened for reading (not ``O_PATH``); not closed.
        name: the target's plain name.
        replace: replace an existing file; otherwise an existing target (checked now
            and again, atomically, when publishing) raises FileExistsError.
        mode: permission bits of the new file; default: those of the file it replaces,
            else 0o644 before the umask.
        label: the name used in errors (default ``name``); never an absolute path.
        close_dir: close ``dir_fd`` once published or aborted (the caller hands it over).

    Attributes:
        file: the temporary file, a buffered binary file open for writing.

    Raises (at construction):
        ValueError: ``name`` is not a plain name.
        IsADirectoryError: a directory exists at ``name``.
        FileExistsError: ``replace`` is false and ``name`` exists.
        DiskFullError, OSError: the temporary file cannot be created.

    As a context manager it yields :attr:`file`; leaving the block normally publishes,
    leaving it with an exception removes the temporary file (an ``ENOSPC`` from the
    block's writes is re-raised as DiskFullError).
    """

    def __init__(
        self,
        dir_fd: int,
        name: str,
        *,
        replace: bool = True,
        mode: int | None = None,
        label: str | None = None,
        close_dir: bool = False,
    ) -> None:
        self.dir_fd = dir_fd
        self._close_dir = close_dir
        self.name = _plain(name)
        self.replace = replace
        self.label = label or name
        try:
            existing: os.stat_result | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), self.label)
        if existing is not None and not replace:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), self.label)
        if mode is None and existing is not None and stat.S_ISREG(existing.st_mode):
            mode = stat.S_IMODE(existing.st_mode) & 0o777
        self.temp_name = f"{TEMP_PREFIX}{secrets.token_hex(8)}{TEMP_SUFFIX}"
        try:
            fd = os.open(self.temp_name, _TEMP_FLAGS, 0o644, dir_fd=dir_fd)
        except OSError as exc:
            raise as_disk_full(exc, self.label) from exc
        try:
            if mode is not None:
                os.fchmod(fd, mode)
            self.file: BinaryIO = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self._unlink_temp()
            raise
        self._done = False

    def write(self, data: Bytes) -> None:
        """Append ``data`` to the temporary file (buffered).

        Raises:
            DiskFullError: no space left (the file is then unusable: :meth:`abort`).
            OSError: another write error.
        """
        try:
            self.file.write(data)
        except OSError as exc:
            raise as_disk_full(exc, self.label) from exc

    def publish(self) -> None:
        """Flush, fsync and move the temporary file to its name (see :func:`publish`).

        On failure the temporary file is removed and the error raised.

        Raises:
            FileExistsError: ``replace`` is false and the target appeared meanwhile.
            DiskFullError, OSError: flushing or moving failed.
            ValueError: already published or aborted.
        """
        if self._done:
            raise ValueError(f"{self.label}: already published or aborted")
        try:
            try:
                self.file.flush()
            except OSError as exc:
                raise as_disk_full(exc, self.label) from exc
            publish(
                self.file.fileno(),
                self.dir_fd,
                self.temp_name,
                self.dir_fd,
                self.name,
                replace=self.replace,
                label=self.label,
            )
        except BaseException:
            self.abort()
            raise
        self._done = True
        self.file.close()
        self._release_dir()

    def abort(self) -> None:
        """Close and remove the temporary file; the target is untouched. Idempotent."""
        self._done = True
        with suppress(OSError):
            self.file.close()
        self._unlink_temp()
        self._release_dir()

    def _unlink_temp(self) -> None:
        with suppress(OSError):
            os.unlink(self.temp_name, dir_fd=self.dir_fd)

    def _release_dir(self) -> None:
        if self._close_dir:
            self._close_dir = False
            os.close(self.dir_fd)

    def __enter__(self) -> BinaryIO:
        return self.file

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.publish()
            return
        self.abort()
        if isinstance(exc, OSError):
            mapped = as_disk_full(exc, self.label)
            if mapped is not exc:
                raise mapped from exc


def atomic_file(
    dir_fd: int,
    name: str,
    *,
    replace: bool = True,
    mode: int | None = None,
    label: str | None = None,
) -> AtomicFile:
    """An :class:`AtomicFile`, to use as ``with atomic_file(dir_fd, name) as out:``.

    Raises:
        As :class:`AtomicFile`.
    """
    return AtomicFile(dir_fd, name, replace=replace, mode=mode, label=label)


def write_into(target: AtomicFile, data: Bytes | Iterable[Bytes]) -> int:
    """Write ``data`` (one bytes-like object, or an iterable of them: streamed) into
    ``target`` and publish it; on any error ``target`` is aborted.

    Returns:
        The number of bytes written.

    Raises:
        TypeError: ``data`` (or an item of it) is ``str``.
        As :meth:`AtomicFile.publish`; any exception from the iterable.
    """
    total = 0
    with target as out:
        if isinstance(data, str):
            raise TypeError("an atomic write needs bytes, not str")
        chunks: Iterable[Bytes] = (
            (data,) if isinstance(data, bytes | bytearray | memoryview) else data
        )
        for chunk in chunks:
            if isinstance(chunk, str):
                raise TypeError("an atomic write needs bytes, not str")
            total += out.write(chunk)
    return total


def write_atomic(
    dir_fd: int,
    name: str,
    data: Bytes | Iterable[Bytes],
    *,
    replace: bool = True,
    mode: int | None = None,
    label: str | None = None,
) -> int:
    """Write ``data`` to ``name`` in ``dir_fd`` atomically (see :func:`write_into`).

    Returns:
        The number of bytes written.

    Raises:
        TypeError: ``data`` (or an item of it) is ``str``.
        As :class:`AtomicFile` and :meth:`AtomicFile.publish`; any exception from the
        iterable (the temporary file is removed, the target untouched).
    """
    return write_into(atomic_file(dir_fd, name, replace=replace, mode=mode, label=label), data)
