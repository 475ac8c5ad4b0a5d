"""The receiving side of file transfers (protocol.transfer.Receiver) on its own: every
row of its table with the exact outputs, every pair outside it refused (frames) or
dropped (reports), progress from bytes on disk, names, bounds, cancels, store failures,
stale reports, the legacy form, and proof of possession (a receiver that proves it)."""

from __future__ import annotations

import itertools

import pytest

from protocol.codec import decode, encode
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.errors import TransferErrorCode as Code
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
from protocol.messages import ProtocolErrorFrame, ResultsRequest
from protocol.proof import (
    AwaitProof,
    ProofStep,
    ProofTimedOut,
    ReadStoredRanges,
    RecordOwnership,
    StoredRanges,
    proof_digest,
)
from protocol.relay import RELAY_RECEIVER_ROWS
from protocol.relay_events import HaltRelay, RelayFailed, RelayFetched, RelayWritten
from protocol.relay_messages import RelayPart, RelayStop
from protocol.transfer import RECEIVER_TABLE, Receiver, ReceiverState
from protocol.transfer_messages import (
    Chunk,
    EndOfFile,
    FileCancel,
    FileExists,
    FileMeta,
    FileMetaLegacy,
    FileProgress,
    FileProof,
    FileProofRequest,
    FileReady,
    FileReceived,
    TransferError,
)
from tests.protocol_helpers import sha256

R = ReceiverState
DATA = b"hello"
SHA = sha256(DATA)
OTHER_SHA = sha256(b"something else")
META = FileMeta("hello.txt", len(DATA), SHA, chunk_size=4)
LEGACY = FileMetaLegacy("hello.txt", len(DATA))
LIMITS = Limits(max_file_bytes=1000, max_binary_frame_bytes=64)
MESSAGES = (FileMeta, FileMetaLegacy, Chunk, EndOfFile, FileCancel, FileProof, RelayPart, RelayStop)
REPORTS = (StoreHas, StoreOffset, Stored, StoreFailed, Written, StoredRanges, ProofTimedOut)
REPORTS += (RelayWritten, RelayFetched, RelayFailed)
#: The one relay part of DATA (it ends the file: shorter than its chunk_size).
PART = RelayPart(SHA, 0, 5, 4096, bytes(32), bytes(7), "0" * 32, "tok")
CHALLENGE = FileProofRequest("0f" * 16, ((0, 5),))
PROOF = proof_digest(CHALLENGE.nonce, [DATA])


def new(*, prove: bool = False) -> Receiver:
    r = Receiver(LIMITS, prove_possession=prove)
    r.proof.challenge = lambda size, limits: CHALLENGE
    return r


def receiver_in(
    state: ReceiverState,
    *,
    received: int = 3,
    legacy_done: bool = False,
    prove: bool = False,
    proved: bool = False,
    late_proof: bool = False,
) -> Receiver:
    """A receiver driven into ``state`` through its methods only (transfer serial 1).

    RECEIVING holds ``received`` of DATA's 5 bytes; IDLE with ``legacy_done`` comes
    right after a completed legacy transfer (before its trailing END_OF_FILE). A
    receiver that proves possession (``prove``, always for PROVING) asked CHALLENGE;
    CHECKING with ``proved`` has the sender's FILE_PROOF; RECEIVING with ``late_proof``
    passed its deadline (FILE_READY::0 sent).
    """
    prove = prove or proved or late_proof or state is R.PROVING
    r = new(prove=prove)
    if prove and (state is not R.IDLE and (state is not R.CHECKING or proved)):
        r.receive(META, 0.0)
        assert r.report(StoreOffset(1, 0), 0.0) == [AwaitProof(1, 10.0), CHALLENGE]
        if proved:
            assert r.receive(FileProof(PROOF), 0.0) == [ReadStoredRanges(1, SHA, 5, CHALLENGE)]
        elif late_proof:
            r.report(ProofTimedOut(1), 0.0)
    elif state is R.IDLE and legacy_done:
        r.receive(LEGACY, 0.0)
        assert r.report(StoreOffset(1, 0), 0.0) == []
        r.receive(Chunk(b"hell"), 0.0)
        assert r.receive(Chunk(b"o"), 0.0) == [Append(1, b"o"), Finish(1, LEGACY)]
        r.report(Stored(1, SHA), 0.0)
    elif state is R.REQUESTED:
        r.request(ResultsRequest("job-1"))
    elif state is not R.IDLE:
        assert r.receive(META, 0.0) == [CheckStore(1, META)]
        if state is R.RECEIVING:
            r.report(StoreOffset(1, received), 0.0)
        elif state is R.VERIFYING:
            r.report(StoreOffset(1, len(DATA)), 0.0)
            r.receive(EndOfFile(), 0.0)
        elif state is R.DRAINING:
            r.report(StoreOffset(1, 3), 0.0)
            r.receive(Chunk(b"abc"), 0.0)  # 6 > 5 bytes: aborted
        elif state in (R.RELAYING, R.HALTING):  # relaying PART from 0 (see test_relay_*)
            r.report(StoreOffset(1, 0), 0.0)
            r.receive(PART, 0.0)
            if state is R.HALTING:
                r.receive(RelayStop(SHA), 0.0)
    assert r.state is state
    return r


