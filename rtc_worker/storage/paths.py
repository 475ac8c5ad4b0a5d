"""Path safety for the shared storage: validation, symlink-safe access, atomic writes.

Clients only ever send paths *relative* to the shared-storage root (spec: shared storage
path validation). This module turns such a path into an absolute path that is guaranteed to
be inside the root, and performs the file operations the worker needs without letting a
symlink (present at validation time or swapped in afterwards) lead outside the root.

Two layers:

* :func:`split_user_path` / :func:`validate_path_in_root` are the lexical and resolution
  checks. The lexical rules follow croc's ``receivefs`` path normalization (no absolute path,
  no volume, no ``..``, every component checked); the resolution rule follows aiohttp's static
  route (``resolve()`` then ``relative_to(root)`` so symlinks cannot escape).
* :class:`FilesystemAdapter` re-checks at use: files are opened with ``O_NOFOLLOW`` and the
  opened descriptor's real path is verified, directories are walked one component at a time
  with ``O_NOFOLLOW`` relative to the parent descriptor, and writes go to a temporary file
  that is fsynced and renamed into place.

Every call here blocks; asynchronous callers run them in a thread.

Errors shown to clients come from :attr:`StoragePathError.reason`, which only ever contains
the path exactly as the client sent it, never the worker's absolute paths.
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
import stat
import time
import unicodedata
from collections.abc import Iterable
from contextlib import suppress
from enum import StrEnum
from pathlib import Path
from typing import BinaryIO, NoReturn

from loguru import logger

__all__ = [
    "DISK_FULL_ERRNOS",
    "MAX_COMPONENT_BYTES",
    "MAX_PATH_BYTES",
    "DiskFullError",
    "FilesystemAdapter",
    "PathErrorKind",
    "StoragePathError",
    "fsync_directory",
    "split_user_path",
    "validate_path_in_root",
]

MAX_PATH_BYTES = 4096
"""Longest accepted relative path, in bytes of UTF-8 (Linux ``PATH_MAX``)."""

MAX_COMPONENT_BYTES = 255
"""Longest accepted path component, in bytes of UTF-8 (Linux ``NAME_MAX``)."""

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""``errno`` values that mean the storage is full (no space left, quota exceeded)."""

# C0 controls, DEL and C1 controls: exactly the Unicode category "Cc".
_CONTROL_CHARS = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})


class PathErrorKind(StrEnum):
    """Why a client path was refused; the value is the client-facing reason prefix.

    Source: spec, shared storage path validation (error reasons sent to the client).
    """

    OUTSIDE_ROOT = "Path outside shared storage"
    """Invalid, absolute, traversing, or resolving (through symlinks) outside the root."""
    NOT_FOUND = "Input path does not exist"
    """An input path that does not exist when it is validated."""
    VANISHED = "File not found"
    """The path existed at validation time but is gone when it is used."""
    PERMISSION_DENIED = "Permission denied"
    """The worker may not read (or create) it."""
    CORRUPTED = "File corrupted or invalid format"
    """Unusable content or file type (e.g. a directory or FIFO where a file is needed)."""
    NOT_A_DIRECTORY = "Not a directory"
    """A directory was needed but a non-directory exists there."""


class StoragePathError(Exception):
    """A client path was refused or could not be used.

    Attributes:
        kind: the category, whose value is the client-facing reason prefix.
        user_path: the path exactly as the client sent it.
        detail: explanation for the worker's log only; it may contain absolute paths and
            must never be sent to a client.

    ``str(error)`` is :attr:`reason`, so logging or forwarding the exception never leaks
    an absolute path; ``repr(error)`` includes the detail.
    """

    def __init__(self, kind: PathErrorKind, user_path: str, detail: str = "") -> None:
        super().__init__(kind, user_path, detail)
        self.kind = kind
        self.user_path = user_path
        self.detail = detail

    @property
    def reason(self) -> str:
        """The client-facing reason, ``"{prefix}: {user_path}"``."""
        return f"{self.kind.value}: {self.user_path}"

    def __str__(self) -> str:
        return self.reason

    def __repr__(self) -> str:
        return (
            f"StoragePathError(kind={self.kind.name}, user_path={self.user_path!r}, "
            f"detail={self.detail!r})"
        )


