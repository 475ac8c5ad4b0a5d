"""The receiver on the relay road (protocol.relay with protocol.transfer.Receiver): every
relay row with its exact outputs, the queue's bound, contiguity and the other checks of
RELAY_PART, a fetch that fails, stops, or completes the file, crossings with our own
RELAY_ENDED, FILE_CANCEL and store failures while relaying, and impossible reports."""

from __future__ import annotations

import pytest

from protocol.errors import ErrorCode, LocalProtocolError, RelayEndCode, RemoteProtocolError
from protocol.errors import TransferErrorCode as Code
from protocol.events import (
    Append,
    Discard,
    FileHeld,
    Finish,
    Note,
    ReceiveEnded,
    Stored,
    StoreFailed,
    StoreOffset,
    Written,
)
from protocol.limits import Limits
from protocol.relay import RELAY_RECEIVER_ROWS
from protocol.relay_events import (
    DeleteRelayObject,
    FetchRelayPart,
    HaltRelay,
    RelayFailed,
    RelayFetched,
    RelayWritten,
)
from protocol.relay_messages import RelayEnded, RelayPart, RelayStop
from protocol.transfer import RECEIVER_TABLE, Receiver, ReceiverState
from protocol.transfer_messages import (
    Chunk,
    EndOfFile,
    FileCancel,
    FileMeta,
    FileMetaLegacy,
    FileProgress,
    FileReceived,
    TransferError,
)
from tests.protocol_helpers import sha256

R = ReceiverState
K = 4096
DATA = bytes(range(256)) * 40  # 10240 bytes: chunks of 4096, 4096 and 2048
SHA = sha256(DATA)
META = FileMeta("big.bin", len(DATA), SHA, chunk_size=4)
LIMITS = Limits(max_relay_parts=3, progress_interval_s=0.0)


def part(offset: int, length: int, upload: str = "0" * 32) -> RelayPart:
    return RelayPart(SHA, offset, length, K, bytes(32), bytes(7), upload, f"tok{offset}")


P1, P2, P3 = part(0, K, "1" * 32), part(K, K, "2" * 32), part(2 * K, 2048, "3" * 32)


def receiving(at: int = 0, *, limits: Limits = LIMITS) -> Receiver:
    r = Receiver(limits)
    r.receive(META, 0.0)
    r.report(StoreOffset(1, at), 0.0)
    assert r.state is R.RECEIVING
    return r


def relaying(*queued: RelayPart) -> Receiver:
    r = receiving()
    assert r.receive(P1, 0.0) == [FetchRelayPart(1, P1, META, 0)]
    for extra in queued:
        assert r.receive(extra, 0.0) == []
    assert r.state is R.RELAYING
    return r


def halting() -> Receiver:
    r = relaying()
    assert r.receive(RelayStop(SHA), 0.0) == [HaltRelay(1)]
    return r


def draining() -> Receiver:
    r = relaying()
    r.report(StoreFailed(1, Code.DISK_FULL, "full"), 0.0)
    assert r.state is R.DRAINING
    return r


def idle() -> Receiver:
    return Receiver(LIMITS)


def verifying() -> Receiver:
    r = receiving(len(DATA))
    r.receive(EndOfFile(), 0.0)
    assert r.state is R.VERIFYING
    return r


START = {
    R.IDLE: idle,
    R.RECEIVING: receiving,
    R.RELAYING: relaying,
    R.HALTING: halting,
    R.DRAINING: draining,
    R.VERIFYING: verifying,
}


def ended(code: str, offset: int, detail: str) -> list[object]:
    return [
        Note(f"relay road ended at {offset} bytes: {code}"),
        RelayEnded(SHA, offset, code, detail),
    ]


KEPT = "cancelled by the sender; 0 bytes kept for a resume"
DROPPED_STOP = [Note("dropped RELAY_STOP: the relay road ended for this transfer")]
DROPPED_PART = [Note("dropped RELAY_PART: the relay road ended for this transfer")]

