"""The worker's side of the relay road: relay objects fetched into the open partial file.

A client on the relay road encrypts its file in chunks (:mod:`protocol.relay_crypto`),
uploads the ciphertext to the storage service as relay objects and names each one in a
RELAY_PART frame; the worker's :class:`~protocol.connection.Connection` checks it and
asks :class:`RelayFetch` to perform :class:`~protocol.relay_events.FetchRelayPart`:

* one ranged ``GET /relay/{id}`` (:meth:`RelayHttp.fetch`) from the first chunk not yet
  held to the part's end, always to the worker's own ``storage_url`` (the frame names
  an upload id, never a URL);
* each ciphertext chunk is assembled from the pieces as they arrive, authenticated and
  decrypted (:meth:`ChunkCipher.open`) on the event loop: AES-GCM runs at several GB/s
  here, so a thread hand-off per chunk would cost more than it saves; only
  authenticated plaintext is appended, to the same
  :class:`~rtc_worker.storage.PartialFile` a channel transfer uses (quotas, reserve,
  expiry, the principal's own partial and the dedupe rules were applied when
  CheckStore opened it; the reserve is checked again before each 1 MiB batch); every
  full batch is written and hashed by a writer thread while the loop receives the next
  (at most one in flight, so at most a few chunks are ever in memory);
* a body cut midway is resumed with a new range at the first chunk not received;
  :attr:`RelayRoad.retries` requests in a row that make no progress end the road with
  ``RELAY_UNREACHABLE`` (waits between them start at :attr:`RelayRoad.backoff_s` and
  double). A request makes progress when it brings a new chunk at no less than
  :attr:`RelayHttp.min_rate_bytes_s` (1 MB/s) after its first ``timeout_s``: a
  service trickling bytes does not hold the transfer for ever. This loop owns the
  retries: the worker's :class:`RelayHttp` makes one attempt per request;
* outcomes: ``RelayWritten`` as batches reach the disk, ``RelayFetched`` at the part's
  end once the whole part is flushed to the disk, ``RelayFailed`` (what was verified
  is flushed to the disk first: its offset is where the client continues on the data
  channel), or ``StoreFailed`` when the disk fails (as on the channel) or on any
  unexpected error (``CANCELLED``: the receiver never stays RELAYING).

``HaltRelay`` stops the fetch (``RelayFailed(STOPPED)``). ``DeleteRelayObject`` removes
a fetched object in the background (:meth:`RelayRoad.delete`: best effort, bounded; an
object not removed expires in the service).

Secrets: the relay key and token live only in the action; no log line, exception text
or metric names them (RelayHttp's errors do not either).

Source: DESIGN.md, "Roads"; the STREAM construction (Hoang, Reyhanitabar, Rogaway and
Vizár 2015) for why a chunk is authenticated with its index; RFC 9110 section 14
(ranges).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

from loguru import logger
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception

from protocol.errors import LocalProtocolError, RelayEndCode, RemoteProtocolError, TransferErrorCode
from protocol.events import StoreFailed
from protocol.relay_crypto import ChunkCipher
from protocol.relay_events import (
    DeleteRelayObject,
    FetchRelayPart,
    RelayFailed,
    RelayFetched,
    RelayWritten,
)
from rtc_worker.metrics import WorkerMetrics
from rtc_worker.relay_http import (
    RELAY_GONE,
    RELAY_REFUSED,
    RELAY_UNREACHABLE,
    RelayHttp,
    RelayHttpError,
)
from rtc_worker.settings import WorkerSettings
from rtc_worker.storage import DiskFullError, PartialFile

__all__ = ["MAX_PENDING_DELETES", "RelayFetch", "RelayRoad"]

#: Relay objects being deleted at once by one worker; more are left to expire.
MAX_PENDING_DELETES = 64
#: Longest wait between two requests of a relay object, seconds.
MAX_BACKOFF_S = 5.0
#: The writer threads of relay fetches (writing and hashing a batch release the GIL).
_WRITER = ThreadPoolExecutor(max_workers=2, thread_name_prefix="relay-writer")
#: The detail of a DISK_FULL (the same as on the channel).
_NO_SPACE = "no space left on the receiver"
#: RelayHttp's error codes as RELAY_ENDED codes (an object shorter than its chunks is
#: an invalid chunk: nothing of it can be authenticated).
_END_CODES = {
    RELAY_GONE: RelayEndCode.RELAY_GONE,
    RELAY_REFUSED: RelayEndCode.RELAY_REFUSED,
    RELAY_UNREACHABLE: RelayEndCode.RELAY_UNREACHABLE,
}


class RelayRoad:
    """One worker's relay road: the storage service client and the background deletes.

    Args:
        http: the storage service's relay client (the worker's own ``storage_url`` and
            key; ``timeout_s`` bounds each wait for the service; one attempt per
            request: these retries are the only ones).
        retries: requests of a relay object in a row without progress (no new chunk,
            or slower than ``http.min_rate_bytes_s``) before a fetch ends with
            ``RELAY_UNREACHABLE`` (>= 1).
        backoff_s: first wait between two such requests, seconds (doubling, at most
            :data:`MAX_BACKOFF_S`).
        delete_timeout_s: longest a background delete may take, seconds.
        counted: told the ciphertext bytes fetched
            (:meth:`rtc_worker.metrics.WorkerMetrics.relay_bytes`); default: none.
    """

    def __init__(
        self,
        http: RelayHttp,
        *,
        retries: int = 5,
        backoff_s: float = 0.2,
        delete_timeout_s: float = 30.0,
        counted: Callable[[int], None] = lambda _n: None,
    ) -> None:
        if retries < 1:
            raise ValueError("a relay fetch needs at least one request")
        self.http = http
        self.retries = retries
        self.backoff_s = backoff_s
        self.delete_timeout_s = delete_timeout_s
        self.counted = counted
        self._deletes: set[asyncio.Task[None]] = set()

    @classmethod
    def for_worker(cls, settings: WorkerSettings, metrics: WorkerMetrics) -> RelayRoad | None:
        """The worker's relay road when its settings offer it
        (:attr:`WorkerSettings.relay_road_offered`), else None. It fetches only from
        the worker's own ``storage_url``, with its own key."""
        url, key = settings.storage_url, settings.storage_api_key_value
        if not settings.relay_road_offered or not url or not key:
            return None
        logger.info("offering the relay road through {}", url)
        timeout_s, retries = settings.relay_fetch_timeout_s, settings.relay_fetch_retries
        return cls(
            RelayHttp(url, key, timeout_s=timeout_s, retries=1),  # the fetch loop retries
            retries=retries,
            delete_timeout_s=timeout_s,
            counted=metrics.relay_bytes,
        )

    def delete(self, action: DeleteRelayObject) -> None:
        """Remove a fetched relay object in the background (best effort, bounded by
        ``delete_timeout_s``; beyond :data:`MAX_PENDING_DELETES` at once, or after a
        failure, the object is left to expire in the service)."""
        if len(self._deletes) >= MAX_PENDING_DELETES:
            logger.info("relay object {} left to expire (too many deletes)", action.upload_id)
            return
        task = asyncio.get_running_loop().create_task(self._delete(action))
        self._deletes.add(task)
        task.add_done_callback(self._deletes.discard)

    async def _delete(self, action: DeleteRelayObject) -> None:
        try:
            async with asyncio.timeout(self.delete_timeout_s):
                await self.http.delete(action.upload_id, action.token)
        except TimeoutError:
            logger.info("relay object {}: delete timed out; it expires", action.upload_id)

    async def close(self, grace_s: float = 2.0) -> None:
        """Give the deletes in progress ``grace_s`` seconds, cancel the rest, close the
        HTTP client."""
        if self._deletes:
            await asyncio.wait(set(self._deletes), timeout=grace_s)
        for task in list(self._deletes):
            task.cancel()
        await asyncio.gather(*self._deletes, return_exceptions=True)
        await self.http.close()


