"""The sender on the relay road, through Connection(CLIENT): every relay row of the sender
with its exact outputs, relay_part()'s checks, relay_stop(), send() of relay frames in
both roles, RELAY_ENDED with and without a fallback (and outside the relayed bytes or of
another file), the shared road refused, an empty file and a whole partial on the channel,
and relay objects the service lost."""

from __future__ import annotations

import pytest

from protocol import encode
from protocol import events as ev
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.errors import TransferErrorCode as Code
from protocol.relay import RELAY_SENDER_ROWS
from protocol.relay_events import RelayFrom, RoadChanged
from protocol.relay_messages import RelayEnded, RelayPart, RelayStop
from protocol.roads import Road
from protocol.sender import SENDER_TABLE, SenderOp, SenderState
from protocol.testing.pair import ConnectionPair
from protocol.testing.text import sha256_of
from protocol.transfer_messages import (
    FileCancel,
    FileMeta,
    FileProgress,
    FileReceived,
    TransferError,
)
from tests.protocol_helpers import (
    BIG,
    BIG_META,
    BIG_SHA,
    client,
    feed,
    one,
    sends,
    violations,
    worker,
)

S = SenderState
K = 4096
FILE = ev.FileToSend(BIG_META.name, BIG_META.size, BIG_SHA)
META = FileMeta(BIG_META.name, BIG_META.size, BIG_SHA, 65536)


def part(offset: int, length: int, chunk: int = K) -> RelayPart:
    return RelayPart(BIG_SHA, offset, length, chunk, bytes(32), bytes(7), "ab" * 16, "t")


def relaying(*, fallback: bool = True, at: int = 0) -> object:
    conn = client()
    conn.send_file(FILE, road=Road.RELAY, fallback=fallback)
    conn.drain()
    assert one(feed(conn, f"FILE_READY::{at}"), RelayFrom) == RelayFrom(at, META)
    assert conn.sender.state is S.RELAYING and conn.sender.road is Road.RELAY
    return conn


def stopping() -> object:
    conn = relaying()
    assert conn.relay_stop() == RelayStop(BIG_SHA)  # type: ignore[attr-defined]
    assert sends(conn.drain()) == [RelayStop(BIG_SHA)]  # type: ignore[attr-defined]
    return conn


def cancelled() -> object:
    conn = relaying()
    conn.cancel_send()  # type: ignore[attr-defined]
    conn.drain()  # type: ignore[attr-defined]
    return conn


START = {S.RELAYING: relaying, S.RELAY_STOPPING: stopping, S.CANCELLED: cancelled}
ENDED = RelayEnded(BIG_SHA, 0, "RELAY_GONE", "gone")
TO_CHANNEL = [RoadChanged(Road.RELAY, Road.CHANNEL, 0, "RELAY_GONE"), ev.StreamFrom(0, META)]
RECEIVED = [ev.SendProgress(len(BIG), len(BIG)), ev.SendEnded("received", BIG_SHA)]
FAILED = [ev.SendEnded("failed", BIG_SHA, 0, "DISK_FULL", "full")]
BY_RECEIVER = [ev.SendEnded("cancelled", BIG_SHA, 0, Code.CANCELLED, "cancelled by the receiver")]
BY_US = [FileCancel(), ev.SendEnded("cancelled", BIG_SHA, 0, Code.CANCELLED, "cancelled by us")]

