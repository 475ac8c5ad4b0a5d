"""The receiving side of file transfers on one data channel, as a transition table.

A transfer moves one file over the data channel in chunks::

    sender                                   receiver
    FILE_META::{name}::{size}::{sha256}::{chunk_size}  ->
                                             <- FILE_PROOF_REQUEST::{nonce}::{ranges}  (maybe)
    FILE_PROOF::{digest}                                 ->
                                             <- FILE_READY::{offset}   (or FILE_EXISTS::{sha256})
    binary chunks from offset, each <= chunk_size       ->
                                             <- FILE_PROGRESS::{on_disk}::{size}  (<= every 0.5 s)
    END_OF_FILE                                          ->
                                             <- FILE_RECEIVED::{sha256}  (or TRANSFER_ERROR::...)

:class:`Receiver` decides; its adapter does the I/O. It returns outputs (messages to
send, actions such as :class:`~protocol.events.Append`) and learns the outcome of the
store's work through reports. Each transfer gets a serial number that the actions and
reports carry: a report about an earlier transfer is dropped, never taken for the
current one. FILE_PROGRESS counts bytes that are on disk, from
:class:`~protocol.events.Written` reports, never bytes held in memory.

:data:`RECEIVER_TABLE` maps ``(state, event) -> next state`` on the normal path;
anything missing is refused (UNEXPECTED_DATA for a chunk, UNEXPECTED_MESSAGE
otherwise) and changes nothing. A handler may instead *abort* the transfer with
TRANSFER_ERROR (bad name, too large, size overflow): the receiver then drops the rest
of that transfer's chunks silently (DRAINING) instead of answering each one. Proof of
possession is decided in :mod:`protocol.receiver_proof`, the relay road in
:mod:`protocol.relay`.

Source: PROTOCOL.md sections 2.3 and 4.2; resume and checksum ideas from tus (offset
on HEAD, checksum per upload); the table style of h11's ``_state.py``.
"""

from __future__ import annotations

from protocol import receiver_proof
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError, TransferErrorCode
from protocol.events import (
    Append,
    CheckStore,
    Discard,
    FileHeld,
    Finish,
    Note,
    ReceiveEnded,
    Stored,
    StoreFailed,
    StoreHas,
    StoreOffset,
    Written,
)
from protocol.limits import Limits
from protocol.messages import Message, ProtocolErrorFrame, ResultsRequest
from protocol.names import InvalidNameError, check_name
from protocol.proof import (
    AwaitProof,
    ProofCheck,
    ProofStep,
    ProofTimedOut,
    ReadStoredRanges,
    RecordOwnership,
    StoredRanges,
)
from protocol.relay import RELAY_RECEIVER_ROWS, RELAY_REPORTS, ReceiverRelay, RelayReport
from protocol.relay_messages import RelayPart, RelayStop
from protocol.transfer_messages import (
    Chunk,
    EndOfFile,
    FileCancel,
    FileExists,
    FileMeta,
    FileMetaLegacy,
    FileProgress,
    FileProof,
    FileReady,
    FileReceived,
    TransferError,
)
from protocol.transfer_states import ReceiverState

__all__ = ["RECEIVER_TABLE", "ProofStep", "Receiver", "ReceiverState"]

Report = StoreHas | StoreOffset | Stored | StoreFailed | Written | StoredRanges | ProofTimedOut
_Proof = AwaitProof | ReadStoredRanges | RecordOwnership
Output = object  # a Message, an action or an event (protocol.events, protocol.relay_events)


_R = ReceiverState
_ACTIVE = (_R.CHECKING, _R.PROVING, _R.RECEIVING, _R.RELAYING, _R.HALTING, _R.VERIFYING)

