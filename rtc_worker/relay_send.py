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

An upload that fails for good stops the road (:meth:`Connection.relay_stop`), and so
does any other failure of the sender (a file that cannot be read or changed since it was
opened, an unexpected error): the receiver answers ``RELAY_ENDED`` with what it verified
and the connection decides what follows (the data channel from there, or a failure when
the relay road was forced, with :attr:`RelaySender.failure` as its code). The relay
objects still held are deleted at the end (best effort; they expire otherwise).

A chunk is sealed with the nonce of its index, so a tus upload resumed inside a chunk
seals that chunk a second time under the same key and nonce: that is safe only while
the plaintext is the same. The file's identity (:func:`file_identity`) is taken when it
is opened and checked after every read; a file that changed is refused
(:class:`FileChangedError`, ``FILE_CHANGED``) before anything read from it is sealed.

Source: DESIGN.md, "Roads"; the issue's relay road (tus upload, ranged download).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import BinaryIO

from loguru import logger

from protocol import ErrorCode, LocalProtocolError
from protocol.connection import Connection
from protocol.relay_crypto import TAG_BYTES, ChunkCipher, RelaySecret
from protocol.relay_messages import RelayPart
from protocol.sender import SenderState
from rtc_worker.relay_http import RelayHttp, RelayHttpError, RelayObject
from rtc_worker.transfer_io import Opener

__all__ = [
    "FILE_CHANGED",
    "LEAD_PARTS",
    "READ_FAILED",
    "SEAL_BATCH_BYTES",
    "FileChangedError",
    "FileIdentity",
    "RelaySender",
    "file_identity",
    "part_length",
    "sealed_chunks",
]

#: Plaintext read and sealed per thread call while a part uploads (4 MiB).
SEAL_BATCH_BYTES = 4 * 1024 * 1024
#: Most parts stored and announced but not yet on the receiver's disk.
LEAD_PARTS = 2
#: Longest wait for the relay objects' deletes at the end, seconds.
DELETE_TIMEOUT_S = 5.0
#: The sealing threads (not the default executor, which hashing shares).
_SEALER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="relay-seal")
#: :attr:`RelaySender.failure`: the file could not be opened or read.
READ_FAILED = "READ_FAILED"
#: :attr:`RelaySender.failure`: the file changed since it was opened (or announced).
FILE_CHANGED = "FILE_CHANGED"

FileIdentity = tuple[int, int, int, int, int]
"""What :func:`file_identity` records of an open file: ``(st_dev, st_ino, st_size,
st_mtime_ns, st_ctime_ns)``."""


class FileChangedError(OSError):
    """The file being sent is not the one opened: shorter than announced, or its
    identity (:func:`file_identity`: device, inode, size, modification and change times)
    differs from the one taken when it was opened. Code :data:`FILE_CHANGED`."""


