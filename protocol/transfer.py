"""The file-transfer state machines, receiver and sender, as transition tables (sans-IO).

A transfer moves one file over the data channel in chunks::

    sender                                   receiver
    FILE_META::{name}::{size}::{sha256}::{chunk_size}  ->
                                             <- FILE_READY::{offset}   (or FILE_EXISTS::{sha256})
    binary chunks from offset, each <= chunk_size       ->
                                             <- FILE_PROGRESS::{received}::{size}  (<= every 0.5 s)
    END_OF_FILE                                          ->
                                             <- FILE_RECEIVED::{sha256}  (or TRANSFER_ERROR::...)

The machines decide; the adapters do the I/O. :class:`TransferReceiver` returns
*effects* (what to write, what to send) and learns the outcome of store look-ups
and verification through internal events. :class:`TransferSender` tells its
adapter when to stream and records how the transfer ended.

Each table maps ``(state, event type)`` to the normal next state; anything not in
it raises :class:`~protocol.errors.LocalProtocolError` (reported as Remote when the
event came from the peer) and changes nothing. A handler may instead *abort* the
transfer with ``TRANSFER_ERROR`` (bad name, too large, size overflow): the receiver
then drops the rest of that transfer's chunks silently (DRAINING) instead of
answering each one.

Source: the chunked transfer protocol (README, "Channel transfers"); resume and
checksum ideas from tus (offset on HEAD, checksum per upload); tables in the style
of h11's ``_state.py``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocol.errors import ErrorCode, LocalProtocolError, TransferErrorCode
from protocol.messages import (
    Chunk,
    EndOfFile,
    FileCancel,
    FileExists,
    FileMeta,
    FileMetaLegacy,
    FileProgress,
    FileReady,
    FileReceived,
    Message,
    TransferError,
)
from protocol.names import InvalidNameError
from protocol.names import check_name as _check_name

__all__ = [
    "DEFAULT_CHUNK_SIZE",
    "PROGRESS_INTERVAL_S",
    "RECEIVER_TRANSITIONS",
    "SENDER_TRANSITIONS",
    "Append",
    "CheckStore",
    "Discard",
    "Finish",
    "ReceiverState",
    "Send",
    "SenderState",
    "StoreFailed",
    "StoreHas",
    "StoreOffset",
    "Stored",
    "TransferOutcome",
    "TransferReceiver",
    "TransferSender",
    "check_name",
]

#: The largest chunk every peer can be assumed to accept, bytes.
DEFAULT_CHUNK_SIZE = 65536
#: FILE_PROGRESS is sent at most this often, seconds.
PROGRESS_INTERVAL_S = 0.5
_MAX_NAME_BYTES = 255


def check_name(name: str) -> str | None:
    """Why ``name`` is not an acceptable base name, or None when it is."""
    try:
        _check_name(name)
    except InvalidNameError as exc:
        return exc.detail
    return None


# ----------------------------------------------------------------- effects


@dataclass(frozen=True, slots=True)
class Send:
    """Send ``message`` to the peer."""

    message: Message


@dataclass(frozen=True, slots=True)
class CheckStore:
    """Ask the store about ``meta``; report StoreHas, StoreOffset or StoreFailed.

    ``meta`` is a :class:`FileMetaLegacy` for legacy transfers: the adapter opens an
    anonymous partial (no resume, no dedupe) and reports ``StoreOffset(0)``.
    """

    meta: FileMeta | FileMetaLegacy


@dataclass(frozen=True, slots=True)
class Append:
    """Append ``data`` to the open partial file (it starts at the reported offset)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Finish:
    """All bytes arrived: verify the sha256, fsync, move into the store; report
    Stored or StoreFailed."""

    meta: FileMeta | FileMetaLegacy


@dataclass(frozen=True, slots=True)
class Discard:
    """Close the partial file; ``keep`` it for a later resume, or delete it."""

    keep: bool


@dataclass(frozen=True, slots=True)
class Note:
    """Nothing to send: a line for the adapter's log."""

    text: str


Effect = Send | CheckStore | Append | Finish | Discard | Note

# ----------------------------------------------------------------- internal events


