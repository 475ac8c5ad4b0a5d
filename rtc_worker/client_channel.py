"""The client's side of one data channel to a worker: a ``Connection(CLIENT)`` driven
over the channel, and the steps of a job as awaitable calls.

:class:`WorkerConnection` sends only what its connection's tables allow (so never what
the worker would refuse), performs the transfer actions with
:class:`~rtc_worker.transfer_io.TransferIO` (downloads into the client's blob store,
uploads streamed and paced), and turns each reply into a result or the exception of
its wire code (:mod:`rtc_worker.errors`). It starts with the channel handshake
(:meth:`WorkerConnection.authenticate`).

Source: PROTOCOL.md sections 2 and 6 (the worked exchanges are these calls' traces).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable
from pathlib import Path

from aiortc import RTCPeerConnection
from loguru import logger

from protocol import (
    FileProgress,
    JobCancel,
    JobComplete,
    JobFailed,
    JobId,
    JobLog,
    JobMetrics,
    JobStart,
    Limits,
    Message,
    PathError,
    RemoteProtocolError,
    ResultsRequest,
    ResultsStored,
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
)
from protocol import events as ev
from protocol.connection import Connection
from protocol.handshake import AuthConfig, Authenticated, AuthFailed
from protocol.routes import Role
from rtc_worker.channel_auth import handshake_error
from rtc_worker.client_results import JobResult, ReceivedFile, SendResult
from rtc_worker.client_upload import CHANNEL_PLAN, Uploader, call_safely
from rtc_worker.driver import ChannelDriver
from rtc_worker.errors import (
    CANCELLED_REASON,
    InputCorrupted,
    InputNotFound,
    JobCancelled,
    JobFailedError,
    MalformedReply,
    WorkerProtocolError,
    path_refused,
    transfer_ended,
    worker_protocol_error,
)
from rtc_worker.roads_client import OnRoad, RoadPlan
from rtc_worker.rtc import ChannelClosed, FrameChannel
from rtc_worker.storage import BlobStore, SafeRoot
from rtc_worker.transfer_io import TRANSFER_ACTIONS, PartialRegistry, TransferIO

__all__ = ["WorkerConnection"]

Progress = Callable[[int, int], None]
_CLOSED = object()


class WorkerConnection:
    """One peer connection and data channel to a worker; runs jobs one after another.

    Args:
        pc: the open peer connection; ``channel`` its open data channel's adapter.
        worker_id: the worker's peer id.
        reply_timeout: seconds to wait for each reply (PATH_VALIDATED...).
        store: where downloads go (partials kept for a resume); ``registry`` its
            partial-file registry.
        limits: the bounds of what we accept (``max_file_bytes`` for downloads).
        auth: the channel handshake's configuration (our key, both DTLS fingerprints,
            the pinned worker key); :meth:`authenticate` runs it.
    """

    def __init__(
        self,
        pc: RTCPeerConnection,
        channel: FrameChannel,
        worker_id: str,
        reply_timeout: float,
        *,
        store: BlobStore,
        registry: PartialRegistry,
        limits: Limits,
        auth: AuthConfig | None = None,
    ) -> None:
        self.pc, self.channel, self.worker_id = pc, channel, worker_id
        self.reply_timeout = reply_timeout
        self.store = store
        self.conn = Connection(Role.CLIENT, auth=auth, limits=limits)
        self.driver = ChannelDriver(
            self.conn, channel, self._perform, name=worker_id, observe=self._observe
        )
        self.io = TransferIO(self.conn, channel, store, registry=registry, wake=self.driver.drain)
        self.uploader = Uploader(self.conn, self.io, self.driver, self._event)
        self._events: asyncio.Queue[object] = asyncio.Queue()
        self._lock = asyncio.Lock()
        self._on_download: Progress | None = None
        self.broken = False
        self._reader = asyncio.create_task(self._read(), name=f"reader-{worker_id}")

    async def _read(self) -> None:
        try:
            await self.driver.run()
        finally:
            await self.io.close()
            self._events.put_nowait(_CLOSED)

    async def _perform(self, output: object) -> None:
        if isinstance(output, TRANSFER_ACTIONS):
            await self.io.perform(output)
            return
        if self.uploader.perform(output):  # StreamFrom, RelayFrom, RoadChanged, SendProgress
            return
        match output:
            case ev.Note(text=text):
                logger.debug("{}: {}", self.worker_id, text)
            case _:  # Delivered, Refused, Violation, FileHeld, Received/SendEnded, handshake
                self._events.put_nowait(output)

    async def authenticate(self, timeout: float) -> Authenticated | None:
        """Run the channel handshake (PROTOCOL.md 2.5): the worker's proven identity, or
        None for an anonymous client.

        Raises:
            HandshakeError: a subclass per failure (WorkerKeyChanged, NotAuthorized...);
                the channel is then useless. ChannelClosed, TimeoutError.
        """
        handshake = self.conn.handshake
        if handshake is None or handshake.config.identity is None:
            return None
        self.conn.start_handshake()
        await self.driver.drain()
        while True:
            event = await self._event(timeout)
            if isinstance(event, Authenticated):
                return event
            if isinstance(event, AuthFailed | ev.Refused):  # Refused: no handshake there
                self.broken = True
                raise handshake_error(AuthFailed(event.code, event.detail))

    def _observe(self, sent: ev.Send) -> None:
        if isinstance(sent.message, FileProgress) and self._on_download is not None:
            call_safely(self._on_download, sent.message.received, sent.message.size)

    async def _send(self, message: Message) -> None:
        """ev.Send through the connection's tables (LocalProtocolError when not allowed)."""
        if not self.channel.is_open:
            raise ChannelClosed("data channel is not open")
        self.conn.send(message)
        await self.driver.drain()

    async def _event(self, timeout: float | None) -> object:
        """The next event for the caller, in order.

        Raises:
            ChannelClosed: the channel closed. TimeoutError: nothing within ``timeout``.
            MalformedReply: the worker sent a frame this client refuses.
        """
        async with asyncio.timeout(timeout):
            event = await self._events.get()
        if event is _CLOSED:
            self._events.put_nowait(_CLOSED)  # every later wait sees the close too
            raise ChannelClosed(f"data channel to {self.worker_id} closed")
        if isinstance(event, ev.Violation):
            raise MalformedReply(event.code, f"the worker sent {event.detail}")
        return event

    async def _reply(self, timeout: float | None) -> Message:
        """The next job reply (ev.Delivered message); a PROTOCOL_ERROR raises its class."""
        while True:
            event = await self._event(timeout)
            match event:
                case ev.Delivered(message=message):
                    return message
                case ev.Refused(code=code, detail=detail):
                    if code == "NO_STORAGE":
                        self.broken = True  # the frames after RESULTS_VIA_STORAGE went on
                    raise worker_protocol_error(code, detail)
            logger.debug("ignoring {} while waiting for a reply", event)

    async def _expect_path(self) -> None:
        """The answer to the path just sent: PATH_VALIDATED (the connection's tables
        let no other reply through), or the exception of its PATH_ERROR."""
        message = await self._reply(self.reply_timeout)
        if isinstance(message, PathError):
            raise path_refused(message)

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
        copy_road: RoadPlan | None = None,
        on_road: OnRoad | None = None,
    ) -> JobResult:
        """Run one shared-storage job on this connection.

        Args:
            input_path / output_path: relative to the shared root.
            job_id: optional id (``[A-Za-z0-9._-]{1,64}``); the worker makes one otherwise.
            on_log: called with each JOB_LOG line.
            job_timeout: seconds to wait for the job's end (then it is cancelled).
            local_copy: sent over the channel when the worker answers InputNotFound or
                InputCorrupted, and the job goes on with it.
            on_progress: (bytes_received, size) during such a transfer.
            via_storage: ask for the results ZIP on the storage service.
            copy_road: the road of ``local_copy`` (default: the data channel);
                ``on_road`` is told the road it takes and each change.

        Raises:
            PathRefusedError (a subclass per reason), JobFailedError (JobCancelled),
            TransferFailedError, RoadFailed, WorkerProtocolError (WorkerBusy...), ChannelClosed,
            TimeoutError, LocalProtocolError (a job_id outside the grammar).
        """
        async with self._lock:
            await self._open_job(job_id, via_storage)
            await self._send(SharedInputPath(input_path))
            try:
                await self._expect_path()
            except (InputNotFound, InputCorrupted) as exc:
                if local_copy is None:
                    raise
                logger.warning("{}; sending the local copy over the data channel", exc.reason)
                await self.uploader.upload(
                    local_copy, on_progress, copy_road or CHANNEL_PLAN, on_road
                )
            await self._send(SharedOutputPath(output_path))
            await self._expect_path()
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
        road: RoadPlan = CHANNEL_PLAN,
        on_road: OnRoad | None = None,
    ) -> tuple[SendResult, JobResult]:
        """Send ``local_path`` on ``road`` (default: the data channel) and run the job on
        it (outputs to the shared ``output_path``, else the worker's job folder: see
        :meth:`download_results`); ``on_road`` is told each road taken.

        Raises:
            TransferFailedError, RoadFailed and everything :meth:`run_shared` raises.
        """
        async with self._lock:
            await self._open_job(job_id, via_storage)
            sent = await self.uploader.upload(local_path, on_progress, road, on_road)
            if output_path is not None:
                await self._send(SharedOutputPath(output_path))
                await self._expect_path()
            return sent, await self._start(on_log, job_timeout, via_storage)

    async def _open_job(self, job_id: str | None, via_storage: bool) -> None:
        if job_id is not None:
            await self._send(JobId(job_id))
        if via_storage:
            await self._send(ResultsViaStorage())

    async def send_file(
        self,
        path: Path,
        on_progress: Progress | None = None,
        *,
        road: RoadPlan = CHANNEL_PLAN,
        on_road: OnRoad | None = None,
    ) -> SendResult:
        """Send one file on ``road`` (default: the data channel; resumes and dedupes
        against what the worker holds); see :class:`~rtc_worker.client_upload.Uploader`.

        Raises:
            TransferFailedError or WorkerProtocolError (per code), RoadFailed,
            ChannelClosed, OSError.
        """
        async with self._lock:
            return await self.uploader.upload(path, on_progress, road, on_road)

    async def _start(
        self, on_log: Callable[[str], None] | None, job_timeout: float | None, via_storage: bool
    ) -> JobResult:
        await self._send(JobStart())
        try:
            async with asyncio.timeout(job_timeout):
                result = await self._await_result(on_log)
            return await self._await_stored(result) if via_storage else result
        except TimeoutError:
            await self._abandon_job()
            raise
        except asyncio.CancelledError:
            # Our caller gave up: cancel the job; the connection is settled (or closed)
            # in the background, never reused while late frames may still come.
            self.broken = True
            self.driver.spawn(self._abandon_job())
            raise

    async def _abandon_job(self, grace: float = 15.0) -> None:
        """Cancel the running job and wait for its end, so its late frames are not taken
        for the next job's replies; close the connection when they do not come."""
        self.broken = True
        try:
            await self._send(JobCancel())
            async with asyncio.timeout(grace):
                while not isinstance(await self._reply(None), JobFailed | JobComplete):
                    pass
            self.broken = False
        except (ChannelClosed, TimeoutError, WorkerProtocolError, RemoteProtocolError):
            await self.close()

    async def _await_result(self, on_log: Callable[[str], None] | None) -> JobResult:
        logs: list[str] = []
        metrics: dict[str, float] = {}
        road: str | None = None
        path_error: PathError | None = None
        while True:
            match await self._reply(None):
                case JobLog(line=line):
                    logs.append(line)
                    if on_log is not None:
                        call_safely(on_log, line)
                case JobMetrics() as message:
                    metrics, road = message.as_dict(), message.road
                case JobComplete() as done:
                    return JobResult(
                        done.job_id,
                        done.output_path,
                        done.file_count,
                        done.total_mb,
                        metrics,
                        tuple(logs),
                        road=road,
                    )
                case JobFailed(job_id=job_id, reason=reason):
                    if path_error is not None:
                        raise path_refused(path_error)
                    cls = JobCancelled if reason == CANCELLED_REASON else JobFailedError
                    raise cls(job_id, reason)
                case PathError() as message:
                    path_error = message
                case other:
                    logger.debug("ignoring {} while a job runs", other)

    async def _await_stored(self, result: JobResult) -> JobResult:
        """Wait up to the reply timeout for RESULTS_STORED of ``result``'s job.

        Raises:
            WorkerProtocolError: the worker could not store the results (or refused).
        """
        try:
            async with asyncio.timeout(self.reply_timeout):
                while True:
                    message = await self._reply(None)
                    if isinstance(message, ResultsStored) and message.job_id == result.job_id:
                        return dataclasses.replace(
                            result,
                            stored_path=message.download_path,
                            stored_sha256=message.sha256,
                            stored_size=message.size,
                            download_token=message.token,
                        )
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
        """Ask for the job's results (one ZIP), received into the client's store
        (resumable, sha256-verified), then saved atomically as ``dest_dir/results-{job_id}.zip``.

        Raises:
            TransferFailedError, WorkerProtocolError (UnknownJob...), ChannelClosed,
            TimeoutError.
        """
        async with self._lock:
            self._on_download = on_progress
            try:
                await self._send(ResultsRequest(job_id))
                async with asyncio.timeout(timeout):
                    held = await self._await_download()
            finally:
                self._on_download = None
        received = ReceivedFile(
            held.sha256,
            held.name,
            held.size,
            self.store.object_path(held.sha256),
            held.existed,
            held.bytes_received,
        )
        target = dest_dir / held.name
        await asyncio.to_thread(_save_copy, self.store, held.sha256, target)
        return received, target

    async def _await_download(self) -> ev.FileHeld:
        while True:
            match await self._event(None):
                case ev.FileHeld() as held:
                    return held
                case ev.ReceiveEnded(code=code, detail=detail):
                    raise transfer_ended(code, detail)
                case ev.Refused(code=code, detail=detail):
                    raise worker_protocol_error(code, detail)
                case other:
                    logger.debug("ignoring {} while results download", other)

    def cancel(self) -> None:
        """ev.Send JOB_CANCEL: the running job ends with JOB_FAILED (reason cancelled)."""
        self.conn.send(JobCancel())
        self.driver.kick()

    async def close(self) -> None:
        """Close the data channel and the peer connection."""
        await self.pc.close()
        if self._reader is not asyncio.current_task():
            self._reader.cancel()
            with contextlib.suppress(BaseException):
                await self._reader
        await self.driver.cancel_tasks()


def _save_copy(store: BlobStore, sha256: str, target: Path) -> None:
    """Copy a stored object to ``target`` atomically (temporary file, fsync, rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with store.open_object(sha256) as source, SafeRoot(target.parent) as folder:
        folder.write_atomic((target.name,), iter(lambda: source.read(1 << 20), b""))
