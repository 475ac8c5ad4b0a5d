"""The file-transfer state machines: every row of both tables, every pair outside them,
the receiver's and the sender's behaviours, name checks, and the two machines paired
through the codec against an in-memory store (with dropped connections and resumes)."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections import deque

import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from protocol import ErrorCode, LocalProtocolError, RemoteProtocolError, decode, encode
from protocol.errors import TransferErrorCode
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
from protocol.transfer import (
    PROGRESS_INTERVAL_S,
    RECEIVER_INTERNAL_EVENTS,
    RECEIVER_PEER_EVENTS,
    RECEIVER_TRANSITIONS,
    SENDER_LOCAL_EVENTS,
    SENDER_PEER_EVENTS,
    SENDER_TRANSITIONS,
    Append,
    CheckStore,
    Discard,
    Finish,
    Note,
    ReceiverState,
    Send,
    SenderState,
    Stored,
    StoreFailed,
    StoreHas,
    StoreOffset,
    TransferOutcome,
    TransferReceiver,
    TransferSender,
    check_name,
)

R = ReceiverState
S = SenderState
Code = TransferErrorCode


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


DATA = b"hello"
SHA = sha256(DATA)
OTHER_SHA = sha256(b"something else")
META = FileMeta("hello.txt", len(DATA), SHA, chunk_size=4)
LEGACY = FileMetaLegacy("hello.txt", len(DATA))
MAX_SIZE = 1000
MAX_CHUNK = 64


def shape(effects: list) -> list:
    """Effects with each TRANSFER_ERROR reduced to ("error", code) and each Note to
    ("note",) (their texts are prose)."""
    out: list = []
    for effect in effects:
        if isinstance(effect, Send) and isinstance(effect.message, TransferError):
            out.append(("error", effect.message.code))
        elif isinstance(effect, Note):
            out.append(("note",))
        else:
            out.append(effect)
    return out


def the_error(effects: list) -> TransferError:
    errors = [
        e.message for e in effects if isinstance(e, Send) and isinstance(e.message, TransferError)
    ]
    assert len(errors) == 1, effects
    return errors[0]


# =================================================================== receiver: the table


def new_receiver() -> TransferReceiver:
    return TransferReceiver(max_size=MAX_SIZE, max_chunk_size=MAX_CHUNK)


def receiver_in(
    state: ReceiverState, *, received: int = 3, legacy_done: bool = False
) -> TransferReceiver:
    """A receiver driven into ``state`` through receive()/report() only.

    RECEIVING holds ``received`` of DATA's 5 bytes; IDLE with ``legacy_done`` comes
    right after a completed legacy transfer (before its trailing END_OF_FILE).
    """
    r = new_receiver()
    if state is R.IDLE and legacy_done:
        r.receive(LEGACY)
        assert r.report(StoreOffset(0)) == []
        r.receive(Chunk(b"hell"))
        assert r.receive(Chunk(b"o")) == [Append(b"o"), Finish(LEGACY)]
        r.report(Stored(SHA))
    elif state is R.CHECKING:
        r.receive(META)
    elif state is R.RECEIVING:
        r.receive(META)
        r.report(StoreOffset(received))
    elif state is R.VERIFYING:
        r.receive(META)
        r.report(StoreOffset(len(DATA)))
        r.receive(EndOfFile())
    elif state is R.DRAINING:
        r.receive(META)
        r.report(StoreOffset(3))
        r.receive(Chunk(b"abc"))  # 6 > 5 bytes: aborted
    assert r.state is state
    return r


RECEIVER_SAMPLES: dict[type, object] = {
    FileMeta: META,
    FileMetaLegacy: LEGACY,
    Chunk: Chunk(b"ab"),
    EndOfFile: EndOfFile(),
    FileCancel: FileCancel(),
    StoreHas: StoreHas(),
    StoreOffset: StoreOffset(0),
    Stored: Stored(SHA),
    StoreFailed: StoreFailed(Code.DISK_FULL, "full"),
}

#: How each row is reached, and the effects it must produce.
RECEIVER_ROWS: dict[tuple[ReceiverState, type], tuple[dict, list]] = {
    (R.IDLE, FileMeta): ({}, [CheckStore(META)]),
    (R.IDLE, FileMetaLegacy): ({}, [CheckStore(LEGACY)]),
    (R.IDLE, EndOfFile): ({"legacy_done": True}, []),
    (R.IDLE, FileCancel): ({}, [("error", "CANCELLED")]),
    (R.DRAINING, FileMeta): ({}, [CheckStore(META)]),
    (R.DRAINING, FileMetaLegacy): ({}, [CheckStore(LEGACY)]),
    (R.DRAINING, Chunk): ({}, []),
    (R.DRAINING, EndOfFile): ({}, []),
    (R.DRAINING, FileCancel): ({}, [("error", "CANCELLED")]),
    (R.CHECKING, StoreHas): ({}, [Send(FileExists(SHA))]),
    (R.CHECKING, StoreOffset): ({}, [Send(FileReady(0))]),
    (R.CHECKING, StoreFailed): ({}, [("error", "DISK_FULL")]),
    (R.RECEIVING, Chunk): ({}, [Append(b"ab")]),
    (R.RECEIVING, EndOfFile): ({"received": 5}, [Finish(META)]),
    (R.RECEIVING, FileCancel): ({}, [Discard(keep=True), ("note",), ("error", "CANCELLED")]),
    (R.RECEIVING, StoreFailed): ({}, [Discard(keep=True), ("error", "DISK_FULL")]),
    (R.VERIFYING, Stored): ({}, [Send(FileReceived(SHA))]),
    (R.VERIFYING, StoreFailed): ({}, [("error", "DISK_FULL")]),
}


def fire_receiver(r: TransferReceiver, event: object) -> list:
    if isinstance(event, RECEIVER_PEER_EVENTS):
        return r.receive(event)  # type: ignore[arg-type]
    return r.report(event)  # type: ignore[arg-type]


def test_the_receiver_rows_here_are_exactly_the_table() -> None:
    assert set(RECEIVER_ROWS) == set(RECEIVER_TRANSITIONS)
    for state, event_type in RECEIVER_TRANSITIONS:
        assert state in R
        assert event_type in (*RECEIVER_PEER_EVENTS, *RECEIVER_INTERNAL_EVENTS)
    assert set(RECEIVER_SAMPLES) == {*RECEIVER_PEER_EVENTS, *RECEIVER_INTERNAL_EVENTS}


@pytest.mark.parametrize(
    ("state", "event_type"), sorted(RECEIVER_TRANSITIONS, key=lambda k: (k[0], k[1].__name__))
)
def test_every_receiver_row(state: ReceiverState, event_type: type) -> None:
    setup, expected = RECEIVER_ROWS[(state, event_type)]
    r = receiver_in(state, **setup)
    effects = fire_receiver(r, RECEIVER_SAMPLES[event_type])
    assert r.state is RECEIVER_TRANSITIONS[(state, event_type)]
    assert shape(effects) == expected


RECEIVER_MISSING = [
    (s, e)
    for s, e in itertools.product(R, [*RECEIVER_PEER_EVENTS, *RECEIVER_INTERNAL_EVENTS])
    if (s, e) not in RECEIVER_TRANSITIONS
]


@pytest.mark.parametrize(("state", "event_type"), RECEIVER_MISSING)
def test_every_receiver_pair_outside_the_table_is_refused_and_changes_nothing(
    state: ReceiverState, event_type: type
) -> None:
    r = receiver_in(state)
    before = (r.state, r.meta, r.received, r.last_stored)
    event = RECEIVER_SAMPLES[event_type]
    if event_type in RECEIVER_PEER_EVENTS:
        with pytest.raises(RemoteProtocolError) as info:
            r.receive(event)  # type: ignore[arg-type]
        assert type(info.value) is RemoteProtocolError
        expected_code = (
            ErrorCode.UNEXPECTED_DATA if event_type is Chunk else ErrorCode.UNEXPECTED_MESSAGE
        )
    else:
        with pytest.raises(LocalProtocolError) as info:
            r.report(event)  # type: ignore[arg-type]
        assert type(info.value) is LocalProtocolError
        expected_code = ErrorCode.UNEXPECTED_MESSAGE
    assert info.value.code == expected_code
    assert (r.state, r.meta, r.received, r.last_stored) == before


def test_end_of_file_while_idle_is_refused_unless_a_legacy_transfer_just_ended() -> None:
    r = new_receiver()
    with pytest.raises(RemoteProtocolError) as info:
        r.receive(EndOfFile())
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert (r.state, r.meta, r.received) == (R.IDLE, None, 0)


def test_end_of_file_while_idle_is_refused_after_a_normal_transfer() -> None:
    r = receiver_in(R.VERIFYING)
    r.report(Stored(SHA))
    with pytest.raises(RemoteProtocolError):
        r.receive(EndOfFile())
    assert r.state is R.IDLE


def test_the_trailing_end_of_file_of_a_legacy_transfer_is_accepted_once() -> None:
    r = receiver_in(R.IDLE, legacy_done=True)
    assert r.receive(EndOfFile()) == []
    with pytest.raises(RemoteProtocolError):
        r.receive(EndOfFile())
    assert r.state is R.IDLE


def test_a_new_transfer_forgets_the_legacy_end_of_file_allowance() -> None:
    r = receiver_in(R.IDLE, legacy_done=True)
    r.receive(META)
    r.report(StoreHas())
    with pytest.raises(RemoteProtocolError):
        r.receive(EndOfFile())


def test_a_chunk_while_idle_is_unexpected_data() -> None:
    r = new_receiver()
    with pytest.raises(RemoteProtocolError) as info:
        r.receive(Chunk(b"x"))
    assert info.value.code == ErrorCode.UNEXPECTED_DATA
    assert (r.state, r.meta, r.received) == (R.IDLE, None, 0)


# =================================================================== receiver: behaviours


def test_file_meta_asks_the_store() -> None:
    r = new_receiver()
    assert not r.active
    assert r.receive(META) == [CheckStore(META)]
    assert (r.state, r.meta, r.received) == (R.CHECKING, META, 0)
    assert r.active


@pytest.mark.parametrize("offset", [0, 3, 5])
def test_store_offset_answers_file_ready_with_that_offset(offset: int) -> None:
    r = receiver_in(R.CHECKING)
    assert r.report(StoreOffset(offset)) == [Send(FileReady(offset))]
    assert (r.state, r.received) == (R.RECEIVING, offset)


@pytest.mark.parametrize("offset", [-1, 6])
def test_a_store_offset_outside_the_file_is_an_adapter_bug(offset: int) -> None:
    r = receiver_in(R.CHECKING)
    with pytest.raises(LocalProtocolError) as info:
        r.report(StoreOffset(offset))
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    assert (r.state, r.meta, r.received) == (R.CHECKING, META, 0)


def test_store_has_answers_file_exists_and_ends_the_transfer() -> None:
    r = receiver_in(R.CHECKING)
    assert r.report(StoreHas()) == [Send(FileExists(SHA))]
    assert (r.state, r.meta, r.received, r.last_stored) == (R.IDLE, None, 0, SHA)
    assert not r.active


def test_chunks_are_appended_in_order_and_counted() -> None:
    data = bytes(range(40))
    meta = FileMeta("n.bin", len(data), sha256(data), chunk_size=8)
    r = new_receiver()
    r.receive(meta)
    r.report(StoreOffset(0))
    pieces = [data[0:8], data[8:9], data[9:17], data[17:25], data[25:32], data[32:40]]
    appended = b""
    for piece in pieces:
        effects = r.receive(Chunk(piece))
        assert effects == [Append(piece)]
        appended += piece
        assert r.received == len(appended)
        assert r.state is R.RECEIVING
    assert appended == data
    assert r.receive(EndOfFile()) == [Finish(meta)]
    assert r.state is R.VERIFYING


def test_a_resumed_transfer_counts_from_the_offset() -> None:
    r = receiver_in(R.RECEIVING, received=3)
    assert r.receive(Chunk(b"lo")) == [Append(b"lo")]
    assert r.received == 5
    assert r.receive(EndOfFile()) == [Finish(META)]


def _progress(effects: list) -> list[FileProgress]:
    return [e.message for e in effects if isinstance(e, Send)]


def test_file_progress_is_paced_to_at_most_every_half_second() -> None:
    size = 100
    meta = FileMeta("p.bin", size, sha256(bytes(size)), chunk_size=1)
    r = new_receiver()
    r.receive(meta)
    r.report(StoreOffset(0))
    last: float | None = None
    start = 1000.0
    sent_at: list[float] = []
    for i in range(60):
        now = start + i * 0.1
        effects = r.receive(Chunk(b"\0"), now)
        assert effects[0] == Append(b"\0")
        progress = _progress(effects)
        assert all(isinstance(p, FileProgress) for p in progress)
        if progress:
            assert progress == [FileProgress(i + 1, size)]
            assert last is None or now - last >= PROGRESS_INTERVAL_S - 1e-9
            last = now
            sent_at.append(now)
        else:
            assert last is not None and now - last < PROGRESS_INTERVAL_S + 1e-9
    # 6 s of chunks: one progress frame at the start, then about one every 0.5-0.6 s.
    assert sent_at[0] == start
    assert 10 <= len(sent_at) <= 13
    assert all(b - a <= 0.6 + 1e-9 for a, b in itertools.pairwise(sent_at))


def test_file_progress_exact_cadence() -> None:
    size = 40
    meta = FileMeta("p.bin", size, sha256(bytes(size)), chunk_size=1)
    r = new_receiver()
    r.receive(meta)
    r.report(StoreOffset(0))
    with_progress = []
    for i in range(20):
        effects = r.receive(Chunk(b"\0"), i * 0.25)  # exact binary fractions
        if _progress(effects):
            assert _progress(effects) == [FileProgress(i + 1, size)]
            with_progress.append(i)
    assert with_progress == [2, 4, 6, 8, 10, 12, 14, 16, 18]


def test_no_file_progress_while_draining() -> None:
    r = receiver_in(R.DRAINING)
    for i in range(10):
        assert r.receive(Chunk(b"zz"), 100.0 + i) == []


def test_end_of_file_with_every_byte_finishes_then_stored_answers_file_received() -> None:
    r = receiver_in(R.RECEIVING, received=0)
    r.receive(Chunk(b"hell"))
    r.receive(Chunk(b"o"))
    assert r.receive(EndOfFile()) == [Finish(META)]
    assert r.state is R.VERIFYING and r.active
    assert r.report(Stored(SHA)) == [Send(FileReceived(SHA))]
    assert (r.state, r.meta, r.received, r.last_stored) == (R.IDLE, None, 0, SHA)


@pytest.mark.parametrize("received", [0, 3, 4])
def test_end_of_file_with_bytes_missing_is_a_size_mismatch_that_keeps_the_partial(
    received: int,
) -> None:
    r = receiver_in(R.RECEIVING, received=received)
    effects = r.receive(EndOfFile())
    assert shape(effects) == [Discard(keep=True), ("error", "SIZE_MISMATCH")]
    assert f"{5 - received} of 5" in the_error(effects).detail
    assert (r.state, r.meta, r.received) == (R.IDLE, None, 0)


def test_a_chunk_past_the_announced_size_aborts_then_the_rest_is_drained() -> None:
    r = receiver_in(R.RECEIVING, received=3)
    effects = r.receive(Chunk(b"abc"))
    assert shape(effects) == [Discard(keep=False), ("error", "SIZE_MISMATCH")]
    assert (r.state, r.meta, r.received) == (R.DRAINING, None, 0)
    assert not r.active
    for piece in (b"more", b"x" * (MAX_CHUNK * 4), b""):
        assert r.receive(Chunk(piece), 99.0) == []
        assert r.state is R.DRAINING
    assert r.receive(EndOfFile()) == []
    assert r.state is R.IDLE
    assert r.receive(META) == [CheckStore(META)]


def test_a_chunk_bigger_than_chunk_size_is_unexpected_data() -> None:
    r = receiver_in(R.RECEIVING, received=0)
    assert r.receive(Chunk(b"abcd")) == [Append(b"abcd")]  # exactly chunk_size: fine
    r2 = receiver_in(R.RECEIVING, received=0)
    effects = r2.receive(Chunk(b"abcde"))  # 5 fits the size but not chunk_size 4
    assert shape(effects) == [Discard(keep=False), ("error", "UNEXPECTED_DATA")]
    assert r2.state is R.DRAINING


def test_a_legacy_chunk_is_bounded_by_max_chunk_size() -> None:
    r = new_receiver()
    r.receive(FileMetaLegacy("big.bin", 500))
    r.report(StoreOffset(0))
    assert r.receive(Chunk(b"x" * MAX_CHUNK)) == [Append(b"x" * MAX_CHUNK)]
    effects = r.receive(Chunk(b"x" * (MAX_CHUNK + 1)))
    assert shape(effects) == [Discard(keep=False), ("error", "UNEXPECTED_DATA")]
    assert r.state is R.DRAINING


BAD_NAMES = [
    "",
    "a/b",
    "/etc/passwd",
    "a\\b",
    "..",
    ".",
    "a\x00b",
    "a\x1fb",
    "tab\there",
    "a\x7fb",
    "C:x",
    "c:",
    "Ｃ：x",  # full-width drive prefix, NFKC: "C:x"
    "ｃ:x",  # full-width letter only
    "C：x",  # full-width colon only
    "a/../b",
    "x" * 300,
    "é" * 128,  # 256 bytes of UTF-8
    "．．",  # NFKC: ".."
    "．",  # NFKC: "."
    "‥",  # two dot leader, NFKC: ".."
    "a／b",  # NFKC: "a/b"
    "a＼b",  # NFKC: "a\\b"
    "\ud800.bin",  # a lone surrogate is not UTF-8
]

GOOD_NAMES = [
    "données.zip",
    "模型.bin",
    "a b.zip",
    "name::with::colons.zip",
    ".hidden",
    "...",
    "a..b",
    "x" * 255,
    "é" * 127 + "x",  # 255 bytes of UTF-8
    "1:x",
    "１：x",  # NFKC: "1:x", a digit is no drive letter
    "file.tar.gz",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_check_name_accepts_ordinary_names(name: str) -> None:
    assert check_name(name) is None


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_name_refuses(name: str) -> None:
    reason = check_name(name)
    assert isinstance(reason, str) and reason


@pytest.mark.parametrize("name", [n for n in BAD_NAMES if n])
@pytest.mark.parametrize("legacy", [False, True])
def test_an_invalid_name_is_refused_before_anything_is_written(name: str, legacy: bool) -> None:
    meta = FileMetaLegacy(name, 5) if legacy else FileMeta(name, 5, SHA, 4)
    r = new_receiver()
    effects = r.receive(meta)
    assert shape(effects) == [("error", "INVALID_NAME")]
    assert not any(isinstance(e, CheckStore | Append | Finish) for e in effects)
    assert (r.meta, r.received) == (None, 0)
    assert not r.active
    assert r.receive(META) == [CheckStore(META)]  # the channel stays usable


def test_names_pass_through_the_codec_unchanged_before_being_refused() -> None:
    r = new_receiver()
    effects = r.receive(decode(encode(FileMeta("a／b", 5, SHA, 4))))
    assert shape(effects) == [("error", "INVALID_NAME")]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_a_good_name_opens_the_transfer(name: str) -> None:
    meta = FileMeta(name, 5, SHA, 4)
    r = new_receiver()
    assert r.receive(decode(encode(meta))) == [CheckStore(meta)]


def test_a_file_above_max_size_is_refused_before_any_byte() -> None:
    r = new_receiver()
    effects = r.receive(FileMeta("big.bin", MAX_SIZE + 1, SHA, 4))
    assert shape(effects) == [("error", "FILE_TOO_LARGE")]
    assert str(MAX_SIZE) in the_error(effects).detail
    assert not r.active and r.meta is None
    legacy = r.receive(FileMetaLegacy("big.bin", MAX_SIZE + 1))
    assert shape(legacy) == [("error", "FILE_TOO_LARGE")]
    at_limit = FileMeta("big.bin", MAX_SIZE, SHA, 4)
    assert r.receive(at_limit) == [CheckStore(at_limit)]


def test_a_chunk_size_above_the_limit_is_refused() -> None:
    r = new_receiver()
    effects = r.receive(FileMeta("f.bin", 5, SHA, MAX_CHUNK + 1))
    assert shape(effects) == [("error", "UNEXPECTED_DATA")]
    assert not r.active and r.meta is None
    at_limit = FileMeta("f.bin", 5, SHA, MAX_CHUNK)
    assert r.receive(at_limit) == [CheckStore(at_limit)]


def test_file_cancel_while_receiving_keeps_the_partial_notes_it_and_acknowledges() -> None:
    r = receiver_in(R.RECEIVING, received=3)
    effects = r.receive(FileCancel())
    # Acknowledged: the sender waits for it before it opens its next transfer.
    assert len(effects) == 3
    assert effects[0] == Discard(keep=True)
    assert isinstance(effects[1], Note)
    assert "3 bytes" in effects[1].text
    assert effects[2] == Send(TransferError(Code.CANCELLED, effects[1].text))
    assert (r.state, r.meta, r.received) == (R.IDLE, None, 0)
    assert r.receive(META) == [CheckStore(META)]


@pytest.mark.parametrize("state", [R.IDLE, R.DRAINING])
def test_file_cancel_without_an_open_transfer_is_acknowledged_all_the_same(
    state: ReceiverState,
) -> None:
    r = receiver_in(state)
    effects = r.receive(FileCancel())
    assert effects == [Send(TransferError(Code.CANCELLED, "no transfer open"))]
    assert (r.state, r.meta, r.received) == (R.IDLE, None, 0)
    assert r.receive(META) == [CheckStore(META)]


def test_each_file_cancel_gets_its_own_acknowledgement() -> None:
    r = receiver_in(R.RECEIVING)
    acks = [the_error(r.receive(FileCancel())) for _ in range(3)]
    assert [a.code for a in acks] == [Code.CANCELLED] * 3
    assert "3 bytes" in acks[0].detail
    assert acks[1:] == [TransferError(Code.CANCELLED, "no transfer open")] * 2
    assert r.state is R.IDLE


def test_the_acknowledgement_of_file_cancel_passes_through_the_codec() -> None:
    r = receiver_in(R.RECEIVING, received=3)
    ack = the_error(r.receive(decode(encode(FileCancel()))))
    frame = encode(ack)
    assert isinstance(frame, str) and frame.startswith("TRANSFER_ERROR::CANCELLED::")
    assert decode(frame) == ack


@pytest.mark.parametrize("keep", [True, False])
def test_disk_full_while_receiving_aborts_and_drains(keep: bool) -> None:
    r = receiver_in(R.RECEIVING, received=3)
    effects = r.report(StoreFailed(Code.DISK_FULL, "no space", keep_partial=keep))
    assert effects == [Discard(keep=keep), Send(TransferError(Code.DISK_FULL, "no space"))]
    assert (r.state, r.meta, r.received) == (R.DRAINING, None, 0)
    assert r.receive(Chunk(b"ab")) == []


def test_a_store_failure_while_checking_is_reported_without_discard() -> None:
    r = receiver_in(R.CHECKING)
    effects = r.report(StoreFailed(Code.CANCELLED, "busy"))
    assert effects == [Send(TransferError(Code.CANCELLED, "busy"))]
    assert (r.state, r.meta) == (R.IDLE, None)


def test_hash_mismatch_while_verifying_is_reported_and_ends_the_transfer() -> None:
    r = receiver_in(R.VERIFYING)
    effects = r.report(StoreFailed(Code.HASH_MISMATCH, "bad", keep_partial=False))
    assert effects == [Send(TransferError(Code.HASH_MISMATCH, "bad"))]
    assert (r.state, r.meta, r.received, r.last_stored) == (R.IDLE, None, 0, None)


def test_stored_under_another_sha256_than_announced_is_an_adapter_bug() -> None:
    r = receiver_in(R.VERIFYING)
    with pytest.raises(LocalProtocolError) as info:
        r.report(Stored(OTHER_SHA))
    assert type(info.value) is LocalProtocolError
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    assert (r.state, r.meta, r.received, r.last_stored) == (R.VERIFYING, META, 5, None)
    assert r.report(Stored(SHA)) == [Send(FileReceived(SHA))]  # the right one still ends it
    assert (r.state, r.last_stored) == (R.IDLE, SHA)


def test_a_legacy_transfer_is_stored_under_whatever_sha256_the_store_computed() -> None:
    r = new_receiver()
    r.receive(LEGACY)
    r.report(StoreOffset(0))
    r.receive(Chunk(b"hello"))
    assert r.report(Stored(OTHER_SHA)) == [Send(FileReceived(OTHER_SHA))]
    assert r.last_stored == OTHER_SHA


def test_a_legacy_transfer_finishes_on_size_and_accepts_a_trailing_end_of_file() -> None:
    r = new_receiver()
    assert r.receive(LEGACY) == [CheckStore(LEGACY)]
    assert r.report(StoreOffset(0)) == []  # no FILE_READY: chunks follow at once
    assert r.state is R.RECEIVING
    assert r.receive(Chunk(b"hel")) == [Append(b"hel")]
    assert r.receive(Chunk(b"lo")) == [Append(b"lo"), Finish(LEGACY)]
    assert r.state is R.VERIFYING
    assert r.report(Stored(SHA)) == [Send(FileReceived(SHA))]
    assert (r.state, r.last_stored) == (R.IDLE, SHA)
    assert r.receive(EndOfFile()) == []
    assert r.state is R.IDLE


def test_a_legacy_transfer_decoded_from_its_frame() -> None:
    r = new_receiver()
    meta = decode("FILE_META::report.pdf:5:gui")
    assert isinstance(meta, FileMetaLegacy)
    assert r.receive(meta) == [CheckStore(meta)]
    r.report(StoreOffset(0))
    assert r.receive(decode(b"hello")) == [Append(b"hello"), Finish(meta)]


def test_a_zero_byte_legacy_file_finishes_on_store_offset() -> None:
    empty = FileMetaLegacy("empty.txt", 0)
    r = new_receiver()
    r.receive(empty)
    assert r.report(StoreOffset(0)) == [Finish(empty)]
    assert r.state is R.VERIFYING
    assert r.report(Stored(sha256(b""))) == [Send(FileReceived(sha256(b"")))]
    assert r.receive(EndOfFile()) == []


def test_a_zero_byte_file_needs_end_of_file() -> None:
    empty = FileMeta("empty.txt", 0, sha256(b""), 4)
    r = new_receiver()
    r.receive(empty)
    assert r.report(StoreOffset(0)) == [Send(FileReady(0))]
    assert r.receive(EndOfFile()) == [Finish(empty)]


def test_a_short_legacy_transfer_is_a_size_mismatch() -> None:
    r = new_receiver()
    r.receive(LEGACY)
    r.report(StoreOffset(0))
    r.receive(Chunk(b"hel"))
    effects = r.receive(EndOfFile())
    assert shape(effects) == [Discard(keep=True), ("error", "SIZE_MISMATCH")]
    assert r.state is R.IDLE


def test_a_legacy_chunk_past_the_size_aborts() -> None:
    r = new_receiver()
    r.receive(LEGACY)
    r.report(StoreOffset(0))
    effects = r.receive(Chunk(b"hello!"))
    assert shape(effects) == [Discard(keep=False), ("error", "SIZE_MISMATCH")]
    assert r.state is R.DRAINING


# =================================================================== sender: the table

SENDER_SAMPLES: dict[type, Message] = {
    FileMeta: META,
    EndOfFile: EndOfFile(),
    FileReady: FileReady(0),
    FileExists: FileExists(SHA),
    FileProgress: FileProgress(2, 5),
    FileReceived: FileReceived(SHA),
    TransferError: TransferError(Code.DISK_FULL, "full"),
    FileCancel: FileCancel(),
}


def sender_in(state: SenderState) -> TransferSender:
    """A sender driven into ``state`` through send()/receive() only."""
    s = TransferSender()
    if state is not S.IDLE:
        s.send(META)
    if state in (S.SENDING, S.AWAIT_RECEIVED, S.CANCELLED):
        s.receive(FileReady(0))
    if state is S.AWAIT_RECEIVED:
        s.send(EndOfFile())
    if state is S.CANCELLED:
        s.cancel()
    assert s.state is state
    return s


def fire_sender(s: TransferSender, message: Message) -> object:
    if isinstance(message, SENDER_LOCAL_EVENTS):
        return s.send(message)  # type: ignore[arg-type]
    return s.receive(message)


def _snapshot(s: TransferSender) -> tuple:
    return (s.state, s.meta, s.offset, s.progress, s.outcome)


#: The outcome status each row leaves (None: the transfer stays open).
SENDER_ROWS: dict[tuple[SenderState, type], str | None] = {
    (S.IDLE, FileMeta): None,
    (S.AWAIT_READY, FileReady): None,
    (S.AWAIT_READY, FileExists): "exists",
    (S.SENDING, FileProgress): None,
    (S.SENDING, EndOfFile): None,
    (S.AWAIT_RECEIVED, FileProgress): None,
    (S.AWAIT_RECEIVED, FileReceived): "received",
    **{(s, TransferError): "failed" for s in (S.AWAIT_READY, S.SENDING, S.AWAIT_RECEIVED)},
    **{(s, FileCancel): "cancelled" for s in (S.AWAIT_READY, S.SENDING, S.AWAIT_RECEIVED)},
    # after our own FILE_CANCEL: late replies are absorbed (the state stays CANCELLED)
    # until TRANSFER_ERROR (the acknowledgement) or FILE_CANCEL returns to IDLE; the
    # outcome stays ours
    **{(S.CANCELLED, e): "cancelled" for e in SENDER_PEER_EVENTS},
}


def test_the_sender_rows_here_are_exactly_the_table() -> None:
    assert set(SENDER_ROWS) == set(SENDER_TRANSITIONS)
    assert set(SENDER_SAMPLES) == {*SENDER_LOCAL_EVENTS, *SENDER_PEER_EVENTS}


@pytest.mark.parametrize(
    ("state", "event_type"), sorted(SENDER_TRANSITIONS, key=lambda k: (k[0], k[1].__name__))
)
def test_every_sender_row(state: SenderState, event_type: type) -> None:
    s = sender_in(state)
    before = _snapshot(s)
    sample = SENDER_SAMPLES[event_type]
    if (state, event_type) == (S.CANCELLED, TransferError):
        # only TRANSFER_ERROR CANCELLED acknowledges a cancel (others are absorbed)
        sample = TransferError(Code.CANCELLED, "no transfer open")
    result = fire_sender(s, sample)
    assert s.state is SENDER_TRANSITIONS[(state, event_type)]
    status = SENDER_ROWS[(state, event_type)]
    if event_type in SENDER_LOCAL_EVENTS:
        assert result == SENDER_SAMPLES[event_type]
    else:
        assert result is None
    if status is None:
        assert s.outcome is None and s.active
    else:
        assert s.outcome is not None
        assert (s.outcome.status, s.outcome.sha256) == (status, SHA)
        assert not s.active
    if state is S.CANCELLED:  # nothing but the state may change
        assert _snapshot(s)[1:] == before[1:]
        assert s.outcome == TransferOutcome("cancelled", SHA, 0, Code.CANCELLED, "cancelled by us")


def test_the_sender_waits_for_the_acknowledgement_before_a_new_transfer() -> None:
    assert SENDER_TRANSITIONS[(S.CANCELLED, TransferError)] is S.IDLE
    assert SENDER_TRANSITIONS[(S.CANCELLED, FileCancel)] is S.IDLE
    for event in (FileReady, FileExists, FileProgress, FileReceived):
        assert SENDER_TRANSITIONS[(S.CANCELLED, event)] is S.CANCELLED
    assert (S.CANCELLED, FileMeta) not in SENDER_TRANSITIONS
    assert (S.CANCELLED, EndOfFile) not in SENDER_TRANSITIONS


SENDER_MISSING = [
    (s, e)
    for s, e in itertools.product(S, [*SENDER_LOCAL_EVENTS, *SENDER_PEER_EVENTS])
    if (s, e) not in SENDER_TRANSITIONS
]


@pytest.mark.parametrize(("state", "event_type"), SENDER_MISSING)
def test_every_sender_pair_outside_the_table_is_refused_and_changes_nothing(
    state: SenderState, event_type: type
) -> None:
    s = sender_in(state)
    before = _snapshot(s)
    message = SENDER_SAMPLES[event_type]
    if event_type in SENDER_LOCAL_EVENTS:
        with pytest.raises(LocalProtocolError) as info:
            s.send(message)  # type: ignore[arg-type]
        assert type(info.value) is LocalProtocolError
    else:
        with pytest.raises(RemoteProtocolError) as info:
            s.receive(message)
        assert type(info.value) is RemoteProtocolError
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert _snapshot(s) == before


@pytest.mark.parametrize("event_type", SENDER_PEER_EVENTS)
def test_late_replies_after_an_outcome_are_refused_and_keep_it(event_type: type) -> None:
    s = sender_in(S.AWAIT_RECEIVED)
    s.receive(FileReceived(SHA))
    before = _snapshot(s)
    with pytest.raises(RemoteProtocolError):
        s.receive(SENDER_SAMPLES[event_type])
    assert _snapshot(s) == before


# =================================================================== sender: outcomes


def test_file_meta_opens_a_transfer() -> None:
    s = TransferSender()
    assert not s.active and s.outcome is None
    assert s.send(META) is META
    assert (s.state, s.meta, s.offset, s.progress) == (S.AWAIT_READY, META, 0, (0, 5))


def test_file_exists_ends_with_status_exists() -> None:
    s = sender_in(S.AWAIT_READY)
    assert s.receive(FileExists(SHA.upper())) is None  # hex case does not matter
    assert s.outcome == TransferOutcome("exists", SHA, 0)
    assert s.state is S.IDLE


def test_file_exists_with_another_sha256_is_refused() -> None:
    s = sender_in(S.AWAIT_READY)
    before = _snapshot(s)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive(FileExists(OTHER_SHA))
    assert info.value.code == ErrorCode.MALFORMED_FRAME
    assert _snapshot(s) == before


@pytest.mark.parametrize("offset", [0, 3, 5])
def test_file_ready_records_the_offset(offset: int) -> None:
    s = sender_in(S.AWAIT_READY)
    assert s.receive(FileReady(offset)) is None
    assert (s.state, s.offset, s.progress) == (S.SENDING, offset, (offset, 5))
    s.send(EndOfFile())
    s.receive(FileReceived(SHA))
    assert s.outcome == TransferOutcome("received", SHA, offset)
    assert s.progress == (5, 5)


def test_file_ready_beyond_the_size_fails_and_answers_size_mismatch() -> None:
    s = sender_in(S.AWAIT_READY)
    effect = s.receive(FileReady(6))
    assert isinstance(effect, Send)
    assert isinstance(effect.message, TransferError)
    assert effect.message.code == Code.SIZE_MISMATCH
    assert s.outcome is not None
    assert (s.outcome.status, s.outcome.code) == ("failed", Code.SIZE_MISMATCH)
    assert s.state is S.IDLE


@pytest.mark.parametrize("state", [S.SENDING, S.AWAIT_RECEIVED])
def test_file_progress_updates_progress(state: SenderState) -> None:
    s = sender_in(state)
    assert s.receive(FileProgress(4, 5)) is None
    assert s.progress == (4, 5)
    assert s.state is state
    s.receive(FileProgress(5, 5))
    assert s.progress == (5, 5)


def test_file_received_with_the_right_sha256() -> None:
    s = sender_in(S.AWAIT_RECEIVED)
    assert s.receive(FileReceived(SHA)) is None
    assert s.outcome == TransferOutcome("received", SHA, 0)
    assert s.state is S.IDLE


def test_file_received_with_the_wrong_sha256_fails_and_answers_hash_mismatch() -> None:
    s = sender_in(S.AWAIT_RECEIVED)
    effect = s.receive(FileReceived(OTHER_SHA))
    assert isinstance(effect, Send)
    assert isinstance(effect.message, TransferError)
    assert effect.message.code == Code.HASH_MISMATCH
    assert s.outcome is not None
    assert (s.outcome.status, s.outcome.code) == ("failed", Code.HASH_MISMATCH)
    assert OTHER_SHA in s.outcome.detail
    assert s.state is S.IDLE


@pytest.mark.parametrize("state", [S.AWAIT_READY, S.SENDING, S.AWAIT_RECEIVED])
def test_transfer_error_fails_with_its_code_and_detail(state: SenderState) -> None:
    s = sender_in(state)
    s.receive(decode("TRANSFER_ERROR::DISK_FULL::no space left::really"))
    assert s.outcome == TransferOutcome("failed", SHA, 0, "DISK_FULL", "no space left::really")
    assert s.state is S.IDLE


@pytest.mark.parametrize("state", [S.AWAIT_READY, S.SENDING, S.AWAIT_RECEIVED])
def test_file_cancel_from_the_receiver(state: SenderState) -> None:
    s = sender_in(state)
    assert s.receive(FileCancel()) is None
    assert s.outcome is not None
    assert (s.outcome.status, s.outcome.code) == ("cancelled", Code.CANCELLED)
    assert s.state is S.IDLE


@pytest.mark.parametrize("state", [S.AWAIT_READY, S.SENDING, S.AWAIT_RECEIVED])
def test_cancel_sends_file_cancel_and_waits_for_the_acknowledgement(state: SenderState) -> None:
    s = sender_in(state)
    assert s.cancel() == FileCancel()
    assert s.outcome is not None
    assert (s.outcome.status, s.outcome.code) == ("cancelled", Code.CANCELLED)
    assert s.state is S.CANCELLED
    assert not s.active
    other = FileMeta("b.bin", 9, OTHER_SHA, 4)
    before = _snapshot(s)
    with pytest.raises(LocalProtocolError) as info:
        s.send(other)  # not before the receiver acknowledged
    assert type(info.value) is LocalProtocolError
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert _snapshot(s) == before
    assert s.receive(TransferError(Code.CANCELLED, "no transfer open")) is None
    assert s.state is S.IDLE
    assert s.outcome == before[4]  # the acknowledgement does not rewrite the outcome
    assert s.send(other) is other
    assert (s.state, s.meta, s.outcome) == (S.AWAIT_READY, other, None)


@pytest.mark.parametrize(
    "late",
    [
        FileReady(0),
        FileReady(99),  # would be beyond the size: still only absorbed
        FileExists(OTHER_SHA),
        FileProgress(3, 5),
        FileReceived(OTHER_SHA),
    ],
)
def test_late_replies_about_a_cancelled_transfer_are_absorbed(late: Message) -> None:
    s = sender_in(S.CANCELLED)
    before = _snapshot(s)
    assert s.receive(late) is None
    assert _snapshot(s) == before
    with pytest.raises(LocalProtocolError):
        s.send(META)  # still waiting for the acknowledgement
    assert _snapshot(s) == before


@pytest.mark.parametrize(
    "ack",
    [
        TransferError(Code.CANCELLED, "cancelled by the sender; 3 bytes kept for a resume"),
        TransferError(Code.CANCELLED, "no transfer open"),
        FileCancel(),  # the receiver cancelled too
    ],
)
def test_the_acknowledgement_ends_the_wait_and_keeps_our_outcome(ack: Message) -> None:
    s = sender_in(S.CANCELLED)
    before = _snapshot(s)
    assert s.receive(ack) is None
    assert _snapshot(s) == (S.IDLE, *before[1:])
    assert not s.active
    with pytest.raises(RemoteProtocolError):
        s.receive(ack)  # a second one is not expected
    assert s.send(META) is META


def test_forget_cancel_stops_waiting_for_an_acknowledgement_that_never_comes() -> None:
    s = sender_in(S.CANCELLED)
    s.receive(FileProgress(3, 5))  # absorbed
    before = _snapshot(s)
    s.forget_cancel()
    assert _snapshot(s) == (S.IDLE, *before[1:])
    other = FileMeta("b.bin", 9, OTHER_SHA, 4)
    assert s.send(other) is other
    assert s.state is S.AWAIT_READY


@pytest.mark.parametrize("state", [S.IDLE, S.AWAIT_READY, S.SENDING, S.AWAIT_RECEIVED])
def test_forget_cancel_outside_cancelled_is_refused_and_changes_nothing(
    state: SenderState,
) -> None:
    s = sender_in(state)
    before = _snapshot(s)
    with pytest.raises(LocalProtocolError) as info:
        s.forget_cancel()
    assert type(info.value) is LocalProtocolError
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert _snapshot(s) == before


def test_forget_cancel_twice_is_refused() -> None:
    s = sender_in(S.CANCELLED)
    s.forget_cancel()
    with pytest.raises(LocalProtocolError):
        s.forget_cancel()
    assert s.state is S.IDLE
    s2 = sender_in(S.CANCELLED)
    s2.receive(TransferError(Code.CANCELLED, "no transfer open"))
    with pytest.raises(LocalProtocolError):
        s2.forget_cancel()  # acknowledged already
    assert s2.state is S.IDLE


@pytest.mark.parametrize("state", list(S))
def test_active_is_false_only_in_idle_and_cancelled(state: SenderState) -> None:
    assert sender_in(state).active is (state not in (S.IDLE, S.CANCELLED))


def test_cancel_without_a_transfer_is_refused() -> None:
    s = TransferSender()
    with pytest.raises(LocalProtocolError):
        s.cancel()
    assert _snapshot(s) == (S.IDLE, None, 0, (0, 0), None)
    done = sender_in(S.AWAIT_RECEIVED)
    done.receive(FileReceived(SHA))
    for s in (done, sender_in(S.CANCELLED)):
        before = _snapshot(s)
        with pytest.raises(LocalProtocolError):
            s.cancel()
        assert _snapshot(s) == before


def test_a_second_transfer_starts_clean() -> None:
    s = sender_in(S.SENDING)
    s.receive(FileProgress(4, 5))
    s.receive(TransferError(Code.DISK_FULL, "full"))
    other = FileMeta("b.bin", 9, OTHER_SHA, 4)
    s.send(other)
    assert (s.state, s.meta, s.offset, s.progress, s.outcome) == (
        S.AWAIT_READY,
        other,
        0,
        (0, 9),
        None,
    )


# =================================================================== edges between the two


@pytest.mark.parametrize("meta", [FileMetaLegacy("../evil.sh", 5), FileMetaLegacy("big", 5000)])
def test_chunks_after_a_refused_legacy_file_meta_are_drained_silently(
    meta: FileMetaLegacy,
) -> None:
    r = new_receiver()
    assert len(shape(r.receive(meta))) == 1
    assert r.state is R.DRAINING  # a legacy sender streams without waiting
    assert r.receive(Chunk(b"hello")) == []
    assert r.receive(EndOfFile()) == []
    assert r.state is R.IDLE


def test_a_refused_file_meta_returns_to_idle() -> None:
    r = new_receiver()
    r.receive(FileMeta("../evil.sh", 5, SHA, 4))
    assert r.state is R.IDLE  # no chunk comes before FILE_READY
    with pytest.raises(RemoteProtocolError):
        r.receive(Chunk(b"x"))


def test_a_cancel_round_trip_through_the_codec_raises_nothing() -> None:
    sender, receiver = TransferSender(), new_receiver()
    receiver.receive(decode(encode(sender.send(META))))
    (ready,) = receiver.report(StoreOffset(0))
    assert isinstance(ready, Send)
    sender.receive(decode(encode(ready.message)))
    progress = receiver.receive(decode(encode(Chunk(b"hel"))), 10.0)
    assert shape(progress) == [Append(b"hel"), Send(FileProgress(3, 5))]
    replies = receiver.receive(decode(encode(sender.cancel())))
    assert (receiver.state, sender.state) == (R.IDLE, S.CANCELLED)
    assert shape(replies) == [Discard(keep=True), ("note",), ("error", "CANCELLED")]
    (late,) = progress[1:]  # the progress was already on its way
    assert isinstance(late, Send)
    sender.receive(decode(encode(late.message)))
    assert sender.state is S.CANCELLED  # absorbed: still waiting
    assert sender.progress == (0, 5)  # late frames change nothing
    ack = the_error(replies)
    assert sender.receive(decode(encode(ack))) is None
    assert sender.state is S.IDLE
    assert sender.outcome is not None
    assert (sender.outcome.status, sender.outcome.detail) == ("cancelled", "cancelled by us")
    receiver.receive(decode(encode(sender.send(META))))  # and both can start again
    assert receiver.report(StoreOffset(3)) == [Send(FileReady(3))]


@pytest.mark.parametrize("frame", [EndOfFile(), META, LEGACY, Chunk(b"x")])
@pytest.mark.parametrize("state", list(S))
def test_the_sender_refuses_frames_only_a_sender_sends(frame: Message, state: SenderState) -> None:
    s = sender_in(state)
    before = _snapshot(s)
    with pytest.raises(RemoteProtocolError) as info:
        s.receive(frame)
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert _snapshot(s) == before


def test_store_has_for_a_legacy_transfer_is_a_local_protocol_error() -> None:
    r = new_receiver()
    r.receive(LEGACY)
    with pytest.raises(LocalProtocolError) as info:
        r.report(StoreHas())
    assert info.value.code == ErrorCode.INTERNAL_ERROR
    assert (r.state, r.meta, r.last_stored) == (R.CHECKING, LEGACY, None)


def test_a_ready_for_a_cancelled_transfer_is_not_taken_for_the_next_one() -> None:
    """Frames carry no transfer identity: a FILE_READY already on its way for a
    cancelled transfer must not be taken as the answer to the next FILE_META."""
    file_a, file_b = b"A" * 10, b"B" * 10
    meta_a = FileMeta("a.bin", 10, sha256(file_a), 4)
    meta_b = FileMeta("b.bin", 10, sha256(file_b), 4)
    sender, receiver = TransferSender(), new_receiver()
    receiver.receive(decode(encode(sender.send(meta_a))))
    (ready_a,) = receiver.report(StoreOffset(6))  # six bytes of A were held
    assert ready_a == Send(FileReady(6))
    # FILE_READY 6 is on its way when the sender cancels A and wants to open B at once.
    cancel = encode(sender.cancel())
    with pytest.raises(LocalProtocolError):
        sender.send(meta_b)  # refused: the acknowledgement has not come
    assert (sender.state, sender.meta) == (S.CANCELLED, meta_a)
    assert sender.receive(decode(encode(ready_a.message))) is None  # stale: absorbed
    assert (sender.state, sender.offset) == (S.CANCELLED, 0)
    with pytest.raises(LocalProtocolError):
        sender.send(meta_b)  # a stale FILE_READY is no acknowledgement
    assert sender.state is S.CANCELLED
    replies = receiver.receive(decode(cancel))
    assert receiver.state is R.IDLE
    assert replies[0] == Discard(keep=True)  # A's six bytes stay for a resume
    ack = the_error(replies)
    assert ack.code == Code.CANCELLED and "6 bytes" in ack.detail
    assert sender.receive(decode(encode(ack))) is None
    assert sender.state is S.IDLE
    # Only now does B open, and the receiver's answer about B is the one taken.
    assert receiver.receive(decode(encode(sender.send(meta_b)))) == [CheckStore(meta_b)]
    (ready_b,) = receiver.report(StoreOffset(0))  # nothing of B is held
    assert ready_b == Send(FileReady(0))
    sender.receive(decode(encode(ready_b.message)))
    assert (sender.state, sender.meta, sender.offset) == (S.SENDING, meta_b, 0)
    assert sender.outcome is None


# =================================================================== paired machines


class ModelStore:
    """What the receiving side's store holds: partial bytes (resumable) and stored
    objects, both keyed by sha256."""

    def __init__(self) -> None:
        self.partials: dict[str, bytes] = {}
        self.objects: dict[str, bytes] = {}
        self.stores = 0


class ReceiverSide:
    """A receiver machine whose effects run against the model store, one frame at a
    time (the real adapter also finishes CheckStore and Finish before the next frame)."""

    def __init__(self, store: ModelStore, outbox: deque) -> None:
        self.machine = TransferReceiver(max_size=10_000, max_chunk_size=4096)
        self.store = store
        self.outbox = outbox
        self.sha: str | None = None
        self.sent: list[Message] = []

    def frame(self, frame: str | bytes, now: float) -> None:
        self.run(self.machine.receive(decode(frame), now))

    def run(self, effects: list) -> None:
        for effect in effects:
            match effect:
                case Send(message=message):
                    self.sent.append(message)
                    self.outbox.append(encode(message))
                case CheckStore(meta=meta):
                    assert isinstance(meta, FileMeta)
                    if meta.sha256 in self.store.objects:
                        self.run(self.machine.report(StoreHas()))
                    else:
                        self.sha = meta.sha256
                        held = self.store.partials.setdefault(meta.sha256, b"")
                        self.run(self.machine.report(StoreOffset(len(held))))
                case Append(data=data):
                    assert self.sha is not None
                    self.store.partials[self.sha] += data
                case Finish(meta=meta):
                    assert self.sha is not None
                    data = self.store.partials.pop(self.sha)
                    self.sha = None
                    if sha256(data) == meta.sha256:
                        self.store.objects[meta.sha256] = data
                        self.store.stores += 1
                        self.run(self.machine.report(Stored(meta.sha256)))
                    else:
                        failed = StoreFailed(Code.HASH_MISMATCH, "digest differs", False)
                        self.run(self.machine.report(failed))
                case Discard(keep=keep):
                    if not keep and self.sha is not None:
                        self.store.partials.pop(self.sha, None)
                    self.sha = None
                case Note():
                    pass
                case _:  # pragma: no cover
                    raise AssertionError(effect)


class SenderSide:
    """A sender machine that streams the file in random chunks from the given offset."""

    def __init__(self, file: bytes, meta: FileMeta, outbox: deque, rng: random.Random) -> None:
        self.machine = TransferSender()
        self.file = file
        self.outbox = outbox
        self.rng = rng
        self.cursor: int | None = None
        self.bytes_sent = 0
        self.chunks_sent = 0
        outbox.append(encode(self.machine.send(meta)))

    def frame(self, frame: str | bytes) -> None:
        message = decode(frame)
        effect = self.machine.receive(message)
        if isinstance(effect, Send):
            self.outbox.append(encode(effect.message))
        if isinstance(message, FileReady) and self.machine.state is S.SENDING:
            self.cursor = self.machine.offset

    def push(self) -> None:
        assert self.cursor is not None
        if self.machine.state is not S.SENDING:
            self.cursor = None
            return
        meta = self.machine.meta
        assert meta is not None
        if self.cursor < len(self.file):
            n = self.rng.randint(1, meta.chunk_size)
            piece = self.file[self.cursor : self.cursor + n]
            self.outbox.append(encode(Chunk(piece)))
            self.cursor += len(piece)
            self.bytes_sent += len(piece)
            self.chunks_sent += 1
        else:
            self.outbox.append(encode(self.machine.send(EndOfFile())))
            self.cursor = None


class Connection:
    def __init__(self, store: ModelStore, file: bytes, meta: FileMeta, rng: random.Random) -> None:
        self.to_receiver: deque = deque()
        self.to_sender: deque = deque()
        self.receiver = ReceiverSide(store, self.to_sender)
        self.sender = SenderSide(file, meta, self.to_receiver, rng)


def run_transfer(
    file: bytes,
    meta: FileMeta,
    store: ModelStore,
    rng: random.Random,
    drops: int,
    drop_rate: float,
) -> tuple[Connection, list[Connection]]:
    """Run sender and receiver until the sender settles, dropping the connection up to
    ``drops`` times; check the invariants after every step. Returns the last connection
    and every connection used."""
    good = meta.sha256 == sha256(file)
    conn = Connection(store, file, meta, rng)
    connections = [conn]
    clock = 0.0
    offsets: list[int] = []
    seen = 0
    for _ in range(100_000):
        if drops and rng.random() < drop_rate:
            drops -= 1
            conn = Connection(store, file, meta, rng)  # a reconnection: the store stays
            connections.append(conn)
            seen = 0
            continue
        actions = []
        if conn.to_receiver:
            actions.append("receiver")
        if conn.to_sender:
            actions.append("sender")
        if conn.sender.cursor is not None:
            actions.append("push")
        if not actions:
            break
        action = rng.choice(actions)
        if action == "receiver":
            clock += 0.1
            conn.receiver.frame(conn.to_receiver.popleft(), clock)
        elif action == "sender":
            conn.sender.frame(conn.to_sender.popleft())
        else:
            conn.sender.push()

        # -- invariants
        for key, held in store.partials.items():
            assert key == meta.sha256
            assert file.startswith(held), "the store holds something other than a prefix"
        machine = conn.receiver.machine
        if machine.state is R.RECEIVING:
            assert machine.received == len(store.partials[meta.sha256])
        for message in conn.receiver.sent[seen:]:
            if isinstance(message, FileReady):
                assert not offsets or not good or message.offset >= offsets[-1]
                assert message.offset <= len(file)
                offsets.append(message.offset)
            elif isinstance(message, FileReceived):
                assert good
                assert message.sha256 == sha256(file)
                assert store.objects[message.sha256] == file
            elif isinstance(message, FileProgress):
                assert message.received <= message.size == len(file)
            elif isinstance(message, TransferError):
                assert not good and message.code == Code.HASH_MISMATCH
        seen = len(conn.receiver.sent)
    else:  # pragma: no cover
        raise AssertionError("the transfer never settled")
    return conn, connections


def received_count(connections: list[Connection]) -> int:
    return sum(isinstance(m, FileReceived) for conn in connections for m in conn.receiver.sent)


@settings(max_examples=200, deadline=None)
@given(
    file=st.binary(max_size=5000),
    chunk_size=st.integers(1, 1024),
    drops=st.integers(0, 3),
    drop_rate=st.sampled_from([0.0, 0.01, 0.05, 0.3]),
    rng=st.randoms(use_true_random=False),
)
def test_sender_and_receiver_through_the_codec_survive_reconnections(
    file: bytes, chunk_size: int, drops: int, drop_rate: float, rng: random.Random
) -> None:
    store = ModelStore()
    sha = sha256(file)
    meta = FileMeta("data.bin", len(file), sha, chunk_size)
    last, connections = run_transfer(file, meta, store, rng, drops, drop_rate)

    outcome = last.sender.machine.outcome
    assert last.sender.machine.state is S.IDLE
    assert last.receiver.machine.state is R.IDLE
    assert outcome is not None and outcome.status in ("received", "exists")
    assert store.objects == {sha: file}
    assert store.partials == {}
    assert store.stores == 1
    assert received_count(connections) == 1
    if outcome.status == "received":
        # verified in this very connection, from the offset the receiver asked for
        assert received_count([last]) == 1
        assert last.sender.bytes_sent == len(file) - outcome.offset
    else:
        # stored earlier, but the FILE_RECEIVED was lost with the connection
        assert received_count([last]) == 0
        assert last.sender.bytes_sent == 0 and last.sender.chunks_sent == 0
        assert last.receiver.sent == [FileExists(sha)]


@settings(max_examples=100, deadline=None)
@given(
    file=st.binary(max_size=2000),
    chunk_size=st.integers(1, 512),
    drops=st.integers(0, 2),
    drop_rate=st.sampled_from([0.0, 0.05, 0.3]),
    rng=st.randoms(use_true_random=False),
)
def test_a_wrong_sha256_never_yields_file_received(
    file: bytes, chunk_size: int, drops: int, drop_rate: float, rng: random.Random
) -> None:
    store = ModelStore()
    wrong = sha256(file + b"!")
    meta = FileMeta("data.bin", len(file), wrong, chunk_size)
    last, connections = run_transfer(file, meta, store, rng, drops, drop_rate)
    outcome = last.sender.machine.outcome
    assert outcome is not None
    assert (outcome.status, outcome.code) == ("failed", Code.HASH_MISMATCH)
    assert received_count(connections) == 0
    assert store.objects == {} and store.partials == {}


@settings(max_examples=50, deadline=None)
@given(
    file=st.binary(max_size=5000),
    chunk_size=st.integers(1, 1024),
    rng=st.randoms(use_true_random=False),
)
def test_content_already_held_is_answered_file_exists_and_no_chunk_is_sent(
    file: bytes, chunk_size: int, rng: random.Random
) -> None:
    store = ModelStore()
    sha = sha256(file)
    store.objects[sha] = file
    meta = FileMeta("again.bin", len(file), sha, chunk_size)
    last, connections = run_transfer(file, meta, store, rng, 0, 0.0)
    assert len(connections) == 1
    assert last.sender.machine.outcome == TransferOutcome("exists", sha, 0)
    assert last.sender.chunks_sent == 0 and last.sender.bytes_sent == 0
    assert last.receiver.sent == [FileExists(sha)]
    assert last.receiver.machine.last_stored == sha
    assert store.stores == 0 and store.partials == {}


@settings(max_examples=200, deadline=None)
@given(
    file_a=st.binary(max_size=3000),
    file_b=st.binary(max_size=3000),
    chunk_size=st.integers(1, 512),
    held=st.integers(0, 3000),
    a_stored=st.booleans(),
    cancel_at=st.integers(0, 200),
    rng=st.randoms(use_true_random=False),
)
def test_a_cancelled_transfer_never_leaks_into_the_next_one(
    file_a: bytes,
    file_b: bytes,
    chunk_size: int,
    held: int,
    a_stored: bool,
    cancel_at: int,
    rng: random.Random,
) -> None:
    """A then B on one connection; the sender cancels A at a random step (frames in both
    directions still in flight) and opens B as soon as the receiver has acknowledged.
    B must be answered, sent and stored as B, from B's own offset (0), whatever of A
    was still on its way."""
    sha_a, sha_b = sha256(file_a), sha256(file_b)
    assume(sha_a != sha_b)
    meta_a = FileMeta("a.bin", len(file_a), sha_a, chunk_size)
    meta_b = FileMeta("b.bin", len(file_b), sha_b, chunk_size)
    store = ModelStore()
    if a_stored:
        store.objects[sha_a] = file_a
    else:
        store.partials[sha_a] = file_a[: min(held, len(file_a))]  # A resumes there
    conn = Connection(store, file_a, meta_a, rng)
    sender, receiver = conn.sender, conn.receiver
    cancelled = b_open = False
    b_sent_from = 0
    for step in range(100_000):
        machine = sender.machine
        if not cancelled and not b_open and step >= cancel_at and machine.active:
            conn.to_receiver.append(encode(machine.cancel()))
            sender.cursor = None
            cancelled = True
        if machine.state is S.CANCELLED:
            with pytest.raises(LocalProtocolError):
                machine.send(meta_b)  # not before the acknowledgement
            assert machine.state is S.CANCELLED
        if not b_open and machine.state is S.IDLE:
            assert machine.outcome is not None
            sender.file = file_b
            b_sent_from = sender.bytes_sent
            conn.to_receiver.append(encode(machine.send(meta_b)))
            b_open = True
        actions = []
        if conn.to_receiver:
            actions.append("receiver")
        if conn.to_sender:
            actions.append("sender")
        if sender.cursor is not None:
            actions.append("push")
        if not actions:
            break
        action = rng.choice(actions)
        if action == "receiver":
            receiver.frame(conn.to_receiver.popleft(), step * 0.1)
        elif action == "sender":
            sender.frame(conn.to_sender.popleft())
        else:
            sender.push()
        for key, part in store.partials.items():
            assert key in (sha_a, sha_b)
            assert (file_a if key == sha_a else file_b).startswith(part)
        if b_open and machine.state is S.SENDING:
            assert (machine.meta, machine.offset) == (meta_b, 0)
    else:  # pragma: no cover
        raise AssertionError("the transfers never settled")

    assert b_open
    assert (sender.machine.state, receiver.machine.state) == (S.IDLE, R.IDLE)
    assert sender.machine.outcome == TransferOutcome("received", sha_b, 0)
    assert sender.bytes_sent - b_sent_from == len(file_b)
    assert store.objects[sha_b] == file_b
    assert sha_b not in store.partials
    assert set(store.objects) <= {sha_a, sha_b}
    if sha_a in store.objects:
        assert store.objects[sha_a] == file_a
    # exactly one acknowledgement per FILE_CANCEL, and no error about anything else
    errors = [m for m in receiver.sent if isinstance(m, TransferError)]
    assert [e.code for e in errors] == ([Code.CANCELLED] if cancelled else [])
    assert receiver.sent[-1] == FileReceived(sha_b)


def test_an_error_about_the_cancelled_transfer_is_not_taken_for_the_acknowledgement() -> None:
    file_b = b"B" * 10
    too_large = FileMeta("a.bin", MAX_SIZE + 1, SHA, 4)
    meta_b = FileMeta("b.bin", 10, sha256(file_b), 4)
    sender, receiver = TransferSender(), new_receiver()
    # The user cancels A before any answer; the receiver refuses A's FILE_META.
    to_receiver = [encode(sender.send(too_large)), encode(sender.cancel())]
    to_sender = [
        encode(e.message)
        for frame in to_receiver
        for e in receiver.receive(decode(frame))
        if isinstance(e, Send)
    ]
    refusal, ack = (decode(f) for f in to_sender)
    assert isinstance(refusal, TransferError) and refusal.code == Code.FILE_TOO_LARGE
    assert ack == TransferError(Code.CANCELLED, "no transfer open")
    sender.receive(refusal)
    assert sender.state is S.CANCELLED  # fails: the refusal ended the wait
    sender.receive(ack)
    assert receiver.receive(decode(encode(sender.send(meta_b)))) == [CheckStore(meta_b)]
    (ready_b,) = receiver.report(StoreOffset(0))
    assert isinstance(ready_b, Send)
    sender.receive(decode(encode(ready_b.message)))
    assert (sender.state, sender.meta, sender.outcome) == (S.SENDING, meta_b, None)