@dataclass(frozen=True, slots=True)
class StoreHas:
    """The store holds the whole content already (dedupe)."""


@dataclass(frozen=True, slots=True)
class StoreOffset:
    """The store opened a partial file holding ``offset`` bytes."""

    offset: int


@dataclass(frozen=True, slots=True)
class Stored:
    """The content was verified and stored under ``sha256``."""

    sha256: str


@dataclass(frozen=True, slots=True)
class StoreFailed:
    """The store refused or failed (HASH_MISMATCH, DISK_FULL, CANCELLED when busy...)."""

    code: TransferErrorCode
    detail: str
    keep_partial: bool = True


# ----------------------------------------------------------------- receiver


class ReceiverState(StrEnum):
    """States of the receiving side of one data channel."""

    #: No transfer open.
    IDLE = "IDLE"
    #: FILE_META accepted; the store is being asked what it holds.
    CHECKING = "CHECKING"
    #: FILE_READY sent (or a legacy transfer opened): chunks are appended.
    RECEIVING = "RECEIVING"
    #: Every byte arrived: the sha256 is being verified.
    VERIFYING = "VERIFYING"
    #: The transfer was aborted; its remaining chunks are dropped without replies
    #: until END_OF_FILE, FILE_CANCEL or the next FILE_META.
    DRAINING = "DRAINING"


_R = ReceiverState

#: (state, event type) -> next state on the normal path. Handlers may abort to
#: DRAINING (during RECEIVING) or IDLE (before any chunk) with TRANSFER_ERROR.
RECEIVER_TRANSITIONS: dict[tuple[ReceiverState, type], ReceiverState] = {
    (_R.IDLE, FileMeta): _R.CHECKING,
    (_R.IDLE, FileMetaLegacy): _R.CHECKING,
    (_R.IDLE, EndOfFile): _R.IDLE,  # only the END_OF_FILE of a completed legacy transfer
    (_R.IDLE, FileCancel): _R.IDLE,  # acknowledged all the same (the sender waits for it)
    (_R.DRAINING, FileMeta): _R.CHECKING,
    (_R.DRAINING, FileMetaLegacy): _R.CHECKING,
    (_R.DRAINING, Chunk): _R.DRAINING,
    (_R.DRAINING, EndOfFile): _R.IDLE,
    (_R.DRAINING, FileCancel): _R.IDLE,
    (_R.CHECKING, StoreHas): _R.IDLE,
    (_R.CHECKING, StoreOffset): _R.RECEIVING,
    (_R.CHECKING, StoreFailed): _R.IDLE,
    (_R.RECEIVING, Chunk): _R.RECEIVING,
    (_R.RECEIVING, EndOfFile): _R.VERIFYING,
    (_R.RECEIVING, FileCancel): _R.IDLE,
    (_R.RECEIVING, StoreFailed): _R.DRAINING,
    (_R.VERIFYING, Stored): _R.IDLE,
    (_R.VERIFYING, StoreFailed): _R.IDLE,
}

RECEIVER_PEER_EVENTS: tuple[type[Message], ...] = (
    FileMeta,
    FileMetaLegacy,
    Chunk,
    EndOfFile,
    FileCancel,
)
RECEIVER_INTERNAL_EVENTS: tuple[type, ...] = (StoreHas, StoreOffset, Stored, StoreFailed)


