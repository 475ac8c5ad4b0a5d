"""One ``Connection(role)`` per data channel: every protocol decision, no I/O.

The adapter's whole job is a loop::

    conn.receive(frame, now)           # a frame from the channel, in arrival order
    while (out := conn.next_output()) is not None:
        perform(out)                   # Send a frame, or an action such as ValidateInput
        ...conn.report(outcome, now)   # the action's outcome, when it has one

Outputs come from one flat queue (aioquic's style): performing an action and reporting
its outcome appends to the queue, never recurses. The connection holds the job session
(:mod:`protocol.job`), the file receiver (:mod:`protocol.transfer`) and the file sender
(:mod:`protocol.sender`), routes each message by role (:mod:`protocol.routes`), applies
the worker's guards (no shared storage, no storage service, busy), checks ownership of
results, and chooses every reply. The client runs the same class in the CLIENT role, so
it cannot send what the worker would refuse: :meth:`send` raises
:class:`~protocol.errors.LocalProtocolError` for anything its tables do not allow.

Errors: a frame that does not decode or is not allowed becomes a
:class:`~protocol.events.Violation` (the worker also answers ``PROTOCOL_ERROR``; both
roles answer a misplaced chunk with ``TRANSFER_ERROR::UNEXPECTED_DATA``); the state is
unchanged. Nothing else escapes :meth:`receive`.

Source: DESIGN.md ("One path for every frame"); h11's and wsproto's ``Connection``.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from protocol import _client_role, _worker_role
from protocol.codec import decode, encode
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError, TransferErrorCode
from protocol.events import (
    FileHeld,
    FileToSend,
    Note,
    Send,
    SendEnded,
    Violation,
)
from protocol.handshake import AuthConfig, Authenticated, AuthState, Handshake
from protocol.job import ClientJobState, JobState, Pending
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import JobLog, Message, ProtocolErrorFrame
from protocol.relay import RelayReport
from protocol.relay_messages import RelayPart, RelayStop
from protocol.roads import Road
from protocol.routes import ROUTES, Part, Role
from protocol.sender import Sender
from protocol.transfer import Receiver
from protocol.transfer_messages import FileMeta, TransferError

__all__ = ["Capabilities", "Connection", "Output", "new_job_id"]

Output = object
"""Anything :meth:`Connection.next_output` returns (see :mod:`protocol.events`)."""


def new_job_id() -> str:
    """A fresh job_id: ``job-`` and 12 hex digits (matches the job_id grammar)."""
    return f"job-{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What a worker serves (the client learns it from the worker's registration).

    Attributes:
        shared_storage: SHARED_INPUT_PATH / SHARED_OUTPUT_PATH can be served.
        results_service: results can be uploaded to the storage service.
        relay_road: RELAY_PART is taken (our receiver fetches relay objects from the
            storage service: a worker's does; a client's does not, so a client
            connection leaves it False); without it a RELAY_PART is answered
            ``RELAY_ENDED … RELAY_UNREACHABLE`` and the sender goes on by the channel.
    """

    shared_storage: bool = True
    results_service: bool = False
    relay_road: bool = False