class DiskFullError(OSError):
    """A write failed because the storage is full (``ENOSPC``) or over quota (``EDQUOT``).

    Constructed like :class:`OSError`: ``DiskFullError(errno, strerror, filename)``, where
    ``filename`` is the client's relative path.
    """


def _disk_full(exc: OSError, user_path: str) -> DiskFullError:
    code = exc.errno if exc.errno is not None else errno.ENOSPC
    return DiskFullError(code, os.strerror(code), user_path)


def split_user_path(path: str) -> tuple[str, ...]:
    """Check a client's relative path lexically and split it into components.

    Backslashes count as separators; empty and ``.`` components are dropped, so ``""`` and
    ``"."`` give ``()`` (the root itself). Nothing on disk is consulted.

    Rejected (``StoragePathError`` with kind ``OUTSIDE_ROOT``): non-strings; control
    characters (C0 including NUL, DEL, C1); text that is not encodable as UTF-8 (lone
    surrogates); more than :data:`MAX_PATH_BYTES` bytes or a component over
    :data:`MAX_COMPONENT_BYTES` bytes; absolute and UNC paths (leading ``/`` or ``\\``);
    Windows drives (``C:``); any ``..`` component, even one that would stay inside the root;
    components whose NFKC compatibility form is ``.``/``..`` or contains a separator
    (look-alikes such as ``"．．"`` that another tool may fold to ``..``). Names are not
    otherwise normalized: Linux names are byte strings and the client's name is used as is.

    Source: croc ``src/receivefs/path.go`` (normalize and check every component).
    """
    if not isinstance(path, str):
        raise StoragePathError(PathErrorKind.OUTSIDE_ROOT, str(path), "path is not a string")
    if _CONTROL_CHARS.search(path):
        raise StoragePathError(PathErrorKind.OUTSIDE_ROOT, path, "control character in path")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise StoragePathError(
            PathErrorKind.OUTSIDE_ROOT, path, f"not valid UTF-8: {exc}"
        ) from None
    if len(encoded) > MAX_PATH_BYTES:
        raise StoragePathError(
            PathErrorKind.OUTSIDE_ROOT, path, f"path longer than {MAX_PATH_BYTES} bytes"
        )
    normalized = path.replace("\\", "/")
    if normalized.startswith("/"):
        raise StoragePathError(PathErrorKind.OUTSIDE_ROOT, path, "absolute or UNC path")
    if _WINDOWS_DRIVE.match(normalized):
        raise StoragePathError(PathErrorKind.OUTSIDE_ROOT, path, "Windows drive in path")
    parts: list[str] = []
    for component in normalized.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            raise StoragePathError(PathErrorKind.OUTSIDE_ROOT, path, "parent directory reference")
        if len(component.encode("utf-8")) > MAX_COMPONENT_BYTES:
            raise StoragePathError(
                PathErrorKind.OUTSIDE_ROOT,
                path,
                f"path component longer than {MAX_COMPONENT_BYTES} bytes",
            )
        folded = unicodedata.normalize("NFKC", component)
        if (
            folded in (".", "..")
            or "/" in folded
            or "\\" in folded
            or _CONTROL_CHARS.search(folded)
        ):
            raise StoragePathError(
                PathErrorKind.OUTSIDE_ROOT,
                path,
                f"component {component!r} is a look-alike of {folded!r}",
            )
        parts.append(component)
    return tuple(parts)


def _is_within(path: str, root: str) -> bool:
    """Lexical containment of two absolute, normalized path strings."""
    if root == os.sep:
        return path.startswith(os.sep)
    return path == root or path.startswith(root + os.sep)


#: Most symlinks followed while resolving one path; more is taken for a loop. (Longer
#: than the kernel's 40: the result is symlink-free, so the kernel never follows them.)
MAX_SYMLINKS = 256


