"""The worker's job-session state machine, as a transition table (sans-IO).

One :class:`JobSession` lives per data channel. It decides, for each message the
client sends, whether it is allowed now and what the worker must do next; the
adapter performs the action (path validation, running the job) and reports the
outcome back as an internal event. The session never touches a file.

The table :data:`TRANSITIONS` maps ``(state, event type)`` to the next state.
Anything not in the table is invalid: :meth:`JobSession.receive` raises
:class:`~protocol.errors.RemoteProtocolError` (the client sent it) and
:meth:`JobSession.report` raises :class:`~protocol.errors.LocalProtocolError`
(the adapter reported something impossible); in both cases nothing changes.

Source: the job protocol (README, "Data-channel protocol"); the table style
follows h11's ``_state.py`` and h2's ``_transitions``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum

from protocol.errors import ErrorCode, LocalProtocolError
from protocol.messages import (
    JobCancel,
    JobId,
    JobStart,
    Message,
    SharedInputPath,
    SharedOutputPath,
)

__all__ = [
    "TRANSITIONS",
    "Action",
    "CancelJob",
    "FileAccepted",
    "InputAccepted",
    "InputRejected",
    "JobFinished",
    "JobSession",
    "JobState",
    "OutputAccepted",
    "OutputRejected",
    "PrepareOutput",
    "SetJobId",
    "StartJob",
    "ValidateInput",
]


class JobState(StrEnum):
    """States of one job session on the worker."""

    #: No path validated yet (the job_id may be set).
    IDLE = "IDLE"
    #: The input path is validated; the output path is not.
    HAVE_INPUT = "HAVE_INPUT"
    #: A file received over the channel is the input; JOB_START is allowed (the
    #: outputs then stay in the worker's job folder).
    HAVE_FILE = "HAVE_FILE"
    #: The output folder is validated and created; the input path is not.
    HAVE_OUTPUT = "HAVE_OUTPUT"
    #: Input (a path or a received file) and output are set: JOB_START is allowed.
    READY = "READY"
    #: A job runs; only JOB_CANCEL is allowed until it finishes.
    RUNNING = "RUNNING"


# ------------------------------------------------------------ internal events


@dataclass(frozen=True, slots=True)
class InputAccepted:
    """The adapter validated the input path (``path`` as the client sent it)."""

    path: str


@dataclass(frozen=True, slots=True)
class FileAccepted:
    """A file received over the channel (or found by its sha256) becomes the input.

    ``path`` locates the stored file for the adapter (relative to the worker's
    storage root); ``name`` is the name the sender gave.
    """

    path: str
    name: str


@dataclass(frozen=True, slots=True)
class InputRejected:
    """The adapter refused the input path; any earlier input is forgotten."""


@dataclass(frozen=True, slots=True)
class OutputAccepted:
    """The adapter validated and created the output folder."""

    path: str


@dataclass(frozen=True, slots=True)
class OutputRejected:
    """The adapter refused the output path; any earlier output is forgotten."""


@dataclass(frozen=True, slots=True)
class JobFinished:
    """The running job ended (completed, failed or cancelled)."""


Event = (
    Message
    | InputAccepted
    | FileAccepted
    | InputRejected
    | OutputAccepted
    | OutputRejected
    | JobFinished
)

_S = JobState

#: (state, event type) -> next state. Anything missing is a protocol error.
_NOT_RUNNING = (_S.IDLE, _S.HAVE_INPUT, _S.HAVE_FILE, _S.HAVE_OUTPUT, _S.READY)

#: (state, event type) -> next state. Anything missing is a protocol error.
TRANSITIONS: dict[tuple[JobState, type], JobState] = {
    # JOB_ID names the next job; allowed whenever no job runs.
    **{(s, JobId): s for s in _NOT_RUNNING},
    # A path message asks for validation; the state moves on the adapter's report.
    **{(s, SharedInputPath): s for s in _NOT_RUNNING},
    **{(s, SharedOutputPath): s for s in _NOT_RUNNING},
    (_S.IDLE, InputAccepted): _S.HAVE_INPUT,
    (_S.HAVE_INPUT, InputAccepted): _S.HAVE_INPUT,
    (_S.HAVE_FILE, InputAccepted): _S.HAVE_INPUT,
    (_S.HAVE_OUTPUT, InputAccepted): _S.READY,
    (_S.READY, InputAccepted): _S.READY,
    (_S.IDLE, FileAccepted): _S.HAVE_FILE,
    (_S.HAVE_INPUT, FileAccepted): _S.HAVE_FILE,
    (_S.HAVE_FILE, FileAccepted): _S.HAVE_FILE,
    (_S.HAVE_OUTPUT, FileAccepted): _S.READY,
    (_S.READY, FileAccepted): _S.READY,
    (_S.IDLE, InputRejected): _S.IDLE,
    (_S.HAVE_INPUT, InputRejected): _S.IDLE,
    (_S.HAVE_FILE, InputRejected): _S.IDLE,
    (_S.HAVE_OUTPUT, InputRejected): _S.HAVE_OUTPUT,
    (_S.READY, InputRejected): _S.HAVE_OUTPUT,
    (_S.IDLE, OutputAccepted): _S.HAVE_OUTPUT,
    (_S.HAVE_INPUT, OutputAccepted): _S.READY,
    (_S.HAVE_FILE, OutputAccepted): _S.READY,
    (_S.HAVE_OUTPUT, OutputAccepted): _S.HAVE_OUTPUT,
    (_S.READY, OutputAccepted): _S.READY,
    (_S.IDLE, OutputRejected): _S.IDLE,
    (_S.HAVE_INPUT, OutputRejected): _S.HAVE_INPUT,
    (_S.HAVE_FILE, OutputRejected): _S.HAVE_FILE,
    (_S.HAVE_OUTPUT, OutputRejected): _S.IDLE,
    (_S.READY, OutputRejected): _S.HAVE_INPUT,
    (_S.READY, JobStart): _S.RUNNING,
    (_S.HAVE_FILE, JobStart): _S.RUNNING,
    (_S.RUNNING, JobCancel): _S.RUNNING,
    (_S.RUNNING, JobFinished): _S.IDLE,
}

#: Event types that come from the wire (the rest are reported by the adapter).
CLIENT_EVENTS: tuple[type[Message], ...] = (
    JobId,
    SharedInputPath,
    SharedOutputPath,
    JobStart,
    JobCancel,
)
#: Event types the adapter reports after performing an action.
INTERNAL_EVENTS: tuple[type, ...] = (
    InputAccepted,
    FileAccepted,
    InputRejected,
    OutputAccepted,
    OutputRejected,
    JobFinished,
)

# ------------------------------------------------------------ actions


@dataclass(frozen=True, slots=True)
class SetJobId:
    """Nothing to do but acknowledge silently: the next job is named ``job_id``."""

    job_id: str


@dataclass(frozen=True, slots=True)
class ValidateInput:
    """Validate ``path`` as the job's input; report InputAccepted or InputRejected."""

    path: str


