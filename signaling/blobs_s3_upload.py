"""A partial upload on S3: one S3 multipart upload, plus small piece objects.

Keys in the bucket, for the partial ``<key>`` (an upload id, or ``anon-<hex>``)::

    partial/<key>/info.json            {"size", "name", "part_size", "created_at",
                                        "updated_at", "staged"}: the partial's record
    partial/<key>/data                 the multipart upload's target (the staging object)
    partial/<key>/piece/<start>-<end>  bytes held outside a part (offsets, 16 digits)

The content is cut into **regions** of ``part_size`` bytes (at least 5 MiB, a multiple
of the upload's chunk size, large enough for 10,000 parts); region ``n`` (from 0) is
multipart part ``n + 1``. A write that covers a whole region becomes that part
(``UploadPart``) of the multipart upload to ``partial/<key>/data`` (when several
instances start one at once, every instance adopts the earliest: the one
``ListMultipartUploads`` lists first by initiation time and id, and the others' are
aborted by their makers before any part is sent); bytes that do not fill a region are
kept as a piece object (a write
that starts inside a region sends the rest of that region as one piece, then whole
regions as parts). After a restart, or on another instance, a resume continues from
``list_parts`` plus the pieces (tusd's s3store keeps its "incomplete part" as an object
the same way). At :meth:`S3Upload.verify` the regions still held
as pieces are assembled into their parts, the multipart upload is completed into the
staging object, its sha256 is computed while reading it back once, and
:meth:`S3Upload.commit` copies exactly that object (``CopySourceIfMatch`` its ETag) to
``blobs/<sha256>``, or drops it when that blob exists (dedupe). The bytes of a keyed
partial may come from several requests, instances and restarts, and a part's ETag is an
MD5 (collisions can be made), so a digest computed on the way is never trusted for it:
a blob's name is always the sha256 of the bytes it holds.

An anonymous partial (size unknown, one request, a random key no client can reach) has
no record: it is hashed while the bytes stream in and parts are sent as they come;
content smaller than one part stays in memory and is written straight to its blob at
commit.

S3 limits (source: Amazon S3 user guide, "Amazon S3 multipart upload limits"): parts
1..10,000, each at least 5 MiB but the last, at most 5 GiB; ``CopyObject`` up to 5 GiB.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

from loguru import logger

from rtc_worker.storage import ContentHasher, FileMetadata, HashMismatchError
from rtc_worker.storage.record import merge_range, now_text
from signaling.blobs import BlobNotFoundError, Range
from signaling.blobs_s3_calls import (
    PIECE_NAME,
    S3Calls,
    blob_key,
    data_key,
    info_key,
    partial_prefix,
    piece_key,
    staging_key,
)

__all__ = ["S3Upload"]


class S3Upload:
    """One partial upload on S3 (see the module docstring and
    :class:`signaling.blobs.BlobUpload`). Made by :class:`signaling.blobs_s3.S3Blobs`."""

    def __init__(
        self, calls: S3Calls, key: str, size: int | None, name: str, info: dict[str, Any]
    ) -> None:
        self.key = key
        self.size = size
        self.name = name
        self._calls = calls
        self._info = info
        self.part_size = int(info["part_size"])
        self._parts: dict[int, tuple[str, int]] = {}  # part number -> (ETag, bytes)
        self._pieces: dict[Range, str] = {}  # range -> object key, oldest first
        self._hasher = ContentHasher()  # anonymous: every byte appended, in order
        self._data_etag: str | None = None  # ETag of the staging object that was hashed
        self._buf = bytearray()  # anonymous: bytes appended, not yet in a part
        self._buf_start = 0
        self._state = "open"
        self._meta: FileMetadata | None = None
        self._small: bytes | None = None  # anonymous content kept for commit
        self._lock = asyncio.Lock()
        self._upload_id: str | None = None

    def __repr__(self) -> str:
        return f"S3Upload(key={self.key!r}, size={self.size}, parts={len(self._parts)})"

    @property
    def anonymous(self) -> bool:
        """Whether it has no record (content of unknown size, not resumable)."""
        return self.size is None

    @property
    def upload_id(self) -> str | None:
        """The S3 multipart upload id (``None`` before one is needed)."""
        return self._upload_id

    # ------------------------------------------------------------------ state

    def _held(self) -> list[Range]:
        ranges: list[Range] = []
        if self._info.get("staged") and self.size is not None:
            return merge_range([], 0, self.size)
        for number, (_, length) in self._parts.items():
            start = (number - 1) * self.part_size
            ranges = merge_range(ranges, start, start + length)
        for low, high in self._pieces:
            ranges = merge_range(ranges, low, high)
        return ranges

    @property
    def closed(self) -> bool:
        """See :attr:`signaling.blobs.BlobUpload.closed`."""
        return self._state in ("committed", "discarded", "closed")

    @property
    def offset(self) -> int:
        """See :attr:`signaling.blobs.BlobUpload.offset`."""
        if self.anonymous:
            return self._buf_start + len(self._buf)
        held = self._held()
        return held[0][1] if held and held[0][0] == 0 else 0

    async def load(self) -> None:
        """Read the parts (``list_parts``) and the pieces from the bucket, adding them
        to what this object knows (the durable record after a restart).

        Raises:
            BlobNotFoundError: the multipart upload is gone (aborted, or completed).
            BlobStoreError: the store failed.
        """
        if self.anonymous or self._info.get("staged"):
            return
        if self._upload_id is None:
            await self._adopt(create=False)
        if self._upload_id is not None:
            parts = await self._calls.list_parts(data_key(self.key), self._upload_id)
            self._parts.update((number, (etag, length)) for number, etag, length in parts)
        listed = await self._calls.list_keys(f"{partial_prefix(self.key)}piece/")
        pieces: dict[Range, str] = {}
        for name, _ in sorted(listed, key=lambda item: (item[1], item[0])):  # oldest first
            found = PIECE_NAME.fullmatch(name.rsplit("/", 1)[-1])
            if found:
                pieces[(int(found[1]), int(found[2]))] = name
        self._pieces = pieces  # the bucket's: another instance may have replaced some

    def _require_open(self) -> None:
        if self._state != "open":
            raise ValueError(f"partial {self.name!r} is {self._state} (nothing more to write)")

    # ------------------------------------------------------------------ writing

    async def _adopt(self, *, create: bool) -> None:
        """Adopt the partial's multipart upload: the earliest listed for its target
        (initiation time, then id), so that instances starting one at once agree; with
        ``create``, start one when there is none (and abort it when another instance's
        turns out to be earlier)."""
        target = data_key(self.key)

        async def listed() -> list[tuple[Any, str]]:
            found = await self._calls.list_multipart(target)
            return sorted((when, upload_id) for key, upload_id, when in found if key == target)

        found = await listed()
        if not found and create:
            mine = await self._calls.create_multipart(target)
            found = await listed() or [(None, mine)]
            if found[0][1] != mine:
                await self._calls.abort(target, mine)
        self._upload_id = found[0][1] if found else None

    async def _ensure_multipart(self) -> str:
        async with self._lock:
            if self._upload_id is None and self.anonymous:  # its key is private
                self._upload_id = await self._calls.create_multipart(data_key(self.key))
            elif self._upload_id is None:
                await self._adopt(create=True)
            assert self._upload_id is not None
            return self._upload_id

    async def _put(self, at: int, data: bytes, *, end: int = -1, source: str = "") -> None:
        """Store ``data`` at ``at`` (within one region), or the staged object ``source``
        holding ``[at, end)``: a part when it is the whole region, else a piece object."""
        number = at // self.part_size + 1
        region_start = (number - 1) * self.part_size
        region_end = region_start + self.part_size
        if self.size is not None:
            region_end = min(region_end, self.size)
        end = end if source else at + len(data)
        whole = at == region_start and (end == region_end or self.anonymous)
        if whole:
            upload_id = await self._ensure_multipart()
            target = data_key(self.key)
            if source:  # a copy inside the bucket
                etag = await self._calls.upload_part_copy(target, upload_id, number, source)
            else:
                etag = await self._calls.upload_part(target, upload_id, number, data)
            self._parts[number] = (etag, end - at)
            for low, high in [r for r in self._pieces if region_start <= r[0] < region_end]:
                if high <= region_end:
                    await self._calls.delete(self._pieces.pop((low, high)))
            return
        if number in self._parts:
            raise ValueError(
                f"bytes {region_start}..{region_end} were sent as one part; write them "
                f"again whole, from {region_start}"
            )
        name = piece_key(self.key, at, end)
        await (self._calls.copy(source, name, end - at) if source else self._calls.put(name, data))
        for low, high in [r for r in self._pieces if at <= r[0] and r[1] <= end]:
            older = self._pieces.pop((low, high))
            if older != name:  # covered by the new piece
                await self._calls.delete(older)
        self._pieces[(at, end)] = name  # the newest last: it wins at assembly

    async def _region_bytes(self, number: int) -> bytearray:
        """Region ``number``'s bytes from its pieces (the newest piece wins)."""
        start = (number - 1) * self.part_size
        stop = start + self.part_size
        if self.size is not None:
            stop = min(stop, self.size)
        data = bytearray(stop - start)
        filled: list[Range] = []
        for (low, high), name in list(self._pieces.items()):
            if high <= start or low >= stop:
                continue
            body = await self._calls.get_bytes(name)
            lo, hi = max(low, start), min(high, stop)
            if len(body) != high - low:
                raise ValueError(f"piece {low}..{high} holds {len(body)} bytes")
            data[lo - start : hi - start] = body[lo - low : hi - low]
            filled = merge_range(filled, lo, hi)
        if stop > start and filled != [(start, stop)]:
            raise ValueError(f"bytes {start}..{stop} are not all held; send them again")
        return data

    async def append(self, data: bytes | bytearray | memoryview) -> None:
        """See :meth:`signaling.blobs.BlobUpload.append` (one part per
        ``part_size`` bytes)."""
        self._require_open()
        if not self.anonymous:
            raise ValueError(f"partial {self.name!r} is written by ranges")
        self._hasher.update(data)
        self._buf += data
        while len(self._buf) > self.part_size:  # the last part may be any size: keep one
            chunk = bytes(self._buf[: self.part_size])
            await self._put(self._buf_start, chunk)
            del self._buf[: self.part_size]
            self._buf_start += self.part_size

    async def write_range(
        self, start: int, chunks: AsyncIterator[bytes], *, atomic: bool = False
    ) -> int:
        """See :meth:`signaling.blobs.BlobUpload.write_range`. ``atomic``: each region
        goes to a staging object first, copied into its part or piece (inside the
        bucket) only once ``chunks`` ended normally; the staging objects are removed
        either way."""
        self._require_open()
        if self.anonymous or self.size is None:
            raise ValueError(f"partial {self.name!r} is written in order")
        size, step = self.size, self.part_size
        if not 0 <= start <= size:
            raise ValueError(f"a range cannot start at {start} of {size} bytes")
        number = start // step + 1
        at, buf = start, bytearray()
        region_start = (number - 1) * step
        if start != region_start and number in self._parts:
            raise ValueError(
                f"bytes {region_start}..{region_start + step} were sent as one part; "
                f"write them again from {region_start}"
            )
        staged: list[tuple[int, int, str]] = []
        token = uuid.uuid4().hex

        async def put(at: int, data: bytes) -> None:
            if not atomic:
                return await self._put(at, data)
            name = staging_key(self.key, token, at, at + len(data))
            await self._calls.put(name, data)
            staged.append((at, at + len(data), name))

        position = start
        try:
            async for data in chunks:
                if position + len(data) > size:
                    raise ValueError(f"{position + len(data) - start} bytes at {start} > {size}")
                buf += data
                position += len(data)
                region_end = min((at // step + 1) * step, size)
                while at + len(buf) > region_end:  # a full region goes once more bytes come
                    cut = region_end - at
                    await put(at, bytes(buf[:cut]))
                    del buf[:cut]
                    at, region_end = region_end, min(region_end + step, size)
            if buf:
                await put(at, bytes(buf))
            for low, high, name in staged:  # the write ended: its bytes become held
                await self._put(low, b"", end=high, source=name)
        finally:
            for _, _, name in staged:
                with contextlib.suppress(OSError):
                    await self._calls.delete(name)
        await self.save_record()  # the partial's last change (its expiry counts from it)
        return position - start

    async def save_record(self) -> None:
        """Write the partial's record (``info.json``), now as its last change."""
        self._info["updated_at"] = now_text()
        payload = json.dumps(self._info, sort_keys=True).encode()
        await self._calls.put(info_key(self.key), payload)

    async def ranges(self) -> list[Range]:
        """See :meth:`signaling.blobs.BlobUpload.ranges` (``list_parts`` and pieces)."""
        if not self.anonymous and self._state == "open":
            await self.load()
        if self.anonymous:
            return [(0, self.offset)] if self.offset else []
        return self._held()

    # ------------------------------------------------------------------ finishing

    async def _complete(self) -> None:
        """Send the regions held as pieces as parts and complete the multipart upload
        into the staging object (recorded as ``staged``)."""
        assert self.size is not None
        upload_id = await self._ensure_multipart()
        if self.size == 0:  # no part to complete with: an empty object instead
            await self._calls.put(data_key(self.key), b"")
            await self._calls.abort(data_key(self.key), upload_id)
            self._info["staged"] = True
            await self.save_record()
            return
        count = max(1, -(-self.size // self.part_size))
        for number in range(1, count + 1):
            if number not in self._parts:
                data = await self._region_bytes(number)
                etag = await self._calls.upload_part(
                    data_key(self.key), upload_id, number, bytes(data)
                )
                self._parts[number] = (etag, len(data))
        parts = [(number, self._parts[number][0]) for number in range(1, count + 1)]
        await self._calls.complete(data_key(self.key), upload_id, parts)
        self._info["staged"] = True
        await self.save_record()
        for name in list(self._pieces.values()):
            await self._calls.delete(name)
        self._pieces.clear()

    async def _finish_anonymous(self) -> FileMetadata:
        meta = await asyncio.to_thread(self._hasher.finish)
        if self.upload_id is None:  # smaller than one part: kept for commit
            self._small = bytes(self._buf)
        else:
            if self._buf:
                await self._put(self._buf_start, bytes(self._buf))
            parts = sorted((n, etag) for n, (etag, _) in self._parts.items())
            etag = await self._calls.complete(data_key(self.key), self.upload_id, parts)
            self._info["staged"], self._data_etag = True, etag
        self._buf = bytearray()
        return meta

    async def _read_hash(self) -> FileMetadata:
        """Hash the staging object while reading it (its ETag kept for the copy)."""
        hasher = ContentHasher()
        etag, chunks = await self._calls.get_with_etag(data_key(self.key))
        async for chunk in chunks:
            await asyncio.to_thread(hasher.update, chunk)
        self._data_etag = etag
        return await asyncio.to_thread(hasher.finish)

    async def verify(self, expected_sha256: str | None = None) -> FileMetadata:
        """See :meth:`signaling.blobs.BlobUpload.verify`."""
        if self._meta is None:
            self._require_open()
            if self.anonymous:
                meta = await self._finish_anonymous()
            else:
                assert self.size is not None
                await self.load()
                held = self._held()
                if held != ([(0, self.size)] if self.size else []):
                    have = sum(high - low for low, high in held)
                    raise ValueError(f"partial {self.name!r} holds {have} of {self.size} bytes")
                if not self._info.get("staged"):
                    await self._complete()
                meta = await self._read_hash()
                if meta.size != self.size:
                    await self.discard()
                    raise HashMismatchError(expected_sha256 or "?", meta.sha256)
            self._state, self._meta = "verified", meta
        if expected_sha256 is not None and expected_sha256 != self._meta.sha256:
            logger.warning("sha256 mismatch for {!r}: got {}", self.name, self._meta.sha256)
            actual = self._meta.sha256
            await self.discard()
            raise HashMismatchError(expected_sha256, actual)
        return self._meta

    async def commit(self, expected_sha256: str | None = None) -> FileMetadata:
        """See :meth:`signaling.blobs.BlobUpload.commit`."""
        if self._state == "committed" and self._meta is not None:
            return self._meta
        meta = await self.verify(expected_sha256)
        target = blob_key(meta.sha256)
        if await self._calls.exists(target):
            logger.debug("blob {} already stored; dropping the partial", meta.sha256)
        elif self._small is not None:
            await self._calls.put(target, self._small)
        else:
            await self._calls.copy(data_key(self.key), target, meta.size, self._data_etag)
        self._state = "committed"
        await self._remove_all()
        return meta

    async def _remove_all(self) -> None:
        for target, upload_id, _ in await self._calls.list_multipart(partial_prefix(self.key)):
            await self._calls.abort(target, upload_id)
        for name, _ in await self._calls.list_keys(partial_prefix(self.key)):
            await self._calls.delete(name)
        self._pieces.clear()
        self._parts.clear()
        self._small, self._buf = None, bytearray()

    async def close(self) -> None:
        """See :meth:`signaling.blobs.BlobUpload.close` (everything written is already
        in the bucket; an anonymous partial is discarded)."""
        if self._state in ("committed", "discarded", "closed"):
            return
        if self.anonymous:
            await self.discard()
            return
        self._state = "closed"

    async def discard(self) -> None:
        """See :meth:`signaling.blobs.BlobUpload.discard`."""
        if self._state in ("committed", "discarded"):
            return
        self._state = "discarded"
        with contextlib.suppress(BlobNotFoundError):
            await self._remove_all()