def _resolve_in_root(path: str, root: str) -> Path:
    """Validate ``path`` against an already resolved ``root`` string (see validate_path_in_root).

    Symlinks are resolved one component at a time, and every step must stay inside
    the root: a link whose target leaves the root is refused right there, before
    anything at the target is looked at. So the answer never depends on what exists
    outside the root (a chain that goes out and comes back in is refused too), and the
    result contains no symlink. Only paths inside the root are ever examined.
    """
    pending = list(reversed(split_user_path(path)))
    # resolved[i] is the real, symlink-free path of the i-th component below the root
    # (kept as whole strings: joining the components anew each step is quadratic).
    resolved: list[str] = []
    followed = 0
    last_link = ""
    while pending:
        name = pending.pop()
        if name in ("", "."):
            continue
        if name == "..":  # only from a link target: physical parent, never above the root
            if not resolved:
                raise StoragePathError(
                    PathErrorKind.OUTSIDE_ROOT, path, f"{last_link} leads above {root!r}"
                )
            resolved.pop()
            continue
        candidate = (resolved[-1] if resolved else root.rstrip(os.sep)) + os.sep + name
        try:
            st = os.lstat(candidate)
        except OSError:  # missing (or unsearchable): the rest is taken as written
            resolved.append(candidate)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(candidate)
            continue
        followed += 1
        if followed > MAX_SYMLINKS:
            raise StoragePathError(
                PathErrorKind.OUTSIDE_ROOT, path, f"symlink loop at {candidate!r}"
            )
        target = os.readlink(candidate)
        where = os.path.normpath(os.path.join(os.path.dirname(candidate), target))
        last_link = f"{candidate!r} links to {target!r} ({where!r})"
        if os.path.isabs(target):
            target = os.path.normpath(target)
            if not _is_within(target, root):
                raise StoragePathError(
                    PathErrorKind.OUTSIDE_ROOT,
                    path,
                    f"{candidate!r} links to {target!r}, outside {root!r}",
                )
            resolved = []
            target = os.path.relpath(target, root)
        pending.extend(reversed(target.split(os.sep)))
    return Path(resolved[-1]) if resolved else Path(root)


def validate_path_in_root(path: str, root: Path) -> Path:
    """Return the resolved absolute path of the client path ``path`` inside ``root``.

    Args:
        path: a relative path as sent by a client; ``""`` and ``"."`` mean the root itself.
        root: the shared-storage root; resolved here with ``os.path.realpath`` (pass it
            resolved, or use :class:`FilesystemAdapter`, which resolves it once).

    Returns:
        The absolute path with every existing symlink resolved; it is the root or inside it.
        Missing trailing components are allowed (outputs are created later).

    Raises:
        StoragePathError: kind ``OUTSIDE_ROOT`` for anything :func:`split_user_path` rejects,
            for a symlink whose target leaves the root (even if a chain would come back),
            and for more than :data:`MAX_SYMLINKS` links (loops). Only paths inside the
            root are examined, so the error is the same whether or not anything exists
            outside (no existence oracle).

    Symlinks inside the root pointing elsewhere inside the root are followed and allowed.
    Source: spec, shared storage path validation; aiohttp static route (``resolve()`` then
    ``relative_to(root)``).
    """
    return _resolve_in_root(path, os.path.realpath(root))


