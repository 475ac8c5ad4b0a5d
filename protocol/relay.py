"""The relay road inside an open transfer: its table rows and decisions (sans-IO).

After FILE_READY the sender may move the file through the storage service instead of
the data channel (PROTOCOL.md section 2.6)::

    sender                                   receiver
    FILE_META::...                        ->
                                          <- FILE_READY::{offset}
    (RelayFrom: seal and upload part 1)
    RELAY_PART::{sha256}::{offset}::{length}::{chunk_size}::{key}::{nonce_prefix}::{upload_id}::{token}
                                          ->    FetchRelayPart: ranged GET, open each chunk,
                                                append only authenticated plaintext
    RELAY_PART::... (the next part, while part 1 is fetched; at most max_relay_parts held)
                                          <- FILE_PROGRESS::{on_disk}::{size}
                                                DeleteRelayObject after each part
                                          <- FILE_RECEIVED::{sha256}   (no END_OF_FILE)
    a failure on either side:
    RELAY_STOP::{sha256}                  ->    HaltRelay
                                          <- RELAY_ENDED::{sha256}::{offset}::{code}::{detail}
    (fallback) binary chunks from offset, END_OF_FILE, as on the channel
    (forced relay) FILE_CANCEL            ->

The rows are merged into :data:`protocol.transfer.RECEIVER_TABLE` and
:data:`protocol.sender.SENDER_TABLE`; :class:`ReceiverRelay` and :class:`SenderRelay`
hold the relay data of one transfer and decide for the machines that own them.

Invariants: the receiver's verified offset only grows; each part starts where the
previous ended (the first at the receiver's offset); only authenticated plaintext is
written (the adapter opens each chunk with :class:`~protocol.relay_crypto.ChunkCipher`);
a relay failure is not fatal: RELAY_ENDED goes out, the transfer stays open at the
verified offset and queued parts are dropped.

Source: PROTOCOL.md sections 2.6 and 4.4-4.6.
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING

from protocol.errors import ErrorCode, LocalProtocolError, RelayEndCode, RemoteProtocolError
from protocol.events import Finish, Note, SendEnded, StoreFailed, StreamFrom, Written
from protocol.messages import Message
from protocol.proof import ProofStep
from protocol.relay_events import (
    DeleteRelayObject,
    FetchRelayPart,
    HaltRelay,
    RelayFailed,
    RelayFetched,
    RelayFrom,
    RelayWritten,
    RoadChanged,
)
from protocol.relay_messages import RelayEnded, RelayPart, RelayStop
from protocol.roads import Road
from protocol.transfer_messages import (
    FileCancel,
    FileMeta,
    FileProgress,
    FileReceived,
    TransferError,
)
from protocol.transfer_states import ReceiverState, SenderOp, SenderState

if TYPE_CHECKING:
    from protocol.sender import Sender
    from protocol.transfer import Output as ReceiverOutput
    from protocol.transfer import Receiver

__all__ = [
    "RELAY_RECEIVER_ROWS",
    "RELAY_REPORTS",
    "RELAY_SENDER_ROWS",
    "ReceiverRelay",
    "RelayReport",
    "SenderRelay",
]

_R = ReceiverState
_S = SenderState

#: The relay road's rows of the receiver's table: (state, event) -> next state on the
#: normal path. RELAY_PART in RECEIVING starts a fetch (or is dropped, as RELAY_STOP is,
#: when our RELAY_ENDED crossed it); RelayFetched moves on to the next queued part,
#: back to RECEIVING when none is queued, or to VERIFYING at the size.
RELAY_RECEIVER_ROWS: dict[tuple[ReceiverState, type | ProofStep], ReceiverState] = {
    (_R.RECEIVING, RelayPart): _R.RELAYING,
    (_R.RELAYING, RelayPart): _R.RELAYING,  # queued (HALTING when one too many)
    (_R.HALTING, RelayPart): _R.HALTING,  # dropped: the fetch is being stopped
    (_R.DRAINING, RelayPart): _R.DRAINING,  # dropped, as chunks are
    (_R.IDLE, RelayStop): _R.IDLE,  # dropped: it crossed our FILE_RECEIVED or TRANSFER_ERROR
    (_R.RECEIVING, RelayStop): _R.RECEIVING,  # RELAY_ENDED STOPPED at once
    (_R.RELAYING, RelayStop): _R.HALTING,  # HaltRelay
    (_R.HALTING, RelayStop): _R.HALTING,
    (_R.VERIFYING, RelayStop): _R.VERIFYING,  # dropped: every byte is here
    (_R.DRAINING, RelayStop): _R.DRAINING,
    (_R.RELAYING, Written): _R.RELAYING,  # channel bytes appended before the part
    (_R.HALTING, Written): _R.HALTING,
    (_R.RELAYING, RelayWritten): _R.RELAYING,
    (_R.HALTING, RelayWritten): _R.HALTING,
    (_R.RELAYING, RelayFetched): _R.RELAYING,  # the next part; RECEIVING or VERIFYING
    (_R.HALTING, RelayFetched): _R.RECEIVING,  # RELAY_ENDED (VERIFYING at the size)
    (_R.RELAYING, RelayFailed): _R.RECEIVING,  # RELAY_ENDED with the code
    (_R.HALTING, RelayFailed): _R.RECEIVING,  # RELAY_ENDED with the halt's code
    (_R.RELAYING, FileCancel): _R.IDLE,  # HaltRelay, the partial is kept
    (_R.HALTING, FileCancel): _R.IDLE,
    (_R.RELAYING, StoreFailed): _R.DRAINING,  # HaltRelay and TRANSFER_ERROR
    (_R.HALTING, StoreFailed): _R.DRAINING,
}

#: The relay road's rows of the sender's table. FILE_READY moves to RELAYING instead of
#: SENDING when the transfer takes the relay road; RELAY_ENDED moves to SENDING with a
#: fallback, else FILE_CANCEL goes out (CANCELLED). RelayPart and RelayStop are what we send.
RELAY_SENDER_ROWS: dict[tuple[SenderState, type | SenderOp], SenderState] = {
    (_S.RELAYING, RelayPart): _S.RELAYING,
    (_S.RELAYING, RelayStop): _S.RELAY_STOPPING,
    (_S.RELAYING, FileProgress): _S.RELAYING,
    (_S.RELAY_STOPPING, FileProgress): _S.RELAY_STOPPING,
    (_S.RELAYING, FileReceived): _S.IDLE,
    (_S.RELAY_STOPPING, FileReceived): _S.IDLE,
    (_S.RELAYING, RelayEnded): _S.SENDING,  # CANCELLED without a fallback
    (_S.RELAY_STOPPING, RelayEnded): _S.SENDING,
    (_S.CANCELLED, RelayEnded): _S.CANCELLED,
    **{(s, TransferError): _S.IDLE for s in (_S.RELAYING, _S.RELAY_STOPPING)},
    **{(s, FileCancel): _S.IDLE for s in (_S.RELAYING, _S.RELAY_STOPPING)},
    **{(s, SenderOp.CANCEL): _S.CANCELLED for s in (_S.RELAYING, _S.RELAY_STOPPING)},
}

#: The adapter's reports about a relay fetch.
RELAY_REPORTS = (RelayWritten, RelayFetched, RelayFailed)
RelayReport = RelayWritten | RelayFetched | RelayFailed
_RELAYING = (_R.RELAYING, _R.HALTING)


def _bad_part(detail: str) -> RemoteProtocolError:
    return RemoteProtocolError(ErrorCode.MALFORMED_FRAME, f"RELAY_PART: {detail}")


def check_part(part: RelayPart, meta: FileMeta, expected: int, chunk_size: int | None) -> None:
    """Refuse a part that does not continue the transfer.

    A part starts at the chunk boundary at or below ``expected``: the previous part's end
    (a boundary), or for the first part the receiver's offset, which a resume may have
    left inside a chunk (the receiver then keeps only the bytes from its offset).

    Args:
        expected: the verified offset, or the previous part's end, bytes.
        chunk_size: the transfer's relay chunk size, or None before its first part.

    Raises:
        RemoteProtocolError: MALFORMED_FRAME for another sha256, a gap or an overlap,
            another chunk size, bytes beyond the size, no byte past ``expected``, or a
            short part that does not end the file.
    """
    if part.sha256 != meta.sha256:
        raise _bad_part("another file's sha256")
    start = expected - expected % part.chunk_size
    if part.offset != start:
        raise _bad_part(f"starts at {part.offset}, not at {start}")
    if chunk_size is not None and part.chunk_size != chunk_size:
        raise _bad_part(f"chunk_size {part.chunk_size} is not the transfer's {chunk_size}")
    if not expected < part.end <= meta.size:
        raise _bad_part(f"ends at {part.end}: not in ({expected}, {meta.size}]")
    if part.length % part.chunk_size and part.end != meta.size:
        raise _bad_part("a part that does not end the file is whole chunks")


class ReceiverRelay:
    """The relay data of the receiver's open transfer (owned by its
    :class:`~protocol.transfer.Receiver`).

    Attributes:
        current: the part being fetched, or None.
        queue: the parts announced after it, in order.
        chunk_size: the transfer's relay chunk size, once a part came.
        ended: RELAY_ENDED was sent: RELAY_PART and RELAY_STOP that crossed it are dropped.
        verified: where the fetches have verified and written the file to, bytes.
        used: some plaintext of the transfer came by the relay road.
    """

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.reset()

    def reset(self) -> None:
        """Forget the transfer's relay road (a new transfer, or the open one ended)."""
        self.current: RelayPart | None = None
        self.queue: deque[RelayPart] = deque()
        self.chunk_size: int | None = None
        self.ended = False
        self.used = False
        #: The verified offset of the relay road: bytes written from authenticated chunks.
        self.verified = 0
        #: The code and detail RELAY_ENDED gives when the halted fetch reports.
        self._end = (RelayEndCode.STOPPED, "stopped on request")

    @property
    def _meta(self) -> FileMeta:
        meta = self.receiver.meta
        assert isinstance(meta, FileMeta)
        return meta

    def receive(self, message: RelayPart | RelayStop, next_state: ReceiverState) -> list[object]:
        """RELAY_PART or RELAY_STOP, allowed by the table in the receiver's state.

        Raises:
            RemoteProtocolError: a part that does not continue the transfer (see
                :func:`check_part`) or in a transfer of the legacy form; nothing changes.
        """
        receiver = self.receiver
        state = receiver.state
        if state in (_R.IDLE, _R.DRAINING, _R.VERIFYING, _R.HALTING) or (
            state is _R.RECEIVING and self.ended
        ):
            return [Note(f"dropped {message.TYPE}: the relay road ended for this transfer")]
        if not isinstance(receiver.meta, FileMeta):
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, "a transfer of the legacy form has no relay road"
            )
        if isinstance(message, RelayStop):
            if message.sha256 != self._meta.sha256:
                raise RemoteProtocolError(ErrorCode.MALFORMED_FRAME, "RELAY_STOP: another file")
            if state is _R.RECEIVING:
                self.verified = receiver.received  # every byte taken so far is kept
                return self._ended(RelayEndCode.STOPPED, "no relay part was being fetched")
            self._end = (RelayEndCode.STOPPED, "stopped on request")
            receiver.state = next_state
            return [HaltRelay(receiver.serial)]
        if not receiver.relay_road:  # the sender goes on by the channel from here
            self.verified = receiver.received
            return self._ended(RelayEndCode.RELAY_UNREACHABLE, "no relay road on this receiver")
        last = self.queue[-1] if self.queue else self.current
        check_part(
            message, self._meta, receiver.received if last is None else last.end, self.chunk_size
        )
        self.chunk_size = message.chunk_size
        if self.current is None:
            self.current, self.verified = message, receiver.received
            receiver.state = next_state
            return [FetchRelayPart(receiver.serial, message, self._meta, receiver.received)]
        if 1 + len(self.queue) >= receiver.limits.max_relay_parts:
            self._end = (
                RelayEndCode.RELAY_PARTS_EXCEEDED,
                f"more than {receiver.limits.max_relay_parts} relay parts queued",
            )
            receiver.state = _R.HALTING
            return [HaltRelay(receiver.serial)]
        self.queue.append(message)
        return []

    def report(
        self,
        event: RelayWritten | RelayFetched | RelayFailed,
        next_state: ReceiverState,
        now: float,
    ) -> list[ReceiverOutput]:
        """The adapter's report on the fetch (the table allowed it in this state).

        Raises:
            LocalProtocolError: INTERNAL_ERROR for an impossible offset (backwards, beyond
                the part, or not on a chunk boundary).
        """
        receiver, part = self.receiver, self.current
        assert part is not None
        on_disk, verified = event.on_disk, self.verified
        if not verified <= on_disk <= part.end or (
            on_disk % part.chunk_size and on_disk not in (self._meta.size, verified)
        ):
            raise LocalProtocolError(
                ErrorCode.INTERNAL_ERROR,
                f"{type(event).__name__} at {on_disk}: not a chunk boundary in "
                f"[{verified}, {part.end}]",
            )
        self.used = self.used or on_disk > verified
        self.verified = receiver.received = receiver.on_disk = on_disk
        if isinstance(event, RelayWritten):
            return receiver.progress(now)
        if isinstance(event, RelayFetched) and on_disk != part.end:
            raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, "RelayFetched before the part's end")
        outputs: list[ReceiverOutput] = []
        if isinstance(event, RelayFetched):
            outputs.append(DeleteRelayObject(part.upload_id, part.token))
        if on_disk == self._meta.size:
            receiver.state = _R.VERIFYING
            self.current = None
            return [*outputs, Finish(receiver.serial, self._meta)]
        if isinstance(event, RelayFetched) and receiver.state is _R.RELAYING:
            receiver.state = next_state
            return [*outputs, *self._next(now)]
        code, detail = self._end
        if isinstance(event, RelayFailed) and receiver.state is _R.RELAYING:
            code, detail = event.code, event.detail
        return [*outputs, *self._ended(code, detail), *receiver.progress(now)]

    def _next(self, now: float) -> list[ReceiverOutput]:
        # FILE_PROGRESS at every part's end, whatever the interval: the sender keeps at
        # most a few parts ahead of the progress it hears, so a part's end must reach it.
        receiver = self.receiver
        if not self.queue:
            self.current = None
            receiver.state = _R.RECEIVING
            return receiver.progress(now, force=True)
        self.current = self.queue.popleft()
        fetch = FetchRelayPart(receiver.serial, self.current, self._meta, receiver.received)
        return [fetch, *receiver.progress(now, force=True)]

    def _ended(self, code: str, detail: str) -> list[ReceiverOutput]:
        receiver = self.receiver
        self.current = None
        self.queue.clear()
        self.ended = True
        receiver.state = _R.RECEIVING
        offset = receiver.received = self.verified
        receiver.on_disk = min(receiver.on_disk, offset)
        return [
            Note(f"relay road ended at {offset} bytes: {code}"),
            RelayEnded(self._meta.sha256, offset, code, " ".join(detail.splitlines())),
        ]

    def halt(self) -> list[ReceiverOutput]:
        """The transfer ends while relaying (FILE_CANCEL, a store failure, the channel
        closed): the HaltRelay to perform first, if a fetch runs."""
        return [HaltRelay(self.receiver.serial)] if self.receiver.state in _RELAYING else []