def state_of(r: Receiver) -> tuple[object, ...]:
    return (r.state, r.meta, r.serial, r.received, r.on_disk, r.active)


def the_error(outputs: list[object]) -> TransferError:
    (error,) = [out for out in outputs if isinstance(out, TransferError)]
    return error


def ended(code: str, detail: str) -> list[object]:
    return [ReceiveEnded(code, detail), TransferError(code, detail)]


# ===================================================================== the table

FULL = "cancelled by the sender; 3 bytes kept for a resume"

ACK = [TransferError(Code.CANCELLED, "no transfer open")]
HELD = [FileHeld(SHA, "hello.txt", 5, True, 0, "stored"), FileExists(SHA)]
NOTHING_KEPT = "cancelled by the sender; 0 bytes kept for a resume"
STORED = [FileHeld(SHA, "hello.txt", 5, False, 0), FileReceived(SHA)]
FULL_DISK = StoreFailed(1, Code.DISK_FULL, "full")
BAD_HASH = StoreFailed(1, Code.HASH_MISMATCH, "bad", False)

#: (setup, event, outputs): how each row is reached and what it must produce.
ROWS: dict[
    tuple[ReceiverState, type | ProofStep], tuple[dict[str, object], object, list[object]]
] = {
    (R.IDLE, FileMeta): ({}, META, [CheckStore(1, META)]),
    (R.IDLE, FileMetaLegacy): ({}, LEGACY, [CheckStore(1, LEGACY)]),
    (R.IDLE, EndOfFile): ({"legacy_done": True}, EndOfFile(), []),
    (R.IDLE, FileCancel): ({}, FileCancel(), ACK),
    (R.IDLE, ResultsRequest): ({}, ResultsRequest("job-1"), []),
    (R.REQUESTED, FileMeta): ({}, META, [CheckStore(1, META)]),
    (R.REQUESTED, ProtocolErrorFrame): ({}, ProtocolErrorFrame("UNKNOWN_JOB"), []),
    (R.DRAINING, FileMeta): ({}, META, [CheckStore(2, META)]),
    (R.DRAINING, FileMetaLegacy): ({}, LEGACY, [CheckStore(2, LEGACY)]),
    (R.DRAINING, Chunk): ({}, Chunk(b"x" * 100), []),
    (R.DRAINING, EndOfFile): ({}, EndOfFile(), []),
    (R.DRAINING, FileCancel): ({}, FileCancel(), ACK),
    (R.CHECKING, StoreHas): ({}, StoreHas(1), HELD),
    (R.CHECKING, StoreOffset): ({}, StoreOffset(1, 0), [FileReady(0)]),
    (R.CHECKING, StoreFailed): ({}, FULL_DISK, ended("DISK_FULL", "full")),
    (R.CHECKING, ProofStep.ASK): (
        {"prove": True},
        StoreOffset(1, 0),
        [AwaitProof(1, 10.0), CHALLENGE],
    ),
    (R.PROVING, FileProof): ({}, FileProof(PROOF), [ReadStoredRanges(1, SHA, 5, CHALLENGE)]),
    (R.PROVING, ProofTimedOut): (
        {},
        ProofTimedOut(1),
        [Note("no FILE_PROOF before the deadline"), FileReady(0)],
    ),
    (R.PROVING, FileCancel): (
        {},
        FileCancel(),
        [Discard(1, False), Note(NOTHING_KEPT), *ended("CANCELLED", NOTHING_KEPT)],
    ),
    (R.CHECKING, ProofStep.MATCH): (
        {"proved": True},
        StoredRanges(1, PROOF),
        [Discard(1, False), RecordOwnership(1, SHA), *HELD],
    ),
    (R.CHECKING, ProofStep.MISMATCH): ({"proved": True}, StoredRanges(1, None), [FileReady(0)]),
    (R.RECEIVING, Chunk): ({}, Chunk(b"ab"), [Append(1, b"ab")]),
    (R.RECEIVING, Written): ({}, Written(1, 4), [FileProgress(4, 5)]),
    (R.RECEIVING, EndOfFile): ({"received": 5}, EndOfFile(), [Finish(1, META)]),
    (R.RECEIVING, FileCancel): (
        {},
        FileCancel(),
        [Discard(1, True), Note(FULL), *ended("CANCELLED", FULL)],
    ),
    (R.RECEIVING, StoreFailed): ({}, FULL_DISK, [Discard(1, True), *ended("DISK_FULL", "full")]),
    (R.VERIFYING, Written): ({}, Written(1, 5), []),  # no progress once every byte is there
    (R.VERIFYING, Stored): ({}, Stored(1, SHA), STORED),
    (R.VERIFYING, StoreFailed): ({}, BAD_HASH, [Discard(1, False), *ended("HASH_MISMATCH", "bad")]),
}


