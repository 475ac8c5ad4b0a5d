"""File transfers over a data channel: the I/O side of :mod:`protocol.transfer`.

:class:`TransferEndpoint` owns both directions on one data channel. The frame
reader hands it every transfer frame in arrival order (:meth:`handle`); it runs
the receiver machine's effects against a :class:`~rtc_worker.storage.BlobStore`
(partial files for resume, sha256 verification, content-addressed objects for
dedupe) and drives the sender machine for :meth:`send_file`. Received chunks go
into the partial file's one buffer; full batches are written and hashed in a thread.

Sending is flow-controlled on the data channel's ``bufferedAmount``: above the
high-water mark the sender waits for the ``bufferedamountlow`` event (no polling,
no unbounded queue). The file is read and hashed in a worker thread, never on the
event loop, and never held whole in memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from loguru import logger

from protocol import (
    Chunk,
    EndOfFile,
    FileCancel,
    FileExists,
    FileMeta,
    FileMetaLegacy,
    FileProgress,
    FileReady,
    FileReceived,
    Message,
    TransferError,
)
from protocol.messages import TransferErrorCode
from protocol.transfer import (
    DEFAULT_CHUNK_SIZE,
    Append,
    CheckStore,
    Discard,
    Effect,
    Finish,
    Note,
    ReceiverState,
    Send,
    SenderState,
    Stored,
    StoreFailed,
    StoreHas,
    StoreOffset,
    TransferOutcome,
    TransferReceiver,
    TransferSender,
)
from rtc_worker.channel import ChannelClosed, FrameChannel
from rtc_worker.storage import (
    BlobStore,
    DiskFullError,
    HashMismatchError,
    PartialBusyError,
    PartialFile,
    hash_file,
)

__all__ = [
    "HIGH_WATER_BYTES",
    "LOW_WATER_BYTES",
    "READ_BLOCK_BYTES",
    "ReceivedFile",
    "SendResult",
    "TransferEndpoint",
    "TransferFailed",
]

#: Stop queueing chunks while this many bytes wait in the channel's send buffer.
HIGH_WATER_BYTES = 1024 * 1024
#: ``bufferedAmountLowThreshold``: sending resumes when the buffer drains below it.
LOW_WATER_BYTES = 256 * 1024
#: The file is read in blocks of this many bytes, in a worker thread.
READ_BLOCK_BYTES = 1024 * 1024
#: A receive with no chunk for this long may be taken over by a newer connection
#: sending the same content (the old peer is gone without the worker noticing), seconds.
STALE_AFTER_S = 5.0
#: Threads that write received batches: not the default executor, which hashing,
#: ZIP building and store look-ups share, so a busy pool never stalls a transfer.
_BACKGROUND: set[asyncio.Task[None]] = set()
_WRITER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="transfer-writer")

#: Frames that belong to the receiving direction (we receive a file).
RECEIVER_FRAMES = (FileMeta, FileMetaLegacy, Chunk, EndOfFile)
#: Frames that belong to the sending direction (the peer answers our file).
SENDER_FRAMES = (FileReady, FileExists, FileProgress, FileReceived, TransferError)


@dataclass(frozen=True, slots=True)
class ReceivedFile:
    """A file this endpoint received (or already held: ``existed``).

    Attributes:
        sha256: its digest; ``path`` is the stored object; ``name`` the sender's name.
        size: bytes; ``bytes_received``: bytes that crossed the channel this time.
    """

    sha256: str
    name: str
    size: int
    path: Path
    existed: bool
    bytes_received: int


@dataclass(frozen=True, slots=True)
class TransferFailed:
    """A receive that ended without a stored file (code from TransferErrorCode)."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class SendResult:
    """How :meth:`TransferEndpoint.send_file` ended.

    Attributes:
        outcome: the sender machine's outcome (status received, exists, failed, cancelled).
        size: the file's size, bytes; ``bytes_sent``: bytes put on the channel this time
            (0 for a dedupe hit; size - offset for a resumed transfer).
        seconds: from FILE_META to the receiver's verdict.
    """

    outcome: TransferOutcome
    size: int
    bytes_sent: int
    seconds: float

    @property
    def ok(self) -> bool:
        """True when the receiver holds the file (verified now, or already)."""
        return self.outcome.status in ("received", "exists")

    @property
    def mb_per_s(self) -> float:
        """Throughput of this transfer, MB (10^6 bytes) per second."""
        return self.bytes_sent / 1e6 / self.seconds if self.seconds > 0 else 0.0


