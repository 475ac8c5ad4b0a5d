"""RTCClient: the reference client (Python API) for the job protocol.

Usage::

    async with RTCClient("ws://127.0.0.1:8765/ws") as client:
        print(await client.workers())
        # shared storage: only relative paths cross the channel
        result = await client.submit_shared("worker-1", "inputs/train.zip", "outputs/run1")
        # no shared storage: the file goes over the channel, the results come back
        outcome = await client.submit_file("worker-1", Path("train.zip"), Path("results"))

The client is the offerer: it opens one peer connection and one data channel per
worker and reuses it for later jobs. One reader task takes the channel's frames in
arrival order: file-transfer frames go to the transfer machines, the rest to the
job exchange, which waits for each reply before the next step, with timeouts, and
raises typed errors carrying the worker's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from aiortc import RTCPeerConnection, RTCSessionDescription
from loguru import logger

from protocol import (
    Chunk,
    JobCancel,
    JobComplete,
    JobFailed,
    JobId,
    JobLog,
    JobMetrics,
    JobStart,
    Message,
    PathError,
    PathValidated,
    ProtocolErrorFrame,
    RemoteProtocolError,
    ResultsRequest,
    ResultsStored,
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
    TransferError,
    decode,
)
from protocol.messages import TransferErrorCode
from protocol.signaling import ErrorFrame, Offer, PeerInfo, RelayedAnswer, SignalingError
from rtc_worker.channel import ChannelClosed, FrameChannel
from rtc_worker.signaling_client import SignalingClient
from rtc_worker.storage import BlobStore, SafeRoot, atomic_file, layout
from rtc_worker.transfer import (
    PartialRegistry,
    ReceivedFile,
    SendResult,
    TransferEndpoint,
    TransferFailed,
)
from rtc_worker.worker import rtc_configuration

__all__ = [
    "RETRY_OVER_CHANNEL_REASONS",
    "ClientError",
    "JobFailedError",
    "JobResult",
    "PathRejected",
    "RTCClient",
    "SignalingError",
    "SubmitResult",
    "TransferFailedError",
    "WorkerBusy",
    "WorkerConnection",
    "WorkerProtocolError",
]

Trace = Callable[[str, str | bytes], None]
Progress = Callable[[int, int], None]

_BACKGROUND: set[asyncio.Task[None]] = set()

#: PATH_ERROR reasons after which a client holding a local copy sends it over the
#: channel instead (the spec's retry with RTC transfer).
RETRY_OVER_CHANNEL_REASONS = ("Input path does not exist", "File corrupted or invalid format")


class ClientError(Exception):
    """Base of every error the client raises about a job or a connection."""


class PathRejected(ClientError):
    """The worker answered ``PATH_ERROR::{reason}``."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class JobFailedError(ClientError):
    """The worker answered ``JOB_FAILED::{job_id}::{reason}``."""

    def __init__(self, job_id: str, reason: str) -> None:
        super().__init__(f"job {job_id} failed: {reason}")
        self.job_id = job_id
        self.reason = reason


class WorkerProtocolError(ClientError):
    """The worker answered ``PROTOCOL_ERROR::{code}::{detail}``."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class WorkerBusy(WorkerProtocolError):
    """``PROTOCOL_ERROR::WORKER_BUSY``: another job runs on the worker; retry later."""


class TransferFailedError(ClientError):
    """A file transfer ended with ``TRANSFER_ERROR::{code}::{detail}`` (or a cancel)."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"transfer failed: {code}: {detail}")
        self.code = code
        self.detail = detail


@dataclass(frozen=True)
class JobResult:
    """A completed job.

    Attributes:
        job_id: the job's id.
        output_path: the output folder relative to the worker's storage root.
        file_count: files in the output folder.
        total_mb: their size in MB (10^6 bytes), 2 decimals.
        metrics: validation_ms, file_access_ms, run_s, total_s (empty if not sent).
        logs: the JOB_LOG lines, in order.
        stored_path: where the storage service serves the results ZIP
            (``/download/{job_id}``), when they were asked for with ``via_storage``
            and RESULTS_STORED came in time; None otherwise.
    """

    job_id: str
    output_path: str
    file_count: int
    total_mb: float
    metrics: dict[str, float] = field(default_factory=dict)
    logs: tuple[str, ...] = ()
    stored_path: str | None = None