def fire(r: Receiver, event: object, now: float = 10.0) -> list[object]:
    if isinstance(event, ResultsRequest):
        r.request(event)
        return []
    if isinstance(event, ProtocolErrorFrame):
        assert r.refused(event) is True
        return []
    if isinstance(event, REPORTS):
        return r.report(event, now)
    return r.receive(event, now)  # type: ignore[arg-type]


def test_the_rows_here_are_exactly_the_table() -> None:
    # The relay road's rows are checked in tests/test_relay_receiver.py.
    assert set(ROWS) == set(RECEIVER_TABLE) - set(RELAY_RECEIVER_ROWS)
    assert set(RECEIVER_TABLE) >= set(RELAY_RECEIVER_ROWS)


@pytest.mark.parametrize("row", sorted(ROWS, key=str), ids=str)
def test_every_row(row: tuple[ReceiverState, type]) -> None:
    setup, event, outputs = ROWS[row]
    r = receiver_in(row[0], **setup)  # type: ignore[arg-type]
    assert fire(r, event) == outputs
    assert r.state is RECEIVER_TABLE[row]


SAMPLES: dict[type, object] = {
    FileMeta: META,
    FileMetaLegacy: LEGACY,
    Chunk: Chunk(b"ab"),
    EndOfFile: EndOfFile(),
    FileCancel: FileCancel(),
    StoreHas: StoreHas(1),
    StoreOffset: StoreOffset(1, 0),
    Stored: Stored(1, SHA),
    StoreFailed: StoreFailed(1, Code.DISK_FULL, "full"),
    Written: Written(1, 2),
    FileProof: FileProof(PROOF),
    StoredRanges: StoredRanges(1, PROOF),
    ProofTimedOut: ProofTimedOut(1),
    RelayPart: PART,
    RelayStop: RelayStop(SHA),
    RelayWritten: RelayWritten(1, 0),
    RelayFetched: RelayFetched(1, 5),
    RelayFailed: RelayFailed(1, 0, "RELAY_GONE"),
}
OUTSIDE = [
    (s, e) for s, e in itertools.product(R, [*MESSAGES, *REPORTS]) if (s, e) not in RECEIVER_TABLE
]


@pytest.mark.parametrize(("state", "event_type"), OUTSIDE, ids=str)
def test_every_pair_outside_the_table_changes_nothing(
    state: ReceiverState, event_type: type
) -> None:
    r = receiver_in(state)
    before = state_of(r)
    if event_type in MESSAGES:  # the peer's frame: refused
        with pytest.raises(RemoteProtocolError) as info:
            r.receive(SAMPLES[event_type], 10.0)  # type: ignore[arg-type]
        assert type(info.value) is RemoteProtocolError
        unexpected = (
            ErrorCode.UNEXPECTED_DATA if event_type is Chunk else ErrorCode.UNEXPECTED_MESSAGE
        )
        assert info.value.code == unexpected
        name = getattr(SAMPLES[event_type], "TYPE", "") or "Chunk"
        assert info.value.detail == f"can't handle {name} in receiver state {state}"
    else:  # a report its state no longer expects (a write after a cancel): dropped
        assert r.report(SAMPLES[event_type], 10.0) == [  # type: ignore[arg-type]
            Note(f"dropped {event_type.__name__} of transfer 1")
        ]
    assert state_of(r) == before