class PartialRegistry:
    """Which endpoint of this process is writing each partial file.

    When a client reconnects before the worker noticed the old connection died,
    the new FILE_META finds its partial still open: the old transfer is stopped
    (its partial kept) so the new one resumes from what is on disk.
    """

    def __init__(self) -> None:
        self._holders: dict[str, TransferEndpoint] = {}

    def claim(self, sha256: str, endpoint: TransferEndpoint) -> None:
        """Record that ``endpoint`` writes the partial of ``sha256``."""
        self._holders[sha256] = endpoint

    def release(self, sha256: str, endpoint: TransferEndpoint) -> None:
        """Forget the claim if ``endpoint`` still holds it."""
        if self._holders.get(sha256) is endpoint:
            del self._holders[sha256]

    async def preempt(self, sha256: str, endpoint: TransferEndpoint) -> bool:
        """Stop another endpoint's stale transfer of ``sha256`` (its channel closed, or
        idle): True when one was stopped. A live transfer is never taken over."""
        holder = self._holders.get(sha256)
        if holder is None or holder is endpoint or not holder.stale:
            return False
        await holder.abort_receive("superseded by a newer transfer of the same content")
        return self._holders.get(sha256) is not holder


class TransferEndpoint:
    """Both transfer directions of one data channel.

    Args:
        channel: the channel's frame adapter.
        store: where received files go (partials and verified objects).
        max_size: largest file accepted, bytes.
        chunk_size: chunk size of files we send, bytes.
        max_chunk_size: largest chunk accepted from the peer, bytes.
        registry: the process-wide :class:`PartialRegistry` (one per store).
        on_received: called with each file received or already held.
        high_water / low_water: flow-control marks on ``bufferedAmount``, bytes.
        collect_results: queue every receive outcome on :attr:`results`.
    """

    def __init__(
        self,
        channel: FrameChannel,
        store: BlobStore,
        *,
        max_size: int,
        chunk_size: int = DEFAULT_CHUNK_SIZE,
        max_chunk_size: int = 256 * 1024,
        registry: PartialRegistry | None = None,
        on_received: Callable[[ReceivedFile], None] | None = None,
        high_water: int = HIGH_WATER_BYTES,
        low_water: int = LOW_WATER_BYTES,
        collect_results: bool = False,
    ) -> None:
        self.channel = channel
        self.store = store
        self.chunk_size = chunk_size
        self.receiver = TransferReceiver(max_size=max_size, max_chunk_size=max_chunk_size)
        self.sender = TransferSender()
        self.registry = registry or PartialRegistry()
        self.on_received = on_received
        self.high_water = high_water
        self.low_water = low_water
        #: With ``collect_results``, every received file and refused receive, in order
        #: (for a client waiting for a download; a worker does not collect them).
        self.collect_results = collect_results
        self.results: asyncio.Queue[ReceivedFile | TransferFailed] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._last_chunk_at = time.monotonic()
        self._partial: PartialFile | None = None
        self._sender_changed = asyncio.Event()
        self._on_progress: Callable[[int, int], None] | None = None
        #: Called with (bytes_received, size) as chunks of a received file arrive.
        self.on_receive_progress: Callable[[int, int], None] | None = None
        self._receive_started = 0.0
        #: Bytes of file chunks this endpoint put on the channel, over its lifetime.
        self.bytes_sent = 0
        self._writing: asyncio.Future[None] | None = None
        self._resumed_at = 0

    # ------------------------------------------------------------------ routing

    @staticmethod
    def is_transfer_frame(message: Message) -> bool:
        """True for every frame this endpoint handles (FILE_CANCEL included)."""
        return isinstance(message, (*RECEIVER_FRAMES, *SENDER_FRAMES, FileCancel))

    async def handle(self, message: Message) -> None:
        """Handle one transfer frame from the peer, in arrival order.

        Raises:
            RemoteProtocolError: the frame is not allowed now (the caller answers it;
                a refused chunk is answered TRANSFER_ERROR UNEXPECTED_DATA).
        """
        async with self._lock:  # one frame at a time, and never during a preemption
            if isinstance(message, FileCancel):
                if self.receiver.state is not ReceiverState.IDLE or not self.sender.active:
                    await self._run(self.receiver.receive(message))  # raises if none open
                else:
                    self._sender_receive(message)
                return
            if isinstance(message, RECEIVER_FRAMES):
                if isinstance(message, Chunk):
                    self._last_chunk_at = time.monotonic()
                await self._run(self.receiver.receive(message, time.monotonic()))
            else:
                self._sender_receive(message)

    @property
    def stale(self) -> bool:
        """True when this endpoint's receive may be taken over by a newer connection:
        its channel is closed, or no chunk arrived for STALE_AFTER_S seconds."""
        idle = time.monotonic() - self._last_chunk_at
        return self.channel.closed.is_set() or idle > STALE_AFTER_S

    # ------------------------------------------------------------------ receiving

    async def _run(self, effects: list[Effect]) -> None:
        for effect in effects:
            match effect:
                case Send(message=message):
                    if isinstance(message, TransferError) and self.collect_results:
                        self.results.put_nowait(TransferFailed(message.code, message.detail))
                    self.channel.send(message)
                case Append(data=data):
                    await self._append(data)
                case CheckStore(meta=meta):
                    await self._run(await self._check_store(meta))
                case Finish(meta=meta):
                    await self._run(await self._finish(meta))
                case Discard(keep=keep):
                    await self._close_partial(keep=keep)
                case Note(text=text):
                    logger.info("{}", text)

    async def _check_store(self, meta: FileMeta | FileMetaLegacy) -> list[Effect]:
        self._receive_started = time.monotonic()
        try:
            if isinstance(meta, FileMetaLegacy):
                self._partial = await asyncio.to_thread(
                    self.store.open_anonymous, meta.name, meta.size
                )
                self._resumed_at = 0
                return self.receiver.report(StoreOffset(0))
            if await asyncio.to_thread(self.store.has, meta.sha256):
                effects = self.receiver.report(StoreHas())
                self._received(meta.sha256, meta.name, meta.size, existed=True, received=0)
                return effects
            try:
                partial = await asyncio.to_thread(
                    self.store.open_partial, meta.sha256, meta.size, meta.name
                )
            except PartialBusyError:
                if not await self.registry.preempt(meta.sha256, self):
                    raise
                partial = await asyncio.to_thread(
                    self.store.open_partial, meta.sha256, meta.size, meta.name
                )
            self._partial = partial
            self._resumed_at = partial.offset
            self.registry.claim(meta.sha256, self)
            if partial.offset:
                logger.info("resuming {} at {} of {} bytes", meta.name, partial.offset, meta.size)
            return self.receiver.report(StoreOffset(partial.offset))
        except PartialBusyError:
            return self._fail_check("another transfer of this content is in progress")
        except DiskFullError:
            return self._fail_check("no space left on the receiver", TransferErrorCode.DISK_FULL)
        except Exception as exc:  # EIO, EACCES, ESTALE...: refuse, never get stuck
            logger.exception("store failed for {}", meta.name)
            return self._fail_check(f"receiver storage error: {type(exc).__name__}")

    def _fail_check(
        self, detail: str, code: TransferErrorCode = TransferErrorCode.CANCELLED
    ) -> list[Effect]:
        return self.receiver.report(StoreFailed(code, detail))

    async def _append(self, data: bytes) -> None:
        """Add a chunk to the partial file's buffer (no system call); when a batch is
        full it is written and hashed in a thread (hashlib and pwrite release the GIL),
        so the event loop, which also runs the SCTP stack, only collects chunks. At
        most one batch is in flight."""
        meta = self.receiver.meta
        if self.on_receive_progress is not None and meta is not None:
            _call_safely(self.on_receive_progress, self.receiver.received, meta.size)
        partial = self._partial
        if partial is not None and partial.append(data):
            await self._write_batch()

    async def _write_batch(self) -> None:
        """Wait for the write in flight, then start writing the buffered batch."""
        try:
            await self._settle_write()
        except DiskFullError:
            await self._disk_full()
            return
        partial = self._partial
        batch = partial.take_batch() if partial is not None else None
        if partial is None or batch is None:
            return
        loop = asyncio.get_running_loop()
        self._writing = loop.run_in_executor(_WRITER, partial.write_batch, batch)

    async def _settle_write(self) -> None:
        """Wait for the write in flight (re-raising its DiskFullError)."""
        writing, self._writing = self._writing, None
        if writing is not None:
            await writing

    async def _drain_writes(self) -> bool:
        """Write everything queued; False when the disk filled up (already reported)."""
        await self._write_batch()
        try:
            await self._settle_write()
        except DiskFullError:
            await self._disk_full()
            return False
        return True

    async def _disk_full(self) -> None:
        partial = self._partial
        logger.warning("disk full while receiving {}", partial.name if partial else "a file")
        effects = self.receiver.report(
            StoreFailed(TransferErrorCode.DISK_FULL, "no space left on the receiver")
        )
        await self._close_partial(keep=True)  # what reached the disk stays for a resume
        await self._run(effects)

    async def _finish(self, meta: FileMeta | FileMetaLegacy) -> list[Effect]:
        if not await self._drain_writes():
            return []
        partial = self._partial
        assert partial is not None
        expected = meta.sha256 if isinstance(meta, FileMeta) else None
        received = partial.offset - self._resumed_at
        try:
            stored = await asyncio.to_thread(partial.commit, expected)
        except HashMismatchError as exc:  # the store removed the partial
            self._forget_partial()
            detail = f"expected {expected}, received {exc.actual}"
            return self.receiver.report(
                StoreFailed(TransferErrorCode.HASH_MISMATCH, detail, keep_partial=False)
            )
        except DiskFullError:
            await self._close_partial(keep=True)
            return self.receiver.report(
                StoreFailed(TransferErrorCode.DISK_FULL, "no space left on the receiver")
            )
        except Exception as exc:  # EIO and the like: refuse, keep the bytes, never hang
            logger.exception("storing {} failed", meta.name)
            await self._close_partial(keep=True)
            return self.receiver.report(
                StoreFailed(
                    TransferErrorCode.CANCELLED, f"receiver storage error: {type(exc).__name__}"
                )
            )
        sha = stored.sha256
        self._forget_partial()
        effects = self.receiver.report(Stored(sha))
        self._received(sha, meta.name, meta.size, existed=False, received=received)
        return effects

    def _received(self, sha: str, name: str, size: int, *, existed: bool, received: int) -> None:
        seconds = time.monotonic() - self._receive_started
        logger.info(
            "{} {} ({} bytes, sha256 {}…){}",
            "already held" if existed else "received",
            name,
            size,
            sha[:12],
            "" if existed else f" in {seconds:.2f} s",
        )
        item = ReceivedFile(sha, name, size, self.store.object_path(sha), existed, received)
        if self.collect_results:
            self.results.put_nowait(item)
        if self.on_received is not None:
            _call_safely(self.on_received, item)

    def _forget_partial(self) -> None:
        if self._partial is not None and self._partial.sha256 is not None:
            self.registry.release(self._partial.sha256, self)
        self._partial = None

    async def _close_partial(self, *, keep: bool) -> None:
        partial = self._partial
        if partial is None:
            return
        if keep:
            with contextlib.suppress(DiskFullError):  # keep what reached the disk
                await self._write_batch()
        with contextlib.suppress(DiskFullError):
            await self._settle_write()
        self._forget_partial()
        with contextlib.suppress(OSError):
            await asyncio.to_thread(partial.close if keep else partial.discard)

    async def abort_receive(self, detail: str) -> None:
        """Stop the transfer being received (its partial is kept); used on preemption.

        Waits for the frame this endpoint is handling (a commit included), so the
        partial file is never used from two places.
        """
        async with self._lock:
            if self._partial is None or self.receiver.state is not ReceiverState.RECEIVING:
                return
            await self._close_partial(keep=True)
            for effect in self.receiver.report(StoreFailed(TransferErrorCode.CANCELLED, detail)):
                if isinstance(effect, Send):
                    self.channel.send(effect.message)

    async def close(self) -> None:
        """The channel closed: keep the partial file for a later resume."""
        await self._close_partial(keep=True)
        self._sender_changed.set()

    # ------------------------------------------------------------------ sending

    def _sender_receive(self, message: Message) -> None:
        effect = self.sender.receive(message)
        if isinstance(effect, Send):
            self.channel.send(effect.message)
        if isinstance(message, FileProgress) and self._on_progress is not None:
            _call_safely(self._on_progress, *self.sender.progress)
        self._sender_changed.set()

    async def _sender_wait(self, *states: SenderState) -> None:
        """Wait until the sender machine is in none of ``states`` (or the channel closed)."""
        while self.sender.state in states and not self.channel.closed.is_set():
            self._sender_changed.clear()
            await self._sender_changed.wait()

    async def send_file(
        self,
        source: Path | BinaryIO,
        *,
        name: str | None = None,
        sha256: str | None = None,
        on_progress: Callable[[int, int], None] | None = None,
        ready_timeout: float | None = 60.0,
    ) -> SendResult:
        """Send one file: FILE_META, then chunks from the receiver's offset, then END_OF_FILE.

        Args:
            source: the local file, or a file already open for reading (read by
                descriptor with ``pread``; not closed).
            name: the name to announce (default: the file's base name).
            sha256: its digest if already known (else computed in a thread first).
            on_progress: called with (bytes_received, size) on each FILE_PROGRESS.
            ready_timeout: seconds to wait for FILE_READY / FILE_EXISTS (None: no limit).

        Returns:
            How it ended; the channel stays usable whatever the outcome.

        Raises:
            LocalProtocolError: another send is in progress on this channel.
            ChannelClosed: the channel closed before the receiver's verdict (a later
                send_file on a new connection resumes).
            TimeoutError: no FILE_READY within ``ready_timeout`` (the send is cancelled).
            OSError: the file cannot be read.

        If the caller is cancelled, FILE_CANCEL is sent so the receiver keeps its
        partial and the channel can send again.
        """
        if isinstance(source, Path):
            with await asyncio.to_thread(source.open, "rb") as opened:
                return await self._send_open(
                    opened, name or source.name, sha256, on_progress, ready_timeout
                )
        shown = source.name if isinstance(source.name, str) else "file"
        return await self._send_open(
            source, name or shown.rsplit("/", 1)[-1], sha256, on_progress, ready_timeout
        )

    async def _send_open(
        self,
        file: BinaryIO,
        name: str,
        sha256: str | None,
        on_progress: Callable[[int, int], None] | None,
        ready_timeout: float | None,
    ) -> SendResult:
        """:meth:`send_file` of an open file (read by descriptor)."""
        fd = file.fileno()
        size = (await asyncio.to_thread(os.fstat, fd)).st_size
        digest = sha256 or (await asyncio.to_thread(hash_file, fd)).hexdigest()
        meta = FileMeta(name, size, digest, self.chunk_size)
        started = time.monotonic()
        self._on_progress = on_progress
        self.channel.send(self.sender.send(meta))
        sent = 0
        try:
            try:
                async with asyncio.timeout(ready_timeout):
                    await self._sender_wait(SenderState.AWAIT_READY)
            except TimeoutError:
                await self.cancel_send()
                raise
            if self.sender.state is SenderState.SENDING:
                sent = await self._stream(fd, self.sender.offset)
                if self.sender.state is SenderState.SENDING:
                    self.channel.send(self.sender.send(EndOfFile()))
                await self._sender_wait(SenderState.SENDING, SenderState.AWAIT_RECEIVED)
        except asyncio.CancelledError:
            if self.sender.active and not self.channel.closed.is_set():
                task = asyncio.get_running_loop().create_task(self.cancel_send())
                _BACKGROUND.add(task)
                task.add_done_callback(_BACKGROUND.discard)
            raise
        finally:
            self._on_progress = None
        if self.sender.active or self.sender.outcome is None:
            raise ChannelClosed("data channel closed during the transfer")
        return SendResult(self.sender.outcome, size, sent, time.monotonic() - started)

    def refuse_send(self, code: str, detail: str) -> bool:
        """The peer answered our FILE_META with PROTOCOL_ERROR (it cannot take a file
        now): end the send as failed. True when a send was waiting for that answer."""
        if self.sender.state is not SenderState.AWAIT_READY:
            return False
        self._sender_receive(TransferError(code, f"refused: {detail}"))
        return True

    async def _stream(self, fd: int, offset: int) -> int:
        """Send the open file ``fd`` from ``offset`` in chunks, paced by ``bufferedAmount``.

        Returns:
            Bytes put on the channel.
        """
        channel = self.channel.channel
        channel.bufferedAmountLowThreshold = self.low_water
        drained = asyncio.Event()
        channel.on("bufferedamountlow", drained.set)
        closed = self.channel.closed
        sent = 0
        position = offset
        try:
            while self.sender.state is SenderState.SENDING:
                block = await asyncio.to_thread(os.pread, fd, READ_BLOCK_BYTES, position)
                if not block:
                    break
                position += len(block)
                view = memoryview(block)
                for start in range(0, len(block), self.chunk_size):
                    while channel.bufferedAmount > self.high_water and not closed.is_set():
                        drained.clear()
                        waiters = {
                            asyncio.ensure_future(drained.wait()),
                            asyncio.ensure_future(closed.wait()),
                        }
                        _, pending = await asyncio.wait(
                            waiters, return_when=asyncio.FIRST_COMPLETED
                        )
                        for waiter in pending:
                            waiter.cancel()
                    if self.sender.state is not SenderState.SENDING or closed.is_set():
                        return sent
                    piece = bytes(view[start : start + self.chunk_size])
                    if not self.channel.send_frame(piece):
                        return sent
                    sent += len(piece)
                    self.bytes_sent += len(piece)
        finally:
            channel.remove_listener("bufferedamountlow", drained.set)
        return sent

    async def cancel_send(self, ack_timeout: float = 10.0) -> None:
        """Stop our open send with FILE_CANCEL (the receiver keeps its partial) and wait
        for the receiver's acknowledgement, so the next file starts clean.

        Args:
            ack_timeout: seconds to wait for the acknowledgement before giving up on it.
        """
        if not self.sender.active:
            return
        self.channel.send(self.sender.cancel())
        self._sender_changed.set()
        try:
            async with asyncio.timeout(ack_timeout):
                await self._sender_wait(SenderState.CANCELLED)
        except TimeoutError:
            logger.warning("no acknowledgement of FILE_CANCEL in {} s", ack_timeout)
        if self.sender.state is SenderState.CANCELLED:
            self.sender.forget_cancel()


def _call_safely(callback: Callable[..., object], *args: object) -> None:
    """Run a user callback; its exception is logged, never raised into the transfer."""
    try:
        callback(*args)
    except Exception:
        logger.exception("transfer callback {} failed", getattr(callback, "__name__", callback))
