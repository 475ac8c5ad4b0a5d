"""SafeRoot: every open, create, list and remove under a root directory goes through it.

Paths are tuples of plain components relative to the root (``()`` is the root itself);
callers split and check client text first with ``protocol.names.split_path``, and
SafeRoot refuses anything that is not a plain name (ValueError). Each operation resolves
the path once inside the root (:func:`~rtc_worker.storage.resolver.resolve`: symlinks
inside the root are followed, a step outside is refused before anything there is looked
at) and then reaches the entry *by descriptor*: from the root's descriptor, one
component at a time, with ``O_NOFOLLOW``. A symlink swapped in after the resolution is
refused (``OUTSIDE_ROOT``); nothing is re-resolved from a path string.

Errors are :class:`~rtc_worker.storage.errors.StorageError` (their ``str`` holds only the
relative path) and :class:`~rtc_worker.storage.errors.DiskFullError`. Every call blocks;
asynchronous callers run them in a thread.
"""

from __future__ import annotations

import errno
import os
import stat
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import BinaryIO, Literal

from loguru import logger

from rtc_worker.storage.atomic import AtomicFile, Bytes, write_into
from rtc_worker.storage.closing import Closing
from rtc_worker.storage.errors import StorageError, StorageErrorKind, shown
from rtc_worker.storage.handles import InputHandle
from rtc_worker.storage.resolver import (
    DIR_FLAGS,
    PATH_DIR_FLAGS,
    READ_FLAGS,
    Resolved,
    component_error,
    fail,
    raise_mapped,
    resolve,
    walk,
)
from rtc_worker.storage.trees import TreeOps

__all__ = ["InputHandle", "SafeRoot"]