@pytest.mark.parametrize("state", [s for s in R if s is not R.IDLE])
def test_only_an_idle_receiver_takes_our_results_request(state: ReceiverState) -> None:
    r = receiver_in(state)
    before = state_of(r)
    with pytest.raises(LocalProtocolError) as info:
        r.request(ResultsRequest("job-2"))
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert state_of(r) == before
    if state is not R.REQUESTED:
        assert r.refused(ProtocolErrorFrame("UNKNOWN_JOB")) is False  # it answers no request
        assert state_of(r) == before


def test_end_of_file_while_idle_is_refused_unless_a_legacy_transfer_just_ended() -> None:
    for r in (new(), receiver_in(R.VERIFYING)):
        if r.state is R.VERIFYING:
            r.report(Stored(1, SHA), 0.0)  # a normal transfer ended
        with pytest.raises(RemoteProtocolError) as info:
            r.receive(EndOfFile(), 0.0)
        assert (info.value.code, info.value.detail) == (
            ErrorCode.UNEXPECTED_MESSAGE,
            "END_OF_FILE without an open transfer",
        )
        assert r.state is R.IDLE
    r = receiver_in(R.IDLE, legacy_done=True)
    assert r.receive(EndOfFile(), 0.0) == []
    with pytest.raises(RemoteProtocolError):
        r.receive(EndOfFile(), 0.0)  # once


# ===================================================================== opening


def test_file_meta_asks_the_store_with_a_new_serial() -> None:
    r = new()
    assert not r.active and r.serial == 0
    assert r.receive(META, 0.0) == [CheckStore(1, META)]
    assert (r.state, r.meta, r.received, r.serial, r.active) == (R.CHECKING, META, 0, 1, True)


@pytest.mark.parametrize("offset", [0, 3, 5])
def test_store_offset_answers_file_ready_with_that_offset(offset: int) -> None:
    r = receiver_in(R.CHECKING)
    assert r.report(StoreOffset(1, offset), 0.0) == [FileReady(offset)]
    assert (r.state, r.received, r.on_disk) == (R.RECEIVING, offset, offset)


@pytest.mark.parametrize("offset", [-1, 6])
def test_a_store_offset_outside_the_file_is_an_adapter_bug(offset: int) -> None:
    r = receiver_in(R.CHECKING)
    before = state_of(r)
    with pytest.raises(LocalProtocolError) as info:
        r.report(StoreOffset(1, offset), 0.0)
    assert (info.value.code, info.value.detail) == (ErrorCode.INTERNAL_ERROR, "offset out of range")
    assert state_of(r) == before


def test_store_has_for_a_legacy_transfer_is_an_adapter_bug() -> None:
    r = new()
    r.receive(LEGACY, 0.0)
    before = state_of(r)
    with pytest.raises(LocalProtocolError) as info:
        r.report(StoreHas(1), 0.0)
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    assert state_of(r) == before


BAD_NAMES = ["a/b", "..", ".", "a\x00b", "C:x", "x" * 256, "．．", "a／b", "\ud800.bin"]


@pytest.mark.parametrize("name", BAD_NAMES)
@pytest.mark.parametrize("legacy", [False, True])
def test_an_invalid_name_is_refused_before_anything_is_written(name: str, legacy: bool) -> None:
    meta = FileMetaLegacy(name, 5) if legacy else FileMeta(name, 5, SHA, 4)
    r = new()
    outputs = r.receive(meta, 0.0)
    assert [type(o) for o in outputs] == [ReceiveEnded, TransferError]
    assert the_error(outputs).code == Code.INVALID_NAME
    assert (r.meta, r.received, r.serial, r.active) == (None, 0, 0, False)
    # A legacy sender streams at once: its chunks are drained; a FILE_META waits.
    assert r.state is (R.DRAINING if legacy else R.IDLE)
    assert r.receive(META, 0.0) == [CheckStore(1, META)]  # the channel stays usable


@pytest.mark.parametrize(
    "name", ["données.zip", "name::with::colons.zip", ".hidden", "...", "x" * 255, "１：x"]
)
def test_a_good_name_opens_the_transfer_as_it_came_through_the_codec(name: str) -> None:
    meta = decode(encode(FileMeta(name, 5, SHA, 4)))
    assert isinstance(meta, FileMeta) and meta.name == name  # never normalized
    assert new().receive(meta, 0.0) == [CheckStore(1, meta)]


