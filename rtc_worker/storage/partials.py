"""PartialFile: the one partial-file type, written in order or by ranges, then committed.

* **In order** (a channel transfer, a streamed upload): the event loop calls
  :meth:`~PartialFile.append` per chunk (a copy into the one buffer, no system call);
  when it answers "full" it detaches a batch (:meth:`~PartialFile.take_batch`) that a
  writer thread ``pwrite``s, hashed in a second thread meanwhile (:mod:`.side_hash`),
  while the loop keeps receiving; at most one batch is in flight. The bytes on disk are
  always a prefix of the content (truncated back after a failed write or fsync), so a
  restart resumes from the file's length, re-hashing it in 1 MiB reads.
* **By ranges** (resumable uploads, chunks in any order): :meth:`~PartialFile.write_at`
  then :meth:`~PartialFile.mark_present`, which makes a range durable and records it in
  the sidecar. Bytes that arrive in order are hashed on the way (beside the write); any
  other range is hashed at commit by reading it from disk (one read pass, no copy).

:meth:`~PartialFile.commit` checks completeness and the SHA-256, then publishes the file
into its blob store (the atomic writer's publish step; identical content kept once).

Source: tus (offsets, expiry), git objects, magic-wormhole (verify, then rename).
"""

from __future__ import annotations

import os
import threading
import weakref
from dataclasses import dataclass
from functools import partial
from typing import Any

from loguru import logger

from rtc_worker.storage import locks
from rtc_worker.storage.atomic import write_all
from rtc_worker.storage.closing import Closing
from rtc_worker.storage.errors import HashMismatchError, as_disk_full
from rtc_worker.storage.metadata import ContentHasher, FileMetadata, hash_file
from rtc_worker.storage.record import PartialHome, Range, covered, merge_range, now_text
from rtc_worker.storage.side_hash import pwrite_counted, write_hashing
from rtc_worker.storage.space import ensure_room

__all__ = ["WRITE_BATCH_BYTES", "Batch", "PartialFile"]

WRITE_BATCH_BYTES = 1 << 20
"""Bytes :meth:`PartialFile.append` buffers before it answers "full" (1 MiB)."""


@dataclass(frozen=True, slots=True)
class Batch:
    """Bytes detached from a partial's buffer: they go to the file at ``offset``."""

    offset: int
    data: bytearray