#: (state, event) -> next state on the normal path. Handlers may abort to DRAINING
#: (during RECEIVING) or IDLE (before any chunk) with TRANSFER_ERROR.
RECEIVER_TABLE: dict[tuple[ReceiverState, type | ProofStep], ReceiverState] = {
    (_R.IDLE, FileMeta): _R.CHECKING,
    (_R.IDLE, FileMetaLegacy): _R.CHECKING,
    (_R.IDLE, EndOfFile): _R.IDLE,  # only the END_OF_FILE of a completed legacy transfer
    (_R.IDLE, FileCancel): _R.IDLE,  # acknowledged all the same (the sender waits for it)
    (_R.IDLE, ResultsRequest): _R.REQUESTED,  # sent by a client
    (_R.REQUESTED, FileMeta): _R.CHECKING,
    (_R.REQUESTED, ProtocolErrorFrame): _R.IDLE,  # the request was refused
    (_R.DRAINING, FileMeta): _R.CHECKING,
    (_R.DRAINING, FileMetaLegacy): _R.CHECKING,
    (_R.DRAINING, Chunk): _R.DRAINING,
    (_R.DRAINING, EndOfFile): _R.IDLE,
    (_R.DRAINING, FileCancel): _R.IDLE,
    (_R.CHECKING, StoreHas): _R.IDLE,
    (_R.CHECKING, StoreOffset): _R.RECEIVING,
    (_R.CHECKING, StoreFailed): _R.IDLE,
    (_R.CHECKING, ProofStep.ASK): _R.PROVING,
    (_R.PROVING, FileProof): _R.CHECKING,  # the same ranges of the held copy are read
    (_R.PROVING, ProofTimedOut): _R.RECEIVING,  # FILE_READY::0
    (_R.PROVING, FileCancel): _R.IDLE,
    (_R.CHECKING, ProofStep.MATCH): _R.IDLE,  # FILE_EXISTS
    (_R.CHECKING, ProofStep.MISMATCH): _R.RECEIVING,  # FILE_READY::0
    (_R.RECEIVING, Chunk): _R.RECEIVING,
    (_R.RECEIVING, Written): _R.RECEIVING,
    (_R.RECEIVING, EndOfFile): _R.VERIFYING,
    (_R.RECEIVING, FileCancel): _R.IDLE,
    (_R.RECEIVING, StoreFailed): _R.DRAINING,
    (_R.VERIFYING, Written): _R.VERIFYING,
    (_R.VERIFYING, Stored): _R.IDLE,
    (_R.VERIFYING, StoreFailed): _R.IDLE,
    **RELAY_RECEIVER_ROWS,  # the relay road (protocol.relay)
}