@dataclass(frozen=True)
class SubmitResult:
    """A job run on a file sent over the channel, with its results downloaded.

    Attributes:
        job: the job's result.
        upload: how the input went (bytes sent, MB/s; 0 bytes when the worker had it).
        results_zip: the verified results ZIP saved in the download folder.
        results_dir: the ZIP's files, extracted safely next to it.
        download: the received results file (size, sha256, bytes that crossed).
    """

    job: JobResult
    upload: SendResult
    results_zip: Path
    results_dir: Path
    download: ReceivedFile


class WorkerConnection:
    """One peer connection and data channel to a worker; runs jobs one after another.

    Args:
        pc: the open peer connection.
        channel: the open data channel's frame adapter.
        worker_id: the worker's peer id.
        reply_timeout: seconds to wait for each reply (PATH_VALIDATED...).
        store: where downloaded files go (partials kept for a resume).
        max_file_size: largest file accepted from the worker, bytes.
        raw: deliver every frame to :meth:`recv` (no transfer handling): for tests
            and fuzzing.
        registry: the client's partial-file registry (one per store).
    """

    def __init__(
        self,
        pc: RTCPeerConnection,
        channel: FrameChannel,
        worker_id: str,
        reply_timeout: float,
        *,
        store: BlobStore,
        max_file_size: int = 10 * 1024**3,
        raw: bool = False,
        registry: PartialRegistry | None = None,
    ) -> None:
        self.pc = pc
        self.channel = channel
        self.worker_id = worker_id
        self.reply_timeout = reply_timeout
        self.raw = raw
        self.transfers = TransferEndpoint(
            channel, store, max_size=max_file_size, registry=registry, collect_results=True
        )
        self._replies: asyncio.Queue[Message | BaseException] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self.broken = False
        self._reader = asyncio.create_task(self._read_loop(), name=f"reader-{worker_id}")

    async def _read_loop(self) -> None:
        try:
            while True:
                frame = await self.channel.recv()
                try:
                    await self._dispatch(frame)
                except Exception:  # never let one frame end the reader
                    logger.exception("frame from {} failed", self.worker_id)
        except ChannelClosed as exc:
            await self.transfers.close()
            self._replies.put_nowait(exc)
        except BaseException as exc:  # cancelled: wake every waiter
            self.broken = True
            await self.transfers.close()
            self._replies.put_nowait(ChannelClosed(f"reader of {self.worker_id} stopped"))
            if not isinstance(exc, Exception):
                raise

    async def _dispatch(self, frame: str | bytes) -> None:
        try:
            message = decode(frame)
        except RemoteProtocolError as exc:
            error = WorkerProtocolError(exc.code, f"worker sent an invalid frame: {exc}")
            self._replies.put_nowait(error)
            return
        if self.raw:
            self._replies.put_nowait(message)
            return
        if isinstance(message, ProtocolErrorFrame) and self.transfers.refuse_send(
            message.code, message.detail
        ):
            return  # the answer to our FILE_META
        if not TransferEndpoint.is_transfer_frame(message):
            self._replies.put_nowait(message)
            return
        try:
            await self.transfers.handle(message)
        except RemoteProtocolError as exc:
            logger.warning("worker sent {} out of place: {}", type(message).__name__, exc)
            if isinstance(message, Chunk):
                self.channel.send(TransferError(TransferErrorCode.UNEXPECTED_DATA, str(exc)))

    def send(self, frame: str | bytes | Message) -> None:
        """Send a message or a raw frame (raw frames are for tests and fuzzing).

        Raises:
            ChannelClosed: the data channel is not open.
        """
        ok = (
            self.channel.send_frame(frame)
            if isinstance(frame, str | bytes)
            else self.channel.send(frame)
        )
        if not ok:
            raise ChannelClosed("data channel is not open")

    async def recv(self, timeout: float | None = None) -> Message:
        """The worker's next message that is not part of a file transfer.

        Args:
            timeout: seconds to wait; None waits as long as the channel is open.

        Raises:
            ChannelClosed, TimeoutError, WorkerProtocolError (the worker sent a frame
            this client cannot parse).
        """
        async with asyncio.timeout(timeout):
            item = await self._replies.get()
        if isinstance(item, BaseException):
            if isinstance(item, ChannelClosed):
                self._replies.put_nowait(item)  # every later recv sees the close too
            raise item
        if isinstance(item, ProtocolErrorFrame) and item.code == "NO_STORAGE":
            self.broken = True  # replies to the frames after RESULTS_VIA_STORAGE may follow
        return item

    async def _expect_path(self, which: str) -> None:
        message = await self.recv(self.reply_timeout)
        match message:
            case PathValidated(which=got) if got == which:
                return
            case PathError(reason=reason):
                raise PathRejected(reason)
            case ProtocolErrorFrame():
                raise _protocol_error(message)
        raise WorkerProtocolError(
            "UNEXPECTED_REPLY", f"expected PATH_VALIDATED::{which}, got {type(message).__name__}"
        )

    async def run_shared(
        self,
        input_path: str,
        output_path: str,
        *,
        job_id: str | None = None,
        on_log: Callable[[str], None] | None = None,
        job_timeout: float | None = None,
        local_copy: Path | None = None,
        on_progress: Progress | None = None,
        via_storage: bool = False,
    ) -> JobResult:
        """Run one shared-storage job on this connection.

        Args:
            input_path: the input, relative to the shared root.
            output_path: the output folder, relative to the shared root.
            job_id: optional id (``[A-Za-z0-9._-]{1,64}``); the worker makes one otherwise.
            on_log: called with each JOB_LOG line.
            job_timeout: seconds to wait for the job's end, None for no limit. On
                timeout the job is cancelled and this connection is closed.
            local_copy: a local copy of the input: when the worker answers
                ``Input path does not exist`` or ``File corrupted or invalid format``,
                it is sent over the channel and the job goes on with it.
            on_progress: (bytes_received, size) during such a transfer.
            via_storage: ask the worker to upload the results ZIP to the storage
                service (RESULTS_VIA_STORAGE); :attr:`JobResult.stored_path` then says
                where it is.

        Raises:
            PathRejected: PATH_ERROR (the reason quotes the path as sent).
            JobFailedError: JOB_FAILED (reason ``cancelled`` after a cancel).
            TransferFailedError: the retry over the channel failed.
            WorkerBusy: another job runs on the worker.
            WorkerProtocolError: any other PROTOCOL_ERROR.
            ChannelClosed, TimeoutError: the connection dropped or a reply was late.
            LocalProtocolError: job_id does not follow the grammar.
        """
        async with self._lock:
            if job_id is not None:
                self.send(JobId(job_id))
            if via_storage:
                self._ask_via_storage()
            self.send(SharedInputPath(input_path))
            try:
                await self._expect_path("input")
            except PathRejected as exc:
                if local_copy is None or not exc.reason.startswith(RETRY_OVER_CHANNEL_REASONS):
                    raise
                logger.warning("{}; sending the local copy over the data channel", exc.reason)
                await self._upload(local_copy, on_progress)
            self.send(SharedOutputPath(output_path))
            await self._expect_path("output")
            return await self._start(on_log, job_timeout, via_storage)

    async def run_file(
        self,
        local_path: Path,
        *,
        job_id: str | None = None,
        output_path: str | None = None,
        on_log: Callable[[str], None] | None = None,
        on_progress: Progress | None = None,
        job_timeout: float | None = None,
        via_storage: bool = False,
    ) -> tuple[SendResult, JobResult]:
        """Send ``local_path`` over the channel and run the job on it.

        Without ``output_path`` the results stay in the worker's job folder (fetch
        them with :meth:`download_results`); with it they go to that shared folder.
        With ``via_storage`` the worker also uploads them to the storage service.

        Raises:
            TransferFailedError: the worker refused or could not verify the file.
            and everything :meth:`run_shared` raises.
        """
        async with self._lock:
            if job_id is not None:
                self.send(JobId(job_id))
            if via_storage:
                self._ask_via_storage()
            sent = await self._upload(local_path, on_progress)
            if output_path is not None:
                self.send(SharedOutputPath(output_path))
                await self._expect_path("output")
            return sent, await self._start(on_log, job_timeout, via_storage)

    async def _upload(self, path: Path, on_progress: Progress | None) -> SendResult:
        result = await self.transfers.send_file(path, on_progress=on_progress)
        if result.outcome.code == "HASH_MISMATCH" and result.outcome.offset > 0:
            # The worker's partial was damaged (it discarded it): send it all once more.
            logger.warning("{}: resumed bytes did not verify; sending from the start", path.name)
            result = await self.transfers.send_file(path, on_progress=on_progress)
        if not result.ok:
            raise TransferFailedError(result.outcome.code, result.outcome.detail)
        logger.info(
            "sent {} ({}): {} of {} bytes over the channel, {:.2f} MB/s",
            path.name,
            result.outcome.status,
            result.bytes_sent,
            result.size,
            result.mb_per_s,
        )
        return result

    async def send_file(self, path: Path, on_progress: Progress | None = None) -> SendResult:
        """Send one file (resumes and dedupes against what the worker holds).

        Raises:
            TransferFailedError, ChannelClosed, OSError.
        """
        async with self._lock:
            return await self._upload(path, on_progress)

    async def _start(
        self,
        on_log: Callable[[str], None] | None,
        job_timeout: float | None,
        via_storage: bool = False,
    ) -> JobResult:
        self.send(JobStart())
        try:
            async with asyncio.timeout(job_timeout):
                result = await self._await_result(on_log)
            if via_storage:
                result = await self._await_stored(result)
            return result
        except TimeoutError:
            await self._abandon_job()
            raise
        except asyncio.CancelledError:
            # Our caller gave up: cancel the job; the connection is settled (or closed)
            # in the background, never reused while late frames may still come.
            self.broken = True
            task = asyncio.get_running_loop().create_task(self._abandon_job())
            _BACKGROUND.add(task)
            task.add_done_callback(_BACKGROUND.discard)
            raise

    async def _abandon_job(self, grace: float = 15.0) -> None:
        """Cancel the running job and wait for its end, so its late frames are not taken
        for the next job's replies; close the connection when they do not come."""
        self.broken = True
        try:
            self.send(JobCancel())
            async with asyncio.timeout(grace):
                while not isinstance(await self.recv(), JobFailed | JobComplete):
                    pass
            self.broken = False
        except (ChannelClosed, TimeoutError, ClientError):
            await self.close()

    async def _await_result(self, on_log: Callable[[str], None] | None) -> JobResult:
        logs: list[str] = []
        metrics: dict[str, float] = {}
        path_error: str | None = None
        while True:
            message = await self.recv()
            match message:
                case JobLog(line=line):
                    logs.append(line)
                    if on_log is not None:
                        on_log(line)
                case JobMetrics():
                    metrics = message.as_dict()
                case JobComplete():
                    return JobResult(
                        message.job_id,
                        message.output_path,
                        message.file_count,
                        message.total_mb,
                        metrics,
                        tuple(logs),
                    )
                case JobFailed(job_id=job_id, reason=reason):
                    if path_error is not None:
                        raise PathRejected(path_error)
                    raise JobFailedError(job_id, reason)
                case PathError(reason=reason):
                    path_error = reason
                case ProtocolErrorFrame():
                    raise _protocol_error(message)
                case _:
                    logger.debug("ignoring {} while a job runs", message)

    def _ask_via_storage(self) -> None:
        """Send RESULTS_VIA_STORAGE. Its only possible answer, PROTOCOL_ERROR::NO_STORAGE,
        arrives among the next replies: the connection is then not reused."""
        self.send(ResultsViaStorage())

    async def _await_stored(self, result: JobResult) -> JobResult:
        """Wait up to the reply timeout for RESULTS_STORED of ``result``'s job.

        Raises:
            WorkerProtocolError: the worker could not store the results (or refused).
        """
        try:
            async with asyncio.timeout(self.reply_timeout):
                while True:
                    message = await self.recv()
                    match message:
                        case ResultsStored(job_id=job_id, download_path=path) if (
                            job_id == result.job_id
                        ):
                            return dataclasses.replace(result, stored_path=path)
                        case ProtocolErrorFrame():
                            raise _protocol_error(message)
                        case _:
                            logger.debug("ignoring {} while results are stored", message)
        except TimeoutError:
            logger.warning("no RESULTS_STORED for {} in time", result.job_id)
            return result

    async def download_results(
        self,
        job_id: str,
        dest_dir: Path,
        *,
        on_progress: Progress | None = None,
        timeout: float | None = None,
    ) -> tuple[ReceivedFile, Path]:
        """Ask for the job's results (one ZIP) and save the verified ZIP in ``dest_dir``.

        The ZIP is received into the client's store (resumable, sha256-verified),
        then copied atomically to ``dest_dir/results-{job_id}.zip``.

        Returns:
            The received file and the saved ZIP's path.

        Raises:
            TransferFailedError: the transfer failed (HASH_MISMATCH...).
            WorkerProtocolError: UNKNOWN_JOB and the like.
            ChannelClosed, TimeoutError.
        """
        async with self._lock:
            while not self.transfers.results.empty():  # stale outcomes of earlier files
                self.transfers.results.get_nowait()
            self.transfers.on_receive_progress = on_progress
            try:
                self.send(ResultsRequest(job_id))
                async with asyncio.timeout(timeout):
                    received = await self._await_download()
            finally:
                self.transfers.on_receive_progress = None
        target = dest_dir / received.name
        await asyncio.to_thread(_copy_atomic, self.transfers.store, received.sha256, target)
        return received, target

    async def _await_download(self) -> ReceivedFile:
        result = asyncio.ensure_future(self.transfers.results.get())
        try:
            while True:
                reply = asyncio.ensure_future(self.recv())
                await asyncio.wait({result, reply}, return_when=asyncio.FIRST_COMPLETED)
                if result.done():
                    reply.cancel()
                    item = result.result()
                    if isinstance(item, TransferFailed):
                        raise TransferFailedError(item.code, item.detail)
                    return item
                message = reply.result()  # raises ChannelClosed
                if isinstance(message, ProtocolErrorFrame):
                    raise _protocol_error(message)
                logger.debug("ignoring {} while results download", message)
        finally:
            result.cancel()

    def cancel(self) -> None:
        """Send JOB_CANCEL: the running job ends with JOB_FAILED (reason cancelled)."""
        self.send(JobCancel())

    async def close(self) -> None:
        """Close the data channel and the peer connection."""
        await self.pc.close()
        if self._reader is not asyncio.current_task():
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        await self.transfers.close()


