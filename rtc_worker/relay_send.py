"""The relay road's sender: the file encrypted part by part and uploaded as relay
objects, each announced to the receiver with ``RELAY_PART`` as soon as it is stored.

One :class:`RelaySender` per file and relay session. A fresh
:class:`~protocol.relay_crypto.RelaySecret` seals the file in chunks of ``chunk_size``
plaintext bytes (:class:`~protocol.relay_crypto.ChunkCipher`, AES-256-GCM, the STREAM
construction); a part of ``part_bytes`` plaintext bytes (whole chunks) is one tus upload
(:meth:`RelayHttp.upload`), streamed from the file: the chunks are read and sealed in
batches of :data:`SEAL_BATCH_BYTES` in a thread, one batch ahead of the upload, so
neither the file nor a part is ever whole in memory. When a part is stored, the
connection sends its ``RELAY_PART`` (:meth:`Connection.relay_part`) and the next part
uploads while the receiver fetches it; at most :data:`LEAD_PARTS` parts are stored and
not yet on the receiver's disk (its ``FILE_PROGRESS``).

An upload that fails for good stops the road (:meth:`Connection.relay_stop`); the
receiver answers ``RELAY_ENDED`` with what it verified and the connection decides what
follows (the data channel from there, or a failure when the relay road was forced).
The relay objects still held are deleted at the end (best effort; they expire
otherwise).

Source: DESIGN.md, "Roads"; the issue's relay road (tus upload, ranged download).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor

from loguru import logger

from protocol import LocalProtocolError
from protocol.connection import Connection
from protocol.relay_crypto import TAG_BYTES, ChunkCipher, RelaySecret
from protocol.relay_messages import RelayPart
from rtc_worker.relay_http import RelayHttp, RelayHttpError, RelayObject
from rtc_worker.transfer_io import Opener

__all__ = ["LEAD_PARTS", "SEAL_BATCH_BYTES", "RelaySender", "part_length", "sealed_chunks"]

#: Plaintext read and sealed per thread call while a part uploads (4 MiB).
SEAL_BATCH_BYTES = 4 * 1024 * 1024
#: Most parts stored and announced but not yet on the receiver's disk.
LEAD_PARTS = 2
#: Longest wait for the relay objects' deletes at the end, seconds.
DELETE_TIMEOUT_S = 5.0
#: The sealing threads (not the default executor, which hashing shares).
_SEALER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="relay-seal")


def part_length(part_mb: int, chunk_size: int) -> int:
    """Plaintext bytes of a relay part: ``part_mb`` MB (10^6 bytes) rounded down to
    whole chunks of ``chunk_size`` bytes, at least one chunk."""
    return max(1, part_mb * 1_000_000 // chunk_size) * chunk_size


class RelaySender:
    """Uploads one file's relay parts and hands each to the connection.

    Args:
        conn: the sender's connection (its transfer is on the relay road).
        http: the storage service's relay client.
        opener: opens the file being sent (a new file object each call).
        sha256 / size: the file's, as FILE_META announced them (size in bytes).
        chunk_size: plaintext bytes per sealed chunk.
        part_bytes: plaintext bytes per relay object (a multiple of ``chunk_size``).
        wake: drains the connection after a part was handed to it.

    Attributes:
        bytes_announced: plaintext bytes of the parts announced (RELAY_PART sent).
        start_offset: where the road started (the receiver's offset), or None before.
        received: plaintext bytes the receiver holds (its latest FILE_PROGRESS).
        failure: the ``RelayHttpError`` code of the upload that stopped the road, or
            None.
    """

    def __init__(
        self,
        conn: Connection,
        http: RelayHttp,
        opener: Opener,
        sha256: str,
        size: int,
        *,
        chunk_size: int,
        part_bytes: int,
        wake: Callable[[], Awaitable[None]],
    ) -> None:
        if part_bytes % chunk_size:
            raise ValueError("a relay part holds whole chunks")
        self.conn, self.http, self.opener = conn, http, opener
        self.sha256, self.size = sha256, size
        self.chunk_size, self.part_bytes = chunk_size, part_bytes
        self.wake = wake
        self.bytes_announced = 0
        self.start_offset: int | None = None
        self.failure: str | None = None
        self._owned: list[RelayObject] = []
        self._ends: list[int] = []  # plaintext end of each announced part
        self.received = 0
        self._room = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self, offset: int) -> None:
        """Upload and announce the parts from plaintext ``offset`` (the receiver's, chunk
        aligned) to the end, in the background."""
        self.received = self.start_offset = offset
        self._task = asyncio.get_running_loop().create_task(self._run(offset))

    def fetched(self, received: int) -> None:
        """The receiver holds ``received`` bytes on disk (its FILE_PROGRESS)."""
        self.received = max(self.received, received)
        self._room.set()

    @property
    def running(self) -> bool:
        """True while parts are being uploaded."""
        return self._task is not None and not self._task.done()

    async def stop(self) -> None:
        """Stop uploading (the transfer left the relay road or ended)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def discard(self) -> None:
        """Stop, then delete every relay object this sender stored (best effort,
        bounded by :data:`DELETE_TIMEOUT_S`; an object not deleted expires). The
        receiver deletes the parts it verified too; a second delete is harmless."""
        await self.stop()
        owned, self._owned = self._owned, []
        if not owned:
            return
        deletes = [self.http.delete(obj.upload_id, obj.token) for obj in owned]
        try:
            async with asyncio.timeout(DELETE_TIMEOUT_S):
                await asyncio.gather(*deletes)
        except TimeoutError:
            logger.info("relay objects not deleted in time: they expire")

    # ------------------------------------------------------------------ the pipeline

    async def _run(self, offset: int) -> None:
        secret = RelaySecret.generate()
        cipher = ChunkCipher(secret, self.sha256, self.size, self.chunk_size)
        handle = await asyncio.to_thread(self.opener)
        try:
            while offset < self.size:
                await self._wait_for_room()
                length = min(self.part_bytes, self.size - offset)
                obj = await self._upload(handle.fileno(), cipher, offset, length)
                self._owned.append(obj)
                part = RelayPart.of(
                    self.sha256, offset, length, self.chunk_size, secret, obj.upload_id, obj.token
                )
                try:
                    self.conn.relay_part(part)
                except LocalProtocolError as exc:  # the road ended meanwhile
                    logger.debug("relay part not sent: {}", exc)
                    return
                self._ends.append(offset + length)
                self.bytes_announced += length
                await self.wake()
                offset += length
        except RelayHttpError as exc:
            logger.warning("relay upload failed: {}", exc)
            self.failure = exc.code
            self._stop_road()
        except OSError as exc:
            logger.error("reading the file to send failed: {}", exc)
            self.failure = "READ_FAILED"
            self._stop_road()
        finally:
            await asyncio.to_thread(handle.close)
        await self.wake()

    def _stop_road(self) -> None:
        with contextlib.suppress(LocalProtocolError):  # the road already ended
            self.conn.relay_stop()

    async def _wait_for_room(self) -> None:
        """Wait until fewer than :data:`LEAD_PARTS` announced parts are not yet on the
        receiver's disk (its FILE_PROGRESS tells the end of every part it fetched)."""
        while sum(end > self.received for end in self._ends) >= LEAD_PARTS:
            self._room.clear()
            await self._room.wait()

    async def _upload(self, fd: int, cipher: ChunkCipher, offset: int, length: int) -> RelayObject:
        first = offset // self.chunk_size
        last = (offset + length - 1) // self.chunk_size
        total = cipher.cipher_span(first, first, last + 1)[1]
        sealed = self.chunk_size + TAG_BYTES

        def pieces(start: int) -> AsyncIterator[bytes]:
            index = first + start // sealed
            return sealed_chunks(fd, cipher, index, last + 1, start % sealed)

        return await self.http.upload(total, pieces, name="relay")


async def sealed_chunks(
    fd: int, cipher: ChunkCipher, index: int, end: int, skip: int = 0
) -> AsyncIterator[bytes]:
    """The sealed chunks ``[index, end)`` of the file ``fd``, less the first ``skip``
    bytes (a tus upload resumed inside a chunk). Chunks are read and sealed in batches
    of :data:`SEAL_BATCH_BYTES` in a thread, the next batch while this one is sent.

    Raises:
        OSError: a read failed or the file is shorter than announced.
    """
    per_batch = max(1, SEAL_BATCH_BYTES // cipher.chunk_size)
    loop = asyncio.get_running_loop()

    def batch(start: int) -> asyncio.Future[list[bytes]]:
        stop = min(end, start + per_batch)
        return loop.run_in_executor(_SEALER, _seal, fd, cipher, start, stop)

    upcoming = batch(index)
    try:
        while index < end:
            chunks = await upcoming
            index += len(chunks)
            if index < end:
                upcoming = batch(index)
            for chunk in chunks:
                if skip:
                    chunk, skip = chunk[skip:], 0
                yield chunk
    finally:
        if not upcoming.done():
            upcoming.cancel()


def _seal(fd: int, cipher: ChunkCipher, start: int, stop: int) -> list[bytes]:
    """Read and seal the chunks ``[start, stop)`` of the file ``fd`` (in a thread).

    Raises:
        OSError: a read failed, or the file is shorter than announced (it changed).
    """
    sealed = []
    for index in range(start, stop):
        want = cipher.plain_length(index)
        plain = os.pread(fd, want, index * cipher.chunk_size)
        if len(plain) != want:
            raise OSError(f"the file changed while it was sent (chunk {index} is short)")
        sealed.append(cipher.seal(index, plain))
    return sealed