class TransferReceiver:
    """The receiving side of file transfers on one data channel.

    Args:
        max_size: largest file accepted, bytes (FILE_TOO_LARGE above it).
        max_chunk_size: largest chunk_size accepted, bytes (the channel's frame limit).

    Attributes:
        state: the current :class:`ReceiverState`.
        meta: the open transfer's FILE_META (None when IDLE).
        received: bytes held for the open transfer (resumed prefix included).
        last_stored: sha256 of the last file stored (or found) on this channel.
    """

    def __init__(self, *, max_size: int, max_chunk_size: int = 256 * 1024) -> None:
        self.state = ReceiverState.IDLE
        self.max_size = max_size
        self.max_chunk_size = max_chunk_size
        self.meta: FileMeta | FileMetaLegacy | None = None
        self.received = 0
        self.last_stored: str | None = None
        self._last_progress = 0.0
        self._legacy_done = False

    @property
    def active(self) -> bool:
        """True while a transfer is open (checking, receiving or verifying)."""
        return self.state in (_R.CHECKING, _R.RECEIVING, _R.VERIFYING)

    def _next(self, event: object) -> ReceiverState:
        try:
            return RECEIVER_TRANSITIONS[(self.state, type(event))]
        except KeyError:
            name = getattr(event, "TYPE", "") or type(event).__name__
            code = (
                ErrorCode.UNEXPECTED_DATA
                if isinstance(event, Chunk)
                else (ErrorCode.UNEXPECTED_MESSAGE)
            )
            raise LocalProtocolError(
                code, f"can't handle {name} in receiver state {self.state}"
            ) from None

    def receive(self, message: Message, now: float = 0.0) -> list[Effect]:
        """Take one frame from the sender.

        Args:
            message: FILE_META (either form), a chunk, END_OF_FILE or FILE_CANCEL.
            now: a monotonic clock reading, seconds (paces FILE_PROGRESS).

        Returns:
            The effects to perform, in order.

        Raises:
            RemoteProtocolError: the frame is not allowed in this state (code
                UNEXPECTED_DATA for a chunk, UNEXPECTED_MESSAGE otherwise); nothing
                changes. Adapters answer a refused chunk with TRANSFER_ERROR.
        """
        try:
            next_state = self._next(message)
        except LocalProtocolError as exc:
            raise exc.as_remote() from None
        match message:
            case FileMeta() | FileMetaLegacy():
                return self._open(message, next_state)
            case Chunk(data=data):
                return self._chunk(data, now, next_state)
            case EndOfFile():
                return self._end(next_state)
            case _:  # FileCancel: always acknowledged, so the sender knows that every
                # frame about the cancelled transfer is behind it.
                was_receiving, kept = self.state is _R.RECEIVING, self.received
                self._reset(next_state)
                if not was_receiving:
                    ack = TransferError(TransferErrorCode.CANCELLED, "no transfer open")
                    return [Send(ack)]
                detail = f"cancelled by the sender; {kept} bytes kept for a resume"
                cancelled = TransferError(TransferErrorCode.CANCELLED, detail)
                return [Discard(keep=True), Note(detail), Send(cancelled)]

    def _open(self, meta: FileMeta | FileMetaLegacy, next_state: ReceiverState) -> list[Effect]:
        reason = check_name(meta.name)
        if reason is not None:
            return self._refuse(TransferErrorCode.INVALID_NAME, reason, meta)
        if meta.size > self.max_size:
            return self._refuse(
                TransferErrorCode.FILE_TOO_LARGE,
                f"{meta.size} bytes is above the limit of {self.max_size} bytes",
                meta,
            )
        if isinstance(meta, FileMeta) and meta.chunk_size > self.max_chunk_size:
            return self._refuse(
                TransferErrorCode.UNEXPECTED_DATA,
                f"chunk_size {meta.chunk_size} is above the limit of {self.max_chunk_size}",
                meta,
            )
        self.meta = meta
        self.received = 0
        self._legacy_done = False
        self.state = next_state
        return [CheckStore(meta)]

    def _refuse(
        self, code: TransferErrorCode, detail: str, meta: FileMeta | FileMetaLegacy
    ) -> list[Effect]:
        # A legacy sender streams at once without waiting for a reply: drop its chunks.
        self._reset(_R.DRAINING if isinstance(meta, FileMetaLegacy) else _R.IDLE)
        return [Send(TransferError(code, detail))]

    def _chunk(self, data: bytes, now: float, next_state: ReceiverState) -> list[Effect]:
        if self.state is _R.DRAINING:
            return []
        meta = self.meta
        assert meta is not None
        limit = meta.chunk_size if isinstance(meta, FileMeta) else self.max_chunk_size
        if len(data) > limit:
            return self._abort(
                TransferErrorCode.UNEXPECTED_DATA,
                f"chunk of {len(data)} bytes is above chunk_size {limit}",
            )
        if self.received + len(data) > meta.size:
            return self._abort(
                TransferErrorCode.SIZE_MISMATCH,
                f"more than the announced {meta.size} bytes",
            )
        self.received += len(data)
        effects: list[Effect] = [Append(data)]
        if isinstance(meta, FileMetaLegacy) and self.received == meta.size:
            # Earlier senders may not send END_OF_FILE: the size tells the end.
            self._legacy_done = True
            self.state = _R.VERIFYING
            return [*effects, Finish(meta)]
        if now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._last_progress = now
            effects.append(Send(FileProgress(self.received, meta.size)))
        self.state = next_state
        return effects

    def _abort(self, code: TransferErrorCode, detail: str) -> list[Effect]:
        self._reset(_R.DRAINING)
        return [Discard(keep=False), Send(TransferError(code, detail))]

    def _end(self, next_state: ReceiverState) -> list[Effect]:
        if self.state is _R.IDLE:
            if not self._legacy_done:
                raise LocalProtocolError(
                    ErrorCode.UNEXPECTED_MESSAGE, "END_OF_FILE without an open transfer"
                ).as_remote()
            self._legacy_done = False
            return []
        if self.state is _R.DRAINING:
            self._reset(next_state)
            return []
        meta = self.meta
        assert meta is not None
        if self.received != meta.size:
            missing = meta.size - self.received
            self._reset(_R.IDLE)
            return [
                Discard(keep=True),
                Send(
                    TransferError(
                        TransferErrorCode.SIZE_MISMATCH,
                        f"END_OF_FILE with {missing} of {meta.size} bytes missing",
                    )
                ),
            ]
        self.state = next_state
        return [Finish(meta)]

    def report(self, event: StoreHas | StoreOffset | Stored | StoreFailed) -> list[Effect]:
        """Record the adapter's outcome of CheckStore or Finish.

        Returns:
            The effects to perform (the reply to the sender).

        Raises:
            LocalProtocolError: the event is impossible in this state (adapter bug).
        """
        next_state = self._next(event)
        meta = self.meta
        assert meta is not None
        match event:
            case StoreHas():
                if not isinstance(meta, FileMeta):
                    raise LocalProtocolError(
                        ErrorCode.INTERNAL_ERROR, "a legacy transfer has no sha256 to look up"
                    )
                self.last_stored = meta.sha256
                self._reset(next_state)
                return [Send(FileExists(meta.sha256))]
            case StoreOffset(offset=offset):
                if not 0 <= offset <= meta.size:
                    raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, "offset out of range")
                self.received = offset
                self.state = next_state
                if isinstance(meta, FileMetaLegacy):
                    if meta.size == 0:
                        self._legacy_done = True
                        self.state = _R.VERIFYING
                        return [Finish(meta)]
                    return []
                return [Send(FileReady(offset))]
            case Stored(sha256=sha):
                if isinstance(meta, FileMeta) and sha != meta.sha256:
                    raise LocalProtocolError(
                        ErrorCode.INTERNAL_ERROR, "stored under another sha256 than announced"
                    )
                self.last_stored = sha
                self._reset(next_state)
                return [Send(FileReceived(sha))]
            case StoreFailed(code=code, detail=detail, keep_partial=keep):
                was_receiving = self.state is _R.RECEIVING
                self._reset(next_state)
                effects: list[Effect] = [Send(TransferError(code, detail))]
                return [Discard(keep=keep), *effects] if was_receiving else effects
        raise AssertionError(event)  # pragma: no cover

    def _reset(self, state: ReceiverState) -> None:
        self.state = state
        self.meta = None
        self.received = 0
        self._last_progress = 0.0