def test_a_file_above_the_maximum_is_refused_before_any_byte() -> None:
    r = new()
    outputs = r.receive(FileMeta("big.bin", 1001, SHA, 4), 0.0)
    assert outputs == ended("FILE_TOO_LARGE", "1001 bytes is above the limit of 1000 bytes")
    assert r.state is R.IDLE
    assert the_error(r.receive(FileMetaLegacy("big.bin", 1001), 0.0)).code == Code.FILE_TOO_LARGE
    assert r.state is R.DRAINING
    at_limit = FileMeta("big.bin", 1000, SHA, 4)
    assert r.receive(at_limit, 0.0) == [CheckStore(1, at_limit)]


def test_a_chunk_size_above_the_binary_frame_bound_is_refused() -> None:
    r = new()
    outputs = r.receive(FileMeta("f.bin", 5, SHA, 65), 0.0)
    assert outputs == ended("UNEXPECTED_DATA", "chunk_size 65 is above the limit of 64")
    at_limit = FileMeta("f.bin", 5, SHA, 64)
    assert r.receive(at_limit, 0.0) == [CheckStore(1, at_limit)]


# ===================================================================== receiving


def test_chunks_are_appended_in_order_and_counted() -> None:
    data = bytes(range(40))
    meta = FileMeta("n.bin", len(data), sha256(data), chunk_size=8)
    r = new()
    r.receive(meta, 0.0)
    r.report(StoreOffset(1, 0), 0.0)
    appended = b""
    for piece in (data[0:8], data[8:9], data[9:17], data[17:25], data[25:32], data[32:40]):
        assert r.receive(Chunk(piece), 0.0) == [Append(1, piece)]  # no progress from chunks
        appended += piece
        assert (r.received, r.on_disk, r.state) == (len(appended), 0, R.RECEIVING)
    assert appended == data
    assert r.receive(EndOfFile(), 0.0) == [Finish(1, meta)]
    assert r.state is R.VERIFYING


def test_a_resumed_transfer_counts_from_the_offset_and_reports_what_crossed() -> None:
    r = receiver_in(R.RECEIVING, received=3)
    assert r.receive(Chunk(b"lo"), 0.0) == [Append(1, b"lo")]
    assert r.received == 5
    assert r.receive(EndOfFile(), 0.0) == [Finish(1, META)]
    held, received = r.report(Stored(1, SHA), 0.0)
    assert held == FileHeld(SHA, "hello.txt", 5, existed=False, bytes_received=2)
    assert received == FileReceived(SHA)
    assert state_of(r) == (R.IDLE, None, 1, 0, 0, False)


def test_progress_counts_bytes_on_disk_not_bytes_received() -> None:
    r = receiver_in(R.RECEIVING, received=0)
    r.receive(Chunk(b"hell"), 0.0)
    r.receive(Chunk(b"o"), 0.0)
    assert r.received == 5
    assert r.report(Written(1, 3), 1.0) == [FileProgress(3, 5)]
    assert r.on_disk == 3
    assert r.report(Written(1, 2), 5.0) == [FileProgress(3, 5)]  # a late batch never lowers it
    assert r.report(Written(1, 5), 9.0) == [FileProgress(5, 5)]


def test_file_progress_is_paced_to_at_most_every_interval() -> None:
    size = 40
    meta = FileMeta("p.bin", size, sha256(bytes(size)), chunk_size=1)
    r = new()
    r.receive(meta, 0.0)
    r.report(StoreOffset(1, 0), 0.0)
    with_progress = []
    for i in range(20):
        r.receive(Chunk(b"\0"), i * 0.25)
        outputs = r.report(Written(1, i + 1), i * 0.25)  # exact binary fractions
        if outputs:
            assert outputs == [FileProgress(i + 1, size)]
            with_progress.append(i)
    assert with_progress == [0, 2, 4, 6, 8, 10, 12, 14, 16, 18]
    eager = Receiver(Limits(progress_interval_s=0))
    eager.receive(meta, 0.0)
    eager.report(StoreOffset(1, 0), 0.0)
    assert all(eager.report(Written(1, n), 0.0) == [FileProgress(n, size)] for n in range(1, 5))


def test_a_new_transfer_sends_its_first_progress_at_once() -> None:
    r = receiver_in(R.RECEIVING)
    assert r.report(Written(1, 3), 100.0) == [FileProgress(3, 5)]
    r.receive(FileCancel(), 100.1)
    r.receive(META, 100.1)
    r.report(StoreOffset(2, 3), 100.1)
    assert r.report(Written(2, 4), 100.2) == [FileProgress(4, 5)]