class RelayFetch:
    """Performs one connection's relay actions (one fetch at a time).

    Args:
        road: the worker's relay road.
        partial_of: the open partial file of a transfer (by serial), its write in flight
            settled, or None when that transfer is no longer open; each call marks the
            receive live (:meth:`TransferIO.relay_partial`: the channel's own partial).
        report: gives an outcome to the connection and has its outputs drained soon
            (never drains in the caller: HaltRelay is performed inside a drain).

    Attributes:
        fetched: ciphertext bytes received by this connection's fetches, bytes.
        plain: plaintext bytes appended by them, bytes.
    """

    def __init__(
        self,
        road: RelayRoad,
        partial_of: Callable[[int], Awaitable[PartialFile | None]],
        report: Callable[[object], None],
    ) -> None:
        self.road = road
        self.partial_of = partial_of
        self.report = report
        self.fetched = 0
        self.plain = 0
        self._task: asyncio.Task[None] | None = None

    @property
    def busy(self) -> bool:
        """Whether a fetch is in progress."""
        return self._task is not None and not self._task.done()

    async def start(self, action: FetchRelayPart) -> None:
        """Start fetching ``action``'s part in the background (after the fetch before it,
        which the connection has always seen end)."""
        if self.busy:
            await self.halt()
        self._task = asyncio.get_running_loop().create_task(self._run(action))

    async def halt(self) -> None:
        """Stop the fetch in progress and wait until it reported (``RelayFailed``
        with ``STOPPED``, its verified bytes flushed to the disk); nothing when idle."""
        task = self._task
        if task is None or task.done():
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task

    async def _run(self, action: FetchRelayPart) -> None:
        try:
            partial = await self.partial_of(action.transfer)
        except asyncio.CancelledError:  # halted before it began: nothing was fetched
            _uncancel()
            detail = "the relay road was stopped"
            self._report(RelayFailed(action.transfer, action.start, RelayEndCode.STOPPED, detail))
            return
        if partial is None:  # the transfer ended meanwhile: its end was reported
            return
        try:
            fetch = _PartFetch(self, action, partial)
        except (LocalProtocolError, ValueError) as exc:  # the connection checked the part
            logger.error("relay part of {} refused: {}", action.meta.name, exc)
            code = RelayEndCode.RELAY_CHUNK_INVALID
            self._report(RelayFailed(action.transfer, action.start, code, "a bad relay part"))
            return
        started = time.perf_counter()
        try:
            outcome = await fetch.run()
        except Exception as exc:  # a defect: the transfer ends with a code, never hangs
            logger.error("relay fetch of {} failed: {}", action.meta.name, type(exc).__name__)
            detail = f"receiver error: {type(exc).__name__}"
            outcome = StoreFailed(action.transfer, TransferErrorCode.CANCELLED, detail)
        seconds = time.perf_counter() - started
        self.fetched += fetch.fetched
        self.plain += fetch.plain
        logger.debug(
            "relay part at {} of {}: {} bytes fetched in {:.3f} s ({})",
            action.part.offset,
            action.meta.name,
            fetch.fetched,
            seconds,
            type(outcome).__name__,
        )
        if outcome is not None:
            self._report(outcome)

    def _report(self, outcome: object) -> None:
        try:
            self.report(outcome)
        except LocalProtocolError as exc:  # the connection closed meanwhile
            logger.debug("relay outcome dropped: {}", exc)