class SenderRelay:
    """The relay data of the sender's open transfer (owned by its
    :class:`~protocol.sender.Sender`).

    Attributes:
        road: the transfer's road now (RELAY until RELAY_ENDED moves it to CHANNEL).
        fallback: continue on the channel when the relay road ends (else cancel).
        next_offset: where the next RELAY_PART must start, bytes.
        chunk_size: the transfer's relay chunk size, once a part was sent.
    """

    def __init__(self, sender: Sender) -> None:
        self.sender = sender
        self.reset(Road.CHANNEL, fallback=True)

    def reset(self, road: Road, *, fallback: bool) -> None:
        """A new transfer on ``road``.

        Raises:
            LocalProtocolError: UNEXPECTED_MESSAGE for the shared road (no file moves).
        """
        if road is Road.SHARED:
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, "the shared road moves no file: send its path"
            )
        self.road, self.fallback = road, fallback
        self.next_offset = 0
        self.chunk_size: int | None = None

    def ready(self, offset: int, meta: FileMeta) -> StreamFrom | RelayFrom:
        """FILE_READY on our transfer: where the bytes go from ``offset``. An empty file,
        or one the receiver holds whole, goes on the channel (END_OF_FILE at once)."""
        if self.road is Road.RELAY and offset < meta.size:
            self.sender.state = _S.RELAYING
            self.next_offset = offset
            return RelayFrom(offset, meta)
        self.road = Road.CHANNEL
        return StreamFrom(offset, meta)

    def part(self, part: RelayPart) -> RelayPart:
        """We announce ``part``.

        Raises:
            LocalProtocolError: UNEXPECTED_MESSAGE when not relaying; MALFORMED_FRAME when
                it does not continue the transfer (:func:`check_part`).
        """
        sender = self.sender
        next_state = sender.step(part)
        assert sender.meta is not None
        try:
            check_part(part, sender.meta, self.next_offset, self.chunk_size)
        except RemoteProtocolError as exc:
            raise LocalProtocolError(exc.code, exc.detail) from None
        sender.state = next_state
        self.chunk_size = part.chunk_size
        self.next_offset = part.end
        return part

    def stop(self) -> RelayStop:
        """We stop the relay road (an upload failed): the receiver answers RELAY_ENDED.

        Raises:
            LocalProtocolError: UNEXPECTED_MESSAGE when not relaying.
        """
        sender = self.sender
        sender.state = sender.step(RelayStop)
        assert sender.meta is not None
        return RelayStop(sender.meta.sha256)

    def ended(
        self, message: RelayEnded, next_state: SenderState
    ) -> list[RoadChanged | StreamFrom | SendEnded | Message]:
        """RELAY_ENDED: continue on the channel from its offset, or cancel.

        Raises:
            LocalProtocolError: MALFORMED_FRAME for another file's sha256.
        """
        sender = self.sender
        meta = sender.meta
        assert meta is not None
        if message.sha256 != meta.sha256:
            raise LocalProtocolError(ErrorCode.MALFORMED_FRAME, "RELAY_ENDED names another file")
        if not sender.offset <= message.offset <= self.next_offset:
            detail = (
                f"RELAY_ENDED offset {message.offset} is outside the relayed "
                f"[{sender.offset}, {self.next_offset}]"
            )
            return [
                sender.finish("failed", "SIZE_MISMATCH", detail),
                TransferError("SIZE_MISMATCH", "RELAY_ENDED offset outside the relayed bytes"),
            ]
        if self.fallback:
            sender.state = next_state
            self.road = Road.CHANNEL
            return [
                RoadChanged(Road.RELAY, Road.CHANNEL, message.offset, message.code),
                StreamFrom(message.offset, meta),
            ]
        detail = f"the relay road ended: {message.detail}"
        cancel, ended = sender.cancel(status="failed", code=message.code, detail=detail)
        return [cancel, ended]