def test_reports_about_an_earlier_transfer_are_dropped() -> None:
    r = receiver_in(R.RECEIVING)
    r.receive(FileCancel(), 0.0)
    r.receive(META, 0.0)  # transfer 2 opens while transfer 1's reports are on their way
    before = state_of(r)
    for stale in (StoreOffset(1, 5), StoreHas(1), Written(1, 5), Stored(1, SHA)):
        assert r.report(stale, 0.0) == [Note(f"dropped {type(stale).__name__} of transfer 1")]
    assert r.report(StoreFailed(1, Code.DISK_FULL, "full"), 0.0) == [
        Note("dropped StoreFailed of transfer 1")
    ]
    assert state_of(r) == before
    assert r.report(StoreOffset(2, 0), 0.0) == [FileReady(0)]


def test_end_of_file_with_bytes_missing_keeps_the_partial() -> None:
    for received in (0, 3, 4):
        r = receiver_in(R.RECEIVING, received=received)
        outputs = r.receive(EndOfFile(), 0.0)
        detail = f"END_OF_FILE with {5 - received} of 5 bytes missing"
        assert outputs == [Discard(1, keep=True), *ended("SIZE_MISMATCH", detail)]
        assert state_of(r) == (R.IDLE, None, 1, 0, 0, False)


def test_a_chunk_past_the_size_aborts_and_the_rest_is_drained() -> None:
    r = receiver_in(R.RECEIVING, received=3)
    outputs = r.receive(Chunk(b"abc"), 0.0)
    assert outputs == [
        Discard(1, keep=False),
        *ended("SIZE_MISMATCH", "more than the announced 5 bytes"),
    ]
    assert (r.state, r.meta, r.received, r.active) == (R.DRAINING, None, 0, False)
    for piece in (b"more", b"x" * 256, b""):
        assert r.receive(Chunk(piece), 99.0) == []
    assert r.report(Written(1, 6), 99.0) == [Note("dropped Written of transfer 1")]
    assert r.receive(EndOfFile(), 0.0) == []
    assert r.state is R.IDLE
    assert r.receive(META, 0.0) == [CheckStore(2, META)]


def test_a_chunk_bigger_than_chunk_size_is_unexpected_data() -> None:
    r = receiver_in(R.RECEIVING, received=0)
    assert r.receive(Chunk(b"abcd"), 0.0) == [Append(1, b"abcd")]  # exactly chunk_size
    r = receiver_in(R.RECEIVING, received=0)
    outputs = r.receive(Chunk(b"abcde"), 0.0)  # 5 fits the size but not chunk_size 4
    assert outputs == [
        Discard(1, keep=False),
        *ended("UNEXPECTED_DATA", "chunk of 5 bytes is above chunk_size 4"),
    ]
    assert r.state is R.DRAINING


def test_a_legacy_chunk_is_bounded_by_the_binary_frame_bound() -> None:
    r = new()
    r.receive(FileMetaLegacy("big.bin", 500), 0.0)
    r.report(StoreOffset(1, 0), 0.0)
    assert r.receive(Chunk(b"x" * 64), 0.0) == [Append(1, b"x" * 64)]
    assert the_error(r.receive(Chunk(b"x" * 65), 0.0)).code == Code.UNEXPECTED_DATA
    assert r.state is R.DRAINING


# ===================================================================== cancels and failures


def test_file_cancel_while_receiving_keeps_the_partial_and_acknowledges() -> None:
    r = receiver_in(R.RECEIVING, received=3)
    acks = [the_error(r.receive(FileCancel(), 0.0)) for _ in range(3)]
    assert acks[0] == TransferError(Code.CANCELLED, FULL)
    assert acks[1:] == [TransferError(Code.CANCELLED, "no transfer open")] * 2  # one each
    assert state_of(r) == (R.IDLE, None, 1, 0, 0, False)
    assert r.receive(META, 0.0) == [CheckStore(2, META)]


@pytest.mark.parametrize("keep", [True, False])
def test_a_write_failure_while_receiving_aborts_and_drains(keep: bool) -> None:
    r = receiver_in(R.RECEIVING, received=3)
    outputs = r.report(StoreFailed(1, Code.DISK_FULL, "no space", keep_partial=keep), 0.0)
    assert outputs == [Discard(1, keep=keep), *ended("DISK_FULL", "no space")]
    assert (r.state, r.meta, r.received) == (R.DRAINING, None, 0)
    assert r.receive(Chunk(b"ab"), 0.0) == []
    assert r.receive(META, 0.0) == [CheckStore(2, META)]


