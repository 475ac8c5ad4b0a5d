"""File transfers' I/O on one data channel: the receiver's store, the sender's stream.

:class:`TransferIO` performs the transfer actions a :class:`~protocol.connection.Connection`
queues, and reports their outcomes back to it; it never decides anything about the protocol.

Receiving (CheckStore, Append, Finish, Discard): the store is looked up and partials
opened through :class:`~rtc_worker.holdings.Holdings` for the connection's principal
(its own content and partial, its quota, the disk's reserve); one
:class:`~rtc_worker.storage.PartialFile` per transfer holds the one buffer; each chunk
is appended on the event loop (a copy, no system call) and every
:data:`~rtc_worker.storage.WRITE_BATCH_BYTES` a writer thread hashes and writes the
batch while the loop keeps receiving. At most one batch is in flight; its outcome is
reported as ``Written`` (bytes on disk) or ``StoreFailed`` (a full disk is an ordinary
outcome, not a side door). Proof of possession (ReadStoredRanges, AwaitProof,
RecordOwnership): the asked ranges of the held copy are read in a thread, the deadline
is a task, and what the principal now owns is recorded (:class:`~rtc_worker.holdings.Mine`).

Sending (StreamFrom, ReadFileRanges): the asked ranges of a proof are read from the
file being sent; the file is read in 1 MiB blocks in a thread and cut into chunks
the connection lets through (:meth:`Connection.send_chunk`), paced on the channel's
``bufferedAmount`` (:meth:`FrameChannel.drained`); never whole in memory.

Source: DESIGN.md, "A channel transfer"; aiortc's datachannel-filexfer example.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import BinaryIO, Literal, get_args

from loguru import logger

from protocol import FileMeta, FileMetaLegacy, TransferErrorCode
from protocol.connection import Connection
from protocol.events import (
    Append,
    AwaitProof,
    CheckStore,
    Discard,
    FileRanges,
    FileToSend,
    Finish,
    ProofTimedOut,
    ReadFileRanges,
    ReadStoredRanges,
    RecordOwnership,
    Stored,
    StoredRanges,
    StoreFailed,
    StoreHas,
    StoreOffset,
    StreamFrom,
    Written,
)
from rtc_worker.holdings import Holdings, QuotaExceededError, ranges_digest
from rtc_worker.rtc import HIGH_WATER_BYTES, LOW_WATER_BYTES, FrameChannel
from rtc_worker.storage import (
    BlobStore,
    DiskFullError,
    HashMismatchError,
    PartialBusyError,
    PartialFile,
    StorageError,
    hash_file,
)

__all__ = [
    "READ_BLOCK_BYTES",
    "STALE_AFTER_S",
    "TRANSFER_ACTIONS",
    "Opener",
    "PartialRegistry",
    "TransferIO",
    "file_to_send",
    "path_opener",
]

#: Files are read in blocks of this many bytes, in a thread.
READ_BLOCK_BYTES = 1024 * 1024
#: A receive with no chunk for this long may be taken over by a newer connection
#: sending the same content (the old peer is gone without us noticing), seconds.
STALE_AFTER_S = 5.0
#: Threads that write received batches: not the default executor, which hashing, ZIP
#: building and store look-ups share, so a busy pool never stalls a transfer.
_WRITER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="transfer-writer")

#: Opens the file to send (a new file object each call; the caller closes it).
Opener = Callable[[], BinaryIO]
TransferAction = (
    CheckStore | Append | Finish | Discard | ReadStoredRanges | RecordOwnership | AwaitProof
    | ReadFileRanges
)  # fmt: skip
#: The actions :meth:`TransferIO.perform` takes (use with ``isinstance``).
TRANSFER_ACTIONS: tuple[type[TransferAction], ...] = get_args(TransferAction)


def path_opener(path: Path) -> Opener:
    """An :data:`Opener` of a local file (the client's own files)."""
    return lambda: path.open("rb")


async def file_to_send(opener: Opener, name: str) -> FileToSend:
    """What FILE_META announces for the file ``opener`` opens: ``name``, its size and
    sha256 (hashed by descriptor in a thread, 1 MiB reads).

    Raises:
        OSError: the file cannot be read (StorageError through a SafeRoot opener).
    """

    def measure() -> FileToSend:
        with opener() as handle:
            size = os.fstat(handle.fileno()).st_size
            return FileToSend(name, size, hash_file(handle.fileno()).hexdigest())

    return await asyncio.to_thread(measure)


def _file_digest(opener: Opener, action: ReadFileRanges) -> str | None:
    with opener() as handle:
        return ranges_digest(handle.fileno(), action.request)


class PartialRegistry:
    """Which :class:`TransferIO` of this process is writing each partial file.

    When a client reconnects before the worker noticed the old connection died, the new
    FILE_META finds its partial still open: the old transfer is stopped (its partial
    kept) so the new one resumes from what is on disk. A live transfer is never taken
    over.
    """

    def __init__(self) -> None:
        self._holders: dict[str, TransferIO] = {}

    def claim(self, key: str, holder: TransferIO) -> None:
        """Record that ``holder`` writes the partial ``key``."""
        self._holders[key] = holder

    def release(self, key: str, holder: TransferIO) -> None:
        """Forget the claim if ``holder`` still holds it."""
        if self._holders.get(key) is holder:
            del self._holders[key]

    def pending_bytes(self) -> int:
        """Bytes the open receives still expect (announced size minus what is held)."""
        return sum(holder.remaining for holder in set(self._holders.values()))

    async def preempt(self, key: str, holder: TransferIO) -> bool:
        """Stop another holder's stale transfer of ``key`` (the same principal's partial,
        keys are per principal): True when one was stopped."""
        current = self._holders.get(key)
        if current is None or current is holder or not current.stale:
            return False
        await current.abort("superseded by a newer transfer of the same content")
        return self._holders.get(key) is not current


class TransferIO:
    """Performs one connection's transfer actions against a blob store and a channel.

    Args:
        conn: the connection whose actions these are (outcomes are reported to it).
        channel: the data channel.
        store: where received files go (partials and verified objects).
        registry: the process-wide :class:`PartialRegistry` of ``store``.
        holdings: what each principal holds in ``store`` and its bounds (a worker's);
            None: ``store`` is ours alone (a client's).
        wake: called after a background step queued outputs (the adapter then drains
            the connection).
        high_water / low_water: flow-control marks on ``bufferedAmount``, bytes.
        counted: told the file bytes taken in (``"received"``) and put on the channel
            (``"sent"``): :meth:`rtc_worker.metrics.WorkerMetrics.channel_bytes`; default: none.

    Attributes:
        bytes_sent: bytes of chunks put on the channel, over this object's life.
    """

    def __init__(
        self,
        conn: Connection,
        channel: FrameChannel,
        store: BlobStore,
        *,
        registry: PartialRegistry,
        wake: Callable[[], Awaitable[None]],
        holdings: Holdings | None = None,
        high_water: int = HIGH_WATER_BYTES,
        low_water: int = LOW_WATER_BYTES,
        counted: Callable[[Literal["received", "sent"], int], None] = lambda _way, _n: None,
    ) -> None:
        self.conn = conn
        self.channel = channel
        self.store = store
        self.registry = registry
        self.holdings = holdings or Holdings.single_owner(store)
        self.mine = self.holdings.mine(lambda: conn.principal)
        self._opened: set[str] = set()  # partial keys opened on this connection
        self._deadline: asyncio.Task[None] | None = None
        self.wake = wake
        self.high_water = high_water
        self.low_water = low_water
        self.bytes_sent = 0
        self.counted = counted
        self._partial: PartialFile | None = None
        self._serial = 0
        self._writing: asyncio.Future[None] | None = None
        self._last_chunk_at = time.monotonic()
        self._source: Opener | None = None
        self._stream: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    # ------------------------------------------------------------------ receiving

    @property
    def stale(self) -> bool:
        """Whether a newer transfer may take it over: channel closed, or idle STALE_AFTER_S s."""
        idle = time.monotonic() - self._last_chunk_at
        return self.channel.closed.is_set() or idle > STALE_AFTER_S

    @property
    def in_progress(self) -> int:
        """Files being received or sent on this channel now (0, 1 or 2)."""
        sending = self._stream is not None and not self._stream.done()
        return (self._partial is not None) + sending

    @property
    def remaining(self) -> int:
        """Bytes the open receive still expects (0 when none is open)."""
        partial = self._partial
        if partial is None or partial.size is None:
            return 0
        return max(0, partial.size - partial.offset)

    async def relay_partial(self, serial: int) -> PartialFile | None:
        """(:mod:`rtc_worker.relay_fetch`) Transfer ``serial``'s partial, settled; marks it live."""
        async with self._lock:
            self._last_chunk_at = time.monotonic()
            return self._partial if serial == self._serial and await self._settle() else None

    def _report(self, outcome: object) -> None:
        self.conn.report(outcome, time.monotonic())

    async def perform(self, action: TransferAction) -> None:
        """Perform one transfer action and report its outcome (in the caller's drain)."""
        if isinstance(action, ReadFileRanges):  # the sender's side: no partial involved
            await self._prove_file(action)
            return
        async with self._lock:  # never while a preemption closes our partial
            match action:
                case Append():
                    await self._append(action)
                case CheckStore():
                    await self._check(action)
                case Finish():
                    await self._finish(action)
                case Discard(transfer=serial, keep=keep):
                    if serial == self._serial:
                        await self._close(keep=keep)
                case ReadStoredRanges(transfer=serial, sha256=sha, size=size, request=req):
                    digest = await asyncio.to_thread(self.holdings.stored_digest, sha, size, req)
                    self._report(StoredRanges(serial, digest))
                case RecordOwnership(sha256=sha):
                    await asyncio.to_thread(self.mine.record, sha)
                case AwaitProof(transfer=serial, timeout_s=timeout_s):
                    self._stop_deadline()
                    self._deadline = asyncio.get_running_loop().create_task(
                        self._expire(serial, timeout_s)
                    )

    async def _check(self, action: CheckStore) -> None:
        meta, serial = action.meta, action.transfer
        self._serial, self._last_chunk_at = serial, time.monotonic()
        principal, pending = self.conn.principal, self.registry.pending_bytes()
        try:
            if isinstance(meta, FileMetaLegacy):
                self._partial = await asyncio.to_thread(
                    lambda: self.holdings.open_anonymous(meta.name, meta.size, pending=pending)
                )
                self._report(StoreOffset(serial, 0))
                return
            if await asyncio.to_thread(self.mine.owns, meta.sha256, meta.size):
                self._report(StoreHas(serial))
                return
            partial = await self._open(meta, principal, pending)
        except PartialBusyError:
            self._fail(serial, "another transfer of this content is in progress")
            return
        except QuotaExceededError as exc:
            self._fail(serial, exc.detail, TransferErrorCode.QUOTA_EXCEEDED)
            return
        except DiskFullError:
            self._fail(serial, "no space left on the receiver", TransferErrorCode.DISK_FULL)
            return
        except Exception as exc:  # EIO, EACCES, ESTALE...: refuse, never get stuck
            logger.exception("store failed for {}", meta.name)
            self._fail(serial, f"receiver storage error: {type(exc).__name__}")
            return
        self._partial = partial
        self._opened.add(partial.key)
        self.registry.claim(partial.key, self)
        if partial.offset:
            logger.info("resuming {} at {} of {} bytes", meta.name, partial.offset, meta.size)
        self._report(StoreOffset(serial, partial.offset))

    async def _expire(self, serial: int, timeout_s: float) -> None:
        """The proof deadline of transfer ``serial`` (dropped when the proof came first)."""
        await asyncio.sleep(timeout_s)
        self._report(ProofTimedOut(serial))
        await self.wake()

    def _stop_deadline(self) -> None:
        if self._deadline is not None and not self._deadline.done():
            self._deadline.cancel()
        self._deadline = None

    async def _open(self, meta: FileMeta, principal: str, pending: int) -> PartialFile:
        holdings = self.holdings

        def open_partial() -> PartialFile:
            return holdings.open_partial(
                principal, meta.sha256, meta.size, meta.name, pending=pending
            )

        try:
            return await asyncio.to_thread(open_partial)
        except PartialBusyError:
            key = holdings.partial_key(principal, meta.sha256)
            if not await self.registry.preempt(key, self):
                raise
            return await asyncio.to_thread(open_partial)

    def _fail(
        self, serial: int, detail: str, code: TransferErrorCode = TransferErrorCode.CANCELLED
    ) -> None:
        self._report(StoreFailed(serial, code, detail))

    async def _append(self, action: Append) -> None:
        partial = self._partial
        if partial is None or action.transfer != self._serial:
            return  # the transfer already ended (the connection drops what follows)
        self._last_chunk_at = time.monotonic()
        self.counted("received", len(action.data))
        if partial.append(action.data):
            await self._settle()
            if self._partial is partial:
                self._start_write(partial)

    def _start_write(self, partial: PartialFile) -> None:
        batch = partial.take_batch()
        if batch is not None:
            loop = asyncio.get_running_loop()
            self._writing = loop.run_in_executor(_WRITER, partial.write_batch, batch)

    async def _settle(self) -> bool:
        """Wait for the write in flight and report it: Written, or StoreFailed (the
        connection then discards the partial, keeping what reached the disk)."""
        writing, self._writing = self._writing, None
        partial = self._partial
        if writing is None or partial is None:
            return True
        try:
            await writing
        except DiskFullError:
            self._fail(self._serial, "no space left on the receiver", TransferErrorCode.DISK_FULL)
            return False
        except Exception as exc:
            logger.exception("writing {} failed", partial.name)
            self._fail(self._serial, f"receiver storage error: {type(exc).__name__}")
            return False
        self._report(Written(self._serial, partial.on_disk))
        return True

    async def _finish(self, action: Finish) -> None:
        partial, serial, meta = self._partial, action.transfer, action.meta
        if partial is None or serial != self._serial or not await self._settle():
            return
        expected = meta.sha256 if isinstance(meta, FileMeta) else None
        try:
            stored = await asyncio.to_thread(lambda: partial.commit(expected, mime=False))
        except HashMismatchError as exc:  # the store removed the partial
            self._forget()
            detail = f"expected {expected}, received {exc.actual}"
            self._report(
                StoreFailed(serial, TransferErrorCode.HASH_MISMATCH, detail, keep_partial=False)
            )
            return
        except DiskFullError:
            self._fail(serial, "no space left on the receiver", TransferErrorCode.DISK_FULL)
            return
        except Exception as exc:  # EIO and the like: refuse, keep the bytes, never hang
            logger.exception("storing {} failed", meta.name)
            self._fail(serial, f"receiver storage error: {type(exc).__name__}")
            return
        self._forget()
        self._report(Stored(serial, stored.sha256))

    def _forget(self) -> None:
        partial, self._partial = self._partial, None
        if partial is not None:
            self.registry.release(partial.key, self)

    async def _close(self, *, keep: bool) -> None:
        """Close the partial: keep what reached the disk (and the buffer) or delete it."""
        partial = self._partial
        if partial is None:
            return
        writing, self._writing = self._writing, None
        if writing is not None:
            with contextlib.suppress(Exception):  # already reported, or irrelevant now
                await writing
        self._forget()
        try:
            await asyncio.to_thread(partial.close if keep else partial.discard)
        except OSError as exc:  # disk full on the last write: the good prefix stays
            logger.warning("closing the partial of {} failed: {}", partial.name, exc)

    async def abort(self, detail: str) -> None:
        """Stop the transfer being received (its partial is kept): a newer connection
        takes it over. Waits for the action in progress, so a partial is never used
        from two places."""
        async with self._lock:
            if self._partial is None:
                return
            await self._close(keep=True)
            self._fail(self._serial, detail)
        await self.wake()

    async def close(self) -> None:
        """The channel closed: keep the partial for a later resume (an anonymous
        principal's partials go: nobody can resume them), stop streaming."""
        self._stop_deadline()
        async with self._lock:
            await self._close(keep=True)
            if self._opened and not self.holdings.resumable(self.conn.principal):
                for key in sorted(self._opened):
                    with contextlib.suppress(OSError):
                        await asyncio.to_thread(self.store.remove_partial_if_idle, key)
                self._opened.clear()
        if self._stream is not None:
            self._stream.cancel()
            with contextlib.suppress(BaseException):
                await self._stream

    # ------------------------------------------------------------------ sending

    def offer(self, opener: Opener) -> None:
        """The file the next StreamFrom streams (its FILE_META is being announced)."""
        self._source = opener

    async def _prove_file(self, action: ReadFileRanges) -> None:
        """Read the ranges a FILE_PROOF_REQUEST asked from the file being sent."""
        source, found = self._source, None
        try:
            if source is not None:
                found = await asyncio.to_thread(_file_digest, source, action)
        except (OSError, StorageError) as exc:
            logger.error("reading the file to send failed: {}", exc)
        self._report(FileRanges(action.transfer, found))

    def stream(self, action: StreamFrom) -> None:
        """Start streaming the offered file from ``action.offset`` in the background."""
        source = self._source
        if source is None:
            raise RuntimeError("StreamFrom without an offered file")
        self._stream = asyncio.get_running_loop().create_task(self._send(source, action.offset))

    async def _send(self, opener: Opener, offset: int) -> None:
        try:
            await self._send_blocks(opener, offset)
            self.conn.end_of_file()
        except (OSError, StorageError) as exc:
            logger.error("reading the file to send failed: {}", exc)
            self.conn.cancel_send()
        await self.wake()

    async def _send_blocks(self, opener: Opener, offset: int) -> None:
        size = self.conn.limits.chunk_bytes
        handle = await asyncio.to_thread(opener)
        try:
            fd = handle.fileno()
            position = offset
            while block := await asyncio.to_thread(os.pread, fd, READ_BLOCK_BYTES, position):
                position += len(block)
                view = memoryview(block)
                for start in range(0, len(block), size):
                    if not await self.channel.drained(self.high_water, self.low_water):
                        return
                    frame = self.conn.send_chunk(bytes(view[start : start + size]))
                    if frame is None or not self.channel.send_frame(frame):
                        return
                    self.bytes_sent += len(frame)
                    self.counted("sent", len(frame))
        finally:
            await asyncio.to_thread(handle.close)
