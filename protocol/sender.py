"""The sending side of file transfers on one data channel, as a transition table.

One file at a time: we announce it (FILE_META), the receiver may ask us to prove that we
hold the file (FILE_PROOF_REQUEST: our adapter reads the asked ranges and we answer
FILE_PROOF, see :mod:`protocol.proof`), then answers where to start
(FILE_READY) or that it holds the content (FILE_EXISTS), our adapter streams chunks
from that offset (:class:`~protocol.events.StreamFrom`), we end with END_OF_FILE, and
the receiver's verdict (FILE_RECEIVED or TRANSFER_ERROR) ends the transfer with a
:class:`~protocol.events.SendEnded`. A worker prepares the results ZIP first
(PREPARING) when a client sends RESULTS_REQUEST.

:data:`SENDER_TABLE` maps ``(state, event) -> next state``. Events are the receiver's
messages, what we send (FILE_META, END_OF_FILE), our own cancel and the worker's
preparation outcomes; anything missing is refused and changes nothing.

Source: PROTOCOL.md sections 2.3 and 4.3; the table style of h11's ``_state.py``.
"""

from __future__ import annotations

from protocol.errors import ErrorCode, LocalProtocolError, TransferErrorCode
from protocol.events import (
    ActionFailed,
    FileToSend,
    Note,
    ResultsFound,
    SendEnded,
    SendProgress,
    StreamFrom,
)
from protocol.messages import Message, ProtocolErrorFrame, ResultsRequest
from protocol.proof import FileRanges, ReadFileRanges
from protocol.relay import RELAY_SENDER_ROWS, SenderRelay
from protocol.relay_events import RelayFrom, RoadChanged
from protocol.relay_messages import RelayEnded, RelayPart, RelayStop
from protocol.roads import Road
from protocol.transfer_messages import (
    EndOfFile,
    FileCancel,
    FileExists,
    FileMeta,
    FileProgress,
    FileProof,
    FileProofRequest,
    FileReady,
    FileReceived,
    TransferError,
)
from protocol.transfer_states import SenderOp, SenderState

__all__ = ["SENDER_TABLE", "Sender", "SenderOp", "SenderState"]

Output = (
    Message
    | StreamFrom
    | SendEnded
    | SendProgress
    | Note
    | ReadFileRanges
    | RelayFrom
    | RoadChanged
)


_S = SenderState
_OPEN = (_S.AWAIT_READY, _S.PROVING, _S.PROVED, _S.SENDING, _S.AWAIT_RECEIVED)

#: (state, event) -> next state. FileMeta and EndOfFile are what *we* send.
SENDER_TABLE: dict[tuple[SenderState, type | SenderOp], SenderState] = {
    (_S.IDLE, ResultsRequest): _S.PREPARING,
    (_S.PREPARING, ResultsFound): _S.PREPARING,
    (_S.PREPARING, FileToSend): _S.AWAIT_READY,
    (_S.PREPARING, ActionFailed): _S.IDLE,
    (_S.IDLE, FileMeta): _S.AWAIT_READY,
    (_S.AWAIT_READY, FileReady): _S.SENDING,
    (_S.AWAIT_READY, FileExists): _S.IDLE,
    (_S.AWAIT_READY, ProtocolErrorFrame): _S.IDLE,  # the receiver cannot take a file now
    (_S.AWAIT_READY, FileProofRequest): _S.PROVING,  # one proof per transfer
    (_S.PROVING, FileRanges): _S.PROVED,  # our adapter read the ranges: FILE_PROOF goes out
    (_S.PROVING, FileReady): _S.SENDING,  # the receiver's deadline passed first
    (_S.PROVED, FileReady): _S.SENDING,
    (_S.PROVED, FileExists): _S.IDLE,
    (_S.SENDING, FileProgress): _S.SENDING,
    (_S.SENDING, EndOfFile): _S.AWAIT_RECEIVED,
    (_S.AWAIT_RECEIVED, FileProgress): _S.AWAIT_RECEIVED,
    (_S.AWAIT_RECEIVED, FileReceived): _S.IDLE,
    **{(s, TransferError): _S.IDLE for s in _OPEN},
    **{(s, FileCancel): _S.IDLE for s in _OPEN},
    **{(s, SenderOp.CANCEL): _S.CANCELLED for s in _OPEN},
    # After our FILE_CANCEL, the receiver's frames still on their way are absorbed until
    # its TRANSFER_ERROR acknowledges the cancel; only then may a new transfer open (so
    # a late FILE_READY is never taken for the next file's).
    **{
        (_S.CANCELLED, event): _S.CANCELLED
        for event in (FileProofRequest, FileReady, FileExists, FileProgress, FileReceived)
    },
    (_S.CANCELLED, TransferError): _S.IDLE,
    (_S.CANCELLED, FileCancel): _S.IDLE,
    (_S.CANCELLED, SenderOp.GIVE_UP): _S.IDLE,
    **RELAY_SENDER_ROWS,  # the relay road (protocol.relay): FILE_READY -> RELAYING there
}