def test_stored_under_another_sha256_than_announced_is_an_adapter_bug() -> None:
    r = receiver_in(R.VERIFYING)
    before = state_of(r)
    with pytest.raises(LocalProtocolError) as info:
        r.report(Stored(1, OTHER_SHA), 0.0)
    assert type(info.value) is LocalProtocolError
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    assert state_of(r) == before
    assert r.report(Stored(1, SHA), 0.0)[-1] == FileReceived(SHA)  # the right one ends it


@pytest.mark.parametrize("state", list(R))
def test_close_keeps_an_open_partial_for_a_resume(state: ReceiverState) -> None:
    r = receiver_in(state)
    expected = [Discard(1, keep=True)] if state in (R.RECEIVING, R.VERIFYING) else []
    if state is R.PROVING:  # nothing came yet: its empty partial goes
        expected = [Discard(1, keep=False)]
    if state in (R.RELAYING, R.HALTING):  # the fetch stops first
        expected = [HaltRelay(1), Discard(1, keep=True)]
    assert r.close() == expected
    assert (r.state, r.meta, r.active) == (R.IDLE, None, False)


# ===================================================================== the legacy form


def test_a_legacy_transfer_finishes_on_its_size_and_takes_a_trailing_end_of_file() -> None:
    r = new()
    assert r.receive(LEGACY, 0.0) == [CheckStore(1, LEGACY)]
    assert r.report(StoreOffset(1, 0), 0.0) == []  # no FILE_READY: chunks follow at once
    assert r.receive(Chunk(b"hel"), 0.0) == [Append(1, b"hel")]
    assert r.receive(Chunk(b"lo"), 0.0) == [Append(1, b"lo"), Finish(1, LEGACY)]
    assert r.state is R.VERIFYING
    # stored under whatever the store computed: a legacy sender announces no sha256
    assert r.report(Stored(1, OTHER_SHA), 0.0) == [
        FileHeld(OTHER_SHA, "hello.txt", 5, False, 5),
        FileReceived(OTHER_SHA),
    ]
    assert r.receive(EndOfFile(), 0.0) == []
    assert r.state is R.IDLE


def test_a_zero_byte_legacy_file_finishes_on_store_offset() -> None:
    empty = FileMetaLegacy("empty.txt", 0)
    r = new()
    r.receive(empty, 0.0)
    assert r.report(StoreOffset(1, 0), 0.0) == [Finish(1, empty)]
    assert r.report(Stored(1, sha256(b"")), 0.0)[-1] == FileReceived(sha256(b""))
    assert r.receive(EndOfFile(), 0.0) == []


def test_a_zero_byte_file_needs_end_of_file() -> None:
    empty = FileMeta("empty.txt", 0, sha256(b""), 4)
    r = new()
    r.receive(empty, 0.0)
    assert r.report(StoreOffset(1, 0), 0.0) == [FileReady(0)]
    assert r.receive(EndOfFile(), 0.0) == [Finish(1, empty)]


def test_a_short_or_long_legacy_transfer_is_a_size_mismatch() -> None:
    r = new()
    r.receive(LEGACY, 0.0)
    r.report(StoreOffset(1, 0), 0.0)
    r.receive(Chunk(b"hel"), 0.0)
    assert r.receive(EndOfFile(), 0.0)[0] == Discard(1, keep=True)
    assert r.state is R.IDLE
    r.receive(LEGACY, 0.0)
    r.report(StoreOffset(2, 0), 0.0)
    assert the_error(r.receive(Chunk(b"hello!"), 0.0)).code == Code.SIZE_MISMATCH
    assert r.state is R.DRAINING


def test_a_new_transfer_forgets_the_legacy_end_of_file_allowance() -> None:
    # Only the END_OF_FILE right after a completed legacy transfer is taken silently
    # (PROTOCOL.md 4.4); once another transfer has opened, one is refused again.
    r = receiver_in(R.IDLE, legacy_done=True)
    r.receive(META, 0.0)
    r.report(StoreHas(2), 0.0)
    with pytest.raises(RemoteProtocolError) as info:
        r.receive(EndOfFile(), 0.0)
    assert info.value.detail == "END_OF_FILE without an open transfer"
    r = receiver_in(R.IDLE, legacy_done=True)
    r.receive(FileMeta("../bad", 5, SHA, 4), 0.0)  # even a refused one
    with pytest.raises(RemoteProtocolError):
        r.receive(EndOfFile(), 0.0)


