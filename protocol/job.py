"""The job session of one data channel, for both roles, as transition tables (sans-IO).

The worker's table :data:`WORKER_TABLE` maps ``(state, event) -> next state``, where an
event is a message from the client (``JOB_ID``, ``SHARED_INPUT_PATH``...) or an
:class:`Outcome` of the worker's own checks (the input was accepted, the job ended...).
Anything missing is refused with ``UNEXPECTED_MESSAGE``.

The client's table :data:`CLIENT_TABLE` is *derived* from the worker's: the client
tracks the state the worker's session is in, plus the one request it is waiting an
answer for (:class:`Pending`). It may send a message only where the worker's table
accepts it and nothing is pending, and each reply moves it as the corresponding outcome
moves the worker. So a client driven by this table cannot send what the worker would
refuse, and the two tables cannot drift apart.

Source: PROTOCOL.md section 4.1; the table style follows h11's ``_state.py`` and h2's
``_transitions`` ("anything not in this map is invalid").
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from protocol.messages import (
    JobCancel,
    JobId,
    JobStart,
    Message,
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
)

__all__ = [
    "CLIENT_SENDS",
    "CLIENT_TABLE",
    "NOT_RUNNING",
    "WORKER_TABLE",
    "ClientJobState",
    "JobKey",
    "JobState",
    "Outcome",
    "Pending",
]


class JobState(StrEnum):
    """States of the worker's job session (and the client's view of it)."""

    #: No input or output is set (the job_id may be).
    IDLE = "IDLE"
    #: The input path is validated; the output path is not.
    HAVE_INPUT = "HAVE_INPUT"
    #: A file received over the channel is the input: JOB_START is allowed (the outputs
    #: then go to the worker's job folder, sent back on RESULTS_REQUEST).
    HAVE_FILE = "HAVE_FILE"
    #: The output folder is validated and created; the input is not set.
    HAVE_OUTPUT = "HAVE_OUTPUT"
    #: Input (a path or a received file) and output are set: JOB_START is allowed.
    READY = "READY"
    #: A job runs; only JOB_CANCEL (and RESULTS_VIA_STORAGE) until it ends.
    RUNNING = "RUNNING"


class Outcome(StrEnum):
    """What the worker's checks concluded (reported by its adapter), and on the client
    side the replies that tell it."""

    #: The input path is valid and open (client: ``PATH_VALIDATED::input``).
    INPUT_ACCEPTED = "input accepted"
    #: The input path was refused; an earlier input is forgotten (client: PATH_ERROR
    #: or PROTOCOL_ERROR in answer to the input).
    INPUT_REJECTED = "input rejected"
    #: A file received over the channel (or already held) is the input (client: its
    #: upload ended with FILE_RECEIVED or FILE_EXISTS).
    FILE_ACCEPTED = "file accepted"
    #: The output folder is valid and created (client: ``PATH_VALIDATED::output``).
    OUTPUT_ACCEPTED = "output accepted"
    #: The output path was refused; an earlier output is forgotten.
    OUTPUT_REJECTED = "output rejected"
    #: The job started (client: its first JOB_LOG or JOB_METRICS, or a PATH_ERROR of
    #: an input that vanished at use).
    JOB_RUNNING = "job running"
    #: JOB_START was refused because another job runs (client: WORKER_BUSY).
    START_REFUSED = "start refused"
    #: The running job ended (client: JOB_COMPLETE or JOB_FAILED).
    JOB_FINISHED = "job finished"


#: An event of the job tables: a message type or an outcome.
JobKey = type[Message] | Outcome

_S = JobState
#: States in which no job runs.
NOT_RUNNING: tuple[JobState, ...] = (_S.IDLE, _S.HAVE_INPUT, _S.HAVE_FILE, _S.HAVE_OUTPUT, _S.READY)

#: The worker's table: (state, event) -> next state. Anything missing is refused.
WORKER_TABLE: dict[tuple[JobState, JobKey], JobState] = {
    # JOB_ID names the next job; a path asks for a check whose outcome moves the state.
    **{(s, JobId): s for s in NOT_RUNNING},
    **{(s, SharedInputPath): s for s in NOT_RUNNING},
    **{(s, SharedOutputPath): s for s in NOT_RUNNING},
    # RESULTS_VIA_STORAGE may come before or while the job runs.
    **{(s, ResultsViaStorage): s for s in JobState},
    (_S.IDLE, Outcome.INPUT_ACCEPTED): _S.HAVE_INPUT,
    (_S.HAVE_INPUT, Outcome.INPUT_ACCEPTED): _S.HAVE_INPUT,
    (_S.HAVE_FILE, Outcome.INPUT_ACCEPTED): _S.HAVE_INPUT,
    (_S.HAVE_OUTPUT, Outcome.INPUT_ACCEPTED): _S.READY,
    (_S.READY, Outcome.INPUT_ACCEPTED): _S.READY,
    (_S.IDLE, Outcome.FILE_ACCEPTED): _S.HAVE_FILE,
    (_S.HAVE_INPUT, Outcome.FILE_ACCEPTED): _S.HAVE_FILE,
    (_S.HAVE_FILE, Outcome.FILE_ACCEPTED): _S.HAVE_FILE,
    (_S.HAVE_OUTPUT, Outcome.FILE_ACCEPTED): _S.READY,
    (_S.READY, Outcome.FILE_ACCEPTED): _S.READY,
    (_S.IDLE, Outcome.INPUT_REJECTED): _S.IDLE,
    (_S.HAVE_INPUT, Outcome.INPUT_REJECTED): _S.IDLE,
    (_S.HAVE_FILE, Outcome.INPUT_REJECTED): _S.IDLE,
    (_S.HAVE_OUTPUT, Outcome.INPUT_REJECTED): _S.HAVE_OUTPUT,
    (_S.READY, Outcome.INPUT_REJECTED): _S.HAVE_OUTPUT,
    (_S.IDLE, Outcome.OUTPUT_ACCEPTED): _S.HAVE_OUTPUT,
    (_S.HAVE_INPUT, Outcome.OUTPUT_ACCEPTED): _S.READY,
    (_S.HAVE_FILE, Outcome.OUTPUT_ACCEPTED): _S.READY,
    (_S.HAVE_OUTPUT, Outcome.OUTPUT_ACCEPTED): _S.HAVE_OUTPUT,
    (_S.READY, Outcome.OUTPUT_ACCEPTED): _S.READY,
    (_S.IDLE, Outcome.OUTPUT_REJECTED): _S.IDLE,
    (_S.HAVE_INPUT, Outcome.OUTPUT_REJECTED): _S.HAVE_INPUT,
    (_S.HAVE_FILE, Outcome.OUTPUT_REJECTED): _S.HAVE_FILE,
    (_S.HAVE_OUTPUT, Outcome.OUTPUT_REJECTED): _S.IDLE,
    (_S.READY, Outcome.OUTPUT_REJECTED): _S.HAVE_INPUT,
    # JOB_START runs the job when the worker is idle (else WORKER_BUSY, unchanged).
    (_S.READY, JobStart): _S.RUNNING,
    (_S.HAVE_FILE, JobStart): _S.RUNNING,
    (_S.RUNNING, JobCancel): _S.RUNNING,
    (_S.RUNNING, Outcome.JOB_FINISHED): _S.IDLE,
}

#: Messages the client sends that the job tables govern.
CLIENT_SENDS: tuple[type[Message], ...] = (
    JobId,
    SharedInputPath,
    SharedOutputPath,
    JobStart,
    JobCancel,
    ResultsViaStorage,
)


class Pending(StrEnum):
    """The request a client waits an answer for (at most one at a time)."""

    #: Nothing: the client may send.
    NONE = "-"
    #: SHARED_INPUT_PATH sent: PATH_VALIDATED::input, PATH_ERROR or PROTOCOL_ERROR.
    INPUT = "input"
    #: SHARED_OUTPUT_PATH sent: PATH_VALIDATED::output, PATH_ERROR or PROTOCOL_ERROR.
    OUTPUT = "output"
    #: JOB_START sent: the job's first frame, or PROTOCOL_ERROR::WORKER_BUSY.
    START = "start"


class ClientJobState(NamedTuple):
    """The client's state: the worker's session state as the client knows it, and
    the request it waits for."""

    worker: JobState
    pending: Pending

    def __str__(self) -> str:
        return (
            self.worker.value
            if self.pending is Pending.NONE
            else (f"{self.worker.value} (awaiting {self.pending.value})")
        )


def _client_table() -> dict[tuple[ClientJobState, JobKey], ClientJobState]:
    """Derive the client's table from :data:`WORKER_TABLE` (see the module docstring)."""
    table: dict[tuple[ClientJobState, JobKey], ClientJobState] = {}
    idle = Pending.NONE

    def add(state: JobState, pending: Pending, key: JobKey, to: JobState, after: Pending) -> None:
        table[(ClientJobState(state, pending), key)] = ClientJobState(to, after)

    for state in JobState:
        worker = {key: nxt for (s, key), nxt in WORKER_TABLE.items() if s is state}
        for message, wait in ((SharedInputPath, Pending.INPUT), (SharedOutputPath, Pending.OUTPUT)):
            if message in worker:
                add(state, idle, message, state, wait)
        for plain in (JobId, ResultsViaStorage):
            if plain in worker:
                add(state, idle, plain, state, idle)
        for reply, wait in (
            (Outcome.INPUT_ACCEPTED, Pending.INPUT),
            (Outcome.INPUT_REJECTED, Pending.INPUT),
            (Outcome.OUTPUT_ACCEPTED, Pending.OUTPUT),
            (Outcome.OUTPUT_REJECTED, Pending.OUTPUT),
        ):
            if reply in worker:
                add(state, wait, reply, worker[reply], idle)
        if Outcome.FILE_ACCEPTED in worker:
            # A file may be held while a path is checked: the worker applies both in the
            # order they finish and answers in that order, and so does the client.
            for wait in (idle, Pending.INPUT, Pending.OUTPUT):
                add(state, wait, Outcome.FILE_ACCEPTED, worker[Outcome.FILE_ACCEPTED], wait)
        if JobStart in worker:
            running = worker[JobStart]
            add(state, idle, JobStart, state, Pending.START)
            add(state, Pending.START, Outcome.START_REFUSED, state, idle)
            add(state, Pending.START, Outcome.JOB_RUNNING, running, idle)
            add(state, Pending.START, JobCancel, state, Pending.START)
            add(
                state,
                Pending.START,
                Outcome.JOB_FINISHED,
                WORKER_TABLE[(running, Outcome.JOB_FINISHED)],
                idle,
            )
        if JobCancel in worker:
            add(state, idle, JobCancel, state, idle)
            add(state, idle, Outcome.JOB_RUNNING, state, idle)
            add(state, idle, Outcome.JOB_FINISHED, worker[Outcome.JOB_FINISHED], idle)
    return table


#: The client's table: (client state, event) -> next client state, derived from
#: :data:`WORKER_TABLE`. Events are the messages the client sends and the outcomes
#: its replies stand for.
CLIENT_TABLE: dict[tuple[ClientJobState, JobKey], ClientJobState] = _client_table()
