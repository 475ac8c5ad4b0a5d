"""Which principals stored which content: one empty marker file per (owner, sha256).

A blob store is shared by every principal, so holding content under a sha256 says
nothing about who may use it. The worker records here that a principal stored a
digest (it sent the bytes, or proved it holds them); that principal's next request
for the same content then needs no proof. Layout under the store's folder::

    owners/<owner>/<sha256>     empty files, mode 0600; <owner> is 64 lowercase hex
                                (a key's fingerprint), <sha256> the content's digest

Every name is reached by descriptor, one component at a time, without following a
symlink; a marker is created with ``O_EXCL`` (recording twice is harmless) and its folder
fsynced. Several stores and processes may share the folder. Every call blocks:
asynchronous callers run them in a thread.

Source: the idea of SSH's ``authorized_keys`` (one record per identity) and git's loose
objects (one file per digest, created once).
"""

from __future__ import annotations

import os
import re
import stat
from contextlib import suppress
from pathlib import Path

from rtc_worker.storage.atomic import fsync_dir
from rtc_worker.storage.errors import as_disk_full
from rtc_worker.storage.resolver import DIR_FLAGS

__all__ = ["OWNER_PATTERN", "OwnerBook"]

OWNER_PATTERN = re.compile(r"[0-9a-f]{64}")
"""An owner as the book spells it: 64 lowercase hex digits (use ``fullmatch``)."""
_SHA256 = re.compile(r"[0-9a-f]{64}")
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


def _check(owner: str, sha256: str) -> None:
    if not isinstance(owner, str) or OWNER_PATTERN.fullmatch(owner) is None:
        raise ValueError(f"not an owner (64 lowercase hex digits): {owner!r}")
    if not isinstance(sha256, str) or _SHA256.fullmatch(sha256) is None:
        raise ValueError(f"not a sha256 digest (64 lowercase hex digits): {sha256!r}")


class OwnerBook:
    """The ownership records under one folder (created, mode 0700, when missing).

    Args:
        root: the folder (``<store>/owners``).

    Raises:
        OSError: the folder cannot be created.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        Path(root).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"OwnerBook(root={str(self.root)!r})"

    def _open_owner(self, owner: str, *, create: bool) -> int | None:
        """The owner's folder, opened without following links (None when missing)."""
        root = os.open(self.root, DIR_FLAGS)
        try:
            if create:
                try:
                    os.mkdir(owner, 0o700, dir_fd=root)
                    fsync_dir(root)
                except FileExistsError:
                    pass
                except OSError as exc:
                    raise as_disk_full(exc, "ownership record") from exc
            try:
                return os.open(owner, DIR_FLAGS, dir_fd=root)
            except FileNotFoundError:
                return None
        finally:
            os.close(root)

    def owns(self, owner: str, sha256: str) -> bool:
        """Whether ``owner`` is recorded as having stored ``sha256``.

        Raises:
            ValueError: a malformed owner or digest. OSError: the folder is unreadable
                (a symlink planted in place of an owner's folder reads as no record).
        """
        _check(owner, sha256)
        try:
            fd = self._open_owner(owner, create=False)
        except OSError:
            return False
        if fd is None:
            return False
        try:
            st = os.stat(sha256, dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        finally:
            os.close(fd)
        return stat.S_ISREG(st.st_mode)

    def record(self, owner: str, sha256: str) -> None:
        """Record that ``owner`` stored ``sha256`` (durable once this returns).

        Raises:
            ValueError: a malformed owner or digest.
            DiskFullError: no space for the record. OSError: it cannot be written.
        """
        _check(owner, sha256)
        fd = self._open_owner(owner, create=True)
        if fd is None:  # removed between the two steps: try once more
            fd = self._open_owner(owner, create=True)
        if fd is None:
            raise FileNotFoundError(f"ownership folder of {owner[:12]}... vanished")
        try:
            try:
                os.close(os.open(sha256, _CREATE, 0o600, dir_fd=fd))
            except FileExistsError:
                return
            except OSError as exc:
                raise as_disk_full(exc, "ownership record") from exc
            fsync_dir(fd)
        finally:
            os.close(fd)

    def forget(self, owner: str, sha256: str) -> bool:
        """Remove the record (the content was removed); returns whether it existed."""
        _check(owner, sha256)
        fd = self._open_owner(owner, create=False)
        if fd is None:
            return False
        try:
            with suppress(FileNotFoundError):
                os.unlink(sha256, dir_fd=fd)
                fsync_dir(fd)
                return True
            return False
        finally:
            os.close(fd)