def _copy_atomic(store: BlobStore, sha256: str, target: Path) -> None:
    """Copy the stored object ``sha256`` to ``target`` with the atomic writer."""
    target.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        with (
            store.open_object(sha256) as src,
            atomic_file(dir_fd, target.name, label=target.name) as dst,
        ):
            shutil.copyfileobj(src, dst, 1 << 20)
    finally:
        os.close(dir_fd)


def _protocol_error(message: ProtocolErrorFrame) -> WorkerProtocolError:
    if message.code == "WORKER_BUSY":
        return WorkerBusy(message.code, message.detail)
    return WorkerProtocolError(message.code, message.detail)


class RTCClient:
    """Client of the signaling server and of workers' data channels.

    Args:
        signaling_url: WebSocket URL of the signaling server.
        token: the signaling server's token, if it has one.
        peer_id: the id to register; a random ``client-...`` id by default.
        ice_servers: STUN/TURN URLs; none for loopback and LAN.
        reply_timeout: seconds to wait for each protocol reply.
        connect_timeout: seconds to wait for signaling, the answer and the channel.
        trace: optional callback ``(direction, frame)`` for every text frame.
        cache_dir: where downloads are received (partials kept for a resume);
            default ``~/.cache/rtc-client``.
        max_file_size: largest file accepted from a worker, bytes.
    """

    def __init__(
        self,
        signaling_url: str,
        token: str | None = None,
        *,
        peer_id: str | None = None,
        ice_servers: list[str] | None = None,
        reply_timeout: float = 60.0,
        connect_timeout: float = 30.0,
        trace: Trace | None = None,
        cache_dir: Path | None = None,
        max_file_size: int = 10 * 1024**3,
    ) -> None:
        self.signaling_url = signaling_url
        self.token = token
        self.peer_id = peer_id or f"client-{uuid.uuid4().hex[:12]}"
        self.ice_servers = ice_servers or []
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self.trace = trace
        self.cache_dir = cache_dir or Path.home() / ".cache" / "rtc-client"
        self.max_file_size = max_file_size
        self._store: BlobStore | None = None
        self._partials = PartialRegistry()
        self._signaling: SignalingClient | None = None
        self._connections: dict[str, WorkerConnection] = {}
        self._raw_connections: list[WorkerConnection] = []
        self._signaling_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()

    async def __aenter__(self) -> RTCClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def store(self) -> BlobStore:
        """The client's store of received files (created on first use)."""
        if self._store is None:
            self._store = BlobStore(self.cache_dir / layout.DATA_STORE_DIR)
        return self._store

    async def _signaling_client(self) -> SignalingClient:
        async with self._signaling_lock:
            if self._signaling is None or self._signaling.closed.is_set():
                signaling = SignalingClient(
                    self.signaling_url,
                    self.peer_id,
                    "client",
                    token=self.token,
                    timeout=self.connect_timeout,
                )
                await signaling.connect()
                self._signaling = signaling
            return self._signaling

    async def workers(self) -> list[PeerInfo]:
        """Registered workers (peer_id, role, metadata).

        Raises:
            SignalingError: e.g. UNAUTHORIZED. OSError/TimeoutError: unreachable.
        """
        signaling = await self._signaling_client()
        return [peer for peer in await signaling.list_peers() if peer.role == "worker"]

    async def wait_for_worker(self, worker_id: str, timeout: float) -> PeerInfo:
        """Poll ``list_peers`` until ``worker_id`` is registered.

        Raises:
            TimeoutError: not registered within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                for peer in await self.workers():
                    if peer.peer_id == worker_id:
                        return peer
                await asyncio.sleep(0.2)

    async def connect(self, worker_id: str, *, raw: bool = False) -> WorkerConnection:
        """Open (or reuse) a peer connection and data channel to ``worker_id``.

        Args:
            raw: a new connection whose :meth:`WorkerConnection.recv` sees every
                frame, transfer frames included (for tests and fuzzing).

        Raises:
            SignalingError: PEER_NOT_FOUND when no such worker is registered.
            TimeoutError: no answer or no open channel within ``connect_timeout``.
        """
        async with self._connect_lock:  # one offer/answer exchange at a time
            existing = self._connections.get(worker_id)
            if (
                not raw
                and existing is not None
                and existing.channel.is_open
                and not existing.broken
            ):
                return existing
            signaling = await self._signaling_client()
            pc = RTCPeerConnection(rtc_configuration(self.ice_servers))
            try:
                channel = pc.createDataChannel("jobs", ordered=True)
                frames = FrameChannel(channel, trace=self.trace)
                opened = asyncio.Event()
                channel.on("open", opened.set)
                await pc.setLocalDescription(await pc.createOffer())
                await signaling.send(Offer(to=worker_id, sdp=pc.localDescription.sdp))
                async with asyncio.timeout(self.connect_timeout):
                    while True:
                        frame = await signaling.recv()
                        if isinstance(frame, ErrorFrame):
                            raise frame.to_exception()
                        if isinstance(frame, RelayedAnswer) and frame.from_ == worker_id:
                            break
                    await pc.setRemoteDescription(RTCSessionDescription(frame.sdp, "answer"))
                    await opened.wait()
            except BaseException:
                await pc.close()
                raise
            connection = WorkerConnection(
                pc,
                frames,
                worker_id,
                self.reply_timeout,
                store=self.store,
                max_file_size=self.max_file_size,
                raw=raw,
                registry=self._partials,
            )
            if not raw:
                if existing is not None:
                    await existing.close()
                self._connections[worker_id] = connection
            else:
                self._raw_connections.append(connection)
            logger.info("data channel to {} open", worker_id)
            return connection

    async def submit_shared(
        self,
        worker_id: str,
        input_path: str,
        output_path: str,
        *,
        job_id: str | None = None,
        on_log: Callable[[str], None] | None = None,
        job_timeout: float | None = None,
        via_storage: bool = False,
        local_copy: Path | None = None,
        on_progress: Progress | None = None,
    ) -> JobResult:
        """Run a shared-storage job on ``worker_id``; see :meth:`WorkerConnection.run_shared`.

        Raises:
            PathRejected, JobFailedError, TransferFailedError, WorkerBusy,
            WorkerProtocolError, SignalingError, ChannelClosed, TimeoutError.
        """
        connection = await self.connect(worker_id)
        return await connection.run_shared(
            input_path,
            output_path,
            job_id=job_id,
            on_log=on_log,
            job_timeout=job_timeout,
            via_storage=via_storage,
            local_copy=local_copy,
            on_progress=on_progress,
        )

    async def submit_file(
        self,
        worker_id: str,
        local_path: Path,
        download_dir: Path,
        *,
        job_id: str | None = None,
        on_log: Callable[[str], None] | None = None,
        on_upload_progress: Progress | None = None,
        on_download_progress: Progress | None = None,
        job_timeout: float | None = None,
        via_storage: bool = False,
    ) -> SubmitResult:
        """Send a local file over the channel, run the job, download the verified results.

        The results ZIP is saved as ``download_dir/results-{job_id}.zip`` and extracted
        (safely: no member may land outside) into ``download_dir/{job_id}/``.

        Raises:
            TransferFailedError, JobFailedError, WorkerBusy, WorkerProtocolError,
            SignalingError, ChannelClosed, TimeoutError, ArchiveError (the results ZIP
            could not be extracted), OSError.
        """
        from rtc_worker.archive import extract_zip

        connection = await self.connect(worker_id)
        upload, job = await connection.run_file(
            local_path,
            job_id=job_id,
            on_log=on_log,
            on_progress=on_upload_progress,
            job_timeout=job_timeout,
            via_storage=via_storage,
        )
        download, zip_path = await connection.download_results(
            job.job_id, download_dir, on_progress=on_download_progress
        )
        results_dir = download_dir / job.job_id

        def extract() -> None:
            if results_dir.exists():
                shutil.rmtree(results_dir)
            results_dir.mkdir(parents=True)
            with SafeRoot(results_dir) as dest, zip_path.open("rb") as handle:
                extract_zip(handle, dest)

        await asyncio.to_thread(extract)
        return SubmitResult(job, upload, zip_path, results_dir, download)

    async def close(self) -> None:
        """Close every peer connection and the signaling connection."""
        for connection in [*self._connections.values(), *self._raw_connections]:
            await connection.close()
        self._connections.clear()
        self._raw_connections.clear()
        if self._signaling is not None:
            await self._signaling.close()
            self._signaling = None
