"""File transfers inside a Connection, in both directions and both roles: the channel
transfer of PROTOCOL.md 6.2 to 6.4 and 6.6 (sizes and chunking as there), FILE_PROGRESS
from bytes on disk, a write failure mid-transfer, reports about an earlier transfer,
refusals, the legacy form, our own sends and cancels, and a client downloading
results."""

from __future__ import annotations

import pytest

from protocol import events as ev
from protocol.connection import Connection
from protocol.errors import ErrorCode, LocalProtocolError, TransferErrorCode
from protocol.job import ClientJobState, JobState, Pending
from protocol.limits import Limits
from protocol.messages import JobStart, ResultsRequest, SharedOutputPath
from protocol.relay_events import FetchRelayPart
from protocol.roads import Road
from protocol.routes import Role
from protocol.sender import SenderState
from protocol.testing import ConnectionPair
from protocol.testing.pair import C2W, W2C
from protocol.transfer import ReceiverState
from protocol.transfer_messages import FileMeta
from tests.protocol_helpers import (
    JOB,
    META,
    SHA,
    client,
    client_in,
    feed,
    frames,
    new,
    one,
    ready_at_zero,
    say,
    sender_in,
    sends,
    sha256,
    snapshot,
    tell,
    violations,
    worker,
)

KIB64 = 65536
BIG = bytes(range(256)) * (300_000 // 256) + bytes(300_000 % 256)  # 300000 bytes
TRAIN = BIG[:200_000]


def meta_frame(name: str, data: bytes, chunk: int = KIB64) -> str:
    return f"FILE_META::{name}::{len(data)}::{sha256(data)}::{chunk}"


def stream(conn: Connection, data: bytes, start: int, stop: int, now: float) -> list[object]:
    """Chunks of 64 KiB from ``start`` to ``stop`` arrive 0.1 s apart; each is written
    (reported) at once. Returns every output."""
    outputs: list[object] = []
    for offset in range(start, stop, KIB64):
        now += 0.1
        chunk = data[offset : min(offset + KIB64, stop)]
        queued = feed(conn, chunk, now)
        append = one(queued, ev.Append)
        assert (append.data, sends(queued)) == (chunk, [])  # no progress from a chunk
        outputs += queued + tell(conn, ev.Written(append.transfer, offset + len(chunk)), now)
    return outputs


# ===================================================================== PROTOCOL.md 6.2-6.4


def test_a_channel_transfer_becomes_the_next_jobs_input() -> None:  # 6.2
    conn = worker(shared_storage=False)
    assert frames(feed(conn, "SHARED_INPUT_PATH::inputs/train.zip")) == [
        "PROTOCOL_ERROR::NO_SHARED_STORAGE::this worker has no shared storage configured"
    ]
    feed(conn, "JOB_ID::run-9")
    check = one(feed(conn, meta_frame("train.bin", TRAIN), 10.0), ev.CheckStore)
    # new content of this peer's: a proof is asked first (a wrong one: the bytes come)
    assert frames(ready_at_zero(conn, check.transfer, 10.0)) == [
        "FILE_PROOF_REQUEST::5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a::0+4,7+4",
        "FILE_READY::0",
    ]
    outputs = stream(conn, TRAIN, 0, len(TRAIN), 10.0)
    assert frames(outputs) == ["FILE_PROGRESS::65536::200000"]  # at most every 0.5 s
    assert one(feed(conn, "END_OF_FILE", 11.0), ev.Finish).meta.sha256 == sha256(TRAIN)
    outputs = tell(conn, ev.Stored(check.transfer, sha256(TRAIN)), 11.0)
    assert frames(outputs) == [f"FILE_RECEIVED::{sha256(TRAIN)}"]
    assert one(outputs, ev.FileHeld).bytes_received == 200_000
    assert conn.job is JobState.HAVE_FILE
    start = one(feed(conn, "JOB_START"), ev.StartJob)
    assert start == ev.StartJob("run-9", None, sha256(TRAIN), "train.bin", None)


def test_a_transfer_resumes_on_a_new_connection_from_what_is_on_disk() -> None:  # 6.3
    first = worker()
    check = one(feed(first, meta_frame("weights.bin", BIG), 0.0), ev.CheckStore)
    ready_at_zero(first, check.transfer)
    assert frames(stream(first, BIG, 0, 131_072, 0.0)) == ["FILE_PROGRESS::65536::300000"]
    first.close()  # the connection drops: the partial stays
    assert first.drain() == [ev.Discard(check.transfer, keep=True)]
    second = worker()
    check = one(feed(second, meta_frame("weights.bin", BIG), 5.0), ev.CheckStore)
    assert frames(tell(second, ev.StoreOffset(check.transfer, 131_072), 5.0)) == [
        "FILE_READY::131072"
    ]
    outputs = stream(second, BIG, 131_072, len(BIG), 5.0)
    assert frames(outputs) == ["FILE_PROGRESS::196608::300000"]
    one(feed(second, "END_OF_FILE"), ev.Finish)
    outputs = tell(second, ev.Stored(check.transfer, sha256(BIG)))
    assert one(outputs, ev.FileHeld).bytes_received == 300_000 - 131_072


def test_content_already_held_is_answered_file_exists() -> None:  # 6.4
    conn = worker()
    check = one(feed(conn, meta_frame("train-copy.bin", TRAIN)), ev.CheckStore)
    outputs = tell(conn, ev.StoreHas(check.transfer))
    assert frames(outputs) == [f"FILE_EXISTS::{sha256(TRAIN)}"]
    assert one(outputs, ev.FileHeld).existed
    assert conn.job is JobState.HAVE_FILE  # the next job's input all the same
    assert frames(feed(conn, b"x")) == [
        "TRANSFER_ERROR::UNEXPECTED_DATA::can't handle Chunk in receiver state IDLE"
    ]


def test_file_cancel_from_the_sender_keeps_the_bytes_for_a_resume() -> None:  # 6.6
    conn = worker()
    check = one(feed(conn, meta_frame("big.bin", BIG)), ev.CheckStore)
    ready_at_zero(conn, check.transfer)
    stream(conn, BIG, 0, KIB64, 0.0)
    outputs = feed(conn, "FILE_CANCEL")
    assert frames(outputs) == [
        "TRANSFER_ERROR::CANCELLED::cancelled by the sender; 65536 bytes kept for a resume"
    ]
    assert one(outputs, ev.Discard) == ev.Discard(check.transfer, keep=True)
    assert frames(feed(conn, "FILE_CANCEL")) == ["TRANSFER_ERROR::CANCELLED::no transfer open"]
    check = one(feed(conn, meta_frame("big.bin", BIG)), ev.CheckStore)
    assert frames(tell(conn, ev.StoreOffset(check.transfer, KIB64))) == ["FILE_READY::65536"]


# ===================================================================== progress and failures


@pytest.mark.parametrize("role", list(Role))
def test_progress_comes_only_from_bytes_on_disk(role: Role) -> None:
    conn = new(role)
    check = one(feed(conn, META), ev.CheckStore)
    ready_at_zero(conn, check.transfer)
    for i, chunk in enumerate((b"hell", b"o wo", b"rld")):
        assert sends(feed(conn, chunk, 100.0 + i)) == []  # held in memory is not progress
    assert conn.receiver.received == 11
    assert frames(tell(conn, ev.Written(check.transfer, 4), 200.0)) == ["FILE_PROGRESS::4::11"]
    assert frames(tell(conn, ev.Written(check.transfer, 8), 200.1)) == []  # paced
    assert frames(tell(conn, ev.Written(check.transfer, 11), 200.6)) == ["FILE_PROGRESS::11::11"]


@pytest.mark.parametrize("role", list(Role))
def test_a_write_failure_mid_transfer_drains_the_rest(role: Role) -> None:
    conn = new(role)
    check = one(feed(conn, META), ev.CheckStore)
    ready_at_zero(conn, check.transfer)
    feed(conn, b"hell")
    failed = ev.StoreFailed(check.transfer, TransferErrorCode.DISK_FULL, "no space left on device")
    outputs = tell(conn, failed)
    assert outputs[0] == ev.Discard(check.transfer, keep=True)
    assert one(outputs, ev.ReceiveEnded).code == "DISK_FULL"
    assert frames(outputs) == ["TRANSFER_ERROR::DISK_FULL::no space left on device"]
    assert conn.receiver.state is ReceiverState.DRAINING
    for late in (b"o wo", b"rld"):  # the sender's chunks still on their way
        assert feed(conn, late) == []
    assert tell(conn, ev.Written(check.transfer, 8)) == [
        ev.Note(f"dropped Written of transfer {check.transfer}")
    ]
    assert feed(conn, "END_OF_FILE") == []
    assert one(feed(conn, META), ev.CheckStore).transfer == check.transfer + 1
    again = new(role)  # or the next FILE_META at once, while still draining
    first = one(feed(again, META), ev.CheckStore)
    ready_at_zero(again, first.transfer)
    tell(again, ev.StoreFailed(first.transfer, TransferErrorCode.DISK_FULL, "full"))
    assert one(feed(again, META), ev.CheckStore).transfer == first.transfer + 1


def test_reports_about_an_earlier_transfer_are_dropped() -> None:
    conn = worker()
    first = one(feed(conn, META), ev.CheckStore)
    ready_at_zero(conn, first.transfer)
    feed(conn, b"hell")
    feed(conn, "FILE_CANCEL")
    second = one(feed(conn, META), ev.CheckStore)
    for stale in (
        ev.Written(first.transfer, 4),
        ev.StoreOffset(first.transfer, 4),
        ev.Stored(first.transfer, SHA),
        ev.StoreFailed(first.transfer, TransferErrorCode.DISK_FULL, "full"),
    ):
        outputs = tell(conn, stale, 1000.0)
        assert outputs == [ev.Note(f"dropped {type(stale).__name__} of transfer {first.transfer}")]
    assert conn.receiver.state is ReceiverState.CHECKING
    assert frames(ready_at_zero(conn, second.transfer))[-1] == "FILE_READY::0"


def test_content_that_does_not_match_its_sha256_is_deleted() -> None:  # 6.7
    conn = worker()
    zero = "0" * 64
    check = one(feed(conn, f"FILE_META::hello.txt::11::{zero}::65536"), ev.CheckStore)
    ready_at_zero(conn, check.transfer)
    feed(conn, b"hello world")
    one(feed(conn, "END_OF_FILE"), ev.Finish)
    detail = f"expected {zero}, received {SHA}"
    failed = ev.StoreFailed(check.transfer, TransferErrorCode.HASH_MISMATCH, detail, False)
    outputs = tell(conn, failed)
    assert outputs[0] == ev.Discard(check.transfer, keep=False)
    assert frames(outputs) == [f"TRANSFER_ERROR::HASH_MISMATCH::{detail}"]
    assert conn.job is JobState.IDLE


@pytest.mark.parametrize(
    ("frame", "reply"),
    [
        (
            "FILE_META::../evil.bin::10::" + SHA + "::65536",
            "TRANSFER_ERROR::INVALID_NAME::'../evil.bin' has a directory part",
        ),
        (
            "FILE_META::huge.bin::99999999999999::" + SHA + "::65536",
            "TRANSFER_ERROR::FILE_TOO_LARGE::99999999999999 bytes is above the limit of "
            "10737418240 bytes",
        ),
        (
            "FILE_META::x::1::" + "a" * 64 + "::999999",
            "TRANSFER_ERROR::UNEXPECTED_DATA::chunk_size 999999 is above the limit of 262144",
        ),
    ],
)
def test_a_file_meta_refused_before_any_byte(frame: str, reply: str) -> None:
    conn = worker()
    outputs = feed(conn, frame)
    assert frames(outputs) == [reply]
    assert not violations(outputs)  # the receiver's answer, not a protocol error
    assert (conn.receiver.state, conn.receiver.serial) == (ReceiverState.IDLE, 0)


def test_bytes_missing_keep_the_partial_and_bytes_too_many_drop_it() -> None:  # 6.7
    conn = worker()
    data = bytes(100_000)
    check = one(feed(conn, meta_frame("a.bin", data)), ev.CheckStore)
    ready_at_zero(conn, check.transfer)
    feed(conn, data[:1000])
    outputs = feed(conn, "END_OF_FILE")
    assert frames(outputs) == [
        "TRANSFER_ERROR::SIZE_MISMATCH::END_OF_FILE with 99000 of 100000 bytes missing"
    ]
    assert outputs[0] == ev.Discard(check.transfer, keep=True)
    check = one(feed(conn, f"FILE_META::b.bin::10::{sha256(data)}::65536"), ev.CheckStore)
    ready_at_zero(conn, check.transfer)
    outputs = feed(conn, bytes(11))
    assert frames(outputs) == ["TRANSFER_ERROR::SIZE_MISMATCH::more than the announced 10 bytes"]
    assert outputs[0] == ev.Discard(check.transfer, keep=False)
    assert feed(conn, bytes(11)) == [] and feed(conn, "END_OF_FILE") == []


def test_a_file_meta_while_a_transfer_is_open_is_refused() -> None:  # 6.7
    conn = worker()
    meta = meta_frame("a.bin", bytes(100_000), 1024)
    check = one(feed(conn, meta), ev.CheckStore)
    ready_at_zero(conn, check.transfer)
    assert frames(feed(conn, meta)) == [
        "PROTOCOL_ERROR::UNEXPECTED_MESSAGE::can't handle FILE_META in receiver state RECEIVING"
    ]
    assert frames(feed(conn, bytes(2048))) == [
        "TRANSFER_ERROR::UNEXPECTED_DATA::chunk of 2048 bytes is above chunk_size 1024"
    ]
    assert feed(conn, bytes(1000)) == [] and feed(conn, "END_OF_FILE") == []


# ===================================================================== the legacy form


def test_a_legacy_transfer_ends_on_its_size() -> None:  # 6.2
    conn = worker()
    data = b"hello, notes\n"
    check = one(feed(conn, "FILE_META::notes.txt:13:gui-1"), ev.CheckStore)
    assert tell(conn, ev.StoreOffset(check.transfer, 0)) == []  # no FILE_READY
    outputs = feed(conn, data)
    assert [type(o) for o in outputs] == [ev.Append, ev.Finish]
    assert frames(tell(conn, ev.Stored(check.transfer, sha256(data)))) == [
        f"FILE_RECEIVED::{sha256(data)}"
    ]
    assert conn.job is JobState.HAVE_FILE
    assert feed(conn, "END_OF_FILE") == []  # the trailing one, silently
    assert one(feed(conn, "END_OF_FILE"), ev.Violation).detail == (
        "END_OF_FILE without an open transfer"
    )


def test_the_chunks_of_a_refused_legacy_file_are_dropped() -> None:
    conn = worker()
    outputs = feed(conn, "FILE_META::big.bin:99999999999:")
    assert frames(outputs)[0].startswith("TRANSFER_ERROR::FILE_TOO_LARGE::")  # type: ignore[union-attr]
    assert feed(conn, bytes(100)) == [] and feed(conn, "END_OF_FILE") == []
    assert conn.receiver.state is ReceiverState.IDLE


# ===================================================================== our own sends


def test_a_client_sends_its_file_and_the_worker_holds_it() -> None:
    conn = client(limits=Limits(chunk_bytes=4))
    conn.send_file(ev.FileToSend(META.name, META.size, META.sha256))
    assert frames(conn.drain()) == [f"FILE_META::hello.txt::11::{SHA}::4"]
    with pytest.raises(LocalProtocolError) as info:
        conn.send_file(ev.FileToSend("b.bin", 1, SHA))  # one send at a time
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert conn.send_chunk(b"hell") is None  # not before FILE_READY
    outputs = feed(conn, "FILE_READY::4")
    assert outputs == [ev.StreamFrom(4, META)]  # FILE_READY is not progress
    assert conn.send_chunk(b"o wo") == b"o wo"
    assert conn.send_chunk(b"rld") == b"rld"
    assert conn.sender.sent == 7
    assert feed(conn, "FILE_PROGRESS::8::11") == [ev.SendProgress(8, 11)]
    conn.end_of_file()
    assert frames(conn.drain()) == ["END_OF_FILE"]
    conn.end_of_file()  # only once
    assert conn.drain() == []
    outputs = feed(conn, f"FILE_RECEIVED::{SHA}")
    assert one(outputs, ev.SendEnded) == ev.SendEnded("received", SHA, 4)
    assert conn.job == ClientJobState(JobState.HAVE_FILE, Pending.NONE)


def test_a_file_held_while_a_path_is_checked_or_a_job_starts() -> None:
    conn = client()
    conn.send_file(ev.FileToSend(META.name, META.size, META.sha256))
    conn.drain()
    say(conn, SharedOutputPath("out"))
    assert one(feed(conn, f"FILE_EXISTS::{SHA}"), ev.SendEnded).status == "exists"
    assert conn.job == ClientJobState(JobState.HAVE_FILE, Pending.OUTPUT)  # as the worker
    conn = client_in(ClientJobState(JobState.READY, Pending.START))
    conn.send_file(ev.FileToSend(META.name, META.size, META.sha256))
    conn.drain()
    outputs = feed(conn, f"FILE_EXISTS::{SHA}")  # the job may have started: not its input
    assert "not as the next job's input" in one(outputs, ev.Note).text
    assert conn.job == ClientJobState(JobState.READY, Pending.START)


@pytest.mark.parametrize("role", list(Role))
def test_our_cancel_waits_for_the_acknowledgement(role: Role) -> None:
    conn = sender_in(role, SenderState.SENDING)
    conn.cancel_send()
    outputs = conn.drain()
    assert frames(outputs) == ["FILE_CANCEL"]
    assert one(outputs, ev.SendEnded).status == "cancelled"
    assert conn.send_chunk(b"x") is None  # stop streaming
    assert feed(conn, "FILE_PROGRESS::4::11") == []  # absorbed
    conn.cancel_send()  # nothing more to cancel
    assert conn.drain() == []
    assert feed(conn, "TRANSFER_ERROR::CANCELLED::cancelled by the sender; 4 bytes kept") == []
    assert conn.sender.state is SenderState.IDLE


@pytest.mark.parametrize("role", list(Role))
def test_give_up_waiting_for_an_acknowledgement(role: Role) -> None:
    conn = sender_in(role, SenderState.CANCELLED)
    conn.give_up_cancel()
    assert conn.sender.state is SenderState.IDLE
    conn.give_up_cancel()  # nothing to give up
    assert conn.sender.state is SenderState.IDLE
    # a late acknowledgement is then a frame outside the table
    assert one(feed(conn, "TRANSFER_ERROR::CANCELLED::late"), ev.Violation)


def test_results_being_prepared_are_not_cancelled_by_us() -> None:
    conn = sender_in(Role.WORKER, SenderState.PREPARING)
    conn.cancel_send()
    conn.end_of_file()
    assert conn.drain() == [] and conn.sender.state is SenderState.PREPARING


# ===================================================================== a client downloading


def test_a_client_downloads_results_into_its_store() -> None:  # 6.5
    conn = client()
    assert frames(say(conn, ResultsRequest("run-9"))) == ["RESULTS_REQUEST::run-9"]
    with pytest.raises(LocalProtocolError):
        conn.send(ResultsRequest("run-9"))  # one request at a time
    data = b"PK\x05\x06" + bytes(18)
    check = one(feed(conn, meta_frame("results-run-9.zip", data)), ev.CheckStore)
    assert frames(tell(conn, ev.StoreOffset(check.transfer, 0), 1.0)) == ["FILE_READY::0"]
    append = one(feed(conn, data, 1.0), ev.Append)
    assert frames(tell(conn, ev.Written(append.transfer, 22), 1.0)) == ["FILE_PROGRESS::22::22"]
    one(feed(conn, "END_OF_FILE"), ev.Finish)
    outputs = tell(conn, ev.Stored(check.transfer, sha256(data)))
    assert frames(outputs) == [f"FILE_RECEIVED::{sha256(data)}"]
    assert one(outputs, ev.FileHeld).name == "results-run-9.zip"
    assert conn.job == ClientJobState(JobState.IDLE, Pending.NONE)  # not a job input


def test_results_pumped_from_the_worker_to_the_client() -> None:
    pair = ConnectionPair(job_id_factory=lambda: JOB)
    pair.upload(b"some input", "in.bin")
    pair.send(JobStart())
    pair.send(ResultsRequest(JOB))
    held = [e for e in pair.events if isinstance(e, ev.FileHeld)]
    assert [h.name for h in held] == [f"results-{JOB}.zip"]
    assert pair.client_store.objects[held[0].sha256] == pair.world.results[JOB]
    assert pair.worker.sender.state is SenderState.IDLE


def test_our_own_file_never_takes_the_place_of_results_being_prepared() -> None:
    conn = sender_in(Role.WORKER, SenderState.PREPARING)
    before = snapshot(conn)
    with pytest.raises(LocalProtocolError) as info:
        conn.send_file(ev.FileToSend("mine.bin", 3, SHA))
    assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
    assert conn.drain() == [] and snapshot(conn) == before
    packed = one(tell(conn, ev.ResultsFound(JOB, "client-1", False, "out")), ev.PackResults)
    assert sends(tell(conn, ev.FileToSend(f"results-{packed.job_id}.zip", 3, SHA)))


@pytest.mark.parametrize("late", ["DISK_FULL", "CANCELLED"])
def test_a_store_failure_after_the_senders_cancel_is_dropped(late: str) -> None:
    """FILE_CANCEL while the disk is full: the cancel is acknowledged as usual, and the
    write that fails after it (reported late, about the cancelled transfer) is dropped,
    never answered INTERNAL_ERROR ("can't handle StoreFailed in receiver state IDLE")."""
    conn = worker()
    check = one(feed(conn, META), ev.CheckStore)
    ready_at_zero(conn, check.transfer)
    feed(conn, b"hell")
    outputs = feed(conn, "FILE_CANCEL")
    assert frames(outputs) == [
        "TRANSFER_ERROR::CANCELLED::cancelled by the sender; 4 bytes kept for a resume"
    ]
    failed = ev.StoreFailed(check.transfer, TransferErrorCode(late), "no space left on device")
    assert tell(conn, failed) == [ev.Note(f"dropped StoreFailed of transfer {check.transfer}")]
    assert frames(feed(conn, "FILE_CANCEL")) == ["TRANSFER_ERROR::CANCELLED::no transfer open"]
    assert conn.receiver.state is ReceiverState.IDLE and not violations(conn.drain())


def test_results_on_the_relay_road_go_on_by_the_channel_to_a_client() -> None:
    """A client's receiver fetches no relay objects: a worker sending results on the
    relay road hears RELAY_ENDED RELAY_UNREACHABLE and ends the transfer on the channel."""
    pair = ConnectionPair(job_id_factory=lambda: JOB)
    data = bytes(range(256)) * 40  # 10240 bytes: parts of relay chunks
    pair.client.send(ResultsRequest(JOB))
    pair.client.drain()  # the worker sends this file instead of answering the request
    pair.outgoing[Role.WORKER] = pair.sources[Role.WORKER] = data
    meta = FileMeta(f"results-{JOB}.zip", len(data), sha256(data), KIB64)
    pair.worker.emit(pair.worker.sender.announce(meta, road=Road.RELAY, fallback=True))
    pair.pump()
    from_worker = [f for d, f in pair.frames if d == W2C and isinstance(f, str)]
    from_client = [f for d, f in pair.frames if d == C2W and isinstance(f, str)]
    assert any(f.startswith("RELAY_PART::") for f in from_worker)
    assert f"RELAY_ENDED::{sha256(data)}::0::RELAY_UNREACHABLE" in "\n".join(from_client)
    assert from_client[-1] == f"FILE_RECEIVED::{sha256(data)}"
    assert not [e for e in pair.events if isinstance(e, FetchRelayPart)]
    assert pair.client_store.objects[sha256(data)] == data
    assert pair.client.receiver.state is ReceiverState.IDLE
    assert pair.worker.sender.state is SenderState.IDLE
