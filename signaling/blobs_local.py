"""The folder blob backend (the default): :class:`rtc_worker.storage.BlobStore` behind
the :mod:`signaling.blobs` interfaces.

Layout under the storage folder: ``blobs/ab/<sha256>`` (each distinct content once) and
``partial/<key>.part`` with its sidecar ``<key>.json`` (see
:mod:`rtc_worker.storage.blobs`). Behaviour is the file layer's: partials are locked
(one writer per partial across processes), objects appear by an atomic link, every
path is reached by descriptor. The blocking calls run in a thread.

Each write first asks ``room_check(bytes)``, the service's disk reserve, which raises
(DISK_FULL) when the bytes would eat into it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import BinaryIO

from rtc_worker.storage import BlobStore, FileMetadata, PartialFile, layout
from signaling.blobs import BlobNotFoundError, Range

__all__ = ["READ_BYTES", "FolderBlobs", "FolderReader", "FolderUpload"]

READ_BYTES = 1 << 20
"""Bytes read from disk per call off the event loop (1 MiB)."""


def _no_check(incoming: int) -> None:
    """The default room check: everything fits."""


class FolderReader:
    """Bytes ``[start, end)`` of one blob file (see :class:`signaling.blobs.BlobReader`)."""

    def __init__(self, file: BinaryIO, size: int, start: int, end: int) -> None:
        self.size, self.start, self.end = size, start, end
        self._file = file

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes, 1 MiB per read. Raises OSError."""
        left = self.end - self.start
        await asyncio.to_thread(self._file.seek, self.start)
        while left > 0:
            chunk = await asyncio.to_thread(self._file.read, min(left, READ_BYTES))
            if not chunk:
                raise OSError(f"the blob ended {left} bytes early")
            left -= len(chunk)
            yield chunk

    async def close(self) -> None:
        """Close the file (idempotent)."""
        await asyncio.to_thread(self._file.close)


class FolderUpload:
    """A :class:`rtc_worker.storage.PartialFile` behind :class:`signaling.blobs.BlobUpload`.

    Attributes:
        partial: the wrapped partial file (for the folder-only migration of old chunk
            folders).
    """

    def __init__(self, partial: PartialFile, room_check: Callable[[int], None]) -> None:
        self.partial = partial
        self.key = partial.key
        self.size = partial.size
        self.name = partial.name
        self._room = room_check

    @property
    def closed(self) -> bool:
        """See :attr:`signaling.blobs.BlobUpload.closed`."""
        return self.partial.closed

    @property
    def offset(self) -> int:
        """See :attr:`signaling.blobs.BlobUpload.offset`."""
        return self.partial.offset

    def _write_next_batch(self) -> None:
        batch = self.partial.take_batch()
        if batch is not None:
            self._room(len(batch.data))
            self.partial.write_batch(batch)

    async def append(self, data: bytes | bytearray | memoryview) -> None:
        """See :meth:`signaling.blobs.BlobUpload.append` (1 MiB batches)."""
        if self.partial.append(data):
            await asyncio.to_thread(self._write_next_batch)

    def _write_piece(self, offset: int, data: bytes) -> None:
        self._room(len(data))
        self.partial.write_at(offset, data)

    async def write_range(
        self, start: int, chunks: AsyncIterator[bytes], *, atomic: bool = False
    ) -> int:
        """See :meth:`signaling.blobs.BlobUpload.write_range` (always atomic: nothing is
        recorded when ``chunks`` raises)."""
        if start < 0:
            raise ValueError(f"a range cannot start at {start}")
        written = 0
        async for data in chunks:
            await asyncio.to_thread(self._write_piece, start + written, data)
            written += len(data)
        await asyncio.to_thread(self.partial.mark_present, start, start + written)
        return written

    async def ranges(self) -> list[Range]:
        """See :meth:`signaling.blobs.BlobUpload.ranges`."""
        return self.partial.ranges

    async def verify(self, expected_sha256: str | None = None) -> FileMetadata:
        """See :meth:`signaling.blobs.BlobUpload.verify`."""
        return await asyncio.to_thread(self._verify, expected_sha256)

    def _verify(self, expected_sha256: str | None) -> FileMetadata:
        self._write_next_batch()  # the in-order tail, within the room check
        return self.partial.verify(expected_sha256)

    async def commit(self, expected_sha256: str | None = None) -> FileMetadata:
        """See :meth:`signaling.blobs.BlobUpload.commit` (committing again returns the
        metadata again)."""
        if not self.partial.closed:
            await self.verify(expected_sha256)  # the in-order tail, within the room check
        return await asyncio.to_thread(self.partial.commit, expected_sha256)

    async def close(self) -> None:
        """See :meth:`signaling.blobs.BlobUpload.close`."""
        await asyncio.to_thread(self.partial.close)

    async def discard(self) -> None:
        """See :meth:`signaling.blobs.BlobUpload.discard`."""
        await asyncio.to_thread(self.partial.discard)