# ----------------------------------------------------------------- sender


class SenderState(StrEnum):
    """States of the sending side of one data channel."""

    #: No transfer open.
    IDLE = "IDLE"
    #: FILE_META sent; waiting for FILE_READY or FILE_EXISTS.
    AWAIT_READY = "AWAIT_READY"
    #: Streaming chunks from the receiver's offset.
    SENDING = "SENDING"
    #: END_OF_FILE sent; waiting for FILE_RECEIVED.
    AWAIT_RECEIVED = "AWAIT_RECEIVED"
    #: We sent FILE_CANCEL: the receiver's frames about that transfer that were
    #: already on their way are absorbed until it acknowledges with TRANSFER_ERROR.
    CANCELLED = "CANCELLED"


_S = SenderState

#: (state, event type) -> next state. FileMeta and EndOfFile are what *we* send.
SENDER_TRANSITIONS: dict[tuple[SenderState, type], SenderState] = {
    (_S.IDLE, FileMeta): _S.AWAIT_READY,
    (_S.AWAIT_READY, FileReady): _S.SENDING,
    (_S.AWAIT_READY, FileExists): _S.IDLE,
    (_S.SENDING, FileProgress): _S.SENDING,
    (_S.SENDING, EndOfFile): _S.AWAIT_RECEIVED,
    (_S.AWAIT_RECEIVED, FileProgress): _S.AWAIT_RECEIVED,
    (_S.AWAIT_RECEIVED, FileReceived): _S.IDLE,
    **{(s, TransferError): _S.IDLE for s in (_S.AWAIT_READY, _S.SENDING, _S.AWAIT_RECEIVED)},
    **{(s, FileCancel): _S.IDLE for s in (_S.AWAIT_READY, _S.SENDING, _S.AWAIT_RECEIVED)},
    # After our FILE_CANCEL, the receiver's frames still on their way are absorbed
    # until its TRANSFER_ERROR acknowledges the cancel; only then may a new transfer
    # open (so a late FILE_READY is never taken for the next file's).
    **{
        (_S.CANCELLED, event): _S.CANCELLED
        for event in (FileReady, FileExists, FileProgress, FileReceived)
    },
    (_S.CANCELLED, TransferError): _S.IDLE,
    (_S.CANCELLED, FileCancel): _S.IDLE,
}

