"""Hashing beside a write: the SHA-256 of a buffer is computed in a second thread while
the calling thread writes the same buffer, so a write costs the longer of the two, not
their sum (``hashlib`` and ``os.pwrite`` both release the GIL on large buffers).

Used by :class:`~rtc_worker.storage.partials.PartialFile` for in-order batches and for
ranges that continue the hashed prefix. Small buffers (below :data:`BESIDE_MIN_BYTES`)
are hashed inline: a thread hand-off would cost more than it saves.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait

from rtc_worker.storage.metadata import ContentHasher

__all__ = ["BESIDE_MIN_BYTES", "pwrite_counted", "write_hashing"]

BESIDE_MIN_BYTES = 256 << 10
"""Smallest buffer hashed in a second thread (256 KiB)."""

_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _hashers() -> ThreadPoolExecutor:
    """The process's hashing threads (made on first use; one per core, at most 4)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            workers = max(1, min(4, os.cpu_count() or 1))
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="sha256")
        return _pool


def pwrite_counted(
    fd: int, data: bytes | bytearray | memoryview, offset: int, done: list[int]
) -> None:
    """``pwrite`` all of ``data`` at ``offset`` of ``fd``, counting the bytes written in
    ``done[0]`` (what was written before an error stays counted).

    Raises:
        OSError: a write failed.
    """
    with memoryview(data) as view:
        while done[0] < len(view):
            done[0] += os.pwrite(fd, view[done[0] :], offset + done[0])


def write_hashing(
    hasher: ContentHasher | None,
    data: bytes | bytearray | memoryview,
    write: Callable[[], object],
) -> None:
    """Call ``write()`` (which writes ``data``) while ``hasher`` takes in ``data``
    (``None``: only write).

    Both are done when this returns or raises: ``data`` may be reused afterwards and
    ``hasher`` is used by one thread at a time. The caller must not touch ``hasher``
    or change ``data`` meanwhile (hold the owner's lock).

    Raises:
        Whatever ``write()`` raises (``hasher`` has then taken in ``data`` anyway: the
        caller restores or drops it).
    """
    if hasher is None or len(data) < BESIDE_MIN_BYTES:
        write()
        if hasher is not None:
            hasher.update(data)
        return
    hashing: Future[None] = _hashers().submit(hasher.update, data)
    try:
        write()
    except BaseException:
        wait([hashing])
        raise
    hashing.result()