def fsync_directory(path: Path) -> None:
    """Flush a directory's entries (creations, renames, removals) to stable storage.

    Filesystems that cannot fsync a directory (``EINVAL``/``ENOTSUP``) are tolerated.

    Raises:
        OSError: the directory cannot be opened, or the flush failed for another reason.
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _fsync_dir_fd(fd)
    finally:
        os.close(fd)


def _fsync_dir_fd(fd: int) -> None:
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in (errno.EINVAL, errno.ENOTSUP):
            raise


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data).cast("B")
    while view:
        written = os.write(fd, view)
        view = view[written:]


class FilesystemAdapter:
    """Symlink-safe file operations on a shared-storage root, addressed by client paths.

    Every method takes the client's relative path (``rel``), validates it with
    :func:`validate_path_in_root` and re-checks at use, so a symlink swapped in between
    validation and use makes the operation fail instead of touching anything outside the
    root. All methods block (filesystem calls, possibly over NFS): call them in a thread.

    Errors: :class:`StoragePathError` with the kind documented per method,
    :class:`DiskFullError` when a write runs out of space, and plain :class:`OSError` for
    other I/O failures (e.g. ``EIO``).

    Source: spec, shared storage path validation; aiohttp static route; croc
    ``src/receivefs/root.go`` (operate relative to an opened root, temp file then rename).
    """

    _proc_fd_dir = "/proc/self/fd"
    """Where the real path of an open descriptor is read (Linux); if unreadable, the
    opened file is compared by device and inode with a symlink-free walk instead."""

    def __init__(self, root: Path, *, slow_warning_s: float = 1.0) -> None:
        """Args:
            root: the shared-storage root; it is resolved once here.
            slow_warning_s: validations slower than this many seconds are logged at WARNING
                (a sign of an unresponsive network filesystem).

        Raises:
            ValueError: ``root`` is not an existing directory.
        """
        resolved = Path(os.path.realpath(root))
        if not resolved.is_dir():
            raise ValueError(f"storage root is not an existing directory: {root}")
        self.root: Path = resolved
        self.slow_warning_s = slow_warning_s
        self._root_str = str(resolved)

    def __repr__(self) -> str:
        return f"FilesystemAdapter(root={self._root_str!r})"

    # -- validation ------------------------------------------------------------------

    def validate(self, rel: str) -> Path:
        """Return the resolved absolute path for ``rel``; containment only, no existence check.

        Logs the time taken in milliseconds at DEBUG, or at WARNING when it exceeds
        ``slow_warning_s``.

        Raises:
            StoragePathError: ``OUTSIDE_ROOT`` (see :func:`validate_path_in_root`).
        """
        start = time.perf_counter()
        outcome = "refused"
        try:
            resolved = _resolve_in_root(rel, self._root_str)
            outcome = "ok"
            return resolved
        finally:
            elapsed = time.perf_counter() - start
            if elapsed > self.slow_warning_s:
                logger.warning(
                    "slow shared-storage path validation: {path!r} took {s:.2f} s ({outcome})",
                    path=rel,
                    s=elapsed,
                    outcome=outcome,
                )
            else:
                logger.debug(
                    "path {path!r} validated in {ms:.3f} ms ({outcome})",
                    path=rel,
                    ms=elapsed * 1000,
                    outcome=outcome,
                )

    def validate_input(self, rel: str) -> Path:
        """Validate an input path: inside the root, existing, and readable.

        A directory must be listable and searchable; a regular file must open for reading
        (checked by doing it, since ``os.access`` answers yes for root).

        Returns:
            The resolved absolute path.

        Raises:
            StoragePathError: ``OUTSIDE_ROOT`` (containment, checked first);
                ``NOT_FOUND`` (missing); ``PERMISSION_DENIED`` (cannot be read);
                ``CORRUPTED`` (neither a regular file nor a directory, e.g. a FIFO).
        """
        resolved = self.validate(rel)
        parts = self._rel_parts(resolved)
        # Walk the symlink-free resolved path from the root without following links:
        # a parent swapped for a symlink after validation fails here (OUTSIDE_ROOT)
        # instead of answering whether something exists where the link points.
        try:
            parent = self._open_dirs(parts[:-1], rel, create=False, missing=PathErrorKind.NOT_FOUND)
        except StoragePathError as exc:
            if exc.kind is not PathErrorKind.NOT_A_DIRECTORY:
                raise
            raise StoragePathError(PathErrorKind.NOT_FOUND, rel, exc.detail) from None
        name = parts[-1] if parts else "."
        try:
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except OSError as exc:
                self._raise_mapped(exc, rel, PathErrorKind.NOT_FOUND, resolved)
            if stat.S_ISLNK(st.st_mode):
                # resolved paths contain no symlink: one was swapped in since validation
                raise StoragePathError(
                    PathErrorKind.OUTSIDE_ROOT, rel, f"symlink appeared at {resolved}"
                )
            if stat.S_ISDIR(st.st_mode):
                flags = _DIR_FLAGS
            elif stat.S_ISREG(st.st_mode):
                flags = _READ_FLAGS
            else:
                raise StoragePathError(
                    PathErrorKind.CORRUPTED, rel, f"{resolved} is not a regular file or directory"
                )
            try:
                fd = os.open(name, flags, dir_fd=parent)
                try:
                    if stat.S_ISDIR(st.st_mode):
                        # Opening needs read permission; looking anything up needs search.
                        os.stat(".", dir_fd=fd)
                finally:
                    os.close(fd)
            except OSError as exc:
                self._raise_mapped(exc, rel, PathErrorKind.NOT_FOUND, resolved)
        finally:
            os.close(parent)
        return resolved

    def exists(self, rel: str) -> bool:
        """True when ``rel`` is a valid path inside the root and something exists there.

        Never raises for bad input: invalid or outside paths give False.
        """
        try:
            resolved = self.validate(rel)
            os.lstat(resolved)
        except (StoragePathError, OSError, ValueError):
            return False
        return True

    def to_absolute(self, rel: str) -> Path:
        """Same as :meth:`validate`: the resolved absolute path of ``rel`` inside the root."""
        return self.validate(rel)

    def to_relative(self, abs_path: Path | str) -> str:
        """Convert an absolute path inside the root to the relative POSIX string clients use.

        The path is normalized lexically (a symlink at its end is not followed, so a link's
        own name is kept); a path given through an alias of the root (a symlink to it) is
        accepted through its real path. The result is checked with :meth:`validate`, so it
        is usable as a client path. The root itself gives ``"."``.

        Raises:
            StoragePathError: ``OUTSIDE_ROOT`` when the path is not inside the root, escapes
                it through a symlink, or has a name clients could not send (e.g. a control
                character). ``user_path`` is the relative form when there is one, else only
                the file name, never the absolute path.
        """
        lexical = os.path.abspath(abs_path)
        if not _is_within(lexical, self._root_str):
            lexical = os.path.realpath(abs_path)
            if not _is_within(lexical, self._root_str):
                raise StoragePathError(
                    PathErrorKind.OUTSIDE_ROOT,
                    Path(abs_path).name,
                    f"{abs_path} is outside {self._root_str}",
                )
        rel = Path(os.path.relpath(lexical, self._root_str)).as_posix()
        _resolve_in_root(rel, self._root_str)
        return rel

    # -- symlink-safe directory walking ----------------------------------------------

    def _rel_parts(self, resolved: Path) -> tuple[str, ...]:
        return resolved.relative_to(self.root).parts

    def _open_root(self, rel: str) -> int:
        try:
            return os.open(self._root_str, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            self._raise_mapped(exc, rel, PathErrorKind.VANISHED, self.root)

    def _open_dirs(
        self, parts: Iterable[str], rel: str, *, create: bool, missing: PathErrorKind
    ) -> int:
        """Open the directory ``root/parts...`` one component at a time, never following a
        symlink, optionally creating missing components (mode 0o755 before umask).

        Returns an owned descriptor. Raises StoragePathError: ``OUTSIDE_ROOT`` when a
        component is (now) a symlink; ``NOT_A_DIRECTORY`` for an existing non-directory;
        ``missing`` when a component is absent; ``PERMISSION_DENIED``; DiskFullError.
        """
        fd = self._open_root(rel)
        for name in parts:
            try:
                if create:
                    with suppress(FileExistsError):
                        os.mkdir(name, 0o755, dir_fd=fd)
                child = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError as exc:
                error = self._component_error(exc, fd, name, rel, missing)
                os.close(fd)
                if error is exc:
                    raise
                raise error from exc
            os.close(fd)
            fd = child
        return fd

    def _component_error(
        self, exc: OSError, parent_fd: int, name: str, rel: str, missing: PathErrorKind
    ) -> Exception:
        if exc.errno in (errno.ENOTDIR, errno.ELOOP):
            try:
                st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
            except OSError:
                return StoragePathError(missing, rel, f"component {name!r} vanished")
            if stat.S_ISLNK(st.st_mode):
                return StoragePathError(
                    PathErrorKind.OUTSIDE_ROOT, rel, f"component {name!r} is a symlink (swapped in)"
                )
            if exc.errno == errno.ENOTDIR:
                return StoragePathError(
                    PathErrorKind.NOT_A_DIRECTORY, rel, f"component {name!r} is not a directory"
                )
        return self._map_error(exc, rel, missing, name)

    def _map_error(
        self, exc: OSError, rel: str, missing: PathErrorKind, where: object
    ) -> Exception:
        """Map an OSError from an operation on ``rel`` to the documented error types."""
        detail = f"{type(exc).__name__} [{exc.errno}] {exc.strerror} at {where}"
        if exc.errno in DISK_FULL_ERRNOS:
            return _disk_full(exc, rel)
        if exc.errno in _MISSING_ERRNOS:
            return StoragePathError(missing, rel, detail)
        if exc.errno in _PERMISSION_ERRNOS:
            return StoragePathError(PathErrorKind.PERMISSION_DENIED, rel, detail)
        if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG):
            return StoragePathError(PathErrorKind.OUTSIDE_ROOT, rel, detail)
        if exc.errno in (errno.ENXIO, errno.EISDIR):
            return StoragePathError(PathErrorKind.CORRUPTED, rel, detail)
        return exc

    def _open_parent(
        self, rel: str, *, create: bool, missing: PathErrorKind
    ) -> tuple[Path, int, str]:
        """Validate ``rel`` (which must not be the root) and open its parent directory.

        Returns ``(resolved, parent_fd, name)``; the caller closes ``parent_fd``.
        Raises IsADirectoryError when ``rel`` is the root itself.
        """
        resolved = self.validate(rel)
        parts = self._rel_parts(resolved)
        if not parts:
            raise IsADirectoryError(errno.EISDIR, "the storage root itself", rel)
        fd = self._open_dirs(parts[:-1], rel, create=create, missing=missing)
        return resolved, fd, parts[-1]

    def _raise_mapped(
        self, exc: OSError, rel: str, missing: PathErrorKind, where: object
    ) -> NoReturn:
        mapped = self._map_error(exc, rel, missing, where)
        if mapped is exc:
            raise exc
        raise mapped from exc

    # -- operations ------------------------------------------------------------------

    def makedirs(self, rel: str) -> Path:
        """Create the directory ``rel`` and its missing parents, symlink-safely.

        After validation the components of the resolved path are walked relative to the
        root with ``O_NOFOLLOW`` and created (0o755 before umask) when missing, so a symlink
        swapped in after validation makes this fail instead of creating anything outside.
        Existing directories are fine (``""`` is the root).

        Returns:
            The resolved absolute path of the directory.

        Raises:
            StoragePathError: ``OUTSIDE_ROOT`` (invalid path, or a symlink met while
                walking); ``NOT_A_DIRECTORY`` (a component exists and is not a
                directory); ``PERMISSION_DENIED``; ``VANISHED`` (a parent was removed
                concurrently).
            DiskFullError: no space to create a directory.
        """
        resolved = self.validate(rel)
        fd = self._open_dirs(
            self._rel_parts(resolved), rel, create=True, missing=PathErrorKind.VANISHED
        )
        os.close(fd)
        return resolved

    def open_file(self, rel: str) -> BinaryIO:
        """Open the regular file ``rel`` for reading (binary, buffered).

        At-use check: validate, open the resolved path with ``O_NOFOLLOW``, then require
        the real path of the opened descriptor (``/proc/self/fd``) to be inside the root;
        where that is unavailable, the descriptor's device and inode must match the entry
        reached by a symlink-free walk from the root. Logs the time taken and the size in
        bytes at DEBUG.

        Returns:
            A binary file object positioned at 0; the caller closes it.

        Raises:
            StoragePathError: ``OUTSIDE_ROOT`` (invalid path, or the file or a parent was
                replaced by a symlink leading outside); ``VANISHED`` (gone since
                validation, including when it never existed); ``PERMISSION_DENIED``;
                ``CORRUPTED`` (a directory, FIFO, socket or device, not a regular file).
        """
        resolved = self.validate(rel)
        start = time.perf_counter()
        try:
            fd = os.open(resolved, _READ_FLAGS)
        except OSError as exc:
            self._raise_mapped(exc, rel, PathErrorKind.VANISHED, resolved)
        try:
            self._check_fd_inside(fd, resolved, rel)
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                kind = "a directory" if stat.S_ISDIR(st.st_mode) else "not a regular file"
                raise StoragePathError(PathErrorKind.CORRUPTED, rel, f"{resolved} is {kind}")
            os.set_blocking(fd, True)
            file = os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise
        logger.debug(
            "opened {path!r} ({size} bytes) in {ms:.3f} ms",
            path=rel,
            size=st.st_size,
            ms=(time.perf_counter() - start) * 1000,
        )
        return file

    def _check_fd_inside(self, fd: int, resolved: Path, rel: str) -> None:
        try:
            real = os.readlink(f"{self._proc_fd_dir}/{fd}")
        except OSError:
            real = None
        if real is not None:
            if not _is_within(real, self._root_str):
                raise StoragePathError(
                    PathErrorKind.OUTSIDE_ROOT, rel, f"opened {real!r}, outside {self._root_str!r}"
                )
            return
        parts = self._rel_parts(resolved)
        if not parts:
            return  # the root itself
        parent = self._open_dirs(parts[:-1], rel, create=False, missing=PathErrorKind.VANISHED)
        try:
            entry = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False)
        except OSError as exc:
            self._raise_mapped(exc, rel, PathErrorKind.VANISHED, resolved)
        finally:
            os.close(parent)
        opened = os.fstat(fd)
        if (entry.st_dev, entry.st_ino) != (opened.st_dev, opened.st_ino):
            raise StoragePathError(
                PathErrorKind.OUTSIDE_ROOT, rel, f"{resolved} changed while it was opened"
            )

    def create_file(self, rel: str, *, mode: int = 0o644) -> BinaryIO:
        """Create the new file ``rel`` for writing (binary, buffered), creating parents.

        Parents are created and walked like :meth:`makedirs`; the file is created with
        ``O_CREAT | O_EXCL | O_NOFOLLOW`` in the parent descriptor, so an existing file or
        symlink is never written through. ``mode`` is applied before the umask.

        Raises:
            StoragePathError: as :meth:`makedirs`.
            FileExistsError: something already exists at ``rel``.
            IsADirectoryError: ``rel`` is the root itself.
            DiskFullError: no space to create it.
        """
        _resolved, parent, name = self._open_parent(
            rel, create=True, missing=PathErrorKind.VANISHED
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(name, flags, mode, dir_fd=parent)
        except FileExistsError:
            raise
        except OSError as exc:
            self._raise_mapped(exc, rel, PathErrorKind.VANISHED, name)
        finally:
            os.close(parent)
        return os.fdopen(fd, "wb")

    def atomic_write(self, rel: str, data: bytes | Iterable[bytes]) -> Path:
        """Write ``data`` to ``rel`` atomically: readers see the old content or the new.

        The bytes go to a temporary file (``.rtcw-<random>.tmp``) in the target's
        directory (walked and created symlink-safely like :meth:`makedirs`), which is
        fsynced, renamed over the target with ``os.replace`` and followed by an fsync of
        the directory. A replaced file keeps its permission bits (new files get 0o644
        before umask). On any error the temporary file is removed and an existing target is
        left untouched.

        Args:
            rel: the client's relative path of the file.
            data: the content, as one bytes-like object or an iterable of them (streamed).

        Returns:
            The resolved absolute path of the written file.

        Raises:
            StoragePathError: as :meth:`makedirs`.
            DiskFullError: ``ENOSPC``/``EDQUOT`` while writing or flushing.
            IsADirectoryError: ``rel`` is the root or an existing directory.
            TypeError: ``data`` is a ``str``.

        Source: croc ``receivefs`` and magic-wormhole ``cmd_receive`` (temp file, rename).
        """
        if isinstance(data, str):
            raise TypeError("atomic_write needs bytes, not str")
        chunks: Iterable[bytes | bytearray | memoryview] = (
            (data,) if isinstance(data, bytes | bytearray | memoryview) else data
        )
        resolved, parent, name = self._open_parent(rel, create=True, missing=PathErrorKind.VANISHED)
        try:
            self._write_replace(parent, name, chunks, rel)
        finally:
            os.close(parent)
        return resolved

    def _write_replace(
        self, parent: int, name: str, chunks: Iterable[bytes | bytearray | memoryview], rel: str
    ) -> None:
        missing = PathErrorKind.VANISHED
        try:
            existing = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except FileNotFoundError:
            existing = None
        except OSError as exc:
            self._raise_mapped(exc, rel, missing, name)
        if existing is not None and stat.S_ISDIR(existing.st_mode):
            raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), rel)
        tmp_name = f".rtcw-{secrets.token_hex(8)}.tmp"
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(tmp_name, flags, 0o644, dir_fd=parent)
        except OSError as exc:
            self._raise_mapped(exc, rel, missing, tmp_name)
        try:
            try:
                if existing is not None and stat.S_ISREG(existing.st_mode):
                    os.fchmod(fd, stat.S_IMODE(existing.st_mode) & 0o777)
                for chunk in chunks:
                    _write_all(fd, chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp_name, name, src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException as exc:
            with suppress(OSError):
                os.unlink(tmp_name, dir_fd=parent)
            if isinstance(exc, OSError):
                self._raise_mapped(exc, rel, missing, name)
            raise
        try:
            _fsync_dir_fd(parent)
        except OSError as exc:
            self._raise_mapped(exc, rel, missing, name)

    def fsync_tree(self, rel: str) -> tuple[int, int]:
        """Flush every regular file and directory under the directory ``rel`` to storage.

        Symlinks are neither followed nor counted. The directory's own entry in its
        parent is flushed too. Used to make job results durable and to count them.

        Returns:
            ``(file_count, total_bytes)`` of the regular files found.

        Raises:
            StoragePathError: ``OUTSIDE_ROOT``; ``NOT_FOUND`` (missing);
                ``NOT_A_DIRECTORY``; ``PERMISSION_DENIED`` (a file or directory cannot be
                opened).
            DiskFullError: a flush reported ``ENOSPC``/``EDQUOT``.
        """
        resolved = self.validate(rel)
        parts = self._rel_parts(resolved)
        top = self._open_dirs(parts, rel, create=False, missing=PathErrorKind.NOT_FOUND)
        count = 0
        total = 0

        def fail(exc: OSError) -> None:
            raise exc

        try:
            for _dirpath, _dirs, files, dir_fd in os.fwalk(
                ".", dir_fd=top, follow_symlinks=False, onerror=fail
            ):
                for name in files:
                    st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
                    try:
                        os.fsync(fd)
                        size = os.fstat(fd).st_size
                    finally:
                        os.close(fd)
                    count += 1
                    total += size
                _fsync_dir_fd(dir_fd)
        except OSError as exc:
            self._raise_mapped(exc, rel, PathErrorKind.VANISHED, resolved)
        finally:
            os.close(top)
        if parts:
            parent = self._open_dirs(parts[:-1], rel, create=False, missing=PathErrorKind.VANISHED)
            try:
                _fsync_dir_fd(parent)
            except OSError as exc:
                self._raise_mapped(exc, rel, PathErrorKind.VANISHED, resolved)
            finally:
                os.close(parent)
        return count, total

    def remove_tree(self, rel: str) -> None:
        """Remove the file or directory tree ``rel`` (e.g. partial job results).

        Symlinks are removed, never followed (``shutil.rmtree`` relative to the parent's
        descriptor). A missing path is not an error.

        Raises:
            StoragePathError: ``OUTSIDE_ROOT`` (invalid path, the root itself, or a
                symlink swapped in at ``rel`` or a parent); ``NOT_A_DIRECTORY``;
                ``PERMISSION_DENIED``.
        """
        try:
            _resolved, parent, name = self._open_parent(
                rel, create=False, missing=PathErrorKind.NOT_FOUND
            )
        except IsADirectoryError:
            raise StoragePathError(
                PathErrorKind.OUTSIDE_ROOT, rel, "refusing to remove the storage root"
            ) from None
        except StoragePathError as exc:
            if exc.kind is PathErrorKind.NOT_FOUND:
                return
            raise
        try:
            try:
                st = os.stat(name, dir_fd=parent, follow_symlinks=False)
            except FileNotFoundError:
                return
            if stat.S_ISLNK(st.st_mode):
                raise StoragePathError(
                    PathErrorKind.OUTSIDE_ROOT, rel, f"{name!r} became a symlink (swapped in)"
                )
            try:
                if stat.S_ISDIR(st.st_mode):
                    shutil.rmtree(name, dir_fd=parent)
                else:
                    os.unlink(name, dir_fd=parent)
            except FileNotFoundError:
                return
            except OSError as exc:
                self._raise_mapped(exc, rel, PathErrorKind.VANISHED, name)
        finally:
            os.close(parent)