class Receiver:
    """The receiving side of file transfers on one data channel.

    Args:
        limits: ``max_file_bytes`` (FILE_TOO_LARGE above it), ``max_binary_frame_bytes``
            (the largest chunk_size accepted), ``max_name_bytes``,
            ``progress_interval_s`` and the ``proof_*`` bounds.
        prove_possession: ask a proof before FILE_EXISTS unless the store says the
            peer's principal stored the content itself, and record what each stored
            (a worker: its store is shared). False: FILE_EXISTS whenever held.
        relay_road: RELAY_PART is fetched; False: answered RELAY_ENDED RELAY_UNREACHABLE.

    Attributes:
        proof: the open proof of possession (:class:`~protocol.proof.ProofCheck`; its
            ``challenge`` makes each FILE_PROOF_REQUEST, from :mod:`secrets` unless a
            test or a replay sets its own).
        state: the current :class:`ReceiverState`.
        meta: the open transfer's FILE_META (None when none is open).
        serial: the open (or last) transfer's serial number.
        received: bytes accepted for the open transfer (resumed prefix included).
        on_disk: bytes of it known to be written.
    """

    def __init__(
        self, limits: Limits, *, prove_possession: bool = False, relay_road: bool = True
    ) -> None:
        self.limits = limits
        self.prove_possession = prove_possession
        self.relay_road = relay_road
        self.proof = ProofCheck()
        self.state = ReceiverState.IDLE
        self.meta: FileMeta | FileMetaLegacy | None = None
        self.serial = 0
        self.received = 0
        self.on_disk = 0
        self._resumed_at = 0
        self._last_progress: float | None = None
        self._legacy_done = False
        self._channel_used = False
        #: The open transfer's relay road (:mod:`protocol.relay`).
        self.relay = ReceiverRelay(self)

    @property
    def active(self) -> bool:
        """True while a transfer is open (checking, proving, receiving, relaying or
        verifying)."""
        return self.state in _ACTIVE

    def _next(self, event: object) -> ReceiverState:
        try:
            return RECEIVER_TABLE[(self.state, type(event))]
        except KeyError:
            code = (
                ErrorCode.UNEXPECTED_DATA
                if isinstance(event, Chunk)
                else ErrorCode.UNEXPECTED_MESSAGE
            )
            name = getattr(event, "TYPE", "") or type(event).__name__
            raise LocalProtocolError(
                code, f"can't handle {name} in receiver state {self.state}"
            ) from None

    def request(self, message: ResultsRequest) -> None:
        """(Client) We send RESULTS_REQUEST: the worker's transfer comes next.

        Raises:
            LocalProtocolError: a transfer is open or a request is pending.
        """
        self.state = self._next(message)

    def refused(self, message: ProtocolErrorFrame) -> bool:
        """(Client) A PROTOCOL_ERROR arrived: True when it answers our RESULTS_REQUEST."""
        if self.state is not _R.REQUESTED:
            return False
        self.state = self._next(message)
        return True

    def receive(self, message: Message, now: float) -> list[Output]:
        """Take FILE_META (either form), FILE_PROOF, a chunk, END_OF_FILE, FILE_CANCEL,
        RELAY_PART or RELAY_STOP.

        Args:
            now: a monotonic clock reading, seconds.

        Returns:
            The outputs, in order (messages to send, actions, events).

        Raises:
            RemoteProtocolError: not allowed in this state (UNEXPECTED_DATA for a chunk,
                UNEXPECTED_MESSAGE otherwise); nothing changes.
        """
        try:
            next_state = self._next(message)
        except LocalProtocolError as exc:
            raise exc.as_remote() from None
        match message:
            case FileMeta() | FileMetaLegacy():
                return self._open(message, next_state)
            case Chunk(data=data):
                return self._chunk(data, next_state)
            case EndOfFile():
                return self._end(next_state)
            case FileProof(sha256=digest):
                return receiver_proof.answered(self, digest, next_state)
            case RelayPart() | RelayStop():
                return self.relay.receive(message, next_state)
        # FileCancel: always acknowledged, so the sender knows that every frame about
        # the cancelled transfer is behind it.
        was_receiving = self.state in (_R.RECEIVING, _R.PROVING, _R.RELAYING, _R.HALTING)
        kept, halt = self.received, self.relay.halt()
        serial, empty = self.serial, self.state is _R.PROVING  # no byte came while proving
        self.reset(next_state)
        if not was_receiving:
            return [TransferError(TransferErrorCode.CANCELLED, "no transfer open")]
        detail = f"cancelled by the sender; {kept} bytes kept for a resume"
        return [
            *halt,
            Discard(serial, keep=not empty),
            Note(detail),
            ReceiveEnded(TransferErrorCode.CANCELLED, detail),
            TransferError(TransferErrorCode.CANCELLED, detail),
        ]

    def _open(self, meta: FileMeta | FileMetaLegacy, next_state: ReceiverState) -> list[Output]:
        self._legacy_done = False  # an END_OF_FILE is no longer "right after" a legacy one
        try:
            check_name(meta.name, self.limits)
        except InvalidNameError as exc:
            return self._refuse(TransferErrorCode.INVALID_NAME, exc.detail, meta)
        if meta.size > self.limits.max_file_bytes:
            detail = f"{meta.size} bytes is above the limit of {self.limits.max_file_bytes} bytes"
            return self._refuse(TransferErrorCode.FILE_TOO_LARGE, detail, meta)
        if isinstance(meta, FileMeta) and meta.chunk_size > self.limits.max_binary_frame_bytes:
            detail = (
                f"chunk_size {meta.chunk_size} is above the limit of "
                f"{self.limits.max_binary_frame_bytes}"
            )
            return self._refuse(TransferErrorCode.UNEXPECTED_DATA, detail, meta)
        self.reset(next_state)
        self.serial += 1
        self.meta = meta
        return [CheckStore(self.serial, meta)]

    def _refuse(
        self, code: TransferErrorCode, detail: str, meta: FileMeta | FileMetaLegacy
    ) -> list[Output]:
        # A legacy sender streams at once without waiting for a reply: drop its chunks.
        self.reset(_R.DRAINING if isinstance(meta, FileMetaLegacy) else _R.IDLE)
        return [ReceiveEnded(code, detail), TransferError(code, detail)]

    def _chunk(self, data: bytes, next_state: ReceiverState) -> list[Output]:
        if self.state is _R.DRAINING:
            return []
        meta = self.meta
        assert meta is not None
        limit = (
            meta.chunk_size if isinstance(meta, FileMeta) else self.limits.max_binary_frame_bytes
        )
        if len(data) > limit:
            return self._abort(
                TransferErrorCode.UNEXPECTED_DATA,
                f"chunk of {len(data)} bytes is above chunk_size {limit}",
                keep=False,
            )
        if self.received + len(data) > meta.size:
            return self._abort(
                TransferErrorCode.SIZE_MISMATCH,
                f"more than the announced {meta.size} bytes",
                keep=False,
            )
        self.received += len(data)
        self._channel_used = self._channel_used or bool(data)
        outputs: list[Output] = [Append(self.serial, data)]
        if isinstance(meta, FileMetaLegacy) and self.received == meta.size:
            # Earlier senders may not send END_OF_FILE: the size tells the end.
            self._legacy_done = True
            self.state = _R.VERIFYING
            return [*outputs, Finish(self.serial, meta)]
        self.state = next_state
        return outputs

    def _abort(self, code: TransferErrorCode, detail: str, *, keep: bool) -> list[Output]:
        serial = self.serial
        self.reset(_R.DRAINING)
        return [Discard(serial, keep=keep), ReceiveEnded(code, detail), TransferError(code, detail)]

    def _end(self, next_state: ReceiverState) -> list[Output]:
        if self.state is _R.IDLE:
            if not self._legacy_done:
                raise RemoteProtocolError(
                    ErrorCode.UNEXPECTED_MESSAGE, "END_OF_FILE without an open transfer"
                )
            self._legacy_done = False
            return []
        if self.state is _R.DRAINING:
            self.reset(next_state)
            return []
        meta = self.meta
        assert meta is not None
        if self.received != meta.size:
            missing = meta.size - self.received
            serial = self.serial
            self.reset(_R.IDLE)
            detail = f"END_OF_FILE with {missing} of {meta.size} bytes missing"
            return [
                Discard(serial, keep=True),
                ReceiveEnded(TransferErrorCode.SIZE_MISMATCH, detail),
                TransferError(TransferErrorCode.SIZE_MISMATCH, detail),
            ]
        self.state = next_state
        return [Finish(self.serial, meta)]

    def report(self, event: Report | RelayReport, now: float) -> list[Output]:
        """Record the adapter's outcome of CheckStore, Append, Finish, ReadStoredRanges or
        AwaitProof.

        A report about another transfer than the open one, or one that its state no
        longer expects (a write finishing after a cancel), is dropped with a Note.

        Returns:
            The outputs (the reply to the sender, events).

        Raises:
            LocalProtocolError: INTERNAL_ERROR for an impossible report about the open
                transfer (an offset beyond the size, a sha256 other than announced).
        """
        key = receiver_proof.key(self, event) if event.transfer == self.serial else None
        if key is None or (self.state, key) not in RECEIVER_TABLE:
            return [Note(f"dropped {type(event).__name__} of transfer {event.transfer}")]
        next_state = RECEIVER_TABLE[(self.state, key)]
        meta = self.meta
        assert meta is not None
        if isinstance(key, ProofStep):
            return receiver_proof.step(self, key, meta, next_state)
        if isinstance(event, RELAY_REPORTS):
            return self.relay.report(event, next_state, now)
        match event:
            case Written(on_disk=on_disk):
                self.on_disk = max(self.on_disk, on_disk)
                return self.progress(now)
            case StoreHas():
                if not isinstance(meta, FileMeta):
                    raise LocalProtocolError(
                        ErrorCode.INTERNAL_ERROR, "a legacy transfer has no sha256 to look up"
                    )
                self.reset(next_state)
                held = FileHeld(meta.sha256, meta.name, meta.size, True, 0, "stored")
                return [held, FileExists(meta.sha256)]
            case StoreOffset(offset=offset):
                if not 0 <= offset <= meta.size:
                    raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, "offset out of range")
                self.received = self.on_disk = self._resumed_at = offset
                self.state = next_state
                if isinstance(meta, FileMetaLegacy):
                    if meta.size == 0:
                        self._legacy_done = True
                        self.state = _R.VERIFYING
                        return [Finish(self.serial, meta)]
                    return []
                return [FileReady(offset)]
            case Stored(sha256=sha):
                if isinstance(meta, FileMeta) and sha != meta.sha256:
                    raise LocalProtocolError(
                        ErrorCode.INTERNAL_ERROR, "stored under another sha256 than announced"
                    )
                crossed, serial, road = meta.size - self._resumed_at, self.serial, self._road()
                self.reset(next_state)
                held = FileHeld(sha, meta.name, meta.size, False, crossed, road)
                return [*receiver_proof.owned(self, serial, sha), held, FileReceived(sha)]
            case ProofTimedOut():
                self.state = next_state
                return [Note("no FILE_PROOF before the deadline"), FileReady(0)]
        assert isinstance(event, StoreFailed)
        had_partial = self.state in (_R.RECEIVING, _R.RELAYING, _R.HALTING, _R.VERIFYING)
        serial, halt = self.serial, self.relay.halt()
        self.reset(next_state)
        outputs: list[Output] = (
            [*halt, Discard(serial, keep=event.keep_partial)] if had_partial else []
        )
        return [
            *outputs,
            ReceiveEnded(event.code, event.detail),
            TransferError(event.code, event.detail),
        ]

    def progress(self, now: float, *, force: bool = False) -> list[Output]:
        """FILE_PROGRESS with the bytes on disk, at most every ``progress_interval_s``
        while receiving or relaying (else nothing); ``force``: now, whatever the interval
        (the end of a relay part, which a relay sender paces its uploads on)."""
        meta = self.meta
        assert meta is not None
        last = self._last_progress
        if self.state not in (_R.RECEIVING, _R.RELAYING) or (
            not force and last is not None and now - last < self.limits.progress_interval_s
        ):
            return []
        self._last_progress = now
        return [FileProgress(self.on_disk, meta.size)]

    def close(self) -> list[Output]:
        """The channel closed: keep the open partial file for a later resume (the empty
        one of a transfer still proving goes)."""
        serial, state, halt = self.serial, self.state, self.relay.halt()
        self.reset(_R.IDLE)
        if state not in _ACTIVE or state is _R.CHECKING:
            return []
        return [*halt, Discard(serial, keep=state is not _R.PROVING)]

    def reset(self, state: ReceiverState) -> None:
        """Forget the open transfer and enter ``state`` (for the machine's own modules)."""
        self.state = state
        self.meta = None
        self.received = self.on_disk = self._resumed_at = 0
        self._last_progress = None
        self._channel_used = False
        self.proof.reset()
        self.relay.reset()

    def _road(self) -> str:
        """How the open transfer's bytes came (JOB_METRICS' road): ``relay``,
        ``relay+channel`` or ``channel``."""
        if self.relay.used:
            return "relay+channel" if self._channel_used else "relay"
        return "channel"
