"""InputHandle: a job's input, opened once by descriptor and kept for the whole job.

:meth:`SafeRoot.open_input <rtc_worker.storage.saferoot.SafeRoot.open_input>` resolves
the input's path once and opens it; the job reads that same open file (or lists that
same open directory), so nothing is resolved again between validation and use.
:meth:`InputHandle.verify` tells, at use, whether the path still leads to it.
"""

from __future__ import annotations

import os
import stat
import weakref
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol

from rtc_worker.storage.closing import Closing
from rtc_worker.storage.errors import StorageError, StorageErrorKind, shown
from rtc_worker.storage.resolver import fail, raise_mapped, walk

if TYPE_CHECKING:
    from rtc_worker.storage.saferoot import SafeRoot

__all__ = ["InputHandle"]

K = StorageErrorKind
Parts = tuple[str, ...]


class SafeRootLike(Protocol):
    """What a handle needs of its root."""

    root: Path
    slow_warning_s: float
    allow_hardlinks: bool

    def _root_fd(self) -> AbstractContextManager[int]:
        """The root directory's descriptor for one operation."""
        ...


class InputHandle(Closing):
    """A job's input, opened once at validation; the job keeps reading this descriptor.

    Made by :meth:`SafeRoot.open_input`.

    Attributes:
        fd: the open descriptor (a regular file, or a directory opened for reading).
        kind: ``"file"`` or ``"dir"``.
        size: the file's size in bytes when opened (0 for a directory).
        name: its display name (the last component as the caller gave it).
        parts: its real components below the root.
        path: its absolute path, for an operator's command template and logs only.
    """

    def __init__(
        self,
        root: SafeRootLike,
        fd: int,
        kind: Literal["file", "dir"],
        st: os.stat_result,
        name: str,
        parts: Parts,
    ) -> None:
        self._root = root
        self.fd = fd
        self.kind: Literal["file", "dir"] = kind
        self.size = st.st_size if kind == "file" else 0
        self.name = name
        self.parts = parts
        self.path = root.root.joinpath(*parts)
        self._identity = (st.st_dev, st.st_ino)
        self._closer = weakref.finalize(self, os.close, fd)

    def __repr__(self) -> str:
        return f"InputHandle({self.kind}, {shown(self.parts)!r}, size={self.size})"

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        return not self._closer.alive

    def close(self) -> None:
        """Close the descriptor (idempotent)."""
        self._closer()

    def reader(self) -> BinaryIO:
        """A new binary file object over this file, positioned at 0 (close it after use).

        It shares the open file (a duplicated descriptor): use one reader at a time.

        Raises:
            ValueError: the input is a directory.
        """
        if self.kind != "file":
            raise ValueError(f"{shown(self.parts)!r} is a directory")
        file = os.fdopen(os.dup(self.fd), "rb")
        file.seek(0)
        return file

    def subroot(self) -> SafeRoot:
        """A :class:`SafeRoot` over this directory (its own descriptor; close it).

        Raises:
            ValueError: the input is a file.
        """
        if self.kind != "dir":
            raise ValueError(f"{shown(self.parts)!r} is not a directory")
        from rtc_worker.storage.saferoot import SafeRoot

        return SafeRoot._at(
            os.dup(self.fd), self.path, self._root.slow_warning_s, self._root.allow_hardlinks
        )

    def verify(self, given: Parts | None = None) -> None:
        """At use: check that the path still leads, by descriptor, to what was opened.

        Args:
            given: the components to name in errors (default: the real ones).

        Raises:
            StorageError: ``VANISHED`` when it was removed or replaced by another file;
                ``OUTSIDE_ROOT`` when it (or a parent) is now a symlink.
        """
        given = given if given is not None else self.parts
        try:
            with self._root._root_fd() as rfd:
                parent = walk(rfd, self.parts[:-1], given, missing=K.VANISHED)
        except StorageError as exc:
            if exc.kind is K.NOT_A_DIRECTORY:
                fail(K.VANISHED, given, exc.detail)
            raise
        name = self.parts[-1] if self.parts else "."
        try:
            st = os.stat(name, dir_fd=parent, follow_symlinks=False)
        except OSError as exc:
            raise_mapped(exc, given, K.VANISHED)
        finally:
            os.close(parent)
        if stat.S_ISLNK(st.st_mode):
            fail(K.OUTSIDE_ROOT, given, f"{shown(self.parts)!r} became a symlink")
        if (st.st_dev, st.st_ino) != self._identity:
            fail(K.VANISHED, given, f"{shown(self.parts)!r} was replaced")
