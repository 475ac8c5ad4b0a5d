"""One writer per partial file: an in-process registry plus an exclusive ``flock``.

``flock`` keeps other processes out. The registry keeps a second writer of this process
out, and is checked *before* a partial is opened a second time: ``flock`` emulated over
NFS is per process, and closing any descriptor of a file drops the process's lock.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress

from rtc_worker.storage.errors import PartialBusyError

__all__ = ["claim", "idle_lock", "lock_file", "release", "unclaim"]

_OPEN_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
_LOCK_ATTEMPTS = 8
_REGISTRY_LOCK = threading.Lock()
_OPEN: set[str] = set()


def claim(key: str) -> None:
    """Register ``key`` (a partial's identity) as open in this process.

    Raises:
        PartialBusyError: it is open here already.
    """
    with _REGISTRY_LOCK:
        if key in _OPEN:
            raise PartialBusyError(f"partial {key.rsplit('/', 1)[-1]} is open in this process")
        _OPEN.add(key)


def unclaim(key: str) -> None:
    """Forget the registration of ``key`` (no-op when absent)."""
    with _REGISTRY_LOCK:
        _OPEN.discard(key)


def release(fd: int, key: str) -> None:
    """Close ``fd`` (which drops its flock) and unregister ``key``."""
    try:
        os.close(fd)
    finally:
        unclaim(key)


def _same_file(fd: int, dir_fd: int, name: str) -> bool:
    try:
        current = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return os.path.samestat(current, os.fstat(fd))


def lock_file(dir_fd: int, name: str, *, create: bool) -> int | None:
    """Open ``name`` in ``dir_fd`` read-write and take an exclusive, non-blocking flock.

    The caller must hold the registry claim. Retries when the file was unlinked or
    replaced between the open and the lock (its holder removed it).

    Returns:
        The locked descriptor; ``None`` when ``create`` is false and the file is gone.

    Raises:
        PartialBusyError: another open file description holds the lock.
        OSError: it cannot be opened (a symlink...) or is not a regular file (``EINVAL``).
    """
    flags = _OPEN_FLAGS | (os.O_CREAT if create else 0)
    for _ in range(_LOCK_ATTEMPTS):
        try:
            fd = os.open(name, flags, 0o644, dir_fd=dir_fd)
        except FileNotFoundError:
            if create:
                raise
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", name)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PartialBusyError(
                    f"partial {name} is being written by another writer"
                ) from None
            if _same_file(fd, dir_fd, name):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if not create:
            return None
    raise PartialBusyError(f"partial {name} keeps being replaced")


@contextmanager
def idle_lock(key: str, dir_fd: int, name: str) -> Iterator[int | None]:
    """Lock ``name`` if nobody holds it: yields the descriptor, or ``None`` if busy or gone.

    Checks the registry before opening anything, so a partial open in this process is
    never opened (and its NFS lock never dropped) by a second descriptor.
    """
    try:
        claim(key)
    except PartialBusyError:
        yield None
        return
    fd: int | None = None
    try:
        with suppress(PartialBusyError):
            fd = lock_file(dir_fd, name, create=False)
        yield fd
    finally:
        if fd is not None:
            os.close(fd)
        unclaim(key)
