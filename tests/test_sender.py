"""The sending side of file transfers (protocol.sender.Sender) on its own: every row of
its table with the exact outputs, every pair outside it refused, the receiver's
verdicts, our cancel and the wait for its acknowledgement, the results a worker
prepares, and the proof of possession a receiver asks."""

from __future__ import annotations

import itertools

import pytest

from protocol.errors import ErrorCode, LocalProtocolError
from protocol.errors import TransferErrorCode as Code
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
from protocol.relay import RELAY_SENDER_ROWS
from protocol.relay_events import RelayFrom
from protocol.relay_messages import RelayEnded, RelayPart, RelayStop
from protocol.roads import Road
from protocol.sender import SENDER_TABLE, Sender, SenderOp, SenderState
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
from tests.protocol_helpers import sha256

S = SenderState
SHA = sha256(b"hello")
OTHER_SHA = sha256(b"something else")
META = FileMeta("hello.txt", 5, SHA, chunk_size=4)
OTHER = FileMeta("b.bin", 9, OTHER_SHA, 4)
REQUEST = ResultsRequest("job-1")
#: What the receiver sends us, and what we do ourselves.
PEER = (
    FileProofRequest,
    FileReady,
    FileExists,
    FileProgress,
    FileReceived,
    TransferError,
    FileCancel,
    RelayEnded,
)
OURS = (
    FileMeta,
    EndOfFile,
    SenderOp.CANCEL,
    SenderOp.GIVE_UP,
    ResultsRequest,
    FileToSend,
    FileRanges,
    RelayPart,
    RelayStop,
)
#: The one relay part of META's 5 bytes (it ends the file: shorter than its chunk_size).
PART = RelayPart(SHA, 0, 5, 4096, bytes(32), bytes(7), "0" * 32, "tok")
CHALLENGE = FileProofRequest("ab" * 16, ((0, 2), (3, 2)))
PROOF = sha256(b"the digest our adapter computed")


def sender_in(state: SenderState) -> Sender:
    """A sender driven into ``state`` through its methods only."""
    s = Sender()
    if state is S.PREPARING:
        s.prepare(REQUEST)
    elif state in (S.RELAYING, S.RELAY_STOPPING):  # see tests/test_relay_sender.py
        assert s.announce(META, road=Road.RELAY) is META
        assert s.receive(FileReady(0)) == [RelayFrom(0, META)]
        if state is S.RELAY_STOPPING:
            assert s.relay_stop() == RelayStop(SHA)
    elif state is not S.IDLE:
        assert s.announce(META) is META
    if state in (S.PROVING, S.PROVED):
        assert s.receive(CHALLENGE) == [ReadFileRanges(1, CHALLENGE)]
    if state is S.PROVED:
        assert s.report(FileRanges(1, PROOF)) == [FileProof(PROOF)]
    if state in (S.SENDING, S.AWAIT_RECEIVED, S.CANCELLED):
        s.receive(FileReady(0))
    if state is S.AWAIT_RECEIVED:
        assert s.chunk(5)
        assert s.end() == EndOfFile()
    if state is S.CANCELLED:
        s.cancel()
    assert s.state is state
    return s


def snap(s: Sender) -> tuple[object, ...]:
    return (s.state, s.meta, s.offset, s.sent, s.active)


def fire(s: Sender, event: object) -> object:
    """Our own step, or the receiver's frame."""
    if event is SenderOp.CANCEL:
        return s.cancel()
    if event is SenderOp.GIVE_UP:
        return s.give_up()
    if isinstance(event, ResultsRequest):
        return s.prepare(event)
    if event is ActionFailed:
        return s.unprepare()
    if event is FileToSend or isinstance(event, FileMeta):
        return s.announce(META)
    if isinstance(event, EndOfFile):
        return s.end()
    if isinstance(event, FileRanges):
        return s.report(event)
    if isinstance(event, RelayPart):
        return s.relay_part(event)
    if event is RelayStop:
        return s.relay_stop()
    assert isinstance(event, Message)
    return s.receive(event)


CANCELLED_BY_US = SendEnded("cancelled", SHA, 0, Code.CANCELLED, "cancelled by us")
BY_RECEIVER = [SendEnded("cancelled", SHA, 0, Code.CANCELLED, "cancelled by the receiver")]
ACK = TransferError(Code.CANCELLED, "no transfer open")
FAILED = [SendEnded("failed", SHA, 0, "DISK_FULL", "full")]