SENDER_PEER_EVENTS: tuple[type[Message], ...] = (
    FileReady,
    FileExists,
    FileProgress,
    FileReceived,
    TransferError,
    FileCancel,
)
SENDER_LOCAL_EVENTS: tuple[type[Message], ...] = (FileMeta, EndOfFile)


@dataclass(frozen=True, slots=True)
class TransferOutcome:
    """How a sent transfer ended.

    Attributes:
        status: ``received`` (verified by the receiver), ``exists`` (dedupe: no bytes
            sent), ``failed`` (TRANSFER_ERROR from the receiver) or ``cancelled``.
        sha256: the file's sha256.
        offset: where sending started, bytes (0, or the resume offset).
        code / detail: the receiver's TRANSFER_ERROR code and detail, if any.
    """

    status: str
    sha256: str
    offset: int = 0
    code: str = ""
    detail: str = ""


class TransferSender:
    """The sending side of one transfer at a time on a data channel.

    Attributes:
        state: the current :class:`SenderState`.
        meta: the transfer's FILE_META.
        offset: where the receiver asked us to start (valid from SENDING on).
        progress: the receiver's last FILE_PROGRESS (bytes received, size).
        outcome: how the last transfer ended (None while one is open).
    """

    def __init__(self) -> None:
        self.state = SenderState.IDLE
        self.meta: FileMeta | None = None
        self.offset = 0
        self.progress: tuple[int, int] = (0, 0)
        self.outcome: TransferOutcome | None = None

    @property
    def active(self) -> bool:
        """True while a transfer is open."""
        return self.state not in (_S.IDLE, _S.CANCELLED)

    def _next(self, event: Message) -> SenderState:
        try:
            return SENDER_TRANSITIONS[(self.state, type(event))]
        except KeyError:
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE,
                f"can't handle {event.TYPE or type(event).__name__} in sender state {self.state}",
            ) from None

    def send(self, message: FileMeta | EndOfFile) -> Message:
        """Record that we send ``message`` (FILE_META to open, END_OF_FILE when done).

        Returns:
            The message, to encode and send.

        Raises:
            LocalProtocolError: not allowed in this state; nothing changes.
        """
        next_state = self._next(message)
        if isinstance(message, FileMeta):
            self.meta = message
            self.offset = 0
            self.progress = (0, message.size)
            self.outcome = None
        self.state = next_state
        return message

    def receive(self, message: Message) -> Effect | None:
        """Take one frame from the receiver (FILE_READY, FILE_EXISTS, FILE_PROGRESS,
        FILE_RECEIVED, TRANSFER_ERROR or FILE_CANCEL).

        Returns:
            An effect to perform (a TRANSFER_ERROR to send back when the receiver
            asked for an impossible offset or confirmed the wrong sha256), else None.

        Raises:
            RemoteProtocolError: the frame is not allowed in this state; nothing changes.
        """
        try:
            if not isinstance(message, SENDER_PEER_EVENTS):
                raise LocalProtocolError(
                    ErrorCode.UNEXPECTED_MESSAGE, f"a receiver does not send {message.TYPE}"
                )
            next_state = self._next(message)
        except LocalProtocolError as exc:
            raise exc.as_remote() from None
        if self.state is _S.CANCELLED:
            # Only TRANSFER_ERROR CANCELLED (or FILE_CANCEL) acknowledges our cancel; an
            # earlier error about the cancelled transfer is absorbed like the rest.
            if isinstance(message, TransferError) and message.code != TransferErrorCode.CANCELLED:
                return None
            self.state = next_state
            return None
        meta = self.meta
        assert meta is not None
        effect: Effect | None = None
        match message:
            case FileReady(offset=offset):
                if offset > meta.size:
                    self._end(
                        "failed",
                        code=TransferErrorCode.SIZE_MISMATCH,
                        detail=f"FILE_READY offset {offset} is beyond {meta.size} bytes",
                    )
                    return Send(
                        TransferError(
                            TransferErrorCode.SIZE_MISMATCH,
                            f"offset {offset} is beyond the file's end",
                        )
                    )
                self.offset = offset
                self.progress = (offset, meta.size)
            case FileExists(sha256=sha):
                if sha != meta.sha256:
                    raise LocalProtocolError(
                        ErrorCode.MALFORMED_FRAME, "FILE_EXISTS names another sha256"
                    ).as_remote()
                self._end("exists")
                return None
            case FileProgress(received=received):
                self.progress = (received, meta.size)
            case FileReceived(sha256=sha):
                if sha != meta.sha256:
                    self._end(
                        "failed",
                        code=TransferErrorCode.HASH_MISMATCH,
                        detail=f"receiver stored {sha}, we sent {meta.sha256}",
                    )
                    return Send(
                        TransferError(
                            TransferErrorCode.HASH_MISMATCH, "FILE_RECEIVED names another sha256"
                        )
                    )
                self.progress = (meta.size, meta.size)
                self._end("received")
                return None
            case TransferError(code=code, detail=detail):
                self._end("failed", code=code, detail=detail)
                return None
            # SENDER_PEER_EVENTS admits only these six types: no fall-through.
            case FileCancel():  # pragma: no branch
                self._end(
                    "cancelled",
                    code=TransferErrorCode.CANCELLED,
                    detail="cancelled by the receiver",
                )
                return None
        self.state = next_state
        return effect

    def cancel(self) -> Message:
        """We stop the open transfer: returns the FILE_CANCEL to send.

        Raises:
            LocalProtocolError: no transfer is open.
        """
        if self.state in (_S.IDLE, _S.CANCELLED):
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "no transfer to cancel")
        self._end("cancelled", code=TransferErrorCode.CANCELLED, detail="cancelled by us")
        self.state = _S.CANCELLED
        return FileCancel()

    def forget_cancel(self) -> None:
        """Give up waiting for the acknowledgement of our FILE_CANCEL (a peer that
        never sends it): the next transfer may open. Only valid in CANCELLED."""
        if self.state is not _S.CANCELLED:
            raise LocalProtocolError(ErrorCode.UNEXPECTED_MESSAGE, "no cancel to forget")
        self.state = _S.IDLE

    def _end(self, status: str, code: str = "", detail: str = "") -> None:
        assert self.meta is not None
        self.outcome = TransferOutcome(status, self.meta.sha256, self.offset, code, detail)
        self.state = _S.IDLE