class FolderBlobs:
    """The local folder (see the module docstring and :class:`signaling.blobs.BlobBackend`).

    Args:
        root: the storage folder.
        partial_ttl_s: seconds a partial may stay untouched before :meth:`cleanup`.
        object_mode: permission bits of blobs.
        room_check: called with the byte count before each write; raises to refuse it.
    """

    kind = "folder"
    local_disk = True

    def __init__(
        self,
        root: Path,
        *,
        partial_ttl_s: float,
        object_mode: int = 0o600,
        room_check: Callable[[int], None] = _no_check,
    ) -> None:
        self.root = root
        self.partial_ttl_s = partial_ttl_s
        self.object_mode = object_mode
        self.room_check = room_check
        self._store: BlobStore | None = None

    @property
    def store(self) -> BlobStore:
        """The file layer's store (opened, creating its folders, on first use; blocking)."""
        if self._store is None:
            self._store = BlobStore(
                self.root,
                objects_dir=layout.SERVICE_BLOBS_DIR,
                partial_dir=layout.PARTIAL_DIR,
                partial_ttl_s=self.partial_ttl_s,
                object_mode=self.object_mode,
            )
        return self._store

    async def open(self) -> None:
        """Create the folders. Raises OSError."""
        await asyncio.to_thread(lambda: self.store)

    async def close(self) -> None:
        """Nothing to release: the store holds no descriptor between calls."""

    async def ping(self) -> None:
        """Check that the blobs folder is there. Raises OSError."""
        await asyncio.to_thread(os.stat, self.root / layout.SERVICE_BLOBS_DIR)

    def location(self, sha256: str) -> str:
        """``blobs/ab/<sha256>``. Raises ValueError."""
        return "/".join((layout.SERVICE_BLOBS_DIR, *BlobStore.object_parts(sha256)))

    async def has(self, sha256: str) -> bool:
        """See :meth:`signaling.blobs.BlobBackend.has`."""
        return await asyncio.to_thread(self.store.has, sha256)

    async def size(self, sha256: str) -> int | None:
        """See :meth:`signaling.blobs.BlobBackend.size`."""
        return await asyncio.to_thread(self.store.size, sha256)

    async def open_reader(
        self, sha256: str, start: int = 0, end: int | None = None
    ) -> FolderReader:
        """See :meth:`signaling.blobs.BlobBackend.open_reader`."""
        try:
            file = await asyncio.to_thread(self.store.open_object, sha256)
        except FileNotFoundError:
            raise BlobNotFoundError(f"no blob {sha256}") from None
        try:
            size = (await asyncio.to_thread(os.fstat, file.fileno())).st_size
            stop = size if end is None else end
            if not 0 <= start <= stop <= size:
                raise ValueError(f"range [{start}, {stop}) is not within {size} bytes")
        except BaseException:
            await asyncio.to_thread(file.close)
            raise
        return FolderReader(file, size, start, stop)

    async def remove(self, sha256: str) -> bool:
        """See :meth:`signaling.blobs.BlobBackend.remove`."""
        return await asyncio.to_thread(self.store.remove, sha256)

    async def hashes(self) -> list[str]:
        """See :meth:`signaling.blobs.BlobBackend.hashes` (every blob)."""
        return await asyncio.to_thread(lambda: list(self.store.objects()))

    async def new_anonymous(self, name: str) -> FolderUpload:
        """See :meth:`signaling.blobs.BlobBackend.new_anonymous`."""
        partial = await asyncio.to_thread(self.store.open_anonymous, name, None)
        return FolderUpload(partial, self.room_check)

    async def open_upload(self, key: str, size: int, name: str, *, align: int = 1) -> FolderUpload:
        """See :meth:`signaling.blobs.BlobBackend.open_upload` (``align`` is not needed:
        the file is written at any offset)."""
        partial = await asyncio.to_thread(self.store.open_partial, key, size, name, by_ranges=True)
        return FolderUpload(partial, self.room_check)

    async def upload_ranges(self, key: str) -> list[Range]:
        """See :meth:`signaling.blobs.BlobBackend.upload_ranges`."""
        return await asyncio.to_thread(self.store.partial_ranges, key)

    async def remove_upload(self, key: str) -> bool:
        """See :meth:`signaling.blobs.BlobBackend.remove_upload`."""
        return await asyncio.to_thread(self.store.remove_partial_if_idle, key)

    async def upload_keys(self) -> list[str]:
        """See :meth:`signaling.blobs.BlobBackend.upload_keys`."""
        return await asyncio.to_thread(self.store.partial_keys)

    async def partial_bytes(self) -> int:
        """See :meth:`signaling.blobs.BlobBackend.partial_bytes`."""
        return await asyncio.to_thread(self.store.total_partial_bytes)

    async def drop_orphans(self) -> int:
        """Remove the anonymous partials no process holds (a crash's leftovers)."""

        def drop() -> int:
            keys = [k for k in self.store.partial_keys() if k.startswith("anon-")]
            return sum(self.store.remove_partial_if_idle(key) for key in keys)

        return await asyncio.to_thread(drop)

    async def cleanup(self, now: float | None = None) -> int:
        """See :meth:`signaling.blobs.BlobBackend.cleanup` (:meth:`BlobStore.cleanup`)."""
        return await asyncio.to_thread(self.store.cleanup, now)