class Sender:
    """The sending side of one transfer at a time on a data channel.

    Attributes:
        state: the current :class:`SenderState`.
        meta: the transfer's FILE_META.
        offset: where the receiver asked us to start (from SENDING on), bytes.
        sent: bytes of chunks we put on the channel for this transfer.
        serial: the serial number of the open (or last) transfer.
    """

    def __init__(self) -> None:
        self.state = SenderState.IDLE
        self.meta: FileMeta | None = None
        self.offset = 0
        self.sent = 0
        self.serial = 0
        #: The transfer's road and relay data (:mod:`protocol.relay`).
        self.relay = SenderRelay(self)

    @property
    def road(self) -> Road:
        """The open (or last) transfer's road now: RELAY or CHANNEL."""
        return self.relay.road

    @property
    def active(self) -> bool:
        """True while a transfer is open or being prepared."""
        return self.state not in (_S.IDLE, _S.CANCELLED)

    def step(self, event: object) -> SenderState:
        """The next state for ``event`` (a message or its type, or a :class:`SenderOp`).

        Raises:
            LocalProtocolError: UNEXPECTED_MESSAGE when the table has no such row.
        """
        key = event if isinstance(event, SenderOp | type) else type(event)
        try:
            return SENDER_TABLE[(self.state, key)]
        except KeyError:
            name = getattr(key, "TYPE", "") or getattr(key, "__name__", str(key))
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"can't handle {name} in sender state {self.state}"
            ) from None

    def announce(
        self, meta: FileMeta, *, road: Road = Road.CHANNEL, fallback: bool = True
    ) -> FileMeta:
        """We open a transfer with FILE_META (from IDLE, or PREPARING for results).

        Args:
            road: CHANNEL, or RELAY: on FILE_READY the bytes go by the relay road
                (RelayFrom) unless the file is empty or held whole.
            fallback: (relay road) when it ends, continue on the channel from the
                verified offset; False: cancel the transfer with RELAY_ENDED's code.

        Raises:
            LocalProtocolError: another transfer is open, or the road is SHARED.
        """
        key: type = FileToSend if self.state is _S.PREPARING else FileMeta
        next_state = self.step(key)
        self.relay.reset(road, fallback=fallback)
        self.state = next_state
        self.meta, self.offset, self.sent = meta, 0, 0
        self.serial += 1
        return meta

    def chunk(self, size: int) -> bool:
        """We put ``size`` bytes on the channel; False (count nothing) unless SENDING."""
        if self.state is not _S.SENDING:
            return False
        self.sent += size
        return True

    def end(self) -> EndOfFile:
        """We send END_OF_FILE.

        Raises:
            LocalProtocolError: not SENDING.
        """
        self.state = self.step(EndOfFile)
        return EndOfFile()

    def receive(self, message: Message) -> list[Output]:
        """Take the receiver's FILE_PROOF_REQUEST, FILE_READY, FILE_EXISTS, FILE_PROGRESS,
        FILE_RECEIVED, TRANSFER_ERROR, FILE_CANCEL or RELAY_ENDED, or a PROTOCOL_ERROR
        refusing our FILE_META.

        Returns:
            The outputs: ReadFileRanges on FILE_PROOF_REQUEST (its ranges must lie within
            our file: MALFORMED_FRAME otherwise), StreamFrom (RelayFrom on the relay road)
            on FILE_READY, RoadChanged and StreamFrom (or FILE_CANCEL) on RELAY_ENDED,
            SendProgress,
            SendEnded at the end,
            a TRANSFER_ERROR to send back when the receiver asked for an impossible
            offset or confirmed another sha256.

        Raises:
            LocalProtocolError: not allowed in this state (the caller blames the peer).
        """
        next_state = self.step(message)
        if self.state is _S.CANCELLED:
            # Only TRANSFER_ERROR CANCELLED (or FILE_CANCEL) acknowledges our cancel; an
            # earlier error about the cancelled transfer is absorbed like the rest.
            if isinstance(message, TransferError) and message.code != TransferErrorCode.CANCELLED:
                return []
            self.state = next_state
            return []
        meta = self.meta
        assert meta is not None
        match message:
            case FileProofRequest():
                if message.end > meta.size:
                    raise LocalProtocolError(
                        ErrorCode.MALFORMED_FRAME, "FILE_PROOF_REQUEST names bytes beyond the file"
                    )
                self.state = next_state
                return [ReadFileRanges(self.serial, message)]
            case FileReady(offset=offset):
                if offset > meta.size:
                    detail = f"FILE_READY offset {offset} is beyond {meta.size} bytes"
                    return [
                        self._end("failed", TransferErrorCode.SIZE_MISMATCH, detail),
                        TransferError(
                            TransferErrorCode.SIZE_MISMATCH, "offset beyond the file's end"
                        ),
                    ]
                self.offset = offset
                self.state = next_state
                return [self.relay.ready(offset, meta)]
            case FileExists(sha256=sha):
                if sha != meta.sha256:
                    raise LocalProtocolError(
                        ErrorCode.MALFORMED_FRAME, "FILE_EXISTS names another sha256"
                    )
                return [self._end("exists")]
            case FileProgress(received=received):
                self.state = next_state
                return [SendProgress(received, meta.size)]
            case FileReceived(sha256=sha):
                if sha != meta.sha256:
                    detail = f"receiver stored {sha}, we sent {meta.sha256}"
                    return [
                        self._end("failed", TransferErrorCode.HASH_MISMATCH, detail),
                        TransferError(
                            TransferErrorCode.HASH_MISMATCH, "FILE_RECEIVED names another sha256"
                        ),
                    ]
                return [SendProgress(meta.size, meta.size), self._end("received")]
            case TransferError(code=code, detail=detail):
                return [self._end("failed", code, detail)]
            case ProtocolErrorFrame(code=code, detail=detail):
                return [self._end("failed", code, f"refused: {detail}")]
            case RelayEnded():
                return [*self.relay.ended(message, next_state)]
        return [self._end("cancelled", TransferErrorCode.CANCELLED, "cancelled by the receiver")]

    def report(self, event: FileRanges) -> list[Output]:
        """Our adapter read the ranges a FILE_PROOF_REQUEST asked (ReadFileRanges).

        Returns:
            FILE_PROOF with the digest; or, when our file could not be read, FILE_CANCEL
            and how the transfer ended; nothing (a Note) for a report about an earlier
            transfer, or one that comes after the receiver's deadline moved us on.
        """
        if event.transfer != self.serial or (self.state, FileRanges) not in SENDER_TABLE:
            return [Note(f"dropped {type(event).__name__} of transfer {event.transfer}")]
        if event.digest is None:
            cancel, ended = self.cancel()
            return [cancel, ended]
        self.state = self.step(event)
        return [FileProof(event.digest)]

    def relay_part(self, part: RelayPart) -> RelayPart:
        """We announce a relay part (see :meth:`protocol.relay.SenderRelay.part`)."""
        return self.relay.part(part)

    def relay_stop(self) -> RelayStop:
        """We stop the relay road (see :meth:`protocol.relay.SenderRelay.stop`)."""
        return self.relay.stop()

    def cancel(
        self,
        *,
        status: str = "cancelled",
        code: str = TransferErrorCode.CANCELLED,
        detail: str = "cancelled by us",
    ) -> tuple[FileCancel, SendEnded]:
        """We stop the open transfer: the FILE_CANCEL to send, and how it ended
        (``status``, ``code`` and ``detail`` of the :class:`SendEnded`).

        Raises:
            LocalProtocolError: no transfer is open.
        """
        next_state = self.step(SenderOp.CANCEL)
        ended = self._end(status, code, detail)
        self.state = next_state
        return FileCancel(), ended

    def give_up(self) -> None:
        """Stop waiting for the acknowledgement of our FILE_CANCEL (a peer that never
        sends it): the next transfer may open.

        Raises:
            LocalProtocolError: not CANCELLED.
        """
        self.state = self.step(SenderOp.GIVE_UP)

    def prepare(self, request: ResultsRequest) -> None:
        """(Worker) RESULTS_REQUEST: the results are looked up and packed.

        Raises:
            LocalProtocolError: a transfer is open or being prepared.
        """
        self.state = self.step(request)

    def unprepare(self) -> None:
        """(Worker) The results cannot be sent (refused or failed): back to IDLE."""
        self.state = self.step(ActionFailed)

    def finish(self, status: str, code: str = "", detail: str = "") -> SendEnded:
        """End the open transfer (IDLE): how it ended."""
        return self._end(status, code, detail)

    def _end(self, status: str, code: str = "", detail: str = "") -> SendEnded:
        meta = self.meta
        assert meta is not None
        self.state = _S.IDLE
        return SendEnded(status, meta.sha256, self.offset, code, detail, self.serial)
