"""Resolving and walking paths under a root directory descriptor, never leaving it.

Two steps, used by :class:`~rtc_worker.storage.saferoot.SafeRoot` for every operation:

* :func:`resolve` turns the caller's components into the *real* components of the entry
  inside the root. Symlinks are resolved one component at a time and every step must
  stay inside the root: a link whose target leaves the root is refused right there,
  before anything at its target is looked at, so the answer never depends on what
  exists outside (no existence oracle), and a chain that goes out and comes back in is
  refused too. Link loops are bounded by :data:`MAX_SYMLINKS`. The result holds no
  symlink. Everything is looked up relative to directory descriptors (``*at`` calls).
* :func:`walk` opens the resolved components again from the root descriptor one at a
  time with ``O_NOFOLLOW``, so a symlink swapped in after resolution fails
  (``OUTSIDE_ROOT``) instead of leading anywhere: nothing is ever re-resolved from a
  path string.

Source: aiohttp's static route (resolve, then require containment), croc ``receivefs``
(check every component); ``openat2(RESOLVE_BENEATH)`` does the same in the kernel.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from contextlib import suppress
from dataclasses import dataclass
from typing import NoReturn

from rtc_worker.storage.errors import (
    StorageError,
    StorageErrorKind,
    as_disk_full,
    shown,
)

__all__ = [
    "DIR_FLAGS",
    "MAX_SYMLINKS",
    "PATH_DIR_FLAGS",
    "READ_FLAGS",
    "Resolved",
    "check_parts",
    "fail",
    "resolve",
    "walk",
]

MAX_SYMLINKS = 256
"""Most symlinks followed while resolving one path; more is taken for a loop. (Longer
than the kernel's 40: the result is symlink-free, so the kernel never follows them.)"""

#: A directory to walk through (no read permission needed, usable as ``dir_fd`` only).
PATH_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A directory to list, fsync or create in.
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
#: A file to read (non-blocking open, so a FIFO cannot hang the caller).
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK

K = StorageErrorKind
_PERMISSION_ERRNOS = frozenset({errno.EACCES, errno.EPERM, errno.EROFS})
_MISSING_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR})


def check_parts(parts: object) -> tuple[str, ...]:
    """Require a tuple of plain names: not empty, not ``.``/``..``, no ``/``, no NUL.

    Callers split and check client text first (``protocol.names.split_path``); this is
    the file layer's own guard.

    Raises:
        ValueError: anything else (including a non-tuple or a non-string component).
    """
    if not isinstance(parts, tuple):
        raise ValueError(f"a path must be a tuple of components, not {type(parts).__name__}")
    for part in parts:
        if not isinstance(part, str) or part in ("", ".", "..") or "/" in part or "\x00" in part:
            raise ValueError(f"not a plain path component: {part!r}")
    return parts


@dataclass(frozen=True, slots=True)
class Resolved:
    """A path resolved inside a root.

    Attributes:
        parts: the real, symlink-free components below the root (``()``: the root).
        exists: whether the entry existed when it was resolved.
        given: the components as the caller gave them (for messages).
    """

    parts: tuple[str, ...]
    exists: bool
    given: tuple[str, ...]


def _within(path: str, root: str) -> bool:
    if root == os.sep:
        return path.startswith(os.sep)
    return path == root or path.startswith(root + os.sep)


def resolve(root_fd: int, root_path: str, parts: tuple[str, ...]) -> Resolved:
    """Resolve ``parts`` below the directory ``root_fd`` (whose real path is ``root_path``).

    Missing components (and anything below a file) are taken as written; a ``..`` in a
    link target goes to the physical parent, never above the root.

    Raises:
        ValueError: ``parts`` is not a tuple of plain names.
        StorageError: ``OUTSIDE_ROOT`` for a link leaving the root (absolute target
            outside ``root_path``, or ``..`` above it) and for more than
            :data:`MAX_SYMLINKS` links.
    """
    given = check_parts(parts)
    pending = list(reversed(given))
    resolved: list[str] = []
    # fds[i] is the directory reached by resolved[:i]; fds[0] is the root (not owned).
    # Below a missing entry there is no descriptor: len(fds) <= len(resolved) then.
    fds: list[int] = [root_fd]
    followed = 0
    exists = True
    last_link = "a symlink"
    try:
        while pending:
            name = pending.pop()
            if name in ("", "."):
                continue
            if name == "..":
                if not resolved:
                    fail(K.OUTSIDE_ROOT, given, f"{last_link} leads above {root_path!r}")
                resolved.pop()
                while len(fds) > len(resolved) + 1:
                    os.close(fds.pop())
                continue
            if len(fds) != len(resolved) + 1:  # below something missing or not a directory
                resolved.append(name)
                exists = False
                continue
            try:
                st = os.stat(name, dir_fd=fds[-1], follow_symlinks=False)
            except OSError:  # missing (or unsearchable): the rest is taken as written
                resolved.append(name)
                exists = False
                continue
            exists = True
            if stat.S_ISLNK(st.st_mode):
                followed += 1
                if followed > MAX_SYMLINKS:
                    fail(K.OUTSIDE_ROOT, given, f"symlink loop at {shown((*resolved, name))!r}")
                target = os.readlink(name, dir_fd=fds[-1])
                where = os.path.normpath(os.path.join(root_path, *resolved, target))
                last_link = f"{shown((*resolved, name))!r} links to {target!r} ({where!r})"
                if os.path.isabs(target):
                    target = os.path.normpath(target)
                    if not _within(target, root_path):
                        fail(
                            K.OUTSIDE_ROOT,
                            given,
                            f"{shown((*resolved, name))!r} links to {target!r}, "
                            f"outside {root_path!r}",
                        )
                    resolved.clear()
                    while len(fds) > 1:
                        os.close(fds.pop())
                    target = os.path.relpath(target, root_path)
                pending.extend(reversed(target.split(os.sep)))
                continue
            resolved.append(name)
            if stat.S_ISDIR(st.st_mode) and pending:
                with suppress(OSError):  # unusable: what follows is taken as written
                    fds.append(os.open(name, PATH_DIR_FLAGS, dir_fd=fds[-1]))
    finally:
        for fd in fds[1:]:
            os.close(fd)
    return Resolved(tuple(resolved), exists, given)


