"""RTCClient: the reference client (Python API) for the job protocol.

Usage::

    async with RTCClient("ws://127.0.0.1:8765/ws") as client:
        print(await client.workers())
        result = await client.submit_shared("worker-1", "inputs/train.zip", "outputs/run1")
        print(result.job_id, result.file_count, result.total_mb)

The client is the offerer: it opens one peer connection and one data channel per
worker and reuses it for later jobs. It waits for each reply before the next
step, with timeouts, and raises typed errors carrying the worker's reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType

from aiortc import RTCPeerConnection, RTCSessionDescription
from loguru import logger

from protocol import (
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
    SharedInputPath,
    SharedOutputPath,
    decode,
)
from protocol.signaling import ErrorFrame, Offer, PeerInfo, RelayedAnswer, SignalingError
from rtc_worker.channel import ChannelClosed, FrameChannel
from rtc_worker.signaling_client import SignalingClient
from rtc_worker.worker import rtc_configuration

__all__ = [
    "ClientError",
    "JobFailedError",
    "JobResult",
    "PathRejected",
    "RTCClient",
    "SignalingError",
    "WorkerBusy",
    "WorkerConnection",
    "WorkerProtocolError",
]

Trace = Callable[[str, str | bytes], None]


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


@dataclass(frozen=True)
class JobResult:
    """A completed job.

    Attributes:
        job_id: the job's id.
        output_path: the output folder relative to the shared root.
        file_count: files in the output folder.
        total_mb: their size in MB (10^6 bytes), 2 decimals.
        metrics: validation_ms, file_access_ms, run_s, total_s (empty if not sent).
        logs: the JOB_LOG lines, in order.
    """

    job_id: str
    output_path: str
    file_count: int
    total_mb: float
    metrics: dict[str, float] = field(default_factory=dict)
    logs: tuple[str, ...] = ()


class WorkerConnection:
    """One peer connection and data channel to a worker; runs jobs one after another.

    Args:
        pc: the open peer connection.
        channel: the open data channel's frame adapter.
        worker_id: the worker's peer id.
        reply_timeout: seconds to wait for each reply (PATH_VALIDATED...).
    """

    def __init__(
        self, pc: RTCPeerConnection, channel: FrameChannel, worker_id: str, reply_timeout: float
    ) -> None:
        self.pc = pc
        self.channel = channel
        self.worker_id = worker_id
        self.reply_timeout = reply_timeout
        self._lock = asyncio.Lock()

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
        """The worker's next message.

        Args:
            timeout: seconds to wait; None waits as long as the channel is open.

        Raises:
            ChannelClosed, TimeoutError, WorkerProtocolError (the worker sent a frame
            this client cannot parse).
        """
        frame = await self.channel.recv(timeout)
        try:
            return decode(frame)
        except RemoteProtocolError as exc:
            raise WorkerProtocolError(
                exc.code, f"worker sent an invalid frame: {exc.detail}"
            ) from None

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
    ) -> JobResult:
        """Run one shared-storage job on this connection.

        Args:
            input_path: the input, relative to the shared root.
            output_path: the output folder, relative to the shared root.
            job_id: optional id (``[A-Za-z0-9._-]{1,64}``); the worker makes one otherwise.
            on_log: called with each JOB_LOG line.
            job_timeout: seconds to wait for the job's end, None for no limit. On
                timeout the job is cancelled.

        Raises:
            PathRejected: PATH_ERROR (the reason quotes the path as sent).
            JobFailedError: JOB_FAILED (reason ``cancelled`` after a cancel).
            WorkerBusy: another job runs on the worker.
            WorkerProtocolError: any other PROTOCOL_ERROR.
            ChannelClosed, TimeoutError: the connection dropped or a reply was late.
            LocalProtocolError: job_id does not follow the grammar.
        """
        async with self._lock:
            if job_id is not None:
                self.send(JobId(job_id))
            self.send(SharedInputPath(input_path))
            await self._expect_path("input")
            self.send(SharedOutputPath(output_path))
            await self._expect_path("output")
            self.send(JobStart())
            try:
                async with asyncio.timeout(job_timeout):
                    return await self._await_result(on_log)
            except TimeoutError:
                with contextlib.suppress(ChannelClosed):
                    self.send(JobCancel())
                raise

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

    def cancel(self) -> None:
        """Send JOB_CANCEL: the running job ends with JOB_FAILED (reason cancelled)."""
        self.send(JobCancel())

    async def close(self) -> None:
        """Close the data channel and the peer connection."""
        await self.pc.close()


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
        trace: optional callback ``(direction, frame)`` for every data-channel frame.
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
    ) -> None:
        self.signaling_url = signaling_url
        self.token = token
        self.peer_id = peer_id or f"client-{uuid.uuid4().hex[:12]}"
        self.ice_servers = ice_servers or []
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self.trace = trace
        self._signaling: SignalingClient | None = None
        self._connections: dict[str, WorkerConnection] = {}

    async def __aenter__(self) -> RTCClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def _signaling_client(self) -> SignalingClient:
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

    async def connect(self, worker_id: str) -> WorkerConnection:
        """Open (or reuse) a peer connection and data channel to ``worker_id``.

        Raises:
            SignalingError: PEER_NOT_FOUND when no such worker is registered.
            TimeoutError: no answer or no open channel within ``connect_timeout``.
        """
        existing = self._connections.get(worker_id)
        if existing is not None and existing.channel.is_open:
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
        connection = WorkerConnection(pc, frames, worker_id, self.reply_timeout)
        self._connections[worker_id] = connection
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
    ) -> JobResult:
        """Run a shared-storage job on ``worker_id``; see :meth:`WorkerConnection.run_shared`.

        Raises:
            PathRejected, JobFailedError, WorkerBusy, WorkerProtocolError,
            SignalingError, ChannelClosed, TimeoutError.
        """
        connection = await self.connect(worker_id)
        return await connection.run_shared(
            input_path, output_path, job_id=job_id, on_log=on_log, job_timeout=job_timeout
        )

    async def close(self) -> None:
        """Close every peer connection and the signaling connection."""
        for connection in self._connections.values():
            await connection.close()
        self._connections.clear()
        if self._signaling is not None:
            await self._signaling.close()
            self._signaling = None
