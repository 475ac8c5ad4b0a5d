"""Which part of a connection handles each of the 34 message types, per role.

A message a role never receives is refused by its route (``UNEXPECTED_MESSAGE``: a
worker does not receive PATH_VALIDATED, a client does not receive JOB_START). The
other messages go to the job session, the file receiver, the file sender, or are a
peer's PROTOCOL_ERROR; FILE_CANCEL goes to whichever transfer is open. Guards refuse a
message the table allows when the worker lacks a capability or is busy.

Together with the tables of :mod:`protocol.job`, :mod:`protocol.transfer` and
:mod:`protocol.sender` this decides every (role, state, message type) triple; the
tests walk all of them and PROTOCOL.md is generated from them.

Source: PROTOCOL.md section 4; wsproto and h11 route every event by role the same way.
"""

from __future__ import annotations

from enum import StrEnum
from typing import NamedTuple

from protocol import auth_messages as a
from protocol import messages as m
from protocol import relay_messages as r
from protocol import transfer_messages as t
from protocol.errors import ErrorCode
from protocol.handshake import CLIENT_AUTH_TABLE, WORKER_AUTH_TABLE, AuthState
from protocol.job import CLIENT_TABLE, WORKER_TABLE, ClientJobState, JobState, Outcome, Pending
from protocol.sender import SENDER_TABLE, SenderState
from protocol.transfer import RECEIVER_TABLE, ReceiverState

__all__ = [
    "GUARDS",
    "REQUEST_OF_CODE",
    "ROUTES",
    "Decision",
    "Guard",
    "Part",
    "Role",
    "decision",
    "reply_key",
    "states_of",
]


class Role(StrEnum):
    """Which end of the data channel a connection is."""

    #: The answerer in the GPU container: validates paths, runs jobs, sends results.
    WORKER = "worker"
    #: The offerer: sends paths or files and asks for jobs and results.
    CLIENT = "client"


class Part(StrEnum):
    """Where a received message goes."""

    #: The job session (:mod:`protocol.job`).
    JOB = "job session"
    #: The file receiver (:mod:`protocol.transfer`).
    RECEIVER = "receiver"
    #: The file sender (:mod:`protocol.sender`).
    SENDER = "sender"
    #: (Worker) RESULTS_REQUEST: the sender prepares the results ZIP.
    RESULTS = "results"
    #: FILE_CANCEL: the receiver while a receive is open or nothing is being sent,
    #: else the sender.
    CANCEL = "open transfer"
    #: A peer's PROTOCOL_ERROR: the worker logs it (never answering an error with an
    #: error); the client hands it to the request it answers.
    PEER_ERROR = "peer error"
    #: The channel handshake (:mod:`protocol.handshake`); every other part is reached
    #: only once it ended (or the connection is anonymous).
    HANDSHAKE = "handshake"
    #: A message this role never receives: refused with UNEXPECTED_MESSAGE.
    REFUSED = "refused"


_TRANSFER: dict[type[m.Message], Part] = {
    t.FileMeta: Part.RECEIVER,
    t.FileMetaLegacy: Part.RECEIVER,
    t.Chunk: Part.RECEIVER,
    t.EndOfFile: Part.RECEIVER,
    t.FileProof: Part.RECEIVER,
    t.FileProofRequest: Part.SENDER,
    t.FileReady: Part.SENDER,
    t.FileExists: Part.SENDER,
    t.FileProgress: Part.SENDER,
    t.FileReceived: Part.SENDER,
    t.TransferError: Part.SENDER,
    t.FileCancel: Part.CANCEL,
    r.RelayPart: Part.RECEIVER,
    r.RelayStop: Part.RECEIVER,
    r.RelayEnded: Part.SENDER,
    m.ProtocolErrorFrame: Part.PEER_ERROR,
}