#: (what happens, outputs, state after) of each relay row of the sender.
ROWS: dict[tuple[SenderState, object], tuple[object, list[object], SenderState]] = {
    (S.RELAYING, RelayPart): (part(0, K), [part(0, K)], S.RELAYING),
    (S.RELAYING, RelayStop): (RelayStop, [RelayStop(BIG_SHA)], S.RELAY_STOPPING),
    (S.RELAYING, FileProgress): (
        FileProgress(K, len(BIG)),
        [ev.SendProgress(K, len(BIG))],
        S.RELAYING,
    ),
    (S.RELAY_STOPPING, FileProgress): (
        FileProgress(0, len(BIG)),
        [ev.SendProgress(0, len(BIG))],
        S.RELAY_STOPPING,
    ),
    (S.RELAYING, FileReceived): (FileReceived(BIG_SHA), RECEIVED, S.IDLE),
    (S.RELAY_STOPPING, FileReceived): (FileReceived(BIG_SHA), RECEIVED, S.IDLE),
    (S.RELAYING, RelayEnded): (ENDED, TO_CHANNEL, S.SENDING),
    (S.RELAY_STOPPING, RelayEnded): (ENDED, TO_CHANNEL, S.SENDING),
    (S.CANCELLED, RelayEnded): (ENDED, [], S.CANCELLED),
    (S.RELAYING, TransferError): (TransferError("DISK_FULL", "full"), FAILED, S.IDLE),
    (S.RELAY_STOPPING, TransferError): (TransferError("DISK_FULL", "full"), FAILED, S.IDLE),
    (S.RELAYING, FileCancel): (FileCancel(), BY_RECEIVER, S.IDLE),
    (S.RELAY_STOPPING, FileCancel): (FileCancel(), BY_RECEIVER, S.IDLE),
    (S.RELAYING, SenderOp.CANCEL): (SenderOp.CANCEL, BY_US, S.CANCELLED),
    (S.RELAY_STOPPING, SenderOp.CANCEL): (SenderOp.CANCEL, BY_US, S.CANCELLED),
}


def test_the_rows_here_are_exactly_the_relay_rows() -> None:
    assert set(ROWS) == set(RELAY_SENDER_ROWS)
    assert all(SENDER_TABLE[row] is nxt for row, nxt in RELAY_SENDER_ROWS.items())


@pytest.mark.parametrize("row", list(ROWS), ids=str)
def test_every_relay_row(row: tuple[SenderState, object]) -> None:
    event, outputs, after = ROWS[row]
    conn = START[row[0]]()
    if event is SenderOp.CANCEL:
        conn.cancel_send()  # type: ignore[attr-defined]
    elif event is RelayStop:
        conn.send(RelayStop(BIG_SHA))  # type: ignore[attr-defined]  # send() of our own frame
    elif isinstance(event, RelayPart):
        conn.send(event)  # type: ignore[attr-defined]
    else:
        conn.receive(encode(event), 1.0)  # type: ignore[attr-defined]
    got = [o.message if isinstance(o, ev.Send) else o for o in conn.drain()]  # type: ignore[attr-defined]
    assert got == outputs
    assert conn.sender.state is after  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("bad", "detail"),
    [
        (part(K, K), "starts at 4096, not at 0"),
        (part(0, 100), "whole chunks"),
        (part(0, 2 * K), "ends at 8192: not in (0, 5000]"),
        (RelayPart("0" * 64, 0, K, K, bytes(32), bytes(7), "ab" * 16, "t"), "another file"),
    ],
)
def test_a_part_that_does_not_continue_the_transfer_is_ours_to_fix(
    bad: RelayPart, detail: str
) -> None:
    conn = relaying()
    with pytest.raises(LocalProtocolError) as info:
        conn.relay_part(bad)  # type: ignore[attr-defined]
    assert info.value.code == ErrorCode.MALFORMED_FRAME and detail in info.value.detail
    assert conn.drain() == [] and conn.sender.relay.next_offset == 0  # type: ignore[attr-defined]
    conn.relay_part(part(0, K))  # type: ignore[attr-defined]
    with pytest.raises(LocalProtocolError) as info:
        conn.relay_part(part(K, 904, chunk=8192))  # type: ignore[attr-defined]
    assert info.value.code == ErrorCode.MALFORMED_FRAME


def test_relay_frames_are_refused_when_nothing_is_relayed() -> None:
    for conn in (client(), worker()):
        for call in (lambda c: c.relay_part(part(0, K)), lambda c: c.relay_stop()):
            with pytest.raises(LocalProtocolError) as info:
                call(conn)
            assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
        with pytest.raises(LocalProtocolError):
            conn.send(RelayStop(BIG_SHA))
        assert conn.drain() == []


def test_relay_stop_of_another_file_is_refused() -> None:
    conn = relaying()
    with pytest.raises(LocalProtocolError) as info:
        conn.send(RelayStop("0" * 64))  # type: ignore[attr-defined]
    assert info.value.code == ErrorCode.MALFORMED_FRAME
    assert conn.sender.state is S.RELAYING and conn.drain() == []  # type: ignore[attr-defined]