K = StorageErrorKind
Parts = tuple[str, ...]
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class SafeRoot(TreeOps, Closing):
    """A root directory, opened once; the only way to touch files below it.

    Args:
        root: an existing directory (resolved to its real path once, here).
        slow_warning_s: resolutions slower than this are logged as warnings, seconds.
        allow_hardlinks: accept regular files with more than one hard link as inputs
            (:meth:`open_input`) and in walked trees (:meth:`open_files`); off by
            default, because another name of the same content may lie outside the root.

    Attributes:
        root: the root's real absolute path (for display and command templates only).
        allow_hardlinks: as given (subroots inherit it).

    Raises:
        ValueError: ``root`` is not an existing directory.

    A root made from a path opens it for each operation and holds nothing open; one
    made by :meth:`subroot` (or ``InputHandle.subroot``) holds its directory's
    descriptor until :meth:`close` (or garbage collection). Usable as a context manager.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        slow_warning_s: float = 1.0,
        allow_hardlinks: bool = False,
    ) -> None:
        real = os.path.realpath(root)
        if not os.path.isdir(real):
            raise ValueError(f"storage root is not an existing directory: {root}")
        self._setup(None, Path(real), slow_warning_s, allow_hardlinks)

    def _setup(
        self, fd: int | None, root: Path, slow_warning_s: float, allow_hardlinks: bool
    ) -> None:
        self.root = root
        self.slow_warning_s = slow_warning_s
        self.allow_hardlinks = allow_hardlinks
        self._held = fd
        self._root_str = str(root)
        self._closer = weakref.finalize(self, _close, fd)

    @classmethod
    def _at(
        cls, fd: int, root: Path, slow_warning_s: float, allow_hardlinks: bool = False
    ) -> SafeRoot:
        """A root over the directory descriptor ``fd`` (owned, closed by :meth:`close`)."""
        made = cls.__new__(cls)
        made._setup(fd, root, slow_warning_s, allow_hardlinks)
        return made

    def __repr__(self) -> str:
        return f"SafeRoot({self._root_str!r})"

    def close(self) -> None:
        """Close a held descriptor (idempotent); a root over a descriptor is unusable
        afterwards."""
        self._closer()

    # ------------------------------------------------------------------ resolution

    @contextmanager
    def _root_fd(self) -> Iterator[int]:
        """The root's descriptor for one operation.

        A root made from a path is opened anew for each operation (a long-lived worker
        never holds its shared volume open, and an NFS remount never leaves it with a
        stale descriptor); a root made from a descriptor (:meth:`subroot`) uses it.
        """
        if self._held is not None:
            yield self._held
            return
        try:
            fd = os.open(self._root_str, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise_mapped(exc, (), K.VANISHED)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _op(self, parts: Parts) -> Iterator[tuple[int, Resolved]]:
        """One operation: the root's descriptor and ``parts`` resolved from it."""
        with self._root_fd() as rfd:
            yield rfd, self._resolve_at(rfd, parts)

    def _resolve_at(self, rfd: int, parts: Parts) -> Resolved:
        start = time.perf_counter()
        outcome = "ok"
        try:
            return resolve(rfd, self._root_str, parts)
        except StorageError as exc:
            outcome = exc.kind.name
            raise
        finally:
            elapsed = time.perf_counter() - start
            path = "/".join(map(str, parts)) if isinstance(parts, tuple) else repr(parts)
            if elapsed >= self.slow_warning_s:
                logger.warning(
                    "slow path resolution: {path!r} took {s:.2f} s ({outcome})",
                    path=path,
                    s=elapsed,
                    outcome=outcome,
                )
            else:
                logger.debug(
                    "path {path!r} resolved in {ms:.3f} ms ({outcome})",
                    path=path,
                    ms=elapsed * 1000,
                    outcome=outcome,
                )

    def resolve(self, parts: Parts) -> Parts:
        """The real, symlink-free components of ``parts`` inside the root.

        Missing trailing components are allowed (taken as written).

        Raises:
            ValueError: ``parts`` is not a tuple of plain names.
            StorageError: ``OUTSIDE_ROOT`` for a symlink leading outside the root (even
                when a chain would come back) and for symlink loops. Only entries inside
                the root are examined: the answer is the same whether or not anything
                exists outside.
        """
        with self._op(parts) as (_rfd, resolved):
            return resolved.parts

    def absolute(self, parts: Parts) -> Path:
        """The absolute path of ``parts`` (resolved) for logs and command templates.

        Never open it: use the other methods. Raises as :meth:`resolve`.
        """
        return self.root.joinpath(*self.resolve(parts))

    def exists(self, parts: Parts) -> bool:
        """Whether something exists at ``parts`` inside the root. Never raises: invalid
        paths and paths leading outside give False."""
        try:
            with self._op(parts) as (rfd, resolved):
                if not resolved.exists or not resolved.parts:
                    return resolved.exists
                parent = walk(rfd, resolved.parts[:-1], parts)
                try:
                    os.stat(resolved.parts[-1], dir_fd=parent, follow_symlinks=False)
                finally:
                    os.close(parent)
        except (StorageError, OSError, ValueError):
            return False
        return True

    # ------------------------------------------------------------------ opening

    def open_input(self, parts: Parts) -> InputHandle:
        """Open a job's input (a regular file or a directory) once, for the job to keep.

        Each component is opened relative to its parent's descriptor without following
        a symlink (after the containment check of :meth:`resolve`). A directory must be
        listable and searchable, a file readable (checked by opening it: ``os.access``
        answers yes for root) and, unless :attr:`allow_hardlinks`, have one hard link.

        Returns:
            An open :class:`InputHandle`; the caller closes it.

        Raises:
            ValueError: ``parts`` is not a tuple of plain names.
            StorageError: ``OUTSIDE_ROOT`` (containment, checked first; or a symlink
                swapped in); ``NOT_FOUND``; ``PERMISSION_DENIED``; ``CORRUPTED`` (neither
                a regular file nor a directory, e.g. a FIFO); ``HARD_LINKED`` (a file
                with other names, which may lie outside the root).
        """
        with self._op(parts) as (rfd, resolved):
            fd, kind, st = self._open_entry(rfd, resolved, parts, K.NOT_FOUND)
            if kind == "file" and st.st_nlink > 1 and not self.allow_hardlinks:
                os.close(fd)
                fail(
                    K.HARD_LINKED,
                    parts,
                    f"{shown(resolved.parts)!r} has {st.st_nlink} hard links",
                )
            name = parts[-1] if parts else self.root.name
            return InputHandle(self, fd, kind, st, name, resolved.parts)

    def _open_entry(
        self, rfd: int, resolved: Resolved, given: Parts, missing: StorageErrorKind
    ) -> tuple[int, Literal["file", "dir"], os.stat_result]:
        """Open the file or directory at ``resolved`` (see :meth:`open_input`)."""
        try:
            parent = walk(rfd, resolved.parts[:-1], given, missing=missing)
        except StorageError as exc:
            if exc.kind is not K.NOT_A_DIRECTORY:
                raise
            fail(missing, given, exc.detail)
        name = resolved.parts[-1] if resolved.parts else "."
        try:
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except OSError as exc:
                raise_mapped(exc, given, missing)
            if stat.S_ISLNK(st.st_mode):  # resolved paths hold none: swapped in
                fail(K.OUTSIDE_ROOT, given, f"a symlink appeared at {shown(resolved.parts)!r}")
            if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
                fail(K.CORRUPTED, given, f"{shown(resolved.parts)!r} is no file or directory")
            is_dir = stat.S_ISDIR(st.st_mode)
            try:
                fd = os.open(name, DIR_FLAGS if is_dir else READ_FLAGS, dir_fd=parent)
            except OSError as exc:
                error = component_error(exc, parent, name, given, missing)
                if error is exc:
                    raise
                raise error from exc
        finally:
            os.close(parent)
        try:
            opened = os.fstat(fd)
            if is_dir:
                os.stat(".", dir_fd=fd)  # listing needs read, looking up needs search
            elif not stat.S_ISREG(opened.st_mode):
                fail(K.CORRUPTED, given, f"{shown(resolved.parts)!r} changed type")
            else:
                os.set_blocking(fd, True)
        except OSError as exc:
            os.close(fd)
            raise_mapped(exc, given, missing)
        except BaseException:
            os.close(fd)
            raise
        return fd, ("dir" if is_dir else "file"), opened

    def open_file(self, parts: Parts) -> BinaryIO:
        """Open the regular file ``parts`` for reading (binary, buffered, at offset 0).

        Logs the time taken and the size at DEBUG.

        Raises:
            ValueError: ``parts`` is not a tuple of plain names.
            StorageError: ``OUTSIDE_ROOT`` (or a symlink swapped in for the file or a
                parent); ``NOT_FOUND`` (nothing there when resolved) or ``VANISHED``
                (gone since it was resolved); ``PERMISSION_DENIED``; ``CORRUPTED`` (a
                directory, FIFO, socket or device).
        """
        start = time.perf_counter()
        with self._op(parts) as (rfd, resolved):
            missing = K.VANISHED if resolved.exists else K.NOT_FOUND
            fd, kind, st = self._open_entry(rfd, resolved, parts, missing)
            if kind != "file":
                os.close(fd)
                fail(K.CORRUPTED, parts, f"{shown(resolved.parts)!r} is a directory")
            logger.debug(
                "opened {path!r} ({size} bytes) in {ms:.3f} ms",
                path=shown(parts),
                size=st.st_size,
                ms=(time.perf_counter() - start) * 1000,
            )
            return os.fdopen(fd, "rb")

    def open_dir(self, parts: Parts, *, create: bool = False) -> int:
        """Open (or with ``create``, create and open) the directory ``parts``.

        Missing components are created with mode 0o755 before the umask.

        Returns:
            An owned descriptor opened for reading (usable as ``dir_fd``, for listing
            and fsync); the caller closes it.

        Raises:
            ValueError: ``parts`` is not a tuple of plain names.
            StorageError: ``OUTSIDE_ROOT``; ``NOT_A_DIRECTORY`` (a component exists and
                is not a directory); ``NOT_FOUND`` (without ``create``) or ``VANISHED``
                (a parent removed meanwhile); ``PERMISSION_DENIED``.
            DiskFullError: no space to create a directory.
        """
        with self._op(parts) as (rfd, resolved):
            missing = K.VANISHED if create or resolved.exists else K.NOT_FOUND
            return walk(rfd, resolved.parts, parts, create=create, missing=missing, flags=DIR_FLAGS)

    def makedirs(self, parts: Parts) -> tuple[Parts, ...]:
        """Create the directory ``parts`` and its missing parents (existing ones are fine).

        Returns:
            The real components of each directory created here, shallowest first.

        Raises:
            As :meth:`open_dir` with ``create``.
        """
        with self._op(parts) as (rfd, resolved):
            created: list[Parts] = []
            fd = rfd
            owned = False
            try:
                for index, name in enumerate(resolved.parts):
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                        created.append(resolved.parts[: index + 1])
                    except FileExistsError:
                        pass
                    except OSError as exc:
                        raise_mapped(exc, parts, K.VANISHED)
                    try:
                        child = os.open(name, PATH_DIR_FLAGS, dir_fd=fd)
                    except OSError as exc:
                        error = component_error(exc, fd, name, parts, K.VANISHED)
                        if error is exc:
                            raise
                        raise error from exc
                    if owned:
                        os.close(fd)
                    fd, owned = child, True
            finally:
                if owned:
                    os.close(fd)
            return tuple(created)

    def subroot(self, parts: Parts, *, create: bool = False) -> SafeRoot:
        """A SafeRoot for the directory ``parts`` (created with ``create``), reached by
        descriptor from this one; it has its own descriptor and must be closed.

        Raises:
            As :meth:`open_dir`.
        """
        with self._op(parts) as (rfd, resolved):
            missing = K.VANISHED if create or resolved.exists else K.NOT_FOUND
            fd = walk(rfd, resolved.parts, parts, create=create, missing=missing)
            return SafeRoot._at(
                fd,
                self.root.joinpath(*resolved.parts),
                self.slow_warning_s,
                self.allow_hardlinks,
            )

    # ------------------------------------------------------------------ creating

    def _parent(self, parts: Parts, flags: int) -> tuple[int, str, Parts]:
        """Resolve ``parts`` (not the root), create and open its parent: (fd, name, real)."""
        with self._op(parts) as (rfd, resolved):
            if not resolved.parts:
                raise IsADirectoryError(errno.EISDIR, "the storage root itself", shown(parts))
            fd = walk(rfd, resolved.parts[:-1], parts, create=True, missing=K.VANISHED, flags=flags)
            return fd, resolved.parts[-1], resolved.parts

    def create_file(self, parts: Parts, *, mode: int = 0o644) -> BinaryIO:
        """Create the new file ``parts`` for writing (binary, buffered), parents included.

        The file is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` in its parent's
        descriptor: an existing file or symlink is never written through. ``mode`` is
        applied before the umask.

        Raises:
            FileExistsError: something already exists there.
            IsADirectoryError: ``parts`` is the root.
            ValueError, StorageError, DiskFullError: as :meth:`open_dir` with ``create``.
        """
        parent, name, _real = self._parent(parts, PATH_DIR_FLAGS)
        try:
            fd = os.open(name, _CREATE_FLAGS, mode, dir_fd=parent)
        except FileExistsError:
            raise
        except OSError as exc:
            raise_mapped(exc, parts, K.VANISHED)
        finally:
            os.close(parent)
        return os.fdopen(fd, "wb")

    def atomic_file(
        self, parts: Parts, *, replace: bool = True, mode: int | None = None
    ) -> AtomicFile:
        """An :class:`~rtc_worker.storage.atomic.AtomicFile` for ``parts`` (parents
        created): ``with root.atomic_file(parts) as out: out.write(...)``.

        Raises:
            IsADirectoryError: ``parts`` is the root or an existing directory.
            FileExistsError: ``replace`` is false and the file exists.
            ValueError, StorageError, DiskFullError: as :meth:`open_dir` with ``create``.
        """
        parent, name, _real = self._parent(parts, DIR_FLAGS)
        try:
            return AtomicFile(
                parent, name, replace=replace, mode=mode, label=shown(parts), close_dir=True
            )
        except (FileExistsError, IsADirectoryError):
            os.close(parent)
            raise
        except OSError as exc:
            os.close(parent)
            raise_mapped(exc, parts, K.VANISHED)

    def write_atomic(
        self,
        parts: Parts,
        data: Bytes | Iterable[Bytes],
        *,
        replace: bool = True,
        mode: int | None = None,
    ) -> int:
        """Write ``data`` (bytes, or an iterable of bytes: streamed) to ``parts``
        atomically: readers see the old content or the new one.

        A replaced file keeps its permission bits; a new one gets ``mode`` (default
        0o644 before the umask). On any error the temporary file is removed and an
        existing target is left untouched.

        Returns:
            The number of bytes written.

        Raises:
            TypeError: ``data`` is ``str``.
            As :meth:`atomic_file` and ``AtomicFile.publish``.
        """
        if isinstance(data, str):
            raise TypeError("write_atomic needs bytes, not str")
        return write_into(self.atomic_file(parts, replace=replace, mode=mode), data)


def _close(fd: int | None) -> None:
    if fd is not None:
        with suppress(OSError):
            os.close(fd)
