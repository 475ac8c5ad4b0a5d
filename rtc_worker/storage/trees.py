"""Walking a directory tree by descriptor, never following a symlink.

Each directory is opened relative to its parent's descriptor with ``O_NOFOLLOW``; a
symlink is seen as an entry (and never entered), so nothing outside the tree is ever
listed, read, flushed or removed. Files are opened the same way (:func:`iter_files`):
relative to their directory's descriptor, ``O_NOFOLLOW``, and checked on the opened
descriptor (a regular file, one hard link unless allowed), so an entry swapped for a
symlink, a FIFO or a hard link to an outside file at any moment is skipped, never read.
The walk is iterative: a deep tree cannot exhaust the interpreter's recursion limit.
Used by :class:`~rtc_worker.storage.saferoot.SafeRoot` (the files of a directory input,
the results ZIP, counting and flushing results, snapshots and pruning of an output
folder).
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
from collections.abc import Iterator
from contextlib import AbstractContextManager

from loguru import logger

from rtc_worker.storage.atomic import fsync_dir
from rtc_worker.storage.errors import StorageError, StorageErrorKind
from rtc_worker.storage.resolver import (
    DIR_FLAGS,
    READ_FLAGS,
    Resolved,
    fail,
    raise_mapped,
    walk,
)

__all__ = [
    "Entry",
    "TreeOps",
    "fsync_files",
    "iter_files",
    "list_files",
    "prune",
    "snapshot",
    "walk_tree",
]

K = StorageErrorKind
Parts = tuple[str, ...]

Entry = tuple[str, int]
"""A directory entry: ``(name, st_mode)`` (``lstat``: a symlink is a symlink)."""

# A subdirectory gone or swapped for something else while walking: skipped.
_SKIP_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP})
# A file gone, or swapped for a symlink or a socket, between listing and opening: skipped.
_GONE_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ELOOP, errno.ENXIO})
_FILE_FLAGS = READ_FLAGS | os.O_NOCTTY


def _entries(dir_fd: int) -> list[Entry]:
    found: list[Entry] = []
    with os.scandir(dir_fd) as it:
        for entry in it:
            try:
                found.append((entry.name, entry.stat(follow_symlinks=False).st_mode))
            except FileNotFoundError:
                continue
    found.sort()
    return found


def walk_tree(
    top_fd: int, *, bottom_up: bool = False
) -> Iterator[tuple[tuple[str, ...], int, list[Entry]]]:
    """Yield ``(prefix, dir_fd, entries)`` for the directory ``top_fd`` and every
    directory below it.

    ``prefix`` is the directory's components below the top; ``dir_fd`` is open for
    reading while the caller handles the item (closed afterwards); ``entries`` are
    sorted by name. Top-down by default (a directory before its subdirectories);
    ``bottom_up`` yields subdirectories first. Subdirectories are visited in name order.

    Raises:
        OSError: a directory cannot be opened or listed (``EACCES``...), except one that
            vanished or was swapped for a non-directory while walking (skipped).
    """
    first = os.open(".", DIR_FLAGS, dir_fd=top_fd)
    stack: list[tuple[tuple[str, ...], int, list[Entry], Iterator[str]]] = []
    try:
        entries = _entries(first)
        stack.append(((), first, entries, _subdirs(entries)))
        if not bottom_up:
            yield (), first, entries
        while stack:
            prefix, fd, entries, subdirs = stack[-1]
            name = next(subdirs, None)
            if name is None:
                if bottom_up:
                    yield prefix, fd, entries
                stack.pop()
                os.close(fd)
                continue
            try:
                child = os.open(name, DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                if exc.errno in _SKIP_ERRNOS:
                    continue
                raise
            try:
                child_entries = _entries(child)
            except BaseException:
                os.close(child)
                raise
            stack.append(((*prefix, name), child, child_entries, _subdirs(child_entries)))
            if not bottom_up:
                yield (*prefix, name), child, child_entries
    finally:
        for frame in stack:
            os.close(frame[1])


def _subdirs(entries: list[Entry]) -> Iterator[str]:
    return iter([name for name, mode in entries if stat.S_ISDIR(mode)])


def list_files(top_fd: int) -> list[tuple[str, ...]]:
    """Components (below the top) of every regular file in the tree, sorted.

    Raises:
        OSError: as :func:`walk_tree`.
    """
    files = [
        (*prefix, name)
        for prefix, _fd, entries in walk_tree(top_fd)
        for name, mode in entries
        if stat.S_ISREG(mode)
    ]
    return sorted(files)


def iter_files(
    top_fd: int, *, allow_hardlinks: bool = False
) -> Iterator[tuple[tuple[str, ...], int, os.stat_result]]:
    """Open every regular file of the tree by descriptor, one at a time, in name order.

    Yields ``(parts, fd, stat)``: the file's components below the top, a descriptor
    opened for reading (blocking, offset 0) that is closed when the caller asks for
    the next item, and its ``fstat``. Each file is opened relative to its directory's
    descriptor with ``O_NOFOLLOW | O_NONBLOCK`` and checked on the descriptor; an entry
    that is (or became) a symlink, a directory, a FIFO, a socket or a device, or that
    vanished, is skipped; so is a file with more than one hard link unless
    ``allow_hardlinks`` (another name of the same content may lie outside the tree;
    logged as a warning).

    Raises:
        OSError: as :func:`walk_tree`, or a file cannot be opened (``EACCES``...).
    """
    for prefix, dir_fd, entries in walk_tree(top_fd):
        for name, mode in entries:
            if not stat.S_ISREG(mode):
                continue
            try:
                fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
            except OSError as exc:
                if exc.errno in _GONE_ERRNOS:
                    continue
                raise
            try:
                st = os.fstat(fd)
                if not stat.S_ISREG(st.st_mode):
                    continue
                if st.st_nlink > 1 and not allow_hardlinks:
                    logger.warning(
                        "skipped {!r}: {} hard links", "/".join((*prefix, name)), st.st_nlink
                    )
                    continue
                os.set_blocking(fd, True)
                yield (*prefix, name), fd, st
            finally:
                os.close(fd)


def snapshot(top_fd: int) -> set[tuple[str, ...]]:
    """Components of every entry in the tree (files, directories, links, others).

    Raises:
        OSError: as :func:`walk_tree`.
    """
    return {
        (*prefix, name) for prefix, _fd, entries in walk_tree(top_fd) for name, _mode in entries
    }


def prune(top_fd: int, keep: set[tuple[str, ...]]) -> int:
    """Remove every entry of the tree not in ``keep`` (links are removed, never followed).

    Directories are removed only when empty once their new entries are gone (a kept
    entry keeps its directories). Entries that cannot be removed are left.

    Returns:
        How many entries were removed.
    """
    removed = 0
    for prefix, fd, entries in walk_tree(top_fd, bottom_up=True):
        for name, mode in entries:
            if (*prefix, name) in keep:
                continue
            try:
                if stat.S_ISDIR(mode):
                    os.rmdir(name, dir_fd=fd)
                else:
                    os.unlink(name, dir_fd=fd)
            except OSError:
                continue
            removed += 1
    return removed


def fsync_files(top_fd: int, *, allow_hardlinks: bool = False) -> tuple[int, int]:
    """Flush every directory of the tree and the files :func:`iter_files` yields; count
    those files (what the results ZIP would hold).

    Returns:
        ``(file_count, total_bytes)`` of those files.

    Raises:
        OSError: a file or directory cannot be opened or flushed.
    """
    count = 0
    total = 0
    for _parts, fd, st in iter_files(top_fd, allow_hardlinks=allow_hardlinks):
        os.fsync(fd)
        count += 1
        total += st.st_size
    for _prefix, dir_fd, _entries in walk_tree(top_fd):
        fsync_dir(dir_fd)
    return count, total


class TreeOps:
    """SafeRoot's operations on whole trees (mixed into :class:`SafeRoot`)."""

    allow_hardlinks: bool

    def _op(self, parts: Parts) -> AbstractContextManager[tuple[int, Resolved]]:
        """See :meth:`SafeRoot._op`."""
        raise NotImplementedError

    def open_dir(self, parts: Parts, *, create: bool = False) -> int:
        """See :meth:`SafeRoot.open_dir`."""
        raise NotImplementedError

    def walk_files(self, parts: Parts) -> list[Parts]:
        """Regular files under the directory ``parts`` (components below it), sorted;
        symlinks are neither followed nor listed.

        Raises:
            StorageError: as :meth:`open_dir` (``NOT_FOUND``...); ``PERMISSION_DENIED``
                for an unreadable directory inside.
        """
        top = self.open_dir(parts)
        try:
            return list_files(top)
        except OSError as exc:
            raise_mapped(exc, parts, K.VANISHED)
        finally:
            os.close(top)

    def open_files(self, parts: Parts) -> Iterator[tuple[Parts, int, os.stat_result]]:
        """Open the regular files under the directory ``parts`` by descriptor, one at a
        time (see :func:`iter_files`; hard-linked files only with
        :attr:`allow_hardlinks`).

        Yields:
            ``(components below parts, fd, stat)``; ``fd`` is closed when the next item
            is asked for (or the iteration is closed).

        Raises:
            StorageError: as :meth:`walk_files`.
        """
        top = self.open_dir(parts)
        try:
            yield from iter_files(top, allow_hardlinks=self.allow_hardlinks)
        except OSError as exc:
            raise_mapped(exc, parts, K.VANISHED)
        finally:
            os.close(top)

    def snapshot(self, parts: Parts) -> set[Parts]:
        """Every entry under the directory ``parts`` (components below it).

        Raises:
            As :meth:`walk_files`.
        """
        top = self.open_dir(parts)
        try:
            return snapshot(top)
        except OSError as exc:
            raise_mapped(exc, parts, K.VANISHED)
        finally:
            os.close(top)

    def prune(self, parts: Parts, keep: set[Parts]) -> int:
        """Remove every entry under the directory ``parts`` that is not in ``keep``
        (as given by :meth:`snapshot`), never following a symlink.

        Returns:
            How many entries were removed (those that could not be are left).

        Raises:
            As :meth:`walk_files`.
        """
        top = self.open_dir(parts)
        try:
            return prune(top, keep)
        except OSError as exc:
            raise_mapped(exc, parts, K.VANISHED)
        finally:
            os.close(top)

    def fsync_tree(self, parts: Parts) -> tuple[int, int]:
        """Flush every regular file and directory under ``parts``, and its own entry.

        Symlinks are neither followed nor counted, nor are files :meth:`open_files`
        skips (hard-linked ones): the counts are those of the results ZIP.

        Returns:
            ``(file_count, total_bytes)`` of those files.

        Raises:
            StorageError: as :meth:`open_dir`; ``PERMISSION_DENIED`` for an unreadable
                file or directory inside.
            DiskFullError: a flush reported ``ENOSPC``/``EDQUOT``.
        """
        with self._op(parts) as (rfd, resolved):
            top = self.open_dir(resolved.parts)
            try:
                counts = fsync_files(top, allow_hardlinks=self.allow_hardlinks)
                if resolved.parts:
                    parent = walk(
                        rfd, resolved.parts[:-1], parts, missing=K.VANISHED, flags=DIR_FLAGS
                    )
                    try:
                        fsync_dir(parent)
                    finally:
                        os.close(parent)
            except OSError as exc:
                raise_mapped(exc, parts, K.VANISHED)
            finally:
                os.close(top)
            return counts

    def remove_tree(self, parts: Parts) -> None:
        """Remove the file or directory tree ``parts``; missing is fine.

        Symlinks inside are removed, never followed.

        Raises:
            ValueError: ``parts`` is not a tuple of plain names.
            StorageError: ``OUTSIDE_ROOT`` (the root itself, or a symlink swapped in at
                ``parts`` or a parent); ``NOT_A_DIRECTORY``; ``PERMISSION_DENIED``.
        """
        with self._op(parts) as (rfd, resolved):
            if not resolved.parts:
                fail(K.OUTSIDE_ROOT, parts, "refusing to remove the storage root")
            try:
                parent = walk(rfd, resolved.parts[:-1], parts)
            except StorageError as exc:
                if exc.kind is K.NOT_FOUND:
                    return
                raise
            name = resolved.parts[-1]
            try:
                try:
                    st = os.stat(name, dir_fd=parent, follow_symlinks=False)
                except FileNotFoundError:
                    return
                if stat.S_ISLNK(st.st_mode):
                    fail(K.OUTSIDE_ROOT, parts, f"{name!r} became a symlink")
                try:
                    if stat.S_ISDIR(st.st_mode):
                        shutil.rmtree(name, dir_fd=parent)
                    else:
                        os.unlink(name, dir_fd=parent)
                except FileNotFoundError:
                    return
                except OSError as exc:
                    raise_mapped(exc, parts, K.VANISHED)
            finally:
                os.close(parent)

    def remove_empty_dir(self, parts: Parts) -> bool:
        """Remove the directory ``parts`` if it is empty (never the root).

        Returns:
            Whether it was removed (not when missing, not empty, or not a directory).

        Raises:
            ValueError: ``parts`` is not a tuple of plain names.
            StorageError: ``OUTSIDE_ROOT`` as :meth:`resolve`.
        """
        with self._op(parts) as (rfd, resolved):
            if not resolved.parts:
                return False
            try:
                parent = walk(rfd, resolved.parts[:-1], parts)
            except StorageError:
                return False
            try:
                os.rmdir(resolved.parts[-1], dir_fd=parent)
            except OSError:
                return False
            finally:
                os.close(parent)
            return True