#: (event, outputs, state after) of each relay row, from START[state]().
ROWS: dict[tuple[ReceiverState, type], tuple[object, list[object], ReceiverState]] = {
    (R.RECEIVING, RelayPart): (P1, [FetchRelayPart(1, P1, META, 0)], R.RELAYING),
    (R.RELAYING, RelayPart): (P2, [], R.RELAYING),
    (R.HALTING, RelayPart): (P2, DROPPED_PART, R.HALTING),
    (R.DRAINING, RelayPart): (P1, DROPPED_PART, R.DRAINING),
    (R.IDLE, RelayStop): (RelayStop(SHA), DROPPED_STOP, R.IDLE),
    (R.RECEIVING, RelayStop): (
        RelayStop(SHA),
        ended("STOPPED", 0, "no relay part was being fetched"),
        R.RECEIVING,
    ),
    (R.RELAYING, RelayStop): (RelayStop(SHA), [HaltRelay(1)], R.HALTING),
    (R.HALTING, RelayStop): (RelayStop(SHA), DROPPED_STOP, R.HALTING),
    (R.VERIFYING, RelayStop): (RelayStop(SHA), DROPPED_STOP, R.VERIFYING),
    (R.DRAINING, RelayStop): (RelayStop(SHA), DROPPED_STOP, R.DRAINING),
    (R.RELAYING, Written): (Written(1, 0), [FileProgress(0, len(DATA))], R.RELAYING),
    (R.HALTING, Written): (Written(1, 0), [], R.HALTING),
    (R.RELAYING, RelayWritten): (RelayWritten(1, K), [FileProgress(K, len(DATA))], R.RELAYING),
    (R.HALTING, RelayWritten): (RelayWritten(1, K), [], R.HALTING),
    (R.RELAYING, RelayFetched): (
        RelayFetched(1, K),
        [DeleteRelayObject(P1.upload_id, P1.token), FileProgress(K, len(DATA))],
        R.RECEIVING,  # nothing queued: the next part starts a fetch again
    ),
    (R.HALTING, RelayFetched): (
        RelayFetched(1, K),
        [
            DeleteRelayObject(P1.upload_id, P1.token),
            *ended("STOPPED", K, "stopped on request"),
            FileProgress(K, len(DATA)),
        ],
        R.RECEIVING,
    ),
    (R.RELAYING, RelayFailed): (
        RelayFailed(1, 0, RelayEndCode.RELAY_GONE, "404"),
        [*ended("RELAY_GONE", 0, "404"), FileProgress(0, len(DATA))],
        R.RECEIVING,
    ),
    (R.HALTING, RelayFailed): (
        RelayFailed(1, 0, RelayEndCode.STOPPED),
        [*ended("STOPPED", 0, "stopped on request"), FileProgress(0, len(DATA))],
        R.RECEIVING,
    ),
    (R.RELAYING, FileCancel): (
        FileCancel(),
        [
            HaltRelay(1),
            Discard(1, True),
            Note(KEPT),
            ReceiveEnded(Code.CANCELLED, KEPT),
            TransferError(Code.CANCELLED, KEPT),
        ],
        R.IDLE,
    ),
    (R.HALTING, FileCancel): (
        FileCancel(),
        [
            HaltRelay(1),
            Discard(1, True),
            Note(KEPT),
            ReceiveEnded(Code.CANCELLED, KEPT),
            TransferError(Code.CANCELLED, KEPT),
        ],
        R.IDLE,
    ),
    (R.RELAYING, StoreFailed): (
        StoreFailed(1, Code.DISK_FULL, "full"),
        [
            HaltRelay(1),
            Discard(1, True),
            ReceiveEnded(Code.DISK_FULL, "full"),
            TransferError(Code.DISK_FULL, "full"),
        ],
        R.DRAINING,
    ),
    (R.HALTING, StoreFailed): (
        StoreFailed(1, Code.QUOTA_EXCEEDED, "quota", False),
        [
            HaltRelay(1),
            Discard(1, False),
            ReceiveEnded(Code.QUOTA_EXCEEDED, "quota"),
            TransferError(Code.QUOTA_EXCEEDED, "quota"),
        ],
        R.DRAINING,
    ),
}


