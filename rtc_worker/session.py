"""The worker's side of one data channel: performs what its Connection decides.

:class:`WorkerSession` runs a ``Connection(WORKER)`` on a channel (through
:class:`~rtc_worker.driver.ChannelDriver`) and performs its actions with the file layer
and the job runner: validate a path (resolved once, opened by descriptor, kept for the
job), create an output folder, run or cancel the job, look up and pack results, upload
them to the storage service, and the transfer actions (:class:`~rtc_worker.transfer_io.TransferIO`).
It contains no protocol decision: every reply, refusal and state change comes from the
connection.

Source: DESIGN.md, "A shared-storage job" and "Results".
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable

from loguru import logger

from protocol import JobComplete, JobMetrics, PathReason
from protocol import events as ev
from protocol.connection import Connection
from protocol.handshake import AuthConfig, Authenticated, AuthFailed
from protocol.relay_events import DeleteRelayObject, FetchRelayPart, HaltRelay
from protocol.routes import Role
from rtc_worker.archive import ArchiveError, build_zip, inspect_zip, looks_like_zip
from rtc_worker.driver import ChannelDriver
from rtc_worker.jobs import JobRunError, JobSpec
from rtc_worker.paths import user_parts
from rtc_worker.relay_fetch import RelayFetch
from rtc_worker.results_client import ResultsServiceError
from rtc_worker.roads_taken import RoadLog
from rtc_worker.rtc import FrameChannel
from rtc_worker.storage import InputHandle, StorageError, StorageErrorKind, layout
from rtc_worker.transfer_io import TRANSFER_ACTIONS, Opener, TransferIO, file_to_send
from rtc_worker.worker_state import WorkerResources

__all__ = ["LOG_BUFFER_LIMIT", "WorkerSession"]

#: JOB_LOG lines are dropped while more than this many bytes wait to be sent.
LOG_BUFFER_LIMIT = 4 * 1024 * 1024
#: After a refused handshake, the refusal frame gets this long to leave, seconds.
REFUSAL_FLUSH_S = 0.5

Parts = tuple[str, ...]


class WorkerSession:
    """Serves one client's data channel until it closes.

    Args:
        channel: the data channel's frame adapter.
        resources: what every session of this worker shares.
        peer: the client's peer id (for logs).
        auth: the channel handshake's configuration (the worker's key, both DTLS
            fingerprints, who is accepted); None only in tests of the job flows, where
            the peer id is the principal.
        handshake_timeout_s: the channel is closed when its handshake has not ended
            this long after it opened, seconds.
        on_refused: called (after the refusal frame left) when the handshake failed or
            timed out: the worker closes the peer connection.
    """

    def __init__(
        self,
        channel: FrameChannel,
        resources: WorkerResources,
        peer: str = "?",
        *,
        auth: AuthConfig | None = None,
        handshake_timeout_s: float = 10.0,
        on_refused: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.resources = resources
        self.peer = peer
        self.channel = channel
        self.handshake_timeout_s = handshake_timeout_s
        self._on_refused = on_refused
        self.conn = Connection(
            Role.WORKER,
            peer=peer,
            auth=auth,
            limits=resources.limits,
            capabilities=resources.capabilities,
        )
        self.driver = ChannelDriver(self.conn, channel, self.perform, name=peer)
        self.io = TransferIO(
            self.conn,
            channel,
            resources.store,
            registry=resources.partials,
            wake=self.driver.drain,
            holdings=resources.holdings,
            counted=resources.metrics.channel_bytes,
        )
        self.roads = RoadLog()
        self.relay = (
            None
            if resources.relay_road is None
            else RelayFetch(resources.relay_road, self.io.relay_partial, self._relay_report)
        )
        self.job_task: asyncio.Task[None] | None = None
        self._input: InputHandle | None = None
        self._cancel = asyncio.Event()
        self._dropped_logs = 0
        if resources.slot.busy:
            self.conn.report(ev.WorkerBusy(resources.slot.why))

    async def run(self) -> None:
        """Handle frames in arrival order until the channel closes. Never raises."""
        logger.info("session with {} opened", self.peer)
        self.resources.sessions.add(self)
        if self.conn.handshake is not None:
            self.driver.spawn(self._handshake_deadline())
        try:
            await self.driver.run()
        finally:
            if self.relay is not None:  # its verified bytes stay in the partial
                await self.relay.halt()
            await self.io.close()
            self.resources.sessions.discard(self)
            if self.job_task is not None and not self.job_task.done():
                logger.info("client {} left; its job keeps running", self.peer)
            elif self._input is not None:  # a validated input no job will read
                self._input.close()
                self._input = None

    async def perform(self, output: object) -> None:
        """Perform one output of the connection (see :mod:`protocol.events`)."""
        if isinstance(output, TRANSFER_ACTIONS):
            self._count(output)
            await self.io.perform(output)
            return
        match output:
            case ev.StreamFrom():
                self.io.stream(output)
            case FetchRelayPart():
                self.roads.action(output.transfer)
                await self._fetch_relay(output)
            case HaltRelay():
                if self.relay is not None:
                    await self.relay.halt()
            case DeleteRelayObject():
                if self.resources.relay_road is not None:
                    self.resources.relay_road.delete(output)
            case ev.FileHeld():
                self.roads.held(output)
            case ev.ValidateInput(path=path):  # inside the drain: report, it goes on
                self.conn.report(await self._validate_input(output, path))
            case ev.PrepareOutput(path=path):
                self.conn.report(await self._prepare_output(output, path))
            case ev.StartJob():
                self._start_job(output)
            case ev.CancelJob(job_id=job_id):
                logger.info("client {} cancels job {}", self.peer, job_id)
                self._cancel.set()
            case ev.LookupResults(job_id=job_id):
                found = await asyncio.to_thread(self.resources.lookup, self.conn.principal, job_id)
                self.conn.report(found)
            case ev.PackResults():
                self.driver.spawn(self._pack(output))
            case ev.UploadResults():
                self.driver.spawn(self._upload(output))
            case Authenticated(principal=principal):
                logger.info("client {} is {}", self.peer, principal)
            case AuthFailed(code=code, detail=detail):
                logger.warning("handshake with {} failed: {} {}", self.peer, code, detail)
                self.driver.spawn(self._refuse())
            case ev.Violation(code=code, detail=detail):
                logger.warning("protocol error from {}: {} {}", self.peer, code, detail)
            case ev.Note(text=text):
                logger.info("{}: {}", self.peer, text)
            case _:  # FileHeld, ReceiveEnded, SendEnded, SendProgress: for the log
                logger.info("{}: {}", self.peer, output)

    # ------------------------------------------------------------------ transfers

    def _count(self, action: object) -> None:
        """Start the clock of a file being received (:class:`RoadLog`)."""
        if isinstance(action, ev.CheckStore | ev.ReadStoredRanges | ev.AwaitProof):
            self.roads.action(action.transfer)

    async def _fetch_relay(self, action: FetchRelayPart) -> None:
        """Start fetching a relay part."""
        assert self.relay is not None  # the connection asks only when the road is offered
        await self.relay.start(action)

    def _relay_report(self, outcome: object) -> None:
        """Report a relay outcome and drain soon (never in the caller: it may be inside
        a drain performing HaltRelay)."""
        self.conn.report(outcome, time.monotonic())
        self.driver.kick()

    # ------------------------------------------------------------------ handshake

    async def _handshake_deadline(self) -> None:
        """Close the channel when its handshake has not ended in time."""
        await asyncio.sleep(self.handshake_timeout_s)
        handshake = self.conn.handshake
        if handshake is not None and not handshake.open and not self.channel.closed.is_set():
            logger.warning(
                "no handshake from {} within {:.0f} s; closing", self.peer, self.handshake_timeout_s
            )
            await self._refuse(flush_s=0.0)

    async def _refuse(self, flush_s: float = REFUSAL_FLUSH_S) -> None:
        """Close the channel (and the peer connection) after a failed handshake."""
        await asyncio.sleep(flush_s)
        self.channel.channel.close()
        if self._on_refused is not None:
            await self._on_refused()

    # ------------------------------------------------------------------ paths

    async def _validate_input(self, action: ev.ValidateInput, path: str) -> object:
        try:
            handle, validation_ms, access_ms = await asyncio.to_thread(self._open_input, path)
        except StorageError as exc:
            logger.warning("input refused for {}: {}", self.peer, exc.detail)
            return ev.PathRefused(action, PathReason[exc.kind.name])
        except OSError as exc:
            logger.error("input {!r} of {} failed: {}", path, self.peer, exc)
            return ev.ActionFailed(action, f"the worker could not read {path}")
        if self._input is not None:
            self._input.close()
        self._input = handle
        return ev.InputAccepted(validation_ms, access_ms)

    def _open_input(self, path: str) -> tuple[InputHandle, float, float]:
        """Resolve once, open by descriptor, and for a ZIP read its central directory
        (blocking). Returns the handle and (validation ms, file access ms)."""
        shared = self.resources.shared
        assert shared is not None  # the connection refuses paths without shared storage
        t0 = time.perf_counter()
        parts = self._checked_place(user_parts(path, self.resources.limits))
        handle = shared.open_input(parts)
        t1 = time.perf_counter()
        try:
            if handle.kind == "file":
                with handle.reader() as reader:
                    if looks_like_zip(handle.name, reader.read(8)):
                        reader.seek(0)
                        inspect_zip(reader, self.resources.runner.zip_limits)
        except ArchiveError as exc:
            handle.close()
            raise StorageError(StorageErrorKind.CORRUPTED, parts, str(exc)) from None
        except BaseException:
            handle.close()
            raise
        return handle, (t1 - t0) * 1000, (time.perf_counter() - t1) * 1000

    async def _prepare_output(self, action: ev.PrepareOutput, path: str) -> object:
        shared = self.resources.shared
        assert shared is not None
        t0 = time.perf_counter()
        try:
            parts = await asyncio.to_thread(
                lambda: self._checked_place(user_parts(path, self.resources.limits))
            )
            await asyncio.to_thread(shared.makedirs, parts)
        except StorageError as exc:
            logger.warning("output refused for {}: {}", self.peer, exc.detail)
            return ev.PathRefused(action, PathReason[exc.kind.name])
        except OSError as exc:
            logger.error("output {!r} of {} failed: {}", path, self.peer, exc)
            return ev.ActionFailed(action, f"the worker could not create {path}")
        return ev.OutputAccepted((time.perf_counter() - t0) * 1000)

    def _checked_place(self, parts: Parts) -> Parts:
        """Refuse the root itself and the worker's own folders as an input or output.

        A job's cleanup removes what it added to its output folder: the whole share, or
        the worker's store, must never be that folder; and as an input they would list
        other clients' stored files.

        Raises:
            StorageError: PERMISSION_DENIED for such a place (OUTSIDE_ROOT and the like
                from resolving it).
        """
        shared = self.resources.shared
        assert shared is not None
        real = shared.resolve(parts)
        if not real or real[0] in self.resources.reserved_names:
            raise StorageError(
                StorageErrorKind.PERMISSION_DENIED, parts, "the root or a worker folder"
            )
        return parts

    # ------------------------------------------------------------------ jobs

    def _start_job(self, action: ev.StartJob) -> None:
        self.resources.slot.acquire((self.conn.principal, action.job_id))
        self._cancel = asyncio.Event()
        self.job_task = self.driver.spawn(self._run_job(action))

    async def _run_job(self, action: ev.StartJob) -> None:
        job_id, resources = action.job_id, self.resources
        started = time.perf_counter()
        spec: JobSpec | None = None
        try:
            spec = await asyncio.to_thread(self._job_spec, action)
            logger.info(
                "job {} started for {}: {} -> {}",
                job_id,
                self.peer,
                spec.input_path,
                spec.output_path,
            )
            outcome = await resources.runner.run(spec, self._send_log, self._cancel)
        except JobRunError as exc:
            logger.warning("job {} failed: {}", job_id, exc.reason)
            ended = ev.JobEnded(job_id, reason=exc.reason, path_error=exc.path_reason)
        except (StorageError, OSError) as exc:
            logger.error("job {} could not start: {}", job_id, exc)
            ended = ev.JobEnded(job_id, reason="cannot create the job folder on the worker")
        except Exception:
            logger.exception("job {} crashed", job_id)
            ended = ev.JobEnded(job_id, reason="internal worker error (see the worker's log)")
        else:
            total_s = time.perf_counter() - started
            complete = JobComplete(
                job_id,
                spec.output_path,
                outcome.file_count,
                JobComplete.mb_from_bytes(outcome.total_bytes),
            )
            taken = self.roads.road_of(action.input_sha256 or "")
            metrics = JobMetrics(
                validation_ms=action.validation_ms,
                file_access_ms=action.file_access_ms + outcome.file_access_ms,
                run_s=outcome.run_s,
                total_s=total_s,
                road="shared" if action.input_path is not None else taken.road,
                transfer_mb_s=0.0 if action.input_path is not None else taken.mb_s,
            )
            logger.info(
                "job {} complete: {} files, {} MB in {:.2f} s",
                job_id,
                complete.file_count,
                complete.total_mb,
                total_s,
            )
            ended = ev.JobEnded(job_id, complete, metrics)
        finally:  # the job's input (a validated path or a stored file) is done with
            if spec is not None:
                spec.input.close()
            if action.input_path is not None and self._input is not None:
                self._input.close()
                self._input = None
        resources.slot.release((self.conn.principal, job_id))
        resources.metrics.job_ended(None if ended.complete else ended.reason)
        await self.driver.report(ended)

    def _job_spec(self, action: ev.StartJob) -> JobSpec:
        """The job's input handle and output folder; records the job under its owner's
        identity (blocking)."""
        resources = self.resources
        if action.input_sha256 is not None:
            blob = resources.store.object_rel(action.input_sha256).split("/")
            handle = resources.root.open_input((*resources.store_parts, *blob))
            input_path = action.input_name or action.input_sha256
        else:
            assert self._input is not None and action.input_path is not None
            handle, input_path = self._input, action.input_path
        output: Parts
        if action.output_path is None:
            output = layout.job_output(self.conn.principal, action.job_id)
            resources.root.makedirs(output)
            output_path = "/".join(output)
        else:
            output = user_parts(action.output_path, resources.limits)
            output_path = action.output_path
        resources.record_job(self.conn.principal, action.job_id, output_path)
        return JobSpec(
            action.job_id, handle, input_path, output, output_path, input_name=action.input_name
        )

    def _send_log(self, line: str) -> None:
        """Send a JOB_LOG line unless the client is too far behind (bounded memory).

        Lines are dropped while more than :data:`LOG_BUFFER_LIMIT` bytes wait in the
        channel's send buffer; the client is told how many once it catches up.
        """
        if self.channel.channel.bufferedAmount > LOG_BUFFER_LIMIT:
            self._dropped_logs += 1
            return
        if self._dropped_logs:
            self.conn.send_log(f"[{self._dropped_logs} log lines dropped: client too slow]")
            self._dropped_logs = 0
        if self.conn.send_log(line):
            self.driver.kick()

    # ------------------------------------------------------------------ results

    async def _pack(self, action: ev.PackResults) -> None:
        """Pack the output folder into one ZIP and announce it (FileToSend)."""
        try:
            opener = await asyncio.to_thread(self._zip_results, action.job_id, action.output_path)
            self.io.offer(opener)
            outcome: object = await file_to_send(opener, layout.results_zip_name(action.job_id))
        except (StorageError, OSError) as exc:
            logger.error("could not pack the results of {}: {}", action.job_id, exc)
            outcome = ev.ActionFailed(action, f"could not send results of {action.job_id}")
        await self.driver.report(outcome)

    async def _upload(self, action: ev.UploadResults) -> None:
        """Upload a completed job's results ZIP to the storage service (with retries)."""
        job_id, client = action.job_id, self.resources.results_client
        assert client is not None  # the connection asks only with a storage service
        owner = self.conn.principal
        output = action.output_path or "/".join(layout.job_output(owner, job_id))
        try:
            opener = await asyncio.to_thread(self._zip_results, job_id, output)
            # the owner ran this job id again on purpose: its new results replace its old
            # ones (another owner's job with this id is another record)
            stored = await client.upload(opener, job_id, owner=self.conn.principal, replace=True)
        except (ResultsServiceError, StorageError, OSError) as exc:
            logger.error("results of {} not stored: {}", job_id, exc)
            await self.driver.report(
                ev.ActionFailed(action, f"could not store the results of {job_id}")
            )
            return
        logger.info("results of {} stored: {} bytes, sha256 {}", job_id, stored.size, stored.sha256)
        uploaded = ev.ResultsUploaded(
            job_id, stored.download_path, stored.sha256, stored.size, stored.download_token
        )
        await self.driver.report(uploaded)

    def _zip_results(self, job_id: str, output: str) -> Opener:
        """Pack the output folder into the job's results ZIP (blocking); its opener."""
        root = self.resources.root
        target = layout.job_results_zip(self.conn.principal, job_id)
        build_zip(root, user_parts(output, self.resources.limits), target)
        return lambda: root.open_file(target)

    async def aclose(self) -> None:
        """Cancel a running job and wait for it (worker shutdown)."""
        if self.job_task is not None and not self.job_task.done():
            self._cancel.set()
            with contextlib.suppress(Exception):
                await self.job_task
        await self.driver.cancel_tasks()