#: role -> message type -> the part that handles it when received.
ROUTES: dict[Role, dict[type[m.Message], Part]] = {
    Role.WORKER: {
        m.JobId: Part.JOB,
        m.SharedInputPath: Part.JOB,
        m.SharedOutputPath: Part.JOB,
        m.JobStart: Part.JOB,
        m.JobCancel: Part.JOB,
        m.ResultsViaStorage: Part.JOB,
        m.ResultsRequest: Part.RESULTS,
        m.PathValidated: Part.REFUSED,
        m.PathError: Part.REFUSED,
        m.JobLog: Part.REFUSED,
        m.JobMetrics: Part.REFUSED,
        m.JobComplete: Part.REFUSED,
        m.JobFailed: Part.REFUSED,
        m.ResultsStored: Part.REFUSED,
        a.AuthHello: Part.HANDSHAKE,
        a.AuthChallenge: Part.REFUSED,
        a.AuthResponse: Part.HANDSHAKE,
        a.AuthOk: Part.REFUSED,
        **_TRANSFER,
    },
    Role.CLIENT: {
        m.JobId: Part.REFUSED,
        m.SharedInputPath: Part.REFUSED,
        m.SharedOutputPath: Part.REFUSED,
        m.JobStart: Part.REFUSED,
        m.JobCancel: Part.REFUSED,
        m.ResultsViaStorage: Part.REFUSED,
        m.ResultsRequest: Part.REFUSED,
        m.PathValidated: Part.JOB,
        m.PathError: Part.JOB,
        m.JobLog: Part.JOB,
        m.JobMetrics: Part.JOB,
        m.JobComplete: Part.JOB,
        m.JobFailed: Part.JOB,
        m.ResultsStored: Part.JOB,
        a.AuthHello: Part.REFUSED,
        a.AuthChallenge: Part.HANDSHAKE,
        a.AuthResponse: Part.REFUSED,
        a.AuthOk: Part.HANDSHAKE,
        **_TRANSFER,
    },
}


class Guard(StrEnum):
    """A condition under which the worker refuses a message its table allows."""

    #: The worker has no shared storage.
    NO_SHARED_STORAGE = "no shared storage"
    #: The worker has no storage service configured.
    NO_RESULTS_SERVICE = "no storage service"
    #: Another job runs on the worker, or it is stopping.
    BUSY = "worker busy"


#: message type -> (guard, code of the refusal). A refused path also forgets the
#: earlier input or output, as a refused check would.
GUARDS: dict[type[m.Message], tuple[Guard, ErrorCode]] = {
    m.SharedInputPath: (Guard.NO_SHARED_STORAGE, ErrorCode.NO_SHARED_STORAGE),
    m.SharedOutputPath: (Guard.NO_SHARED_STORAGE, ErrorCode.NO_SHARED_STORAGE),
    m.ResultsViaStorage: (Guard.NO_RESULTS_SERVICE, ErrorCode.NO_STORAGE),
    m.JobStart: (Guard.BUSY, ErrorCode.WORKER_BUSY),
}

#: (Client) a PROTOCOL_ERROR code -> the request it can only be the answer to. Other
#: codes answer the request the client is waiting for.
REQUEST_OF_CODE: dict[str, str] = {
    ErrorCode.WORKER_BUSY: "start",
    ErrorCode.NO_SHARED_STORAGE: "path",
    ErrorCode.NO_STORAGE: "results_via_storage",
    ErrorCode.UNKNOWN_JOB: "results",
}


# ===================================================================== decisions


class Decision(NamedTuple):
    """What a connection does with a received message in one state of one part.

    Attributes:
        allowed: the message is taken (it may still be answered with TRANSFER_ERROR or
            PATH_ERROR by the machine that takes it, or refused by a guard).
        result: the next state when allowed (or what happens), else the refusal code.
    """

    allowed: bool
    result: str