#: (event, outputs) of each row.
ROWS: dict[tuple[SenderState, object], tuple[object, object]] = {
    (S.IDLE, FileMeta): (META, META),
    (S.IDLE, ResultsRequest): (REQUEST, None),
    (S.PREPARING, ResultsFound): (ResultsFound, None),  # the look-up answered: still packing
    (S.PREPARING, FileToSend): (FileToSend, META),
    (S.PREPARING, ActionFailed): (ActionFailed, None),
    (S.AWAIT_READY, SenderOp.CANCEL): (SenderOp.CANCEL, (FileCancel(), CANCELLED_BY_US)),
    (S.AWAIT_READY, FileCancel): (FileCancel(), BY_RECEIVER),
    (S.AWAIT_READY, FileExists): (FileExists(SHA.upper()), [SendEnded("exists", SHA)]),
    (S.AWAIT_READY, FileReady): (FileReady(3), [StreamFrom(3, META)]),
    (S.AWAIT_READY, ProtocolErrorFrame): (
        ProtocolErrorFrame("UNEXPECTED_MESSAGE", "busy"),
        [SendEnded("failed", SHA, 0, "UNEXPECTED_MESSAGE", "refused: busy")],
    ),
    (S.AWAIT_READY, TransferError): (TransferError("DISK_FULL", "full"), FAILED),
    (S.AWAIT_READY, FileProofRequest): (CHALLENGE, [ReadFileRanges(1, CHALLENGE)]),
    (S.PROVING, FileRanges): (FileRanges(1, PROOF), [FileProof(PROOF)]),
    (S.PROVING, FileReady): (FileReady(0), [StreamFrom(0, META)]),  # its deadline came first
    (S.PROVING, SenderOp.CANCEL): (SenderOp.CANCEL, (FileCancel(), CANCELLED_BY_US)),
    (S.PROVING, FileCancel): (FileCancel(), BY_RECEIVER),
    (S.PROVING, TransferError): (TransferError("DISK_FULL", "full"), FAILED),
    (S.PROVED, FileReady): (FileReady(0), [StreamFrom(0, META)]),
    (S.PROVED, FileExists): (FileExists(SHA), [SendEnded("exists", SHA)]),
    (S.PROVED, SenderOp.CANCEL): (SenderOp.CANCEL, (FileCancel(), CANCELLED_BY_US)),
    (S.PROVED, FileCancel): (FileCancel(), BY_RECEIVER),
    (S.PROVED, TransferError): (TransferError("DISK_FULL", "full"), FAILED),
    (S.SENDING, SenderOp.CANCEL): (SenderOp.CANCEL, (FileCancel(), CANCELLED_BY_US)),
    (S.SENDING, EndOfFile): (EndOfFile(), EndOfFile()),
    (S.SENDING, FileCancel): (FileCancel(), BY_RECEIVER),
    (S.SENDING, FileProgress): (FileProgress(4, 5), [SendProgress(4, 5)]),
    (S.SENDING, TransferError): (TransferError("DISK_FULL", "full"), FAILED),
    (S.AWAIT_RECEIVED, SenderOp.CANCEL): (SenderOp.CANCEL, (FileCancel(), CANCELLED_BY_US)),
    (S.AWAIT_RECEIVED, FileCancel): (FileCancel(), BY_RECEIVER),
    (S.AWAIT_RECEIVED, FileProgress): (FileProgress(5, 5), [SendProgress(5, 5)]),
    (S.AWAIT_RECEIVED, FileReceived): (
        FileReceived(SHA),
        [SendProgress(5, 5), SendEnded("received", SHA)],
    ),
    (S.AWAIT_RECEIVED, TransferError): (TransferError("DISK_FULL", "full"), FAILED),
    (S.CANCELLED, SenderOp.GIVE_UP): (SenderOp.GIVE_UP, None),
    (S.CANCELLED, FileCancel): (FileCancel(), []),  # the receiver cancelled too
    (S.CANCELLED, FileExists): (FileExists(OTHER_SHA), []),
    (S.CANCELLED, FileProofRequest): (CHALLENGE, []),
    (S.CANCELLED, FileProgress): (FileProgress(3, 5), []),
    (S.CANCELLED, FileReady): (FileReady(99), []),  # beyond the size: still only absorbed
    (S.CANCELLED, FileReceived): (FileReceived(OTHER_SHA), []),
    (S.CANCELLED, TransferError): (ACK, []),
}


def test_the_rows_here_are_exactly_the_table() -> None:
    # The relay road's rows are checked in tests/test_relay_sender.py.
    assert set(ROWS) == set(SENDER_TABLE) - set(RELAY_SENDER_ROWS)
    assert set(SENDER_TABLE) >= set(RELAY_SENDER_ROWS)


@pytest.mark.parametrize("row", list(ROWS), ids=str)
def test_every_row(row: tuple[SenderState, object]) -> None:
    event, outputs = ROWS[row]
    s = sender_in(row[0])
    if row == (S.PREPARING, ResultsFound):
        assert s.step(ResultsFound) is S.PREPARING  # a step of the table, no method
        return
    assert fire(s, event) == outputs
    assert s.state is SENDER_TABLE[row]