@dataclass(frozen=True, slots=True)
class PrepareOutput:
    """Validate and create the output folder ``path``; report OutputAccepted/Rejected."""

    path: str


@dataclass(frozen=True, slots=True)
class StartJob:
    """Run the job; report JobFinished when it ends, whatever the outcome.

    Attributes:
        input_path: the shared input as the client sent it, or the stored file's path
            when ``input_received``.
        output_path: the shared output folder, or None: outputs go to the worker's
            job folder (RESULTS_REQUEST sends them back).
        input_received: the input is a file received over the channel.
    """

    job_id: str
    input_path: str
    output_path: str | None
    input_received: bool = False


@dataclass(frozen=True, slots=True)
class CancelJob:
    """Terminate the running job ``job_id``."""

    job_id: str


Action = SetJobId | ValidateInput | PrepareOutput | StartJob | CancelJob


def new_job_id() -> str:
    """A fresh job_id, ``job-`` and 12 hex digits (matches the job_id grammar)."""
    return f"job-{uuid.uuid4().hex[:12]}"


class JobSession:
    """One client's job session on the worker.

    Attributes:
        state: the current :class:`JobState`.
        job_id: the id the client chose for the next job, or of the running job.
        input_path / output_path: the validated paths, as the client sent them.
        input_received: the input is a received file (``input_path`` locates it).
    """

    def __init__(self, job_id_factory: Callable[[], str] = new_job_id) -> None:
        self.state = JobState.IDLE
        self.job_id: str | None = None
        self.input_path: str | None = None
        self.output_path: str | None = None
        self.input_received = False
        self._job_id_factory = job_id_factory

    def _next_state(self, event: Event) -> JobState:
        try:
            return TRANSITIONS[(self.state, type(event))]
        except KeyError:
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"can't handle {_event_name(event)} in state {self.state}",
            ) from None

    def receive(self, message: Message) -> Action:
        """Take one message from the client and say what to do.

        Returns:
            The action the adapter must perform.

        Raises:
            RemoteProtocolError: UNEXPECTED_MESSAGE when the message is not allowed in
                the current state (the state is unchanged).
        """
        try:
            next_state = self._next_state(message)
        except LocalProtocolError as exc:
            raise exc.as_remote() from None
        action: Action
        match message:
            case JobId(job_id=job_id):
                self.job_id = job_id
                action = SetJobId(job_id)
            case SharedInputPath(path=path):
                action = ValidateInput(path)
            case SharedOutputPath(path=path):
                action = PrepareOutput(path)
            case JobStart():
                assert self.input_path is not None
                if self.job_id is None:
                    self.job_id = self._job_id_factory()
                action = StartJob(
                    self.job_id, self.input_path, self.output_path, self.input_received
                )
            case _:  # JobCancel: the table only allows it while a job runs
                assert self.job_id is not None
                action = CancelJob(self.job_id)
        self.state = next_state
        return action

    def report(
        self,
        event: InputAccepted
        | FileAccepted
        | InputRejected
        | OutputAccepted
        | OutputRejected
        | JobFinished,
    ) -> None:
        """Record the outcome of an action.

        Raises:
            LocalProtocolError: the event is not possible in the current state (an
                adapter bug); the state is unchanged.
        """
        next_state = self._next_state(event)
        match event:
            case InputAccepted(path=path):
                self.input_path, self.input_received = path, False
            case FileAccepted(path=path):
                self.input_path, self.input_received = path, True
            case InputRejected():
                self.input_path, self.input_received = None, False
            case OutputAccepted(path=path):
                self.output_path = path
            case OutputRejected():
                self.output_path = None
            # The table lookup above admits only the six event types: no fall-through.
            case JobFinished():  # pragma: no branch
                self.job_id = self.input_path = self.output_path = None
                self.input_received = False
        self.state = next_state


def _event_name(event: object) -> str:
    return getattr(event, "TYPE", "") or type(event).__name__
