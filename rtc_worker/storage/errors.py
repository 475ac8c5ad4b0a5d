"""The file layer's exceptions: one storage error with a kind, one disk-full error.

Every operation of :mod:`rtc_worker.storage` reports a refused or unusable path as a
:class:`StorageError` whose :attr:`~StorageError.kind` says why. The member *names* of
:class:`StorageErrorKind` are the member names of the protocol's ``PathReason``, so a
caller maps one to the other by name; the storage layer itself knows nothing of the
wire. ``str()`` of every exception here holds relative paths or plain names only, never
an absolute path of the machine: the absolute detail is in :attr:`StorageError.detail`,
for logs.
"""

from __future__ import annotations

import errno
import os
from enum import StrEnum

__all__ = [
    "DISK_FULL_ERRNOS",
    "DiskFullError",
    "HashMismatchError",
    "PartialBusyError",
    "StorageError",
    "StorageErrorKind",
    "as_disk_full",
    "shown",
]

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""``errno`` values that mean the storage is full (no space left, quota exceeded)."""


class StorageErrorKind(StrEnum):
    """Why a path under a root was refused or could not be used (values are for logs)."""

    OUTSIDE_ROOT = "outside the root"
    """Not a plain path, or a symlink (present or swapped in) that leads outside the root,
    or a symlink loop."""
    NOT_FOUND = "not found"
    """Nothing exists there."""
    VANISHED = "vanished"
    """It existed when the path was resolved, and is gone when it is used."""
    PERMISSION_DENIED = "permission denied"
    """The process may not read, search or create it."""
    CORRUPTED = "corrupted"
    """Unusable file type or content (a FIFO or a directory where a file is needed)."""
    NOT_A_DIRECTORY = "not a directory"
    """A directory is needed and something else exists there."""
    HARD_LINKED = "hard-linked"
    """A regular file with more than one hard link: another name (possibly outside the
    root) leads to the same content."""


def shown(parts: tuple[str, ...]) -> str:
    """A component tuple as the relative text used in messages (``"."`` for the root)."""
    return "/".join(parts) or "."


class StorageError(Exception):
    """A path under a root was refused or could not be used.

    Attributes:
        kind: why (a :class:`StorageErrorKind`).
        parts: the path as the caller gave it, as components relative to the root.
        detail: explanation for the log only; it may hold absolute paths.

    ``str(error)`` is ``"{kind.value}: {relative path}"`` and never holds an absolute
    path; ``repr(error)`` adds the detail.
    """

    def __init__(self, kind: StorageErrorKind, parts: tuple[str, ...], detail: str = "") -> None:
        super().__init__(kind, parts, detail)
        self.kind = kind
        self.parts = parts
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.kind.value}: {shown(self.parts)}"

    def __repr__(self) -> str:
        return f"StorageError(kind={self.kind.name}, parts={self.parts!r}, detail={self.detail!r})"


class DiskFullError(OSError):
    """A write failed because the storage is full (``ENOSPC``) or over quota (``EDQUOT``).

    Built like :class:`OSError`: ``DiskFullError(errno, strerror, filename)``, where
    ``filename`` is a label the caller chose (a relative path or a file's name, never an
    absolute path). Made from any ``OSError`` by :func:`as_disk_full`.
    """


def as_disk_full(exc: OSError, label: str) -> OSError:
    """``exc`` as a :class:`DiskFullError` labelled ``label`` when it means "disk full".

    Returns:
        A new :class:`DiskFullError` (raise it ``from exc``) when ``exc.errno`` is in
        :data:`DISK_FULL_ERRNOS`; ``exc`` itself otherwise (also when it already is a
        :class:`DiskFullError`).
    """
    if isinstance(exc, DiskFullError) or exc.errno not in DISK_FULL_ERRNOS:
        return exc
    code = exc.errno if exc.errno is not None else errno.ENOSPC
    return DiskFullError(code, os.strerror(code), label)


class HashMismatchError(ValueError):
    """The content does not have the expected SHA-256; nothing was stored.

    Attributes:
        expected: the digest the content should have had (lowercase hex).
        actual: the digest of the bytes actually held (lowercase hex).
    """

    def __init__(self, expected: str, actual: str) -> None:
        super().__init__(f"sha256 mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class PartialBusyError(RuntimeError):
    """Another writer, in this process or another one, holds this partial file."""