def fire(r: Receiver, event: object) -> list[object]:
    if isinstance(event, RelayPart | RelayStop | FileCancel):
        return r.receive(event, 1.0)
    return r.report(event, 1.0)  # type: ignore[arg-type]


def test_the_rows_here_are_exactly_the_relay_rows() -> None:
    assert set(ROWS) == set(RELAY_RECEIVER_ROWS)
    assert all(RECEIVER_TABLE[row] is nxt for row, nxt in RELAY_RECEIVER_ROWS.items())


@pytest.mark.parametrize("row", list(ROWS), ids=str)
def test_every_relay_row(row: tuple[ReceiverState, type]) -> None:
    event, outputs, after = ROWS[row]
    r = START[row[0]]()
    assert fire(r, event) == outputs
    assert r.state is after


def test_a_whole_file_in_three_parts_is_verified_and_each_object_deleted() -> None:
    r = relaying(P2)
    assert r.receive(P3, 0.0) == []
    assert r.report(RelayWritten(1, K), 1.0) == [FileProgress(K, len(DATA))]
    out = r.report(RelayFetched(1, K), 2.0)
    assert out == [
        DeleteRelayObject(P1.upload_id, P1.token),
        FetchRelayPart(1, P2, META, K),
        FileProgress(K, len(DATA)),
    ]
    out = r.report(RelayFetched(1, 2 * K), 3.0)
    assert out[:2] == [
        DeleteRelayObject(P2.upload_id, P2.token),
        FetchRelayPart(1, P3, META, 2 * K),
    ]
    out = r.report(RelayFetched(1, len(DATA)), 4.0)
    assert out == [DeleteRelayObject(P3.upload_id, P3.token), Finish(1, META)]  # no END_OF_FILE
    assert r.state is R.VERIFYING
    held = r.report(Stored(1, SHA), 5.0)
    assert held == [
        FileHeld(SHA, "big.bin", len(DATA), False, len(DATA), "relay"),
        FileReceived(SHA),
    ]


def test_a_failure_drops_the_queue_and_the_channel_goes_on_from_the_verified_offset() -> None:
    r = relaying(P2)
    r.report(RelayWritten(1, K), 1.0)
    out = r.report(RelayFailed(1, K, RelayEndCode.RELAY_UNREACHABLE, "after 5 tries"), 2.0)
    assert RelayEnded(SHA, K, "RELAY_UNREACHABLE", "after 5 tries") in out
    assert (r.state, r.received, r.on_disk, r.relay.queue) == (
        R.RECEIVING,
        K,
        K,
        type(r.relay.queue)(),
    )
    # The sender's P2 and RELAY_STOP crossed our RELAY_ENDED: dropped, not refused.
    assert r.receive(P2, 3.0) == DROPPED_PART
    assert r.receive(RelayStop(SHA), 3.0) == DROPPED_STOP
    assert r.receive(Chunk(DATA[K : K + 4]), 3.0) == [Append(1, DATA[K : K + 4])]
    assert r.received == K + 4
    r.received = len(DATA)  # (the rest of the chunks)
    assert r.receive(EndOfFile(), 4.0) == [Finish(1, META)]
    (held, _) = r.report(Stored(1, SHA), 5.0)
    assert isinstance(held, FileHeld) and held.road == "relay+channel"