class _Stopped(Exception):
    """The partial was closed under the fetch (a newer transfer took it over)."""


class _PartFetch:
    """One FetchRelayPart being performed (see the module docstring)."""

    def __init__(self, owner: RelayFetch, action: FetchRelayPart, partial: PartialFile) -> None:
        part, meta = action.part, action.meta
        size = part.chunk_size
        self.owner = owner
        self.road = owner.road
        self.action = action
        self.serial = action.transfer
        self.partial = partial
        self.cipher = ChunkCipher(part.secret, meta.sha256, meta.size, size)
        self.first = part.offset // size  # the object's first chunk
        self.end = -(-(part.offset + part.length) // size)  # one past the part's last chunk
        self.index = action.start // size  # the next chunk to receive
        self.skip = action.start - self.index * size  # plaintext of it already held
        self.fetched = 0
        self.plain = 0
        self._writing: asyncio.Future[None] | None = None
        self._loop = asyncio.get_running_loop()

    async def run(self) -> object | None:
        """Fetch the part; the outcome to report, or None when the partial was taken
        away (a newer transfer of the same content took it over; that ended this one)."""
        outcome: object
        try:
            if self.partial.offset != self.action.start:  # an adapter bug
                raise ValueError(f"partial at {self.partial.offset}, not {self.action.start}")
            await self._fetch()
            await self._settle()
            await asyncio.to_thread(self.partial.flush)  # once a part: what it reports is on disk
            return RelayFetched(self.serial, self.partial.on_disk)
        except asyncio.CancelledError:  # HaltRelay, or the channel closed
            _uncancel()
            outcome = (RelayEndCode.STOPPED, "the relay road was stopped")
        except RemoteProtocolError as exc:  # a chunk failed authentication
            outcome = (RelayEndCode.RELAY_CHUNK_INVALID, exc.detail)
        except RelayHttpError as exc:
            code = _END_CODES.get(exc.code, RelayEndCode.RELAY_CHUNK_INVALID)
            outcome = (code, str(exc))
        except _Stopped:
            return None
        except DiskFullError:
            return StoreFailed(self.serial, TransferErrorCode.DISK_FULL, _NO_SPACE)
        except (OSError, ValueError) as exc:
            logger.exception("relay fetch of {} failed", self.action.meta.name)
            detail = f"receiver storage error: {type(exc).__name__}"
            return StoreFailed(self.serial, TransferErrorCode.CANCELLED, detail)
        code, detail = outcome
        try:  # keep what was verified: the client goes on from there
            await self._settle()
            await asyncio.to_thread(self.partial.flush)
        except DiskFullError:
            return StoreFailed(self.serial, TransferErrorCode.DISK_FULL, _NO_SPACE)
        except (OSError, ValueError) as exc:
            detail = f"receiver storage error: {type(exc).__name__}"
            return StoreFailed(self.serial, TransferErrorCode.CANCELLED, detail)
        logger.info(
            "relay road of {} ended at {} bytes: {}",
            self.action.meta.name,
            self.partial.on_disk,
            code,
        )
        return RelayFailed(self.serial, self.partial.on_disk, code, detail)

    # ------------------------------------------------------------------ fetching

    async def _fetch(self) -> None:
        """Fetch every chunk left, resuming after cut bodies (see the module docstring).

        Raises:
            RelayHttpError: RELAY_GONE, RELAY_REFUSED, RELAY_SHORT, or RELAY_UNREACHABLE
                after :attr:`RelayRoad.retries` requests in a row made no progress (no
                new chunk, or fewer than ``MIN_RATE_BYTES_S`` per second after the
                first ``timeout_s``).
            RemoteProtocolError: RELAY_CHUNK_INVALID.
        """
        road = self.road
        failures = 0
        if self.index >= self.end:  # nothing left of the part
            return

        def stop(state: RetryCallState) -> bool:
            return failures >= road.retries

        def wait(state: RetryCallState) -> float:
            return 0.0 if not failures else min(road.backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S)

        retrying = AsyncRetrying(
            retry=retry_if_exception(_unreachable), stop=stop, wait=wait, reraise=True
        )
        async for attempt in retrying:
            with attempt:
                before, got, began = self.index, self.fetched, self._loop.time()
                try:
                    await self._stream()
                except RelayHttpError:
                    slow = self._loop.time() - began - road.http.timeout_s
                    rate = road.http.min_rate_bytes_s
                    progress = self.index > before and self.fetched - got >= rate * slow
                    failures = 0 if progress else failures + 1
                    raise

    async def _stream(self) -> None:
        """One ranged GET from chunk :attr:`index` to the part's end."""
        cipher, action = self.cipher, self.action
        start, end = cipher.cipher_span(self.first, self.index, self.end)
        need = cipher.cipher_length(self.index)
        buffer = bytearray()
        pieces = self.road.http.fetch(action.part.upload_id, action.part.token, start, end)
        async with contextlib.aclosing(pieces):
            await self._take(pieces, buffer, need)

    async def _take(self, pieces: AsyncIterator[bytes], buffer: bytearray, need: int) -> None:
        """Open and append the chunks of ``pieces`` until the part's end (then return:
        bytes past it are never opened)."""
        cipher = self.cipher
        async for piece in pieces:
            self.fetched += len(piece)
            self.road.counted(len(piece))
            buffer += piece
            while len(buffer) >= need:
                with memoryview(buffer) as view, view[:need] as chunk:  # no copy
                    plain = cipher.open(self.index, cast(bytes, chunk))
                del buffer[:need]
                await self._append(plain)
                self.index += 1
                if self.index == self.end:
                    return
                need = cipher.cipher_length(self.index)

    async def _append(self, plain: bytes) -> None:
        """Append one authenticated chunk's plaintext; start a write when a batch is full."""
        if self.skip:  # the first chunk's start is already held
            plain, self.skip = plain[self.skip :], 0
        self.plain += len(plain)
        try:
            full = self.partial.append(plain)
        except ValueError:
            if self.partial.closed:
                raise _Stopped from None
            raise
        if full:
            await self._settle()
            if await self.owner.partial_of(self.serial) is not self.partial:
                raise _Stopped
            self._report(RelayWritten(self.serial, self.partial.on_disk))
            batch = self.partial.take_batch()
            if batch is not None:
                self._writing = self._loop.run_in_executor(_WRITER, self.partial.write_batch, batch)

    async def _settle(self) -> None:
        """Wait for the write in flight (DiskFullError, OSError as it raised); a cancel
        leaves it in flight, to be waited for again."""
        writing = self._writing
        if writing is not None:
            try:
                await asyncio.shield(writing)
            finally:
                if writing.done():
                    self._writing = None

    def _report(self, outcome: Any) -> None:
        self.owner._report(outcome)


def _uncancel() -> None:
    """The current task took its cancellation (it reports STOPPED and ends)."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


def _unreachable(exc: BaseException) -> bool:
    return isinstance(exc, RelayHttpError) and exc.code == RELAY_UNREACHABLE
