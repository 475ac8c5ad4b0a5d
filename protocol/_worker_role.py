"""The worker's decisions inside a :class:`~protocol.connection.Connection` (sans-IO).

Job session (:data:`~protocol.job.WORKER_TABLE`), the guards (no shared storage, no
storage service, busy), results: who may have them and when, and every reply the
worker sends about a job. Only :class:`~protocol.connection.Connection` uses this.

Source: PROTOCOL.md sections 2.1-2.2 and 4.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.events import (
    ActionFailed,
    CancelJob,
    FileHeld,
    FileToSend,
    InputAccepted,
    JobEnded,
    LookupResults,
    Note,
    OutputAccepted,
    PackResults,
    PathRefused,
    PrepareOutput,
    ResultsFound,
    ResultsUploaded,
    StartJob,
    UploadResults,
    ValidateInput,
    WorkerBusy,
    WorkerIdle,
)
from protocol.job import WORKER_TABLE, JobKey, JobState, Outcome
from protocol.messages import (
    JobCancel,
    JobFailed,
    JobId,
    JobStart,
    Message,
    PathError,
    PathValidated,
    ProtocolErrorFrame,
    ResultsRequest,
    ResultsStored,
    SharedInputPath,
    SharedOutputPath,
)
from protocol.routes import GUARDS, Guard, Part
from protocol.transfer_messages import FileMeta

if TYPE_CHECKING:
    from protocol.connection import Connection

__all__ = ["WorkerSide"]

_REJECTED = {SharedInputPath: Outcome.INPUT_REJECTED, SharedOutputPath: Outcome.OUTPUT_REJECTED}


class WorkerSide:
    """The worker role's job data and decisions.

    Attributes:
        job_id: the id of the next (or the running) job, or None.
        input_path: the validated shared input as the client sent it, or None.
        input_sha256 / input_name: the received file that is the input, or None.
        output_path: the validated shared output folder, or None.
        via_storage: RESULTS_VIA_STORAGE was received (the next completed job's results
            go to the storage service).
        busy: why JOB_START is refused now (another job runs, the worker is stopping),
            or None.
    """

    def __init__(self, conn: Connection, job_id_factory: Callable[[], str]) -> None:
        self.conn = conn
        self._new_job_id = job_id_factory
        self.job_id: str | None = None
        self.input_path: str | None = None
        self.input_sha256: str | None = None
        self.input_name: str | None = None
        self.output_path: str | None = None
        self.validation_ms = 0.0
        self.file_access_ms = 0.0
        self.running: StartJob | None = None
        self.via_storage = False
        self.busy: str | None = None
        self._checking: ValidateInput | PrepareOutput | None = None

    @property
    def state(self) -> JobState:
        """The job session's state."""
        state = self.conn.job
        assert isinstance(state, JobState)
        return state

    def _apply(self, key: JobKey) -> None:
        try:
            self.conn.job = WORKER_TABLE[(self.state, key)]
        except KeyError:
            name = getattr(key, "TYPE", "") or str(key)
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"can't handle {name} in state {self.state}"
            ) from None

    # ------------------------------------------------------------------ received

    def receive(self, part: Part, message: Message) -> None:
        """Handle a message routed to the job session, the results or a peer error.

        Raises:
            RemoteProtocolError: not allowed in the current state; nothing changes.
        """
        if isinstance(message, ProtocolErrorFrame):
            if self.conn.sender.state == "AWAIT_READY":  # the client cannot take our file
                self.conn.emit(*self.conn.sender.receive(message))
            else:  # never answer an error with an error: two peers doing so would loop
                self.conn.emit(Note(f"peer reports {message.code}: {message.detail}"))
        elif isinstance(message, ResultsRequest):
            self._results_request(message)
        else:
            self._job(message)

    def _job(self, message: Message) -> None:
        if (self.state, type(message)) not in WORKER_TABLE:
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"can't handle {message.TYPE} in state {self.state}"
            )
        guard = GUARDS.get(type(message))
        if guard is not None and self._blocked(guard[0]):
            self.conn.refuse(guard[1], self._why(guard[0]))
            if type(message) in _REJECTED:  # a refused path forgets the earlier one
                self._rejected(_REJECTED[type(message)])
            return
        match message:
            case JobId(job_id=job_id):
                self.job_id = job_id
            case SharedInputPath(path=path):
                self._checking = ValidateInput(path)
                self.conn.emit(self._checking)
            case SharedOutputPath(path=path):
                self._checking = PrepareOutput(path)
                self.conn.emit(self._checking)
            case JobStart():
                self._start()
            case JobCancel():
                assert self.running is not None
                self.conn.emit(CancelJob(self.running.job_id))
            case _:  # RESULTS_VIA_STORAGE: the worker's table admits no other message
                self.via_storage = True

    def _blocked(self, guard: Guard) -> bool:
        caps = self.conn.capabilities
        if guard is Guard.NO_SHARED_STORAGE:
            return not caps.shared_storage
        if guard is Guard.NO_RESULTS_SERVICE:
            return not caps.results_service
        return self.busy is not None

    def _why(self, guard: Guard) -> str:
        if guard is Guard.NO_SHARED_STORAGE:
            return "this worker has no shared storage configured"
        if guard is Guard.NO_RESULTS_SERVICE:
            return "this worker has no storage service configured"
        return self.busy or "busy"

    def _start(self) -> None:
        job_id = self.job_id or self._new_job_id()
        self.job_id = job_id
        self.running = StartJob(
            job_id,
            self.input_path,
            self.input_sha256,
            self.input_name,
            self.output_path,
            self.validation_ms,
            self.file_access_ms,
        )
        self._apply(JobStart)
        self.conn.emit(self.running)

    def _results_request(self, message: ResultsRequest) -> None:
        if self.conn.sender.state != "IDLE":
            raise RemoteProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "a file is already being sent")
        self.conn.sender.prepare(message)
        self.conn.emit(LookupResults(message.job_id))

    def file_held(self, held: FileHeld) -> None:
        """The receiver holds a file: it becomes the next job's input (not while one runs)."""
        if (self.state, Outcome.FILE_ACCEPTED) not in WORKER_TABLE:
            self.conn.emit(Note(f"{held.name} stored while a job runs; send it again to use it"))
            return
        self._apply(Outcome.FILE_ACCEPTED)
        self.input_path, self.input_sha256, self.input_name = None, held.sha256, held.name

    def _rejected(self, outcome: Outcome) -> None:
        self._apply(outcome)
        if outcome is Outcome.INPUT_REJECTED:
            self.input_path = self.input_sha256 = self.input_name = None
        else:
            self.output_path = None

    # ------------------------------------------------------------------ reports

    def report(self, outcome: object) -> None:
        """Record the outcome of a worker action.

        Raises:
            LocalProtocolError: the outcome is impossible now (an adapter bug).
        """
        match outcome:
            case InputAccepted() | OutputAccepted() | PathRefused():
                self._checked(outcome)
            case ActionFailed(action=action, detail=detail):
                self._failed(action, detail)
            case JobEnded():
                self._ended(outcome)
            case ResultsUploaded(job_id=job_id, download_path=path):
                stored = ResultsStored(job_id, path, outcome.sha256, outcome.size, outcome.token)
                self.conn.emit(stored)
            case ResultsFound():
                self._found(outcome)
            case FileToSend(name=name, size=size, sha256=sha):
                meta = FileMeta(name, size, sha, self.conn.limits.chunk_bytes)
                self.conn.emit(self.conn.sender.announce(meta))
            case WorkerBusy(detail=detail):
                self.busy = detail
            case WorkerIdle():
                self.busy = None
            case _:
                raise LocalProtocolError(
                    ErrorCode.INTERNAL_ERROR, f"a worker has no outcome {type(outcome).__name__}"
                )

    def _checked(self, outcome: InputAccepted | OutputAccepted | PathRefused) -> None:
        checking = self._checking
        is_input = isinstance(checking, ValidateInput)
        if checking is None or (
            not isinstance(outcome, PathRefused) and is_input != isinstance(outcome, InputAccepted)
        ):
            raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, f"no check awaits {outcome}")
        self._checking = None
        match outcome:
            case InputAccepted(validation_ms=v, file_access_ms=a):
                self._apply(Outcome.INPUT_ACCEPTED)
                self.input_path, self.input_sha256, self.input_name = checking.path, None, None
                self.validation_ms += v
                self.file_access_ms += a
                self.conn.emit(PathValidated("input"))
            case OutputAccepted(validation_ms=v):
                self._apply(Outcome.OUTPUT_ACCEPTED)
                self.output_path = checking.path
                self.validation_ms += v
                self.conn.emit(PathValidated("output"))
            case _:  # PathRefused, the only other outcome of a check
                self._rejected(Outcome.INPUT_REJECTED if is_input else Outcome.OUTPUT_REJECTED)
                self.conn.emit(PathError.of(outcome.reason, checking.path))

    def _failed(self, action: object, detail: str) -> None:
        if isinstance(action, ValidateInput | PrepareOutput):
            if action != self._checking:
                raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, f"no check awaits {action}")
            self._checking = None
            is_input = isinstance(action, ValidateInput)
            self._rejected(Outcome.INPUT_REJECTED if is_input else Outcome.OUTPUT_REJECTED)
        elif isinstance(action, LookupResults | PackResults):
            self.conn.sender.unprepare()
        self.conn.refuse(ErrorCode.INTERNAL_ERROR, detail)

    def _ended(self, ended: JobEnded) -> None:
        running = self.running
        if running is None or running.job_id != ended.job_id:
            raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, f"job {ended.job_id} is not running")
        if ended.complete is not None:
            if ended.metrics is not None:
                self.conn.emit(ended.metrics)
            self.conn.emit(ended.complete)
        else:
            reason = ended.reason
            if ended.path_error is not None:
                shown = running.input_path or running.input_name or running.input_sha256 or ""
                reason = ended.path_error.quote(shown)
                self.conn.emit(PathError(reason))
            self.conn.emit(JobFailed(running.job_id, reason or "failed"))
        self._apply(Outcome.JOB_FINISHED)
        self.running = None
        self.job_id = self.input_path = self.input_sha256 = self.input_name = None
        self.output_path = None
        self.validation_ms = self.file_access_ms = 0.0
        caps = self.conn.capabilities
        if (
            ended.complete is not None
            and caps.results_service
            and (self.via_storage or self.conn.closed)
        ):
            self.via_storage = False
            self.conn.emit(UploadResults(running.job_id, running.output_path))

    def _found(self, found: ResultsFound) -> None:
        job_id = found.job_id
        if found.running:
            self.conn.sender.unprepare()
            self.conn.refuse(ErrorCode.UNEXPECTED_MESSAGE, f"job {job_id} is still running")
        elif found.owner != self.conn.principal or found.output_path is None:
            # another peer's job is answered like a job that does not exist
            self.conn.sender.unprepare()
            self.conn.refuse(ErrorCode.UNKNOWN_JOB, f"no results for job {job_id}")
        else:
            self.conn.emit(PackResults(job_id, found.output_path))