SAMPLES: dict[object, object] = {
    FileProofRequest: CHALLENGE,
    FileRanges: FileRanges(1, PROOF),
    FileReady: FileReady(0),
    FileExists: FileExists(SHA),
    FileProgress: FileProgress(2, 5),
    FileReceived: FileReceived(SHA),
    TransferError: TransferError(Code.CANCELLED, "x"),
    FileCancel: FileCancel(),
    FileMeta: META,
    EndOfFile: EndOfFile(),
    SenderOp.CANCEL: SenderOp.CANCEL,
    SenderOp.GIVE_UP: SenderOp.GIVE_UP,
    ResultsRequest: REQUEST,
    FileToSend: FileToSend,
    RelayEnded: RelayEnded(SHA, 0, "RELAY_GONE"),
    RelayPart: PART,
    RelayStop: RelayStop,
}
OUTSIDE = [(s, e) for s, e in itertools.product(S, [*PEER, *OURS]) if (s, e) not in SENDER_TABLE]


@pytest.mark.parametrize(("state", "event"), OUTSIDE, ids=str)
def test_every_pair_outside_the_table_is_refused_and_changes_nothing(
    state: SenderState, event: object
) -> None:
    s = sender_in(state)
    before = snap(s)
    if event is FileRanges:  # our adapter's report that no state awaits: dropped
        assert s.report(FileRanges(1, PROOF)) == [Note("dropped FileRanges of transfer 1")]
        assert snap(s) == before
        return
    with pytest.raises(LocalProtocolError) as info:
        if event in (FileMeta, FileToSend):  # announce() takes the row its state has
            s.step(event)
        else:
            fire(s, SAMPLES[event])
    assert type(info.value) is LocalProtocolError  # the connection blames the peer for frames
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert f"in sender state {state}" in info.value.detail
    assert snap(s) == before


def test_announcing_only_from_idle_or_while_results_are_prepared() -> None:
    for state in S:
        s = sender_in(state)
        before = snap(s)
        if state in (S.IDLE, S.PREPARING):
            assert s.announce(OTHER) is OTHER
            continue
        with pytest.raises(LocalProtocolError):
            s.announce(OTHER)
        assert snap(s) == before


def test_unprepare_outside_preparing_is_refused() -> None:
    for state in S:
        if state is S.PREPARING:
            continue
        s = sender_in(state)
        before = snap(s)
        with pytest.raises(LocalProtocolError):
            s.unprepare()
        assert snap(s) == before


# ===================================================================== verdicts


def test_announcing_opens_a_clean_transfer() -> None:
    s = sender_in(S.SENDING)
    s.chunk(4)
    s.receive(TransferError(Code.DISK_FULL, "full"))
    assert s.announce(OTHER) is OTHER
    assert snap(s) == (S.AWAIT_READY, OTHER, 0, 0, True)


def test_results_are_announced_after_they_are_prepared() -> None:
    s = sender_in(S.PREPARING)
    assert s.active
    assert s.announce(META) is META
    assert (s.state, s.meta) == (S.AWAIT_READY, META)
    t = sender_in(S.PREPARING)
    t.unprepare()
    assert snap(t) == (S.IDLE, None, 0, 0, False)


def test_file_exists_with_another_sha256_is_malformed_and_changes_nothing() -> None:
    s = sender_in(S.AWAIT_READY)
    before = snap(s)
    with pytest.raises(LocalProtocolError) as info:
        s.receive(FileExists(OTHER_SHA))
    assert (info.value.code, info.value.detail) == (
        ErrorCode.MALFORMED_FRAME,
        "FILE_EXISTS names another sha256",
    )
    assert snap(s) == before


def test_a_file_ready_beyond_the_size_fails_and_answers_size_mismatch() -> None:
    s = sender_in(S.AWAIT_READY)
    assert s.receive(FileReady(6)) == [
        SendEnded("failed", SHA, 0, Code.SIZE_MISMATCH, "FILE_READY offset 6 is beyond 5 bytes"),
        TransferError(Code.SIZE_MISMATCH, "offset beyond the file's end"),
    ]
    assert s.state is S.IDLE


@pytest.mark.parametrize("offset", [0, 3, 5])
def test_file_ready_records_the_offset_and_the_verdict_keeps_it(offset: int) -> None:
    s = sender_in(S.AWAIT_READY)
    s.receive(FileReady(offset))
    assert (s.state, s.offset) == (S.SENDING, offset)
    s.end()
    assert s.receive(FileReceived(SHA))[-1] == SendEnded("received", SHA, offset)