def test_a_resume_inside_a_chunk_relays_from_the_boundary_below() -> None:
    conn = relaying(at=K + 17)
    with pytest.raises(LocalProtocolError):
        conn.relay_part(part(2 * K, 904))  # type: ignore[attr-defined]
    assert conn.relay_part(part(K, len(BIG) - K)) == part(K, len(BIG) - K)  # type: ignore[attr-defined]


def test_without_a_fallback_relay_ended_cancels_with_its_code() -> None:
    conn = relaying(fallback=False)
    conn.relay_part(part(0, K))  # type: ignore[attr-defined]
    conn.drain()  # type: ignore[attr-defined]
    outputs = feed(conn, RelayEnded(BIG_SHA, K, "RELAY_UNREACHABLE", "5 tries"))  # type: ignore[arg-type]
    detail = "the relay road ended: 5 tries"
    assert [o.message if isinstance(o, ev.Send) else o for o in outputs] == [
        FileCancel(),
        ev.SendEnded("failed", BIG_SHA, 0, "RELAY_UNREACHABLE", detail),
    ]
    assert conn.sender.state is S.CANCELLED  # type: ignore[attr-defined]
    assert feed(conn, TransferError(Code.CANCELLED, "kept")) == []  # type: ignore[arg-type]
    assert conn.sender.state is S.IDLE  # type: ignore[attr-defined]


def test_relay_ended_outside_the_relayed_bytes_or_of_another_file() -> None:
    conn = relaying()
    out = feed(conn, RelayEnded(BIG_SHA, K, "STOPPED"))  # type: ignore[arg-type]  # nothing relayed yet
    detail = "RELAY_ENDED offset 4096 is outside the relayed [0, 0]"
    assert [o.message if isinstance(o, ev.Send) else o for o in out] == [
        ev.SendEnded("failed", BIG_SHA, 0, "SIZE_MISMATCH", detail),
        TransferError("SIZE_MISMATCH", "RELAY_ENDED offset outside the relayed bytes"),
    ]
    conn = relaying()
    (violation,) = violations(feed(conn, RelayEnded("0" * 64, 0, "STOPPED")))  # type: ignore[arg-type]
    assert violation.code == ErrorCode.MALFORMED_FRAME
    assert conn.sender.state is S.RELAYING  # type: ignore[attr-defined]


def test_the_shared_road_moves_no_file_and_small_files_take_the_channel() -> None:
    conn = client()
    with pytest.raises(LocalProtocolError) as info:
        conn.send_file(FILE, road=Road.SHARED)
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert conn.sender.state is S.IDLE and conn.drain() == []
    conn.send_file(ev.FileToSend("empty", 0, sha256_of(b"")), road=Road.RELAY)
    conn.drain()
    assert one(feed(conn, "FILE_READY::0"), ev.StreamFrom).offset == 0  # empty: the channel
    assert conn.sender.road is Road.CHANNEL
    conn = client()
    conn.send_file(FILE, road=Road.RELAY)
    conn.drain()
    assert one(feed(conn, f"FILE_READY::{len(BIG)}"), ev.StreamFrom).offset == len(BIG)


def test_a_lost_relay_object_ends_the_road_and_the_channel_brings_the_rest() -> None:
    data = BIG * 3
    pair = ConnectionPair()
    pair.relay.lose = {f"{2:032x}"}
    pair.upload(data, "in.bin", road=Road.RELAY)
    ended = next(f for _, f in pair.frames if isinstance(f, str) and f.startswith("RELAY_ENDED"))
    assert ended.split("::")[2:4] == [str(2 * K), "RELAY_GONE"]
    assert pair.world.store.objects[sha256_of(data)] == data


def test_relay_stop_after_a_failed_upload_then_the_channel() -> None:
    data = BIG * 3
    pair = ConnectionPair()
    pair.relay.upload_failures = {2 * K}
    pair.upload(data, "in.bin", road=Road.RELAY)
    frames = [f for _, f in pair.frames if isinstance(f, str)]
    assert f"RELAY_STOP::{sha256_of(data)}" in frames
    ended = next(f for f in frames if f.startswith("RELAY_ENDED"))
    assert ended.split("::")[3] == "STOPPED"
    assert pair.world.store.objects[sha256_of(data)] == data
    assert "FILE_READY::0" in frames