class Connection:
    """The protocol state of one data channel, for the worker or the client.

    Args:
        role: :attr:`Role.WORKER` or :attr:`Role.CLIENT`.
        peer: the remote peer's id, for logs.
        principal: who the remote peer is (its key's fingerprint, or an anonymous
            connection's own principal; see :mod:`protocol.identity`); jobs, results
            and stored content belong to it. ``None`` falls back to ``peer``. With
            ``auth`` the handshake sets it.
        auth: run the channel handshake (:mod:`protocol.handshake`) before any job or
            transfer frame. ``None`` (tests of the job and transfer machines only)
            trusts ``principal``; the worker and the client always give one.
        limits: the bounds applied to what we receive.
        capabilities: (worker) what this worker serves.
        job_id_factory: (worker) makes a job_id when the client named none.

    Attributes:
        job: the job session state (:class:`JobState` for a worker,
            :class:`ClientJobState` for a client).
        receiver / sender: the two transfer directions.
        closed: the channel closed (:meth:`close`).
    """

    def __init__(
        self,
        role: Role,
        *,
        peer: str = "",
        principal: str | None = None,
        auth: AuthConfig | None = None,
        limits: Limits = DEFAULT_LIMITS,
        capabilities: Capabilities | None = None,
        job_id_factory: Callable[[], str] = new_job_id,
    ) -> None:
        self.role = role
        self.peer = peer
        self.principal: str = principal if principal is not None else peer
        self.handshake = (
            None if auth is None else Handshake(worker=role is Role.WORKER, config=auth)
        )
        self.limits = limits
        self.capabilities = capabilities or Capabilities()
        self.job: JobState | ClientJobState = (
            JobState.IDLE if role is Role.WORKER else ClientJobState(JobState.IDLE, Pending.NONE)
        )
        # A worker's store is shared by every principal: it asks a proof before dedupe.
        self.receiver = Receiver(
            limits,
            prove_possession=role is Role.WORKER,
            relay_road=self.capabilities.relay_road,
        )
        self.sender = Sender()
        self.closed = False
        self._outputs: deque[Output] = deque()
        if role is Role.WORKER:
            self.worker: _worker_role.WorkerSide | None = _worker_role.WorkerSide(
                self, job_id_factory
            )
            self.client: _client_role.ClientSide | None = None
        else:
            self.worker = None
            self.client = _client_role.ClientSide(self)

    # ------------------------------------------------------------------ the queue

    def next_output(self) -> Output | None:
        """The next output to perform, or None when the queue is empty."""
        return self._outputs.popleft() if self._outputs else None

    def drain(self) -> list[Output]:
        """Every queued output, in order (the queue is then empty)."""
        outputs, self._outputs = list(self._outputs), deque()
        return outputs

    def emit(self, *outputs: Output | Message) -> None:
        """Queue outputs; a message is queued as its :class:`Send` (for role modules)."""
        for output in outputs:
            if isinstance(output, Message):
                self._outputs.append(Send(output, encode(output)))
            else:
                self._outputs.append(output)

    # ------------------------------------------------------------------ receiving

    def receive(self, frame: str | bytes, now: float) -> None:
        """Take one frame from the channel (in arrival order) and queue what follows.

        Args:
            frame: a text frame (``str``) or a binary frame (``bytes``).
            now: a monotonic clock reading, seconds.
        """
        try:
            message = decode(frame, self.limits)
            self._route(message, now)
        except (RemoteProtocolError, LocalProtocolError) as exc:
            self.violation(exc.code, exc.detail, binary=not isinstance(frame, str))

    def _route(self, message: Message, now: float) -> None:
        part = ROUTES[self.role][type(message)]
        if part is Part.REFUSED:
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"a {self.role} does not receive {message.TYPE}"
            )
        if self._handshake_takes(part, message):
            return
        if part is Part.CANCEL:
            part = (
                Part.RECEIVER
                if self.receiver.state != "IDLE" or not self.sender.active
                else Part.SENDER
            )
        if part is Part.RECEIVER:
            self._receiver_outputs(self.receiver.receive(message, now))
        elif part is Part.SENDER:
            self._sender_receive(message)
        elif self.worker is not None:
            self.worker.receive(part, message)
        else:
            assert self.client is not None
            self.client.receive(part, message)

    def _handshake_takes(self, part: Part, message: Message) -> bool:
        """Give the handshake its messages and let other frames through only once it
        ended; True when the message was the handshake's.

        Raises:
            RemoteProtocolError: a handshake message without a handshake or out of turn,
                or a job or transfer frame before the handshake ended.
        """
        handshake = self.handshake
        if handshake is None:
            if part is Part.HANDSHAKE:
                raise RemoteProtocolError(
                    ErrorCode.UNEXPECTED_MESSAGE, "this connection runs no handshake"
                )
            return False
        waiting = handshake.state in (AuthState.HELLO_SENT, AuthState.RESPONDED)
        if part is Part.HANDSHAKE or (
            part is Part.PEER_ERROR and self.client is not None and waiting
        ):
            self._handshake_outputs(handshake.receive(message))
            return True
        if part is not Part.PEER_ERROR:  # a peer's error is logged whatever the state
            self._handshake_outputs(handshake.gate(message) or [])
        return False

    def _handshake_outputs(self, outputs: list[object]) -> None:
        for output in outputs:
            if isinstance(output, Authenticated):
                self.principal = output.principal
        self.emit(*outputs)

    def start_handshake(self) -> None:
        """(Client) Send AUTH_HELLO; job and transfer frames wait for the handshake.

        Raises:
            LocalProtocolError: no handshake configured, an anonymous client, or it
                started already.
        """
        if self.handshake is None:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "no handshake configured")
        self.emit(*self.handshake.start())

    def _sender_receive(self, message: Message) -> None:
        try:
            outputs = self.sender.receive(message)
        except LocalProtocolError as exc:
            raise exc.as_remote() from None
        self._sender_outputs(outputs)

    def _sender_outputs(self, outputs: Sequence[Output]) -> None:
        """Queue the sender's outputs; a client's job session learns how a send ended."""
        self.emit(*outputs)
        for output in outputs:
            if isinstance(output, SendEnded) and self.client is not None:
                self.client.upload_ended(output)

    def _receiver_outputs(self, outputs: Sequence[Output]) -> None:
        """Queue the receiver's outputs; a worker's job session takes a held file."""
        self.emit(*outputs)
        if self.worker is not None:
            for output in outputs:
                if isinstance(output, FileHeld):
                    self.worker.file_held(output)

    def violation(self, code: str, detail: str, *, binary: bool = False) -> None:
        """The peer sent something not allowed: answer (by role) and tell the adapter."""
        if binary:
            self.emit(TransferError(TransferErrorCode.UNEXPECTED_DATA, detail))
        elif self.role is Role.WORKER:
            self.emit(ProtocolErrorFrame(code, detail))
        self.emit(Violation(code, detail))

    def refuse(self, code: ErrorCode, detail: str) -> None:
        """Answer PROTOCOL_ERROR::{code}::{detail} (a worker's decision, not a violation)."""
        self.emit(ProtocolErrorFrame(code, detail), Note(f"refused: {code} {detail}"))

    # ------------------------------------------------------------------ sending

    def send(self, message: Message) -> None:
        """Send one of our own messages, checked against this role's tables.

        Client: JOB_ID, SHARED_INPUT_PATH, SHARED_OUTPUT_PATH, JOB_START, JOB_CANCEL,
        RESULTS_VIA_STORAGE, RESULTS_REQUEST. Worker: JOB_LOG (see :meth:`send_log`).
        Either, as the sender of a transfer on the relay road: RELAY_PART and RELAY_STOP
        (see :meth:`relay_part` and :meth:`relay_stop`).

        Raises:
            LocalProtocolError: UNEXPECTED_MESSAGE when the message is not ours to send
                in this state (nothing is queued); MALFORMED_FRAME for a RELAY_PART that
                does not continue the transfer.
        """
        if isinstance(message, RelayPart):
            self.relay_part(message)
        elif isinstance(message, RelayStop):
            meta = self.sender.meta
            if meta is not None and message.sha256 != meta.sha256:
                raise LocalProtocolError(ErrorCode.MALFORMED_FRAME, "RELAY_STOP of another file")
            self.relay_stop()
        elif self.client is not None:
            if self.handshake is not None:
                self.handshake.check_send(message)
            self.client.send(message)
        elif isinstance(message, JobLog) and self.job is JobState.RUNNING:
            self.emit(message)
        else:
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"a worker does not send {message.TYPE} now"
            )

    def send_log(self, line: str) -> bool:
        """(Worker) Send JOB_LOG::{line} if a job runs; False (nothing sent) otherwise."""
        if self.job is not JobState.RUNNING:
            return False
        self.emit(JobLog(line))
        return True

    def send_file(
        self, file: FileToSend, *, road: Road = Road.CHANNEL, fallback: bool = True
    ) -> None:
        """(Client) Announce our file with FILE_META: chunks follow on StreamFrom, or
        relay parts on RelayFrom when ``road`` is RELAY.

        Args:
            road: CHANNEL or RELAY (:func:`protocol.roads.choose_road`).
            fallback: (relay road) continue on the channel from RELAY_ENDED's offset
                (a RoadChanged, then StreamFrom); False (a forced relay road): cancel
                and end with ``SendEnded("failed", code=<RELAY_ENDED's code>)``.

        Raises:
            LocalProtocolError: another transfer is open (or a worker's results are
                being prepared); UNEXPECTED_MESSAGE for the shared road.
        """
        if self.sender.state != "IDLE":
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"can't send a file in sender state {self.sender.state}",
            )
        meta = FileMeta(file.name, file.size, file.sha256, self.limits.chunk_bytes)
        if self.handshake is not None:
            self.handshake.check_send(meta)
        self.emit(self.sender.announce(meta, road=road, fallback=fallback))

    def send_chunk(self, data: bytes) -> bytes | None:
        """The binary frame for ``data`` while we stream, or None: stop streaming (the
        transfer ended, was cancelled or the channel closed). Not queued: the streaming
        adapter sends it at once, paced by ``bufferedAmount``."""
        if self.closed or not self.sender.chunk(len(data)):
            return None
        return data

    def end_of_file(self) -> None:
        """Every chunk was streamed: send END_OF_FILE (nothing if the transfer ended)."""
        if self.sender.state == "SENDING":
            self.emit(self.sender.end())

    def relay_part(self, part: RelayPart) -> RelayPart:
        """Announce a relay part we uploaded (RelayFrom told where to start): RELAY_PART
        is queued. Its bytes start where the previous part ended (the first at
        RelayFrom's offset), with the same chunk_size, within the file; a part that does
        not end the file is whole chunks.

        Raises:
            LocalProtocolError: UNEXPECTED_MESSAGE when no transfer of ours is on the
                relay road (nothing is queued); MALFORMED_FRAME for a part that does not
                continue the transfer.
        """
        sent = self.sender.relay_part(part)
        self.emit(sent)
        return sent

    def relay_stop(self) -> RelayStop:
        """Our relay uploads failed: RELAY_STOP is queued; the receiver answers
        RELAY_ENDED with its verified offset (then a RoadChanged and StreamFrom follow,
        or the transfer ends without a fallback).

        Raises:
            LocalProtocolError: UNEXPECTED_MESSAGE when no transfer of ours is relaying.
        """
        stop = self.sender.relay_stop()
        self.emit(stop)
        return stop

    def cancel_send(self) -> None:
        """Stop our open transfer with FILE_CANCEL (the receiver keeps its partial)."""
        if self.sender.active and self.sender.state != "PREPARING":
            cancel, ended = self.sender.cancel()
            self.emit(cancel, ended)

    def give_up_cancel(self) -> None:
        """Stop waiting for the acknowledgement of our FILE_CANCEL."""
        if self.sender.state == "CANCELLED":
            self.sender.give_up()

    # ------------------------------------------------------------------ reports

    def report(self, outcome: object, now: float = 0.0) -> None:
        """Record the outcome of an action (see :mod:`protocol.events`) and queue what
        follows.

        Raises:
            LocalProtocolError: the outcome is impossible now (an adapter bug).
        """
        from protocol import events

        if isinstance(
            outcome,
            events.StoreHas
            | events.StoreOffset
            | events.Stored
            | events.StoreFailed
            | events.Written
            | events.StoredRanges
            | events.ProofTimedOut
            | RelayReport,
        ):
            self._receiver_outputs(self.receiver.report(outcome, now))
        elif isinstance(outcome, events.FileRanges):
            self._sender_outputs(self.sender.report(outcome))
        elif self.worker is not None:
            self.worker.report(outcome)
        else:
            raise LocalProtocolError(
                ErrorCode.INTERNAL_ERROR, f"a client has no outcome {type(outcome).__name__}"
            )

    def close(self) -> None:
        """The channel closed: keep an open partial for a resume; a job keeps running
        (its results are then uploaded when a storage service is configured)."""
        if not self.closed:
            self.closed = True
            self.emit(*self.receiver.close())