def _job_decision(role: Role, message: type[m.Message], state: object) -> Decision:
    if role is Role.WORKER:
        assert isinstance(state, JobState)
        nxt = WORKER_TABLE.get((state, message))
        if nxt is None:
            return Decision(False, ErrorCode.UNEXPECTED_MESSAGE)
        guard = GUARDS.get(message)
        shown = nxt.value if nxt is not state else "unchanged"
        return Decision(True, shown if guard is None else f"{shown}; {guard[1]} if {guard[0]}")
    assert isinstance(state, ClientJobState)
    if message is m.ResultsStored:
        return Decision(True, "unchanged")
    outcomes: tuple[Outcome, ...] = (reply_key(message, state.pending),)
    if message is m.PathValidated:
        outcomes = (Outcome.INPUT_ACCEPTED, Outcome.OUTPUT_ACCEPTED)
    for outcome in outcomes:
        moved = CLIENT_TABLE.get((state, outcome))
        if moved is not None:
            return Decision(True, str(moved))
    return Decision(False, ErrorCode.UNEXPECTED_MESSAGE)


def reply_key(message: type[m.Message], pending: Pending) -> Outcome:
    """(Client) The outcome a worker's job reply of type ``message`` stands for, given the
    request pending (PATH_VALIDATED: the input's; the connection tells input and output
    apart by the frame's field)."""
    if message is m.PathValidated:
        return Outcome.INPUT_ACCEPTED
    if message is m.PathError:
        return {
            Pending.INPUT: Outcome.INPUT_REJECTED,
            Pending.OUTPUT: Outcome.OUTPUT_REJECTED,
        }.get(pending, Outcome.JOB_RUNNING)
    if message in (m.JobLog, m.JobMetrics):
        return Outcome.JOB_RUNNING
    return Outcome.JOB_FINISHED


def states_of(role: Role, part: Part) -> tuple[object, ...]:
    """The states of the part that handles a message (one pseudo-state for parts
    without states)."""
    if part is Part.JOB:
        if role is Role.WORKER:
            return tuple(JobState)
        return tuple(ClientJobState(s, p) for s in JobState for p in Pending)
    if part is Part.HANDSHAKE:
        return tuple(AuthState)
    if part in (Part.RECEIVER, Part.CANCEL):
        return tuple(ReceiverState)
    if part in (Part.SENDER, Part.RESULTS):
        return tuple(SenderState)
    return ("any",)


def decision(role: Role, message: type[m.Message], state: object) -> Decision:
    """What ``role`` does with a received ``message`` when the part that handles it is in
    ``state`` (one of :func:`states_of`). For FILE_CANCEL the state is the receiver's,
    with no send open (a cancel then goes to the sender when the receiver is idle and a
    send is open, see :class:`Part`)."""
    part = ROUTES[role][message]
    if part is Part.REFUSED:
        return Decision(False, ErrorCode.UNEXPECTED_MESSAGE)
    if part is Part.PEER_ERROR:
        return Decision(True, "logged" if role is Role.WORKER else "refusal of the pending request")
    if part is Part.JOB:
        return _job_decision(role, message, state)
    if part is Part.HANDSHAKE:
        assert isinstance(state, AuthState)
        table = WORKER_AUTH_TABLE if role is Role.WORKER else CLIENT_AUTH_TABLE
        nxt_auth = table.get((state, message))
        if nxt_auth is None:
            return Decision(False, ErrorCode.UNEXPECTED_MESSAGE)
        return Decision(True, "checked" if nxt_auth is state else nxt_auth.value)
    if part in (Part.RECEIVER, Part.CANCEL):
        assert isinstance(state, ReceiverState)
        nxt = RECEIVER_TABLE.get((state, message))
        if nxt is None:
            code = ErrorCode.UNEXPECTED_DATA if message is t.Chunk else ErrorCode.UNEXPECTED_MESSAGE
            return Decision(False, code)
        return Decision(True, nxt.value)
    assert isinstance(state, SenderState)
    if part is Part.RESULTS:
        ok = state is SenderState.IDLE
        return Decision(ok, SenderState.PREPARING.value if ok else ErrorCode.UNEXPECTED_MESSAGE)
    nxt_sender = SENDER_TABLE.get((state, message))
    if nxt_sender is None:
        return Decision(False, ErrorCode.UNEXPECTED_MESSAGE)
    return Decision(True, nxt_sender.value)