def test_one_part_too_many_halts_the_fetch_and_ends_the_road() -> None:
    r = relaying(P2, P3)  # three held: the bound; one more is refused as not contiguous
    with pytest.raises(RemoteProtocolError):
        r.receive(part(0, K), 0.0)
    r2 = Receiver(Limits(max_relay_parts=2, progress_interval_s=0.0))
    r2.receive(META, 0.0)
    r2.report(StoreOffset(1, 0), 0.0)
    r2.receive(P1, 0.0)
    assert r2.receive(P2, 0.0) == []
    assert r2.receive(P3, 0.0) == [HaltRelay(1)]
    assert r2.state is R.HALTING
    out = r2.report(RelayFailed(1, 0, RelayEndCode.STOPPED), 1.0)
    detail = "more than 2 relay parts queued"
    assert RelayEnded(SHA, 0, "RELAY_PARTS_EXCEEDED", detail) in out


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        (RelayPart("0" * 64, 0, K, K, bytes(32), bytes(7), "0" * 32, "t"), "another file"),
        (part(K, K), "starts at 4096, not at 0"),
        (part(0, 3 * K), "ends at 12288: not in (0, 10240]"),
        (part(0, 100), "whole chunks"),
    ],
)
def test_a_part_that_does_not_continue_the_transfer_is_refused(bad: RelayPart, detail: str) -> None:
    r = receiving()
    before = (r.state, r.received, list(r.relay.queue))
    with pytest.raises(RemoteProtocolError) as info:
        r.receive(bad, 0.0)
    assert info.value.code == ErrorCode.MALFORMED_FRAME and detail in info.value.detail
    assert (r.state, r.received, list(r.relay.queue)) == before


def test_every_part_of_a_transfer_has_its_chunk_size() -> None:
    r = receiving()
    first = RelayPart(SHA, 0, 2 * K, 2 * K, bytes(32), bytes(7), "0" * 32, "t")
    r.receive(first, 0.0)
    with pytest.raises(RemoteProtocolError) as info:
        r.receive(part(2 * K, 2048), 0.0)
    assert "chunk_size 4096 is not the transfer's 8192" in info.value.detail
    assert not r.relay.queue


def test_the_first_part_starts_at_the_chunk_boundary_at_or_below_the_resume_offset() -> None:
    r = receiving(K)
    with pytest.raises(RemoteProtocolError):
        r.receive(P1, 0.0)
    assert r.receive(P2, 0.0) == [FetchRelayPart(1, P2, META, K)]
    # A channel resume left 100 bytes: the first chunk is opened whole, kept from 100.
    r = receiving(100)
    with pytest.raises(RemoteProtocolError) as info:
        r.receive(P2, 0.0)
    assert "starts at 4096, not at 0" in info.value.detail
    assert r.receive(P1, 0.0) == [FetchRelayPart(1, P1, META, 100)]
    assert r.report(RelayWritten(1, 100), 1.0) == [FileProgress(100, len(DATA))]
    out = r.report(RelayFailed(1, 100, RelayEndCode.RELAY_GONE), 2.0)
    assert RelayEnded(SHA, 100, "RELAY_GONE", "") in out  # the channel goes on from 100
    # Every byte is here already: a part brings nothing and is refused.
    r = receiving(len(DATA))
    with pytest.raises(RemoteProtocolError) as info:
        r.receive(P3, 0.0)
    assert "not in (10240, 10240]" in info.value.detail


def test_relay_stop_of_another_file_and_relay_frames_in_a_legacy_transfer_are_refused() -> None:
    r = relaying()
    with pytest.raises(RemoteProtocolError) as info:
        r.receive(RelayStop("0" * 64), 0.0)
    assert info.value.code == ErrorCode.MALFORMED_FRAME
    legacy = Receiver(LIMITS)
    legacy.receive(FileMetaLegacy("a.txt", 10), 0.0)
    legacy.report(StoreOffset(1, 0), 0.0)
    for frame in (P1, RelayStop(SHA)):
        with pytest.raises(RemoteProtocolError) as info:
            legacy.receive(frame, 0.0)
        assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE


def test_chunks_and_end_of_file_while_relaying_are_refused() -> None:
    for r in (relaying(), halting()):
        with pytest.raises(RemoteProtocolError) as info:
            r.receive(Chunk(b"x"), 0.0)
        assert info.value.code == ErrorCode.UNEXPECTED_DATA
        with pytest.raises(RemoteProtocolError) as info:
            r.receive(EndOfFile(), 0.0)
        assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE


@pytest.mark.parametrize(
    "report",
    [
        RelayWritten(1, K + 1),  # not a chunk boundary
        RelayWritten(1, 2 * K),  # beyond the part
        RelayFetched(1, K - K),  # before the part's end
        RelayFailed(1, 3 * K, RelayEndCode.RELAY_GONE),
    ],
)
def test_an_impossible_report_is_an_internal_error(report: object) -> None:
    r = relaying()
    with pytest.raises(LocalProtocolError) as info:
        r.report(report, 0.0)  # type: ignore[arg-type]
    assert info.value.code == ErrorCode.INTERNAL_ERROR


def test_the_verified_offset_never_goes_backwards() -> None:
    r = relaying()
    r.report(RelayWritten(1, K), 0.0)
    with pytest.raises(LocalProtocolError):
        r.report(RelayFailed(1, 0, RelayEndCode.RELAY_GONE), 0.0)


def test_a_halt_that_finds_the_file_complete_verifies_it() -> None:
    r = receiving()
    whole = part(0, len(DATA))
    r.receive(whole, 0.0)
    r.receive(RelayStop(SHA), 0.0)
    out = r.report(RelayFetched(1, len(DATA)), 1.0)
    assert out == [DeleteRelayObject(whole.upload_id, whole.token), Finish(1, META)]
    r2 = receiving()
    r2.receive(whole, 0.0)
    assert r2.report(RelayFailed(1, len(DATA), RelayEndCode.RELAY_GONE), 1.0) == [Finish(1, META)]


def test_a_stale_relay_report_is_dropped() -> None:
    r = relaying()
    assert r.report(RelayWritten(7, K), 0.0) == [Note("dropped RelayWritten of transfer 7")]
    r.receive(FileCancel(), 0.0)
    assert r.report(RelayFailed(1, 0, RelayEndCode.STOPPED), 0.0) == [
        Note("dropped RelayFailed of transfer 1")
    ]


def test_progress_is_throttled_while_relaying_but_every_parts_end_is_told() -> None:
    # The relay sender keeps at most a few parts ahead of the FILE_PROGRESS it hears: a
    # part that ends within progress_interval_s of the last FILE_PROGRESS must still be
    # told, or the sender waits for news that never comes.
    r = Receiver(Limits(progress_interval_s=10.0))
    r.receive(META, 0.0)
    r.report(StoreOffset(1, 0), 0.0)
    r.receive(P1, 0.0)
    assert r.report(RelayWritten(1, K), 1.0) == [FileProgress(K, len(DATA))]
    r.receive(P2, 0.0)
    r.receive(P3, 0.0)
    assert r.report(RelayFetched(1, K), 1.2) == [
        DeleteRelayObject(P1.upload_id, P1.token),
        FetchRelayPart(1, P2, META, K),
        FileProgress(K, len(DATA)),
    ]
    assert r.report(RelayWritten(1, 2 * K), 1.5) == []  # within the interval: throttled
    assert r.report(RelayFetched(1, 2 * K), 2.0) == [
        DeleteRelayObject(P2.upload_id, P2.token),
        FetchRelayPart(1, P3, META, 2 * K),
        FileProgress(2 * K, len(DATA)),
    ]


def test_the_relay_road_keeps_its_own_verified_offset() -> None:
    # A late channel Written that claims more than the fetches verified changes nothing
    # about where the relay road ends, and RELAY_STOP with no part keeps every byte taken.
    r = relaying()
    assert r.report(Written(1, 1), 0.0) == [FileProgress(1, len(DATA))]
    out = r.report(RelayFailed(1, 0, RelayEndCode.RELAY_GONE), 1.0)
    assert RelayEnded(SHA, 0, "RELAY_GONE", "") in out and (r.received, r.on_disk) == (0, 0)
    r = receiving()
    r.receive(Chunk(DATA[:4]), 0.0)
    out = r.receive(RelayStop(SHA), 0.0)
    assert RelayEnded(SHA, 4, "STOPPED", "no relay part was being fetched") in out


def test_a_detail_on_several_lines_is_sent_on_one() -> None:
    r = relaying()
    out = r.report(RelayFailed(1, 0, RelayEndCode.RELAY_REFUSED, "403\r\nForbidden"), 1.0)
    assert RelayEnded(SHA, 0, "RELAY_REFUSED", "403 Forbidden") in out
