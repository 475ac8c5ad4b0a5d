"""The worker's side of one data channel: frames in, protocol decisions, actions out.

Each text frame goes ``FrameChannel.recv`` (ordered inbox) -> :func:`protocol.decode`
-> :class:`protocol.job.JobSession`, which says what to do next or raises a
protocol error that becomes a ``PROTOCOL_ERROR`` reply. This module performs the
actions with :mod:`rtc_worker.storage` and :mod:`rtc_worker.jobs`; it never
decides protocol itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loguru import logger

from protocol import (
    ErrorCode,
    JobComplete,
    JobFailed,
    JobLog,
    JobMetrics,
    JobStart,
    Limits,
    Message,
    PathError,
    PathValidated,
    ProtocolErrorFrame,
    RemoteProtocolError,
    decode,
)
from protocol.job import (
    Action,
    CancelJob,
    InputAccepted,
    InputRejected,
    JobFinished,
    JobSession,
    JobState,
    OutputAccepted,
    OutputRejected,
    PrepareOutput,
    StartJob,
    ValidateInput,
)
from rtc_worker.archive import ArchiveError, inspect_zip, looks_like_zip
from rtc_worker.channel import ChannelClosed, FrameChannel
from rtc_worker.jobs import JobError, JobRunner, JobSpec
from rtc_worker.storage import FilesystemAdapter, PathErrorKind, StoragePathError

if TYPE_CHECKING:
    from rtc_worker.worker import JobSlot

__all__ = ["LOG_BUFFER_LIMIT", "WorkerSession"]

#: JOB_LOG lines are dropped while more than this many bytes wait to be sent.
LOG_BUFFER_LIMIT = 4 * 1024 * 1024


@dataclass
class _Timings:
    validation_ms: float = 0.0
    file_access_ms: float = 0.0
    started: float = field(default_factory=time.perf_counter)


class WorkerSession:
    """Serves one client's data channel until it closes.

    Args:
        channel: the data channel's frame adapter.
        fs: the shared root's adapter, or None when the worker has no shared storage.
        runner: runs jobs (None when there is no shared storage).
        slot: the worker-wide job slot (one job at a time per worker).
        limits: frame bounds for :func:`protocol.decode`.
        peer: the remote peer's id, for logs.
    """

    def __init__(
        self,
        channel: FrameChannel,
        *,
        fs: FilesystemAdapter | None,
        runner: JobRunner | None,
        slot: JobSlot,
        limits: Limits,
        peer: str = "?",
    ) -> None:
        self.channel = channel
        self.fs = fs
        self.runner = runner
        self.slot = slot
        self.limits = limits
        self.peer = peer
        self.session = JobSession()
        self._timings = _Timings()
        self._cancel = asyncio.Event()
        self.job_task: asyncio.Task[None] | None = None
        self._dropped_logs = 0

    async def run(self) -> None:
        """Handle frames in arrival order until the channel closes. Never raises."""
        logger.info("session with {} opened", self.peer)
        try:
            while True:
                frame = await self.channel.recv()
                await self._handle(frame)
        except ChannelClosed:
            logger.info("session with {} closed", self.peer)
        except Exception:  # a bug: log it, keep the worker alive
            logger.exception("session with {} failed", self.peer)
        if self.job_task is not None and not self.job_task.done():
            logger.info("client {} left; job {} keeps running", self.peer, self.session.job_id)

    def _send(self, message: Message) -> None:
        if not self.channel.send(message):
            logger.debug("not sent to {} (channel closed): {}", self.peer, message)

    def _send_log(self, line: str) -> None:
        """Send a JOB_LOG line unless the client is too far behind (bounded memory).

        Lines are dropped while more than :data:`LOG_BUFFER_LIMIT` bytes wait in the
        channel's send buffer; the client is told how many once it catches up.
        """
        if self.channel.channel.bufferedAmount > LOG_BUFFER_LIMIT:
            self._dropped_logs += 1
            return
        if self._dropped_logs:
            self._send(JobLog(f"[{self._dropped_logs} log lines dropped: client too slow]"))
            self._dropped_logs = 0
        self._send(JobLog(line))

    def _protocol_error(self, code: ErrorCode, detail: str) -> None:
        logger.warning("protocol error from {}: {} {}", self.peer, code, detail)
        self._send(ProtocolErrorFrame(code, detail))

    async def _handle(self, frame: str | bytes) -> None:
        try:
            message = decode(frame, self.limits)
        except RemoteProtocolError as exc:
            self._protocol_error(exc.code, exc.detail)
            return
        if (
            isinstance(message, JobStart)
            and self.session.state is JobState.READY
            and self.slot.busy
        ):
            self._protocol_error(
                ErrorCode.WORKER_BUSY,
                f"another job ({self.slot.job_id}) is running on this worker; try again later",
            )
            return
        try:
            action = self.session.receive(message)
        except RemoteProtocolError as exc:
            code = ErrorCode.UNEXPECTED_DATA if frame.__class__ is bytes else exc.code
            self._protocol_error(code, exc.detail)
            return
        await self._perform(action)

    async def _perform(self, action: Action) -> None:
        match action:
            case ValidateInput(path=path):
                await self._validate_input(path)
            case PrepareOutput(path=path):
                await self._prepare_output(path)
            case StartJob():
                self._start_job(action)
            case CancelJob(job_id=job_id):
                logger.info("client {} cancels job {}", self.peer, job_id)
                self._cancel.set()
            case _:  # SetJobId: nothing to do
                pass

    # ------------------------------------------------------------------ paths

    def _no_shared_storage(self) -> bool:
        if self.fs is None:
            self._protocol_error(
                ErrorCode.NO_SHARED_STORAGE, "this worker has no shared storage configured"
            )
            return True
        return False

    async def _validate_input(self, path: str) -> None:
        if self._no_shared_storage():
            self.session.report(InputRejected())
            return
        assert self.fs is not None
        try:
            t0 = time.perf_counter()
            resolved = await asyncio.to_thread(self.fs.validate_input, path)
            t1 = time.perf_counter()
            if not resolved.is_dir():
                await asyncio.to_thread(self._check_format, path, resolved.name)
            t2 = time.perf_counter()
        except StoragePathError as exc:
            logger.warning("input refused for {}: {}", self.peer, exc.detail)
            self.session.report(InputRejected())
            self._send(PathError(exc.reason))
            return
        self._timings.validation_ms += (t1 - t0) * 1000
        self._timings.file_access_ms += (t2 - t1) * 1000
        self.session.report(InputAccepted(path))
        self._send(PathValidated("input"))

    def _check_format(self, path: str, name: str) -> None:
        """Open the input (at-use checks) and, for a ZIP, read its central directory.

        Raises:
            StoragePathError: CORRUPTED for an unreadable or unsafe ZIP, or any
                at-use refusal of :meth:`FilesystemAdapter.open_file`.
        """
        assert self.fs is not None and self.runner is not None
        with self.fs.open_file(path) as handle:
            head = handle.read(8)
            if not looks_like_zip(name, head):
                return
            handle.seek(0)
            try:
                inspect_zip(handle, self.runner.zip_limits)
            except ArchiveError as exc:
                raise StoragePathError(PathErrorKind.CORRUPTED, path, str(exc)) from None

    async def _prepare_output(self, path: str) -> None:
        if self._no_shared_storage():
            self.session.report(OutputRejected())
            return
        assert self.fs is not None
        t0 = time.perf_counter()
        try:
            await asyncio.to_thread(self.fs.makedirs, path)
        except StoragePathError as exc:
            logger.warning("output refused for {}: {}", self.peer, exc.detail)
            self.session.report(OutputRejected())
            self._send(PathError(exc.reason))
            return
        self._timings.validation_ms += (time.perf_counter() - t0) * 1000
        self.session.report(OutputAccepted(path))
        self._send(PathValidated("output"))

    # ------------------------------------------------------------------ jobs

    def _start_job(self, action: StartJob) -> None:
        self.slot.acquire(action.job_id)
        self._cancel = asyncio.Event()
        self.job_task = asyncio.create_task(self._run_job(action), name=f"job-{action.job_id}")

    async def _run_job(self, action: StartJob) -> None:
        assert self.runner is not None
        spec = JobSpec(action.job_id, action.input_path, action.output_path)
        timings, self._timings = self._timings, _Timings()
        started = time.perf_counter()
        logger.info(
            "job {} started for {}: {} -> {}",
            spec.job_id,
            self.peer,
            spec.input_path,
            spec.output_path,
        )
        try:
            outcome = await self.runner.run(spec, self._send_log, self._cancel)
        except JobError as exc:
            logger.warning("job {} failed: {}", spec.job_id, exc.reason)
            if exc.path_error:
                self._send(PathError(exc.reason))
            self._send(JobFailed(spec.job_id, exc.reason))
        except Exception:
            logger.exception("job {} crashed", spec.job_id)
            self._send(JobFailed(spec.job_id, "internal worker error (see the worker's log)"))
        else:
            total_s = time.perf_counter() - started
            metrics = JobMetrics(
                validation_ms=timings.validation_ms,
                file_access_ms=timings.file_access_ms + outcome.file_access_ms,
                run_s=outcome.run_s,
                total_s=total_s,
            )
            complete = JobComplete(
                spec.job_id,
                spec.output_path,
                outcome.file_count,
                JobComplete.mb_from_bytes(outcome.total_bytes),
            )
            logger.info(
                "job {} complete: {} files, {} MB in {:.2f} s",
                spec.job_id,
                outcome.file_count,
                complete.total_mb,
                total_s,
            )
            self._send(metrics)
            self._send(complete)
        finally:
            self.session.report(JobFinished())
            self.slot.release(spec.job_id)

    async def aclose(self) -> None:
        """Cancel a running job and wait for it (used at worker shutdown)."""
        if self.job_task is not None and not self.job_task.done():
            self._cancel.set()
            with contextlib.suppress(Exception):
                await self.job_task