def file_identity(fd: int) -> FileIdentity:
    """The identity of the open file ``fd`` (``os.fstat``): a write to it, a truncation
    or a ``utime`` changes it (``st_ctime_ns`` moves even when ``st_mtime_ns`` is set
    back).

    Raises:
        OSError: ``fstat`` failed.
    """
    st = os.fstat(fd)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


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
        failure: why this sender stopped the road, or None: the ``RelayHttpError``
            code of the upload, :data:`READ_FAILED`, :data:`FILE_CHANGED` or
            ``INTERNAL_ERROR`` (an unexpected error, logged by its type only).
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
        """Upload and announce the parts from plaintext ``offset`` (the receiver's, bytes)
        to the end, in the background. The first part starts at the chunk boundary at or
        below ``offset`` (PROTOCOL.md 2.6): a resume from a partial the data channel left
        is rarely chunk aligned, and the receiver keeps only the bytes from its offset."""
        self.received = self.start_offset = offset
        first = offset - offset % self.chunk_size
        self._task = asyncio.get_running_loop().create_task(self._run(first))

    def fetched(self, received: int) -> None:
        """The receiver holds ``received`` bytes on disk (its FILE_PROGRESS)."""
        self.received = max(self.received, received)
        self._room.set()

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
        handle: BinaryIO | None = None
        try:
            handle = await asyncio.to_thread(self.opener)
            identity = file_identity(handle.fileno())
            if identity[2] != self.size:
                raise FileChangedError(f"the file is {identity[2]} bytes, not {self.size}")
            secret = RelaySecret.generate()
            cipher = ChunkCipher(secret, self.sha256, self.size, self.chunk_size)
            while offset < self.size:
                await self._wait_for_room()
                length = min(self.part_bytes, self.size - offset)
                obj = await self._upload(handle.fileno(), identity, cipher, offset, length)
                self._owned.append(obj)
                part = RelayPart.of(
                    self.sha256, offset, length, self.chunk_size, secret, obj.upload_id, obj.token
                )
                try:
                    self.conn.relay_part(part)
                except LocalProtocolError as exc:
                    if self._relaying():
                        raise  # refused on the road: an error of ours, below
                    logger.debug("relay part not sent: the road ended meanwhile ({})", exc.code)
                    break
                self._ends.append(offset + length)
                self.bytes_announced += length
                await self.wake()
                offset += length
        except RelayHttpError as exc:
            logger.warning("relay upload failed: {}", exc)
            self._fail(exc.code)
        except FileChangedError as exc:
            logger.error("the file changed while it was sent by the relay road: {}", exc)
            self._fail(FILE_CHANGED)
        except OSError as exc:
            logger.error("reading the file to send failed: {}", exc)
            self._fail(READ_FAILED)
        except Exception as exc:  # never a silent end: the receiver would wait for parts
            # Its type only: an unexpected error's text or traceback may hold a secret.
            logger.error("the relay sender failed: {}", type(exc).__name__)
            self._fail(ErrorCode.INTERNAL_ERROR.value)
        finally:
            if handle is not None:
                await asyncio.to_thread(handle.close)
        await self.wake()

    def _relaying(self) -> bool:
        """Whether the transfer is still on the relay road (RELAY_STOP not yet sent)."""
        return self.conn.sender.state is SenderState.RELAYING

    def _fail(self, code: str) -> None:
        """Stop the road because of this sender (``code`` names why)."""
        if self._relaying():
            self.failure = code
        self._stop_road()

    def _stop_road(self) -> None:
        with contextlib.suppress(LocalProtocolError):  # the road already ended
            self.conn.relay_stop()

    async def _wait_for_room(self) -> None:
        """Wait until fewer than :data:`LEAD_PARTS` announced parts are not yet on the
        receiver's disk (its FILE_PROGRESS tells the end of every part it fetched)."""
        while sum(end > self.received for end in self._ends) >= LEAD_PARTS:
            self._room.clear()
            await self._room.wait()

    async def _upload(
        self, fd: int, identity: FileIdentity, cipher: ChunkCipher, offset: int, length: int
    ) -> RelayObject:
        first = offset // self.chunk_size
        last = (offset + length - 1) // self.chunk_size
        total = cipher.cipher_span(first, first, last + 1)[1]
        sealed = self.chunk_size + TAG_BYTES

        def pieces(start: int) -> AsyncIterator[bytes]:
            index = first + start // sealed
            return sealed_chunks(fd, cipher, index, last + 1, start % sealed, identity=identity)

        return await self.http.upload(total, pieces, name="relay")


async def sealed_chunks(
    fd: int,
    cipher: ChunkCipher,
    index: int,
    end: int,
    skip: int = 0,
    *,
    identity: FileIdentity | None = None,
) -> AsyncIterator[bytes]:
    """The sealed chunks ``[index, end)`` of the file ``fd``, less the first ``skip``
    bytes (a tus upload resumed inside a chunk). Chunks are read and sealed in batches
    of :data:`SEAL_BATCH_BYTES` in a thread, the next batch while this one is sent.

    Args:
        identity: the file's :func:`file_identity` when it was opened: checked after
            each batch is read and before it is sealed, so that a chunk sealed again
            (the same key and nonce) holds the same plaintext.

    Raises:
        FileChangedError: the file is shorter than announced, or its identity is not
            ``identity``.
        OSError: a read failed.
    """
    per_batch = max(1, SEAL_BATCH_BYTES // cipher.chunk_size)
    loop = asyncio.get_running_loop()

    def batch(start: int) -> asyncio.Future[list[bytes]]:
        stop = min(end, start + per_batch)
        return loop.run_in_executor(_SEALER, _seal, fd, cipher, start, stop, identity)

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


def _seal(
    fd: int, cipher: ChunkCipher, start: int, stop: int, identity: FileIdentity | None
) -> list[bytes]:
    """Read, then (the file unchanged) seal the chunks ``[start, stop)`` of the file
    ``fd`` (in a thread).

    Raises:
        FileChangedError: the file is shorter than announced, or not ``identity`` after
            the reads.
        OSError: a read failed.
    """
    plains = []
    for index in range(start, stop):
        want = cipher.plain_length(index)
        plain = os.pread(fd, want, index * cipher.chunk_size)
        if len(plain) != want:
            raise FileChangedError(f"the file changed while it was sent (chunk {index} is short)")
        plains.append(plain)
    if identity is not None and file_identity(fd) != identity:
        raise FileChangedError(f"the file changed while it was sent (chunks {start}-{stop - 1})")
    return [
        cipher.seal(index, plain) for index, plain in zip(range(start, stop), plains, strict=True)
    ]