def test_file_received_with_another_sha256_fails_and_answers_hash_mismatch() -> None:
    s = sender_in(S.AWAIT_RECEIVED)
    assert s.receive(FileReceived(OTHER_SHA)) == [
        SendEnded(
            "failed", SHA, 0, Code.HASH_MISMATCH, f"receiver stored {OTHER_SHA}, we sent {SHA}"
        ),
        TransferError(Code.HASH_MISMATCH, "FILE_RECEIVED names another sha256"),
    ]
    assert s.state is S.IDLE


def test_a_transfer_error_fails_with_its_code_and_detail() -> None:
    s = sender_in(S.SENDING)
    assert s.receive(TransferError("DISK_FULL", "no space left::really")) == [
        SendEnded("failed", SHA, 0, "DISK_FULL", "no space left::really")
    ]


def test_chunks_count_only_while_sending() -> None:
    for state in S:
        s = sender_in(state)
        sent = s.sent
        assert s.chunk(3) is (state is S.SENDING)
        assert s.sent == sent + (3 if state is S.SENDING else 0)


@pytest.mark.parametrize("state", list(S))
def test_active_is_false_only_in_idle_and_cancelled(state: SenderState) -> None:
    assert sender_in(state).active is (state not in (S.IDLE, S.CANCELLED))


# ===================================================================== our cancel


@pytest.mark.parametrize("state", [S.AWAIT_READY, S.SENDING, S.AWAIT_RECEIVED])
def test_our_cancel_waits_for_the_acknowledgement_before_a_new_transfer(state: SenderState) -> None:
    s = sender_in(state)
    cancel, ended = s.cancel()
    assert (cancel, ended.status, ended.code) == (FileCancel(), "cancelled", Code.CANCELLED)
    assert (s.state, s.active) == (S.CANCELLED, False)
    before = snap(s)
    with pytest.raises(LocalProtocolError):
        s.announce(OTHER)  # not before the receiver acknowledged
    assert snap(s) == before
    for late in (FileReady(0), FileProgress(3, 5), TransferError(Code.DISK_FULL, "full")):
        assert s.receive(late) == []  # about the cancelled transfer: absorbed
        assert snap(s) == before
    assert s.receive(TransferError(Code.CANCELLED, "cancelled by the sender; 3 bytes kept")) == []
    assert s.state is S.IDLE
    assert s.announce(OTHER) is OTHER


def test_a_ready_for_a_cancelled_transfer_is_not_taken_for_the_next_one() -> None:
    """Frames carry no transfer identity: a FILE_READY already on its way for a cancelled
    transfer must not be taken as the answer to the next FILE_META."""
    s = sender_in(S.AWAIT_READY)
    s.cancel()
    assert s.receive(FileReady(6)) == []  # stale: absorbed, and no SIZE_MISMATCH either
    assert (s.state, s.offset) == (S.CANCELLED, 0)
    s.receive(ACK)
    s.announce(OTHER)
    assert s.receive(FileReady(0)) == [StreamFrom(0, OTHER)]


def test_give_up_stops_waiting_for_an_acknowledgement_that_never_comes() -> None:
    s = sender_in(S.CANCELLED)
    s.receive(FileProgress(3, 5))
    s.give_up()
    assert s.state is S.IDLE
    with pytest.raises(LocalProtocolError):
        s.give_up()  # once
    assert s.announce(OTHER) is OTHER


# ===================================================================== proof of possession


def test_a_proof_request_beyond_our_file_is_refused_and_changes_nothing() -> None:
    s = sender_in(S.AWAIT_READY)
    before = snap(s)
    with pytest.raises(LocalProtocolError) as info:
        s.receive(FileProofRequest("ab" * 16, ((0, 2), (4, 2))))  # bytes 4-5 of 5
    assert (info.value.code, info.value.detail) == (
        ErrorCode.MALFORMED_FRAME,
        "FILE_PROOF_REQUEST names bytes beyond the file",
    )
    assert snap(s) == before
    assert s.receive(FileProofRequest("ab" * 16, ((3, 2),))) == [
        ReadFileRanges(1, FileProofRequest("ab" * 16, ((3, 2),)))
    ]


def test_a_file_we_cannot_read_for_the_proof_is_cancelled() -> None:
    s = sender_in(S.PROVING)
    assert s.report(FileRanges(1, None)) == [FileCancel(), CANCELLED_BY_US]
    assert s.state is S.CANCELLED
    assert s.receive(TransferError(Code.CANCELLED, "no transfer open")) == []
    assert s.state is S.IDLE


def test_a_range_digest_of_an_earlier_transfer_is_dropped() -> None:
    s = sender_in(S.PROVING)
    s.cancel()
    s.receive(ACK)
    s.announce(OTHER)  # transfer 2
    s.receive(FileProofRequest("cd" * 16, ((0, 9),)))
    assert s.report(FileRanges(1, PROOF)) == [Note("dropped FileRanges of transfer 1")]
    assert s.state is S.PROVING
    assert s.report(FileRanges(2, PROOF)) == [FileProof(PROOF)]