class PartialFile(Closing):
    """An open partial file (see the module docstring); one writer, locked.

    Made by :meth:`BlobStore.open_partial` / :meth:`BlobStore.open_anonymous`.

    Attributes:
        key: its name in the store (``<key>.part``, sidecar ``<key>.json``).
        sha256: the announced digest, or ``None``.
        size: the announced size in bytes, or ``None`` (anonymous, unknown).
        name: the file's name as announced (recorded; used in DiskFullError).
        reserve_bytes: free bytes an in-order batch must leave on the disk (DiskFullError).

    States: open -> committed | discarded | closed. After a failed write or fsync of the
    in-order path (DiskFullError or another OSError) it is *failed*: the file was
    truncated to a good prefix, and only :meth:`close` (keep it for a resume) and
    :meth:`discard` remain. As a context manager, leaving the block calls :meth:`close`.
    """

    def __init__(
        self,
        *,
        home: PartialHome,
        lock_key: str,
        fd: int,
        key: str,
        sha256: str | None,
        size: int | None,
        name: str,
        persistent: bool,
        hasher: ContentHasher,
        held: int,
        ranges: list[Range] | None,
        sidecar: dict[str, Any] | None,
    ) -> None:
        self.key = key
        self.sha256 = sha256
        self.size = size
        self.name = name
        self.reserve_bytes = 0
        self._home = home
        self._fd = fd
        self._persistent = persistent  # has a sidecar and survives close()
        self._hasher = hasher
        self._hashed = hasher.size  # bytes [0, _hashed) went through the hasher, in order
        self._written = held  # in-order mode: bytes of the prefix on disk
        self._synced = held  # in-order mode: bytes known durable
        self._pending_at = held  # where the buffer (and the batch in flight) begin
        self._buffer = bytearray()
        self._in_flight = False
        self._ranges = ranges  # None: in-order mode; else the recorded ranges
        self._sidecar = sidecar
        self._lock = threading.RLock()
        self._state = "open"
        self._failed = False
        self._result: FileMetadata | None = None
        self._release = weakref.finalize(self, locks.release, fd, lock_key)

    def __repr__(self) -> str:
        return f"PartialFile(key={self.key!r}, size={self.size}, on_disk={self.on_disk})"

    def __exit__(self, *exc_info: object) -> None:
        """Close (keep the partial); an error of the close never hides the block's."""
        try:
            self.close()
        except OSError as close_exc:
            if exc_info[1] is None:
                raise
            logger.warning("closing partial {!r} failed: {}", self.name, close_exc)

    # ------------------------------------------------------------------ state

    @property
    def on_disk(self) -> int:
        """Bytes written to the file: the in-order prefix, or the recorded ranges' total."""
        if self._ranges is not None:
            return sum(high - low for low, high in self._ranges)
        return self._written

    @property
    def offset(self) -> int:
        """In order: where the next appended byte goes (on disk, in flight and buffered).
        By ranges: the end of the recorded range starting at 0."""
        if self._ranges is not None:
            return self._ranges[0][1] if self._ranges and self._ranges[0][0] == 0 else 0
        if self._failed:  # the good prefix kept; a buffer the loop still grew is dropped
            return self._written
        return self._pending_at + len(self._buffer)

    @property
    def ranges(self) -> list[Range]:
        """The byte ranges held, ``[(start, end), ...]`` (in order: ``[(0, on_disk)]``)."""
        if self._ranges is not None:
            return list(self._ranges)
        return [(0, self._written)] if self._written else []

    @property
    def closed(self) -> bool:
        """Whether it was closed, committed or discarded (the lock is released)."""
        return self._state in ("closed", "committed", "discarded")

    def _require_open(self) -> None:
        if self._state == "failed":
            raise ValueError(
                f"partial {self.name!r} failed on a write error; close() it and open it "
                f"again to resume at byte {self._written}"
            )
        if self._state != "open":
            raise ValueError(f"partial {self.name!r} is {self._state} (nothing more to write)")

    def hexdigest(self) -> str:
        """SHA-256 (lowercase hex) of the bytes appended in order so far, buffered ones too.

        Raises:
            ValueError: a write failed (the digest would not match the disk), a batch is
                in flight, or bytes were written by ranges (known only at commit).
        """
        if self._failed or self._in_flight or self._ranges is not None:
            raise ValueError(f"the digest of partial {self.name!r} is not known now")
        if not self._buffer:
            return self._hasher.hexdigest()
        hasher = self._hasher.copy()
        hasher.update(self._buffer)
        return hasher.hexdigest()

    # ------------------------------------------------------------------ in order

    def append(self, data: bytes | bytearray | memoryview) -> bool:
        """Buffer ``data`` (a copy; no system call). Cheap: call it from the event loop.

        Returns:
            True when the buffer holds :data:`WRITE_BATCH_BYTES` or more: take a batch
            and write it. Also True, without buffering, once a write failed: settle the
            failed write.

        Raises:
            ValueError: the bytes would go past the announced size (nothing buffered),
                the file is not open, or it is filled by ranges.
        """
        if self._state == "failed":
            return True
        self._require_open()
        if self._ranges is not None:
            raise ValueError(f"partial {self.name!r} is written by ranges")
        if self.size is not None and self.offset + len(data) > self.size:
            raise ValueError(
                f"writing {len(data)} bytes at offset {self.offset} would exceed the "
                f"announced size of {self.size} bytes"
            )
        self._buffer += data
        return len(self._buffer) >= WRITE_BATCH_BYTES

    def take_batch(self) -> Batch | None:
        """Detach the buffer as a batch for :meth:`write_batch` (from the event loop);
        ``None`` when nothing is buffered. Raises RuntimeError while one is in flight."""
        if self._in_flight:
            raise RuntimeError("a batch is already in flight")
        if not self._buffer or self._state != "open":
            return None
        batch = Batch(self._pending_at, self._buffer)
        self._buffer = bytearray()
        self._pending_at += len(batch.data)
        self._in_flight = True
        return batch

    def write_batch(self, batch: Batch) -> None:
        """Write and hash a batch at the end of the prefix (blocking: a writer thread).

        Raises:
            DiskFullError: ``ENOSPC``/``EDQUOT``; the file keeps the bytes fully written
                before the error (a resume continues there), and this object is failed.
            OSError: another write error, handled the same way.
            ValueError: the file is not open, or the batch is not the next one.
        """
        try:
            with self._lock:
                self._require_open()
                if batch.offset != self._written:
                    raise ValueError(f"batch at {batch.offset}, expected {self._written}")
                done = [0]  # bytes fully written (kept after a failed write; the hash is not)
                try:
                    if self.reserve_bytes:  # one fstatvfs per batch, not per chunk
                        ensure_room(self._fd, len(batch.data), self.reserve_bytes)
                    write = partial(pwrite_counted, self._fd, batch.data, batch.offset, done)
                    write_hashing(self._hasher, batch.data, write)
                except OSError as exc:
                    self._fail(exc, keep=self._written + done[0])
                self._hashed += len(batch.data)
                self._written += len(batch.data)
        finally:
            self._in_flight = False

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` and write a full batch at once (blocking; raises as
        :meth:`append` and :meth:`write_batch`)."""
        if self.append(data):
            self._write_buffer()

    def _write_buffer(self) -> None:
        if self._state == "failed":
            self._require_open()
        batch = self.take_batch()
        if batch is not None:
            self.write_batch(batch)

    def flush(self) -> None:
        """Write the buffer and ``fsync``: what was written becomes a durable prefix.

        Raises:
            ValueError: not open. DiskFullError, OSError: as :meth:`write_batch`; a failed
                fsync truncates back to the last durable length.
        """
        with self._lock:
            self._require_open()
            self._write_buffer()
            self._sync()

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:  # the written-back state of recent pages is unknown
            self._fail(exc, keep=self._synced)
        self._synced = self._written

    def _fail(self, exc: OSError, *, keep: int) -> None:
        """Enter the failed state, truncate to ``keep`` bytes (else the durable length)
        and raise ``exc`` (as DiskFullError when the disk is full)."""
        self._state = "failed"
        self._failed = True  # for good: the digest no longer matches what is kept
        self._buffer = bytearray()
        for length in dict.fromkeys((keep, self._synced)):
            try:
                os.ftruncate(self._fd, length)
                os.fsync(self._fd)
            except OSError as trunc_exc:
                logger.warning("could not truncate partial {!r}: {}", self.name, trunc_exc)
                continue
            self._written = length
            break
        else:
            self._written = min(keep, self._synced)
        self._pending_at = self._written
        logger.warning(
            "write to partial {!r} failed ({}); kept {} bytes", self.name, exc, self._written
        )
        raise as_disk_full(exc, self.name) from exc

    # ------------------------------------------------------------------ by ranges

    def write_at(self, offset: int, data: bytes | bytearray | memoryview) -> None:
        """Write ``data`` at ``offset`` (blocking; thread-safe). It counts as held only
        once :meth:`mark_present` records it.

        Raises:
            ValueError: not open, a negative offset, past the announced size, or bytes
                are buffered or in flight in order.
            DiskFullError, OSError: the write failed (the partial stays usable; the
                range is not recorded).
        """
        with self._lock:
            self._require_open()
            if offset < 0 or (self.size is not None and offset + len(data) > self.size):
                raise ValueError(f"{len(data)} bytes at {offset} do not fit in {self.size}")
            if self._ranges is None:
                if self._buffer or self._in_flight:
                    raise ValueError("bytes written in order are still buffered")
                self._ranges = [(0, self._written)] if self._written else []
            if offset < self._hashed:  # bytes the hasher saw are replaced: hash at commit
                self._hasher, self._hashed = ContentHasher(), 0
            hashing = offset == self._hashed  # continues the hashed prefix
            before, write = self._hasher.copy(), partial(write_all, self._fd, data, offset)
            try:  # the hash in a second thread meanwhile
                write_hashing(self._hasher if hashing else None, data, write)
            except OSError as exc:
                self._hasher = before  # the bytes are not held: nor hashed
                raise as_disk_full(exc, self.name) from exc
            self._hashed += len(data) if hashing else 0

    def mark_present(self, start: int, end: int) -> None:
        """Make ``[start, end)`` durable (``fsync``) and record it in the sidecar.

        Raises:
            ValueError: not open, or not written by ranges.
            DiskFullError, OSError: flushing or recording failed (nothing recorded).
        """
        with self._lock:
            self._require_open()
            if self._ranges is None:
                raise ValueError(f"partial {self.name!r} is written in order")
            try:
                os.fsync(self._fd)
            except OSError as exc:
                raise as_disk_full(exc, self.name) from exc
            ranges = merge_range(self._ranges, start, end)
            if self._persistent and self._sidecar is not None:
                payload = {**self._sidecar, "updated_at": now_text()}
                payload["ranges"] = [list(pair) for pair in ranges]
                self._home.write_sidecar(self.key, payload)
                self._sidecar = payload
            self._ranges = ranges

    # ------------------------------------------------------------------ finishing

    def verify(self, expected_sha256: str | None = None, *, mime: bool = True) -> FileMetadata:
        """Check that the content is complete and has the expected SHA-256.

        Writes the buffer and fsyncs; requires every byte of ``size``; hashes what was
        not hashed on the way by reading it from disk (one pass); compares with
        ``expected_sha256`` and the announced ``sha256`` (64 lowercase hex; each one
        given must match). Nothing more can be written afterwards: commit, close or
        discard it.

        Args:
            expected_sha256: the digest the content must have, or None.
            mime: detect the MIME type (loads libmagic); without it ``mime_type`` is "".

        Returns:
            The content's size, SHA-256 and MIME type (the same on every call).

        Raises:
            ValueError: not open, or not complete (the partial stays open and usable).
            RuntimeError: a batch is still in flight.
            HashMismatchError: the digest differs; the partial is removed.
            DiskFullError, OSError: the final write or fsync failed (a good prefix kept).
        """
        with self._lock:
            if self._state == "verified" and self._result is not None:
                meta = self._result
            else:
                self._require_open()
                if self._in_flight:
                    raise RuntimeError("a batch is still in flight")
                end = self._check_complete()
                if self._ranges is None:
                    self._write_buffer()
                    self._sync()
                else:
                    if os.fstat(self._fd).st_size > end:
                        os.ftruncate(self._fd, end)
                    os.fsync(self._fd)
                if self._hashed < end:
                    hash_file(self._fd, hasher=self._hasher, start=self._hashed, end=end)
                meta = self._hasher.finish(mime=mime)
                if meta.size != end:  # the file shrank under us
                    self.discard()
                    raise HashMismatchError(expected_sha256 or self.sha256 or "?", meta.sha256)
                self._state, self._result = "verified", meta
            for expected in (expected_sha256, self.sha256):
                if expected is not None and expected != meta.sha256:
                    logger.warning("sha256 mismatch for {!r}: got {}", self.name, meta.sha256)
                    self.discard()
                    raise HashMismatchError(expected, meta.sha256)
            return meta

    def commit(self, expected_sha256: str | None = None, *, mime: bool = True) -> FileMetadata:
        """:meth:`verify` the content, then publish it into the blob store (fsync, move
        to its object or drop it when the same content is stored, fsync both folders),
        remove the sidecar and release the lock.

        Args:
            expected_sha256: the digest the content must have, or None.
            mime: detect the MIME type (the storage service records it; a channel
                receiver does not need it and skips loading libmagic).

        Returns:
            The content's size, SHA-256 and MIME type ("" without ``mime``). Committing
            again returns it again.

        Raises:
            As :meth:`verify`; DiskFullError, OSError: publishing failed, the verified
            bytes are kept (close() it for a later resume).
        """
        if self._state == "committed" and self._result is not None:
            return self._result
        with self._lock:
            meta = self.verify(expected_sha256, mime=mime)
            try:
                self._home.publish_object(self._fd, self.key, meta.sha256, self.name)
            except OSError:
                self._state = "failed"  # close() keeps the bytes for a later resume
                raise
            self._state = "committed"
            if self._persistent:
                self._home.remove_sidecar(self.key)
            self._release()
            return meta

    def _check_complete(self) -> int:
        if self._ranges is None:
            end = self.offset
            if self.size is not None and end != self.size:
                raise ValueError(f"partial {self.name!r} holds {end} of {self.size} bytes")
            return end
        if self.size is None:
            raise ValueError("a partial written by ranges needs a size")
        if not covered(self._ranges, 0, self.size):
            raise ValueError(f"partial {self.name!r} holds {self.on_disk} of {self.size} bytes")
        return self.size

    def close(self) -> None:
        """Write the buffer, fsync and release the lock, keeping the partial (resume).

        Idempotent; nothing after :meth:`commit` or :meth:`discard`. A failed file is
        just released. A partial without a sidecar (anonymous) cannot be resumed:
        closing discards it.

        Raises:
            DiskFullError, OSError: the final write failed; the partial is truncated to
                a good prefix and the lock released anyway.
        """
        if self.closed:
            return
        if not self._persistent:
            self.discard()
            return
        with self._lock:  # a batch being written finishes first; a later one is refused
            try:
                if self._state == "open" and not self._in_flight and self._ranges is None:
                    self._write_buffer()
                    self._sync()
            finally:
                if self._state in ("open", "failed", "verified"):
                    self._state = "closed"
                self._release()

    def discard(self) -> None:
        """Remove the partial and its sidecar and release the lock (abandoned).

        Idempotent; nothing after :meth:`commit`. After :meth:`close` it is removed only
        if no other writer reopened it since.

        Raises:
            OSError: it cannot be removed.
        """
        if self._state in ("committed", "discarded"):
            return
        if self._state == "closed":
            self._state = "discarded"
            self._home.remove_partial_if_idle(self.key)
            return
        with self._lock:
            self._state = "discarded"
            self._buffer = bytearray()
            try:
                self._home.remove_part(self.key)
            finally:
                self._release()