def fail(kind: StorageErrorKind, parts: tuple[str, ...], detail: str) -> NoReturn:
    """Raise ``StorageError(kind, parts, detail)``."""
    raise StorageError(kind, parts, detail)


def map_error(
    exc: OSError, given: tuple[str, ...], missing: StorageErrorKind
) -> OSError | StorageError:
    """The documented error for an ``OSError`` met while using ``given``.

    Returns:
        DiskFullError for ``ENOSPC``/``EDQUOT``; a StorageError (``missing`` for
        ``ENOENT``/``ENOTDIR``, PERMISSION_DENIED, OUTSIDE_ROOT for ``ELOOP`` and
        ``ENAMETOOLONG``, CORRUPTED for ``ENXIO``/``EISDIR``); else ``exc`` itself.
    """
    full = as_disk_full(exc, shown(given))
    if full is not exc:
        return full
    detail = f"{type(exc).__name__} [{exc.errno}] {exc.strerror}: {exc.filename!r}"
    if exc.errno in _MISSING_ERRNOS:
        return StorageError(missing, given, detail)
    if exc.errno in _PERMISSION_ERRNOS:
        return StorageError(K.PERMISSION_DENIED, given, detail)
    if exc.errno in (errno.ELOOP, errno.ENAMETOOLONG):
        return StorageError(K.OUTSIDE_ROOT, given, detail)
    if exc.errno in (errno.ENXIO, errno.EISDIR):
        return StorageError(K.CORRUPTED, given, detail)
    return exc


def raise_mapped(exc: OSError, given: tuple[str, ...], missing: StorageErrorKind) -> NoReturn:
    """Raise :func:`map_error` of ``exc`` (chained)."""
    mapped = map_error(exc, given, missing)
    if mapped is exc:
        raise exc
    raise mapped from exc


def walk(
    root_fd: int,
    parts: Iterable[str],
    given: tuple[str, ...],
    *,
    create: bool = False,
    missing: StorageErrorKind = K.NOT_FOUND,
    flags: int = PATH_DIR_FLAGS,
) -> int:
    """Open the directory ``root/parts...`` one component at a time with ``O_NOFOLLOW``.

    Args:
        root_fd: the root directory's descriptor (not closed).
        parts: symlink-free components (from :func:`resolve`).
        given: the caller's components, for messages.
        create: create missing components (mode 0o755 before the umask).
        missing: the kind reported for a missing component.
        flags: how the last directory is opened (:data:`PATH_DIR_FLAGS` or
            :data:`DIR_FLAGS`); the ones before are opened ``O_PATH``.

    Returns:
        An owned descriptor of the directory (a duplicate of ``root_fd`` for ``()``).

    Raises:
        StorageError: ``OUTSIDE_ROOT`` when a component is (now) a symlink;
            ``NOT_A_DIRECTORY`` when it is something else; ``missing`` when it is
            absent; ``PERMISSION_DENIED``.
        DiskFullError: no space to create a directory.
    """
    names = list(parts)
    fd = os.open(".", flags, dir_fd=root_fd) if not names else os.dup(root_fd)
    for index, name in enumerate(names):
        last = index == len(names) - 1
        try:
            if create:
                with suppress(FileExistsError):
                    os.mkdir(name, 0o755, dir_fd=fd)
            child = os.open(name, flags if last else PATH_DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            error = component_error(exc, fd, name, given, missing)
            os.close(fd)
            if error is exc:
                raise
            raise error from exc
        os.close(fd)
        fd = child
    return fd


def component_error(
    exc: OSError, parent_fd: int, name: str, given: tuple[str, ...], missing: StorageErrorKind
) -> OSError | StorageError:
    """The documented error for ``exc``, met opening ``name`` in ``parent_fd``:
    a symlink there is ``OUTSIDE_ROOT`` (swapped in), another non-directory
    ``NOT_A_DIRECTORY``; else as :func:`map_error`."""
    if exc.errno in (errno.ENOTDIR, errno.ELOOP):
        try:
            st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
        except OSError:
            return StorageError(missing, given, f"component {name!r} vanished")
        if stat.S_ISLNK(st.st_mode):
            return StorageError(K.OUTSIDE_ROOT, given, f"component {name!r} is a symlink")
        if exc.errno == errno.ENOTDIR:
            return StorageError(K.NOT_A_DIRECTORY, given, f"{name!r} is not a directory")
    return map_error(exc, given, missing)
