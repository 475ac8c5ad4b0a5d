"""The worker's side of one data channel: frames in, protocol decisions, actions out.

Each text frame goes ``FrameChannel.recv`` (ordered inbox) -> :func:`protocol.decode`
-> :class:`protocol.job.JobSession`, which says what to do next or raises a
protocol error that becomes a ``PROTOCOL_ERROR`` reply. This module performs the
actions with :mod:`rtc_worker.storage` and :mod:`rtc_worker.jobs`; it never
decides protocol itself. A shared input is resolved and opened once, at validation;
the job reads that open descriptor.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import time
from dataclasses import dataclass, field

from loguru import logger

from protocol import (
    Chunk,
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
    ResultsRequest,
    ResultsStored,
    ResultsViaStorage,
    TransferError,
    decode,
)
from protocol.job import (
    Action,
    CancelJob,
    FileAccepted,
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
from protocol.messages import TransferErrorCode
from rtc_worker.archive import ArchiveError, build_zip, inspect_zip, looks_like_zip
from rtc_worker.channel import ChannelClosed, FrameChannel
from rtc_worker.errors import path_reason, user_parts
from rtc_worker.jobs import JobRunError, JobRunner, JobSpec
from rtc_worker.results_client import ResultsServiceClient, StorageServiceError
from rtc_worker.storage import (
    BlobStore,
    InputHandle,
    SafeRoot,
    StorageError,
    StorageErrorKind,
    layout,
)
from rtc_worker.transfer import PartialRegistry, ReceivedFile, TransferEndpoint

__all__ = ["LOG_BUFFER_LIMIT", "JobSlot", "WorkerResources", "WorkerSession"]

#: JOB_LOG lines are dropped while more than this many bytes wait to be sent.
LOG_BUFFER_LIMIT = 4 * 1024 * 1024


class JobSlot:
    """The worker-wide permission to run one job at a time.

    Attributes:
        job_id: the running job's id, or None when the worker is idle.
    """

    def __init__(self) -> None:
        self.job_id: str | None = None
        self.closed = False

    @property
    def busy(self) -> bool:
        """True while a job runs, or for good once the worker is stopping."""
        return self.job_id is not None or self.closed

    def close(self) -> None:
        """The worker is stopping: no new job may start."""
        self.closed = True

    def acquire(self, job_id: str) -> None:
        """Take the slot. Raises RuntimeError when it is taken (callers check ``busy``)."""
        if self.busy:
            raise RuntimeError(f"job slot taken by {self.job_id or 'shutdown'}")
        self.job_id = job_id

    def release(self, job_id: str) -> None:
        """Give the slot back (only the job holding it can)."""
        if self.job_id == job_id:
            self.job_id = None


@dataclass
class WorkerResources:
    """What every session of one worker shares.

    Attributes:
        shared_fs: the shared root, or None without shared storage.
        runner: runs jobs on the storage root (the shared root, else the data dir).
        store: the blob store of received files.
        store_parts: where ``store`` lives under the runner's root.
        partials: which session writes which partial file.
        slot: one job at a time per worker.
        limits: frame bounds for :func:`protocol.decode`.
        max_file_size: largest file accepted over the channel, bytes.
        chunk_size: chunk size of files we send, bytes.
        job_outputs: job_id -> output folder (components under the storage root), for
            RESULTS_REQUEST.
    """

    shared_fs: SafeRoot | None
    runner: JobRunner
    store: BlobStore
    store_parts: tuple[str, ...]
    partials: PartialRegistry
    slot: JobSlot
    limits: Limits
    max_file_size: int
    chunk_size: int = 65536
    job_outputs: dict[str, tuple[str, ...]] = field(default_factory=dict)
    #: job_id -> the peer that ran it: results go to that peer only.
    job_owners: dict[str, str] = field(default_factory=dict)
    #: Top-level folders of the worker under the root (never an output folder).
    reserved_names: tuple[str, ...] = layout.RESERVED_NAMES
    #: The storage service results are uploaded to, or None when there is none.
    storage: ResultsServiceClient | None = None


@dataclass
class _Timings:
    validation_ms: float = 0.0
    file_access_ms: float = 0.0
    started: float = field(default_factory=time.perf_counter)


class WorkerSession:
    """Serves one client's data channel until it closes.

    Args:
        channel: the data channel's frame adapter.
        resources: what the worker's sessions share.
        peer: the remote peer's id, for logs.
    """

    def __init__(self, channel: FrameChannel, resources: WorkerResources, peer: str = "?") -> None:
        self.channel = channel
        self.resources = resources
        self.fs = resources.shared_fs
        self.runner = resources.runner
        self.slot = resources.slot
        self.limits = resources.limits
        self.peer = peer
        self.transfers = TransferEndpoint(
            channel,
            resources.store,
            max_size=resources.max_file_size,
            chunk_size=resources.chunk_size,
            max_chunk_size=resources.limits.max_binary_frame_bytes,
            registry=resources.partials,
            on_received=self._on_file,
        )
        self._results_task: asyncio.Task[None] | None = None
        self.session = JobSession()
        self._timings = _Timings()
        self._cancel = asyncio.Event()
        self.job_task: asyncio.Task[None] | None = None
        self._dropped_logs = 0
        self._input_names: dict[str, str] = {}
        #: The validated shared input (as the client sent it) and its open handle.
        self._input: tuple[str, InputHandle] | None = None
        #: RESULTS_VIA_STORAGE was received: upload the next completed job's results.
        self.via_storage = False

    async def run(self) -> None:
        """Handle frames in arrival order until the channel closes. Never raises."""
        logger.info("session with {} opened", self.peer)
        try:
            while True:
                frame = await self.channel.recv()
                try:
                    await self._handle(frame)
                except Exception:  # a bug: answer, log it, keep serving this channel
                    logger.exception("frame from {} failed", self.peer)
                    self._protocol_error(ErrorCode.INTERNAL_ERROR, "the worker failed on it")
        except ChannelClosed:
            logger.info("session with {} closed", self.peer)
        except Exception:  # a bug: log it, keep the worker alive
            logger.exception("session with {} failed", self.peer)
        finally:  # also when cancelled at shutdown: keep the partial file for a resume
            await self.transfers.close()
            if self.job_task is None or self.job_task.done():
                self._forget_input()
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
        if TransferEndpoint.is_transfer_frame(message):
            try:
                await self.transfers.handle(message)
            except RemoteProtocolError as exc:
                if isinstance(message, Chunk):
                    logger.warning("unexpected binary frame from {}: {}", self.peer, exc.detail)
                    self._send(TransferError(TransferErrorCode.UNEXPECTED_DATA, exc.detail))
                else:
                    self._protocol_error(exc.code, exc.detail)
            return
        if isinstance(message, ResultsRequest):
            self._send_results(message.job_id)
            return
        if isinstance(message, ResultsViaStorage):
            if self.resources.storage is None:
                self._protocol_error(
                    ErrorCode.NO_STORAGE, "this worker has no storage service configured"
                )
            else:
                self.via_storage = True
            return
        if isinstance(message, ProtocolErrorFrame):
            # The client complains about one of our frames: log it, never answer an
            # error with an error (two peers doing so would loop).
            logger.warning("client {} reports {}: {}", self.peer, message.code, message.detail)
            return
        if (
            isinstance(message, JobStart)
            and self.session.state in (JobState.READY, JobState.HAVE_FILE)
            and self.slot.busy
        ):
            detail = (
                "the worker is shutting down"
                if self.slot.closed
                else f"another job ({self.slot.job_id}) is running on this worker; try again later"
            )
            self._protocol_error(ErrorCode.WORKER_BUSY, detail)
            return
        try:
            action = self.session.receive(message)
        except RemoteProtocolError as exc:
            self._protocol_error(exc.code, exc.detail)
            return
        await self._perform(action)

    def _on_file(self, received: ReceivedFile) -> None:
        """A file arrived (or was already held): it becomes the next job's input."""
        if self.session.state is JobState.RUNNING:
            logger.info("{} stored while a job runs; send it again to use it", received.name)
            return
        rel = "/".join(
            (*self.resources.store_parts, self.resources.store.object_rel(received.sha256))
        )
        self._input_names[rel] = received.name
        self.session.report(FileAccepted(rel, received.name))

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
        try:
            handle, validation_ms, access_ms = await asyncio.to_thread(self._inspect_input, path)
        except StorageError as exc:
            logger.warning("input refused for {}: {}", self.peer, exc.detail)
            self.session.report(InputRejected())
            self._send(PathError(path_reason(exc, path)))
            return
        except OSError as exc:
            logger.error("input {!r} of {} failed: {}", path, self.peer, exc)
            self.session.report(InputRejected())
            self._protocol_error(ErrorCode.INTERNAL_ERROR, f"the worker could not read {path}")
            return
        self._timings.validation_ms += validation_ms
        self._timings.file_access_ms += access_ms
        self._forget_input()
        self._input = (path, handle)
        self.session.report(InputAccepted(path))
        self._send(PathValidated("input"))

    def _inspect_input(self, path: str) -> tuple[InputHandle, float, float]:
        """Resolve and open the input once (blocking); a ZIP's central directory is read.

        Returns:
            The open input, the validation time and the file access time, ms.

        Raises:
            StorageError: the path is refused (CORRUPTED for an unreadable or unsafe ZIP).
            OSError: reading failed otherwise.
        """
        assert self.fs is not None
        t0 = time.perf_counter()
        parts = self._check_place(path)
        handle = self.fs.open_input(parts)
        t1 = time.perf_counter()
        try:
            if handle.kind == "file":
                self._check_format(handle)
        except BaseException:
            handle.close()
            raise
        return handle, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000

    def _check_format(self, handle: InputHandle) -> None:
        """Read a ZIP's central directory from the open input.

        Raises:
            StorageError: CORRUPTED for an unreadable or unsafe ZIP.
        """
        head = os.pread(handle.fd, 8, 0)
        if not looks_like_zip(handle.name, head):
            return
        with handle.reader() as reader:
            try:
                inspect_zip(reader, self.runner.zip_limits)
            except ArchiveError as exc:
                raise StorageError(StorageErrorKind.CORRUPTED, handle.parts, str(exc)) from None

    def _forget_input(self) -> None:
        """Close the validated input's handle (a new one replaces it, or it was used)."""
        if self._input is not None:
            self._input[1].close()
            self._input = None

    async def _prepare_output(self, path: str) -> None:
        if self._no_shared_storage():
            self.session.report(OutputRejected())
            return
        assert self.fs is not None
        t0 = time.perf_counter()
        try:
            await asyncio.to_thread(self._make_output, path)
        except StorageError as exc:
            logger.warning("output refused for {}: {}", self.peer, exc.detail)
            self.session.report(OutputRejected())
            self._send(PathError(path_reason(exc, path)))
            return
        except OSError as exc:
            logger.error("output {!r} of {} failed: {}", path, self.peer, exc)
            self.session.report(OutputRejected())
            self._protocol_error(ErrorCode.INTERNAL_ERROR, f"the worker could not create {path}")
            return
        self._timings.validation_ms += (time.perf_counter() - t0) * 1000
        self.session.report(OutputAccepted(path))
        self._send(PathValidated("output"))

    def _make_output(self, path: str) -> None:
        """Check the place (blocking), then create the output folder by descriptor."""
        assert self.fs is not None
        self.fs.makedirs(self._check_place(path))

    def _check_place(self, path: str) -> tuple[str, ...]:
        """Split the client's path; refuse the root itself and the worker's own folders
        as an input or output.

        A job's cleanup removes what it added to its output folder: the whole share,
        or the worker's store, must never be that folder; and as an input they would
        list other clients' stored files in a manifest.

        Returns:
            The path's components (as sent; the file layer resolves them).

        Raises:
            StorageError: PERMISSION_DENIED for such a place (OUTSIDE_ROOT and the like
                from the path's check and resolution).
        """
        assert self.fs is not None
        parts = user_parts(path, self.limits)
        resolved = self.fs.resolve(parts)
        if not resolved or resolved[0] in self.resources.reserved_names:
            raise StorageError(
                StorageErrorKind.PERMISSION_DENIED, parts, "the root or a worker folder"
            )
        return parts

    # ------------------------------------------------------------------ jobs

    def _start_job(self, action: StartJob) -> None:
        self.slot.acquire(action.job_id)
        self._cancel = asyncio.Event()
        self.job_task = asyncio.create_task(self._run_job(action), name=f"job-{action.job_id}")

    async def _run_job(self, action: StartJob) -> None:
        root = self.runner.root
        output: tuple[str, ...]
        try:
            if action.output_path is None:  # a received input: outputs in the job folder
                output = layout.job_output(action.job_id)
                await asyncio.to_thread(root.makedirs, output)
            else:
                output = user_parts(action.output_path, self.limits)
        except (StorageError, OSError, ValueError) as exc:
            logger.error("cannot create the job folder for {}: {}", action.job_id, exc)
            self._send(JobFailed(action.job_id, "cannot create the job folder on the worker"))
            self._end_job(action.job_id)
            return
        try:
            handle = await asyncio.to_thread(self._job_input, action)
        except StorageError as exc:
            logger.warning("job {}: input refused at start: {}", action.job_id, exc.detail)
            reason = path_reason(exc, action.input_path)
            self._send(PathError(reason))
            self._send(JobFailed(action.job_id, reason))
            self._end_job(action.job_id)
            return
        self.resources.job_outputs[action.job_id] = output
        self.resources.job_owners[action.job_id] = self.peer
        with contextlib.suppress(OSError, StorageError, ValueError):  # for a restarted worker
            await asyncio.to_thread(
                root.write_atomic, layout.job_owner_file(action.job_id), self.peer.encode()
            )
        spec = JobSpec(
            action.job_id,
            handle,
            action.input_path,
            output,
            action.output_path or "/".join(output),
            input_name=self._input_names.get(action.input_path) if action.input_received else None,
        )
        timings, self._timings = self._timings, _Timings()
        started = time.perf_counter()
        logger.info(
            "job {} started for {}: {} -> {}",
            spec.job_id,
            self.peer,
            spec.input_path,
            spec.output_path,
        )
        completed = False
        try:
            outcome = await self.runner.run(spec, self._send_log, self._cancel)
        except JobRunError as exc:
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
            completed = True
        finally:
            if self._input is not None and self._input[1] is handle:
                self._input = None
            handle.close()
            self._end_job(spec.job_id)
        storage = self.resources.storage
        if completed and storage is not None and (self.via_storage or not self.channel.is_open):
            self.via_storage = False
            await self._store_results(storage, spec.job_id, spec.output)

    def _end_job(self, job_id: str) -> None:
        self.slot.release(job_id)
        self.session.report(JobFinished())

    def _job_input(self, action: StartJob) -> InputHandle:
        """The job's input: the handle opened at validation, else (a received file)
        the stored object opened now (blocking).

        Raises:
            StorageError: the stored file cannot be opened (VANISHED when missing).
        """
        if self._input is not None and self._input[0] == action.input_path:
            return self._input[1]
        parts = tuple(action.input_path.split("/"))
        try:
            return self.runner.root.open_input(parts)
        except StorageError as exc:
            if exc.kind is not StorageErrorKind.NOT_FOUND:
                raise
            raise StorageError(StorageErrorKind.VANISHED, parts, exc.detail) from None

    async def _store_results(
        self, storage: ResultsServiceClient, job_id: str, output: tuple[str, ...]
    ) -> None:
        """Upload a completed job's results ZIP to the storage service (with retries),
        then tell the client with RESULTS_STORED when it is still there."""
        root = self.runner.root
        zip_parts = layout.job_results_zip(job_id)
        try:
            await asyncio.to_thread(build_zip, root, output, zip_parts)
            stored = await storage.upload(functools.partial(root.open_file, zip_parts), job_id)
        except (StorageServiceError, StorageError, OSError) as exc:
            logger.error("results of {} not stored: {}", job_id, exc)
            self._protocol_error(
                ErrorCode.INTERNAL_ERROR, f"could not store the results of {job_id}"
            )
            return
        logger.info(
            "results of {} stored: {} bytes, sha256 {} ({} attempt(s))",
            job_id,
            stored.size,
            stored.sha256,
            stored.attempts,
        )
        self._send(ResultsStored(job_id, stored.download_path))

    # ------------------------------------------------------------------ results

    def _send_results(self, job_id: str) -> None:
        if self.transfers.sender.active or (
            self._results_task is not None and not self._results_task.done()
        ):
            self._protocol_error(ErrorCode.UNEXPECTED_MESSAGE, "a file is already being sent")
            return
        if self.slot.job_id == job_id:
            self._protocol_error(ErrorCode.UNEXPECTED_MESSAGE, f"job {job_id} is still running")
            return
        self._results_task = asyncio.create_task(self._results(job_id))

    def _owner_of(self, job_id: str) -> str | None:
        """The peer that ran ``job_id`` (blocking: may read the job folder's owner file)."""
        owner = self.resources.job_owners.get(job_id)
        if owner is None:
            try:
                with self.runner.root.open_file(layout.job_owner_file(job_id)) as handle:
                    owner = handle.read(256).decode("utf-8", "replace")
            except (OSError, StorageError, ValueError):
                return None
        return owner

    def _output_exists(self, job_id: str) -> tuple[str, ...] | None:
        """The output folder of ``job_id`` when it exists (blocking)."""
        try:
            output = self.resources.job_outputs.get(job_id) or layout.job_output(job_id)
        except ValueError:
            return None
        return output if self.runner.root.exists(output) else None

    async def _results(self, job_id: str) -> None:
        """Send a job's output folder as one ZIP, to the peer that ran the job only."""
        owner = await asyncio.to_thread(self._owner_of, job_id)
        output = await asyncio.to_thread(self._output_exists, job_id)
        if owner != self.peer or output is None:
            # another peer's job is answered like a job that does not exist
            self._protocol_error(ErrorCode.UNKNOWN_JOB, f"no results for job {job_id}")
            return
        root = self.runner.root
        zip_parts = layout.job_results_zip(job_id)
        try:
            await asyncio.to_thread(build_zip, root, output, zip_parts)
            with await asyncio.to_thread(root.open_file, zip_parts) as packed:
                result = await self.transfers.send_file(
                    packed, name=layout.results_zip_name(job_id)
                )
        except ChannelClosed:
            logger.info("client {} left while results of {} were sent", self.peer, job_id)
            return
        except Exception:
            logger.exception("could not send the results of {}", job_id)
            self._protocol_error(ErrorCode.INTERNAL_ERROR, f"could not send results of {job_id}")
            return
        logger.info(
            "results of {} to {}: {} ({} of {} bytes sent, {:.2f} MB/s)",
            job_id,
            self.peer,
            result.outcome.status,
            result.bytes_sent,
            result.size,
            result.mb_per_s,
        )

    async def aclose(self) -> None:
        """Cancel a running job and wait for it (used at worker shutdown)."""
        if self.job_task is not None and not self.job_task.done():
            self._cancel.set()
            with contextlib.suppress(Exception):
                await self.job_task
        if self._results_task is not None:
            self._results_task.cancel()
            with contextlib.suppress(BaseException):
                await self._results_task