# ===================================================================== proof of possession


def test_a_receiver_that_does_not_prove_answers_file_ready_at_once() -> None:
    r = receiver_in(R.CHECKING)
    assert r.report(StoreOffset(1, 0), 0.0) == [FileReady(0)]
    assert r.report(Written(1, 1), 0.0) == [FileProgress(1, 5)]


def test_a_proving_receiver_asks_only_for_new_content_of_this_principal() -> None:
    # its own partial: resumed at once; an empty file: nothing to prove; owned: FILE_EXISTS
    r = receiver_in(R.CHECKING, prove=True)
    assert r.report(StoreOffset(1, 3), 0.0) == [FileReady(3)]
    r = receiver_in(R.CHECKING, prove=True)
    assert r.report(StoreHas(1), 0.0) == HELD  # owned: nothing to record again
    empty = FileMeta("empty.bin", 0, sha256(b""), chunk_size=4)
    r = new(prove=True)
    r.receive(empty, 0.0)
    assert r.report(StoreOffset(1, 0), 0.0) == [FileReady(0)]
    r = new(prove=True)
    r.receive(LEGACY, 0.0)
    assert r.report(StoreOffset(1, 0), 0.0) == []  # a legacy transfer streams at once


def test_the_request_is_the_challenge_drawn_for_the_announced_size() -> None:
    r = Receiver(LIMITS, prove_possession=True)
    asked: list[int] = []

    def challenge(size: int, limits: Limits) -> FileProofRequest:
        asked.append(size)
        return CHALLENGE

    r.proof.challenge = challenge
    r.receive(META, 0.0)
    r.report(StoreOffset(1, 0), 0.0)
    assert asked == [5]


def test_a_proving_receiver_records_what_the_principal_sent() -> None:
    r = receiver_in(R.CHECKING, prove=True)
    r.report(StoreOffset(1, 5), 0.0)  # its own partial holds every byte
    r.receive(EndOfFile(), 0.0)
    assert r.report(Stored(1, SHA), 0.0) == [RecordOwnership(1, SHA), *STORED]


def test_a_wrong_or_missing_proof_gets_the_bytes_sent_from_zero() -> None:
    r = receiver_in(R.CHECKING, proved=True)
    assert r.report(StoredRanges(1, sha256(b"another copy")), 0.0) == [FileReady(0)]
    assert r.state is R.RECEIVING
    assert r.receive(Chunk(b"hell"), 0.0) == [Append(1, b"hell")]
    # the same when the content is not held at all
    r = receiver_in(R.CHECKING, proved=True)
    assert r.report(StoredRanges(1, None), 0.0) == [FileReady(0)]


def test_one_proof_per_transfer_and_none_after_the_deadline() -> None:
    for setup in ({"proved": True}, {"late_proof": True}):
        r = receiver_in(R.CHECKING if "proved" in setup else R.RECEIVING, **setup)  # type: ignore[arg-type]
        before = state_of(r)
        with pytest.raises(RemoteProtocolError) as info:
            r.receive(FileProof(PROOF), 0.0)  # a second answer, or one after FILE_READY::0
        assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
        assert state_of(r) == before
    r = receiver_in(R.CHECKING, proved=True)
    r.report(StoredRanges(1, None), 0.0)
    with pytest.raises(RemoteProtocolError):
        r.receive(FileProof(PROOF), 0.0)  # and after the verdict
    assert (r.state, r.received) == (R.RECEIVING, 0)


def test_late_proof_reports_are_dropped() -> None:
    r = receiver_in(R.PROVING)
    r.receive(FileCancel(), 0.0)
    r.receive(META, 0.0)  # transfer 2
    for stale in (ProofTimedOut(1), StoredRanges(1, PROOF)):
        assert r.report(stale, 0.0) == [Note(f"dropped {type(stale).__name__} of transfer 1")]
    assert r.state is R.CHECKING
    # a deadline that passes after the proof settled is dropped too
    r = receiver_in(R.CHECKING, proved=True)
    r.report(StoredRanges(1, PROOF), 0.0)
    assert r.report(ProofTimedOut(1), 0.0) == [Note("dropped ProofTimedOut of transfer 1")]
    assert r.state is R.IDLE
