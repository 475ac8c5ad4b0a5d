"""Properties of Connection over random runs, for both roles: whatever frames arrive
(valid, misplaced, malformed, junk) interleaved with the outcomes an honest adapter
reports (late, stale or at once), ``receive`` never raises, every queued Send is the
encoding of its message, every refusal is one Violation answered as the role answers
and changes nothing, and an honest report is never refused."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from protocol import events as ev
from protocol.codec import decode, encode
from protocol.connection import Connection
from protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    PathReason,
    RelayEndCode,
    TransferErrorCode,
)
from protocol.job import JobState
from protocol.messages import (
    JobCancel,
    JobComplete,
    JobId,
    JobLog,
    JobMetrics,
    JobStart,
    ProtocolErrorFrame,
    ResultsRequest,
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
)
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
from protocol.relay_messages import RelayPart
from protocol.roads import Road
from protocol.routes import Role
from protocol.sender import SenderState
from protocol.testing import (
    client_messages,
    frames,
    malformed_frames,
    messages,
    worker_messages,
)
from protocol.transfer import ReceiverState
from protocol.transfer_messages import FileMeta, TransferError
from tests.protocol_helpers import (
    CLIENT_REACHABLE,
    JOB,
    PEER,
    SHA,
    client,
    client_in,
    receiver_in,
    sender_in,
    sha256,
    snapshot,
    worker,
    worker_in,
)

QUICK = settings(
    deadline=None,
    max_examples=200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


#: What arrives: the peer's frames, any valid frame, malformed ones and junk.
FRAMES: dict[Role, st.SearchStrategy[str | bytes]] = {
    role: st.one_of(
        peer.map(encode),
        frames(),
        malformed_frames(),
        st.text(max_size=30),
        st.binary(max_size=30),
    )
    for role, peer in ((Role.WORKER, client_messages()), (Role.CLIENT, worker_messages()))
}
OWN_MESSAGES = messages()
_ZIP = b"PK\x05\x06" + bytes(18)  # the results a worker packs
_SHA = sha256(bytes(10))  # the content of "mine.bin", the file we send
_META = f"FILE_META::in.bin::10::{_SHA}::4"
_K = 4096  # the relay chunk size of the runs
_PART = encode(RelayPart(_SHA, 0, 10, _K, bytes(32), bytes(7), "ab" * 16, "tok"))
#: Frames that move the machines of each role, so that runs reach every state.
SCRIPT: dict[Role, st.SearchStrategy[str | bytes]] = {
    Role.WORKER: st.sampled_from(
        [
            "SHARED_INPUT_PATH::inputs/a.zip",
            "SHARED_OUTPUT_PATH::outputs/a",
            "JOB_ID::run-1",
            "JOB_START",
            "JOB_CANCEL",
            "RESULTS_VIA_STORAGE",
            "RESULTS_REQUEST::run-1",
            _META,
            "FILE_META::notes.txt:10:",
            bytes(4),
            "END_OF_FILE",
            "FILE_CANCEL",
            "FILE_READY::0",
            f"FILE_RECEIVED::{sha256(_ZIP)}",
            "FILE_PROGRESS::4::22",
            "TRANSFER_ERROR::CANCELLED::no transfer open",
            "PROTOCOL_ERROR::UNEXPECTED_MESSAGE::no",
            _PART,
            f"RELAY_STOP::{_SHA}",
        ]
    ),
    Role.CLIENT: st.sampled_from(
        [
            "PATH_VALIDATED::input",
            "PATH_VALIDATED::output",
            "PATH_ERROR::Input path does not exist: inputs/a.zip",
            "JOB_LOG::epoch 1",
            "JOB_COMPLETE::run-1::out::1::0.01",
            "JOB_FAILED::run-1::cancelled",
            "RESULTS_STORED::run-1::/download/run-1",
            "PROTOCOL_ERROR::WORKER_BUSY::busy",
            "PROTOCOL_ERROR::UNKNOWN_JOB::no results",
            _META,
            bytes(4),
            "END_OF_FILE",
            "FILE_CANCEL",
            "FILE_READY::0",
            "FILE_READY::6",
            f"FILE_EXISTS::{_SHA}",
            f"FILE_RECEIVED::{_SHA}",
            "FILE_PROGRESS::4::10",
            "TRANSFER_ERROR::CANCELLED::no transfer open",
            "TRANSFER_ERROR::DISK_FULL::full",
            _PART,
            f"RELAY_STOP::{_SHA}",
            f"RELAY_ENDED::{_SHA}::0::RELAY_GONE::gone",
            f"RELAY_ENDED::{_SHA}::4096::RELAY_UNREACHABLE::",
        ]
    ),
}
#: What a client sends by itself (a worker: only its logs).
SENT: dict[Role, st.SearchStrategy[Any]] = {
    Role.CLIENT: st.sampled_from(
        [
            JobId("run-1"),
            SharedInputPath("inputs/a.zip"),
            SharedOutputPath("outputs/a"),
            JobStart(),
            JobCancel(),
            ResultsViaStorage(),
            ResultsRequest("run-1"),
        ]
    )
    | OWN_MESSAGES,
    Role.WORKER: st.just(JobLog("a line")) | OWN_MESSAGES,
}


#: Where runs start: every state a driver reaches, in every part.
#: Receiver states a role never enters: a worker sends no RESULTS_REQUEST, a client asks
#: no proof of possession.
UNREACHABLE_RECEIVER = {
    (Role.WORKER, ReceiverState.REQUESTED),
    (Role.CLIENT, ReceiverState.PROVING),
}


STARTS: dict[Role, list[Callable[[], Connection]]] = {
    role: [
        *(
            [partial(worker_in, s) for s in JobState]
            if role is Role.WORKER
            else [partial(client_in, s) for s in CLIENT_REACHABLE]
        ),
        *(
            partial(receiver_in, role, s)
            for s in ReceiverState
            if (role, s) not in UNREACHABLE_RECEIVER
        ),
        *(
            partial(sender_in, role, s)
            for s in SenderState
            if (role, s) != (Role.CLIENT, SenderState.PREPARING)
            and (role, s)
            not in {(Role.WORKER, SenderState.RELAYING), (Role.WORKER, SenderState.RELAY_STOPPING)}
        ),
    ]
    for role in Role
}


class HonestAdapter:
    """Performs a connection's actions the way a correct adapter may: outcomes drawn
    among the valid ones, some reported at once and some later (writes, job ends)."""

    def __init__(self, conn: Connection, data: st.DataObject) -> None:
        self.conn = conn
        self.draw = data.draw
        self.now = 0.0
        self.written: dict[int, int] = {}  # transfer serial -> bytes on disk
        self.later: list[object] = []  # outcomes not reported yet
        self.stream: tuple[int, FileMeta] | None = None
        self.serials: list[int] = []
        self.fetch: list[int | RelayPart] | None = None  # [serial, part, verified offset]

    def adopt(self) -> None:
        """Take over a connection driven into some state: what its drivers left pending
        is reported later."""
        r, s, side = self.conn.receiver, self.conn.sender, self.conn.worker
        if r.state is not ReceiverState.IDLE and r.meta is not None:
            self.serials.append(r.serial)
            self.written[r.serial] = r.received
            if r.state is ReceiverState.CHECKING:
                self.later.append(ev.StoreOffset(r.serial, 0))
            elif r.state is ReceiverState.VERIFYING:
                sha = r.meta.sha256 if isinstance(r.meta, FileMeta) else _SHA
                self.later.append(ev.Stored(r.serial, sha))
            elif r.state is ReceiverState.RELAYING and r.relay.current is not None:
                self.fetch = [r.serial, r.relay.current, r.on_disk]
            elif r.state is ReceiverState.HALTING:
                self.later.append(RelayFailed(r.serial, r.on_disk, RelayEndCode.STOPPED))
        if s.state is SenderState.SENDING and s.meta is not None:
            self.stream = (s.offset + s.sent, s.meta)
        elif s.state is SenderState.PREPARING:
            self.later.append(ev.ResultsFound(JOB, PEER, False, "out"))
        if side is not None and side.running is not None:
            self.later.append(ev.JobEnded(side.running.job_id, reason="cancelled"))

    # -------------------------------------------------------------- checks

    def settle(self) -> None:
        """Perform every queued output, checking each Send."""
        while (out := self.conn.next_output()) is not None:
            if isinstance(out, ev.Send):
                assert out.frame == encode(out.message)
                assert decode(out.frame, self.conn.limits) == out.message
            else:
                self.perform(out)

    def tell(self, outcome: object) -> None:
        self.conn.report(outcome, self.now)  # an honest outcome is never refused
        self.settle()

    # -------------------------------------------------------------- actions

    def perform(self, out: object) -> None:
        pick = self.draw
        match out:
            case ev.ValidateInput() | ev.PrepareOutput():
                accepted = (
                    ev.InputAccepted(0.5, 0.5)
                    if isinstance(out, ev.ValidateInput)
                    else (ev.OutputAccepted(0.5))
                )
                self.tell(
                    pick(
                        st.sampled_from(
                            [
                                accepted,
                                accepted,
                                ev.PathRefused(out, PathReason.NOT_FOUND),
                                ev.ActionFailed(out, "could not check it"),
                            ]
                        )
                    )
                )
            case ev.StartJob(job_id=job_id, output_path=output):
                complete = JobComplete(job_id, output or f".rtc-jobs/{job_id}/output", 1, 0.01)
                self.later.append(
                    pick(
                        st.sampled_from(
                            [
                                ev.JobEnded(job_id, complete, JobMetrics(1, 1, 1, 1)),
                                ev.JobEnded(job_id, reason="Job command exited with code 2"),
                                ev.JobEnded(job_id, path_error=PathReason.VANISHED),
                            ]
                        )
                    )
                )
            case ev.CancelJob(job_id=job_id):  # the job's end, when it comes, says so
                self.later = [o for o in self.later if not isinstance(o, ev.JobEnded)]
                self.later.append(ev.JobEnded(job_id, reason="cancelled"))
            case ev.UploadResults(job_id=job_id):
                self.tell(
                    pick(
                        st.sampled_from(
                            [
                                ev.ResultsUploaded(job_id, f"/download/{job_id}", SHA, 5, "t"),
                                ev.ActionFailed(out, "x"),
                            ]
                        )
                    )
                )
            case ev.LookupResults(job_id=job_id):
                owner = pick(st.sampled_from([PEER, PEER, "client-2", None]))
                running = pick(st.sampled_from([False, False, True]))
                self.tell(ev.ResultsFound(job_id, owner, running, "out" if owner else None))
            case ev.PackResults():
                data = b"PK\x05\x06" + bytes(18)
                self.tell(
                    pick(
                        st.sampled_from(
                            [
                                ev.FileToSend("r.zip", len(data), sha256(data)),
                                ev.ActionFailed(out, "x"),
                            ]
                        )
                    )
                )
            case ev.CheckStore(transfer=serial, meta=meta):
                self.serials.append(serial)
                offset = pick(st.integers(0, min(meta.size, 1 << 20)))
                options: list[object] = [
                    ev.StoreOffset(serial, offset),
                    ev.StoreFailed(serial, TransferErrorCode.CANCELLED, "in progress elsewhere"),
                ]
                if isinstance(meta, FileMeta):
                    options.append(ev.StoreHas(serial))
                outcome = pick(st.sampled_from(options))
                if isinstance(outcome, ev.StoreOffset):
                    self.written[serial] = offset
                self.tell(outcome)
            case ev.Append(transfer=serial, data=chunk):
                self.written[serial] = self.written.get(serial, 0) + len(chunk)
                if pick(st.booleans()):
                    self.later.append(ev.Written(serial, self.written[serial]))
                elif pick(st.integers(0, 9)) == 0:
                    self.later.append(ev.StoreFailed(serial, TransferErrorCode.DISK_FULL, "full"))
            case ev.Finish(transfer=serial, meta=meta):
                sha = meta.sha256 if isinstance(meta, FileMeta) else sha256(b"legacy")
                self.tell(
                    pick(
                        st.sampled_from(
                            [
                                ev.Stored(serial, sha),
                                ev.StoreFailed(serial, TransferErrorCode.HASH_MISMATCH, "x", False),
                            ]
                        )
                    )
                )
            case ev.StreamFrom(offset=offset, meta=meta):
                self.stream = (offset, meta)
            case FetchRelayPart(transfer=serial, part=part, start=start):
                self.fetch = [serial, part, start]
            case HaltRelay(transfer=serial):
                if self.fetch is not None and self.fetch[0] == serial:
                    at = self.fetch[2]
                    assert isinstance(at, int)
                    self.later.append(RelayFailed(serial, at, RelayEndCode.STOPPED))
                    self.fetch = None
            case ev.AwaitProof(transfer=serial):
                self.later.append(ev.ProofTimedOut(serial))
            case ev.ReadStoredRanges(transfer=serial):
                answer = self.conn.receiver.proof.answer  # the held copy matches, or not
                self.tell(ev.StoredRanges(serial, pick(st.sampled_from([answer, None]))))
            case ev.ReadFileRanges(transfer=serial):
                digest = pick(st.sampled_from([sha256(b"our ranges"), None]))
                self.later.append(ev.FileRanges(serial, digest))
            case _:
                assert isinstance(
                    out,
                    ev.Discard
                    | ev.Note
                    | ev.Violation
                    | ev.Delivered
                    | ev.Refused
                    | ev.FileHeld
                    | ev.ReceiveEnded
                    | ev.SendEnded
                    | ev.SendProgress
                    | ev.RecordOwnership
                    | DeleteRelayObject
                    | RelayFrom
                    | RoadChanged,
                ), out

    # -------------------------------------------------------------- steps

    def receive(self, frame: str | bytes) -> None:
        self.now += self.draw(st.sampled_from([0.0, 0.1, 0.3, 0.6]))
        before = snapshot(self.conn)
        self.conn.receive(frame, self.now)  # never raises
        outputs = self.conn.drain()
        refusals = [o for o in outputs if isinstance(o, ev.Violation)]
        assert len(refusals) <= 1
        if refusals:
            (violation,) = refusals
            assert snapshot(self.conn) == before, (frame, violation)
            replies = [o.message for o in outputs if isinstance(o, ev.Send)]
            if not isinstance(frame, str):
                assert replies == [
                    TransferError(TransferErrorCode.UNEXPECTED_DATA, violation.detail)
                ]
            elif self.conn.role is Role.WORKER:
                assert replies == [ProtocolErrorFrame(violation.code, violation.detail)]
            else:
                assert replies == []
            assert outputs[-1] == violation
        for out in outputs:  # put back and perform in order
            self.conn.emit(out)
        self.settle()

    def step(self) -> None:
        kind = self.draw(
            st.sampled_from(
                ["frame"] * 6
                + ["later", "later", "stream", "stream", "stale", "busy", "send"]
                + ["fetch", "fetch", "relay"]
            )
        )
        if kind == "frame":
            self.receive(self.draw(self.frames()))
        elif kind == "later" and self.later:
            self.tell(self.later.pop(self.draw(st.integers(0, len(self.later) - 1))))
        elif kind == "stream" and self.stream is not None:
            self.stream_step()
        elif kind == "stale" and self.serials:
            serial = self.draw(st.sampled_from(self.serials))
            self.tell(
                self.draw(st.sampled_from([ev.Written(serial, 1), ev.StoreOffset(serial, 0)]))
            )
        elif kind == "busy" and self.conn.role is Role.WORKER:
            self.tell(self.draw(st.sampled_from([ev.WorkerBusy("another job"), ev.WorkerIdle()])))
        elif kind == "send":
            self.send()
        elif kind == "fetch" and self.fetch is not None:
            self.fetch_step()
        elif kind == "relay" and self.conn.sender.state is SenderState.RELAYING:
            self.relay_step()

    def fetch_step(self) -> None:
        """The fetch in progress writes a chunk, ends its part, or fails (chunk aligned)."""
        assert self.fetch is not None
        serial, part, at = self.fetch
        assert isinstance(serial, int) and isinstance(part, RelayPart) and isinstance(at, int)
        if self.draw(st.integers(0, 5)) == 0:
            self.fetch = None
            code = self.draw(st.sampled_from(list(RelayEndCode)))
            self.tell(RelayFailed(serial, at, code, "drawn"))
        elif at >= part.end:
            self.fetch = None
            self.tell(RelayFetched(serial, at))
        else:
            at = min(part.end, at - at % part.chunk_size + part.chunk_size)
            self.fetch = [serial, part, at]
            self.tell(RelayWritten(serial, at))

    def relay_step(self) -> None:
        """As a relay sender: announce the next part, a wrong one (refused, nothing
        changes), or stop."""
        sender = self.conn.sender
        meta, start = sender.meta, sender.relay.next_offset
        assert meta is not None
        action = self.draw(st.sampled_from(["part", "part", "bad", "stop"]))
        if action == "part" and start >= meta.size:  # every part is out: nothing to send
            return
        if action == "stop":
            self.conn.relay_stop()
        else:
            offset = start - start % _K
            length = min(meta.size - offset, _K * self.draw(st.integers(1, 3)))
            if action == "bad":
                offset += _K
            part = RelayPart(meta.sha256, offset, length, _K, bytes(32), bytes(7), "cd" * 16, "t")
            before = snapshot(self.conn)
            try:
                self.conn.relay_part(part)
            except LocalProtocolError as exc:
                assert action == "bad" and exc.code == ErrorCode.MALFORMED_FRAME
                assert snapshot(self.conn) == before
        self.settle()

    def frames(self) -> st.SearchStrategy[str | bytes]:
        meta = self.conn.receiver.meta
        if self.conn.receiver.state is ReceiverState.RECEIVING and meta is not None:
            room = max(0, meta.size - self.conn.receiver.received)
            top = min(room, getattr(meta, "chunk_size", 64), 64)
            if self.draw(st.booleans()):  # a chunk that fits, or the end
                return st.sampled_from([bytes(top), "END_OF_FILE"])
        return st.one_of(SCRIPT[self.conn.role], SCRIPT[self.conn.role], FRAMES[self.conn.role])

    def stream_step(self) -> None:
        assert self.stream is not None
        offset, meta = self.stream
        action = self.draw(st.sampled_from(["chunk", "chunk", "end", "cancel", "give_up"]))
        if action == "chunk":
            piece = bytes(min(meta.chunk_size, max(0, meta.size - offset), 8))
            if self.conn.send_chunk(piece) is None:
                self.stream = None
            else:
                self.stream = (offset + len(piece), meta)
        elif action == "end":
            self.conn.end_of_file()
            self.stream = None
        elif action == "cancel":
            self.conn.cancel_send()
            self.stream = None
        else:
            self.conn.give_up_cancel()
        self.settle()

    def send(self) -> None:
        """Our own message or file: sent, or refused with nothing changed."""
        before = snapshot(self.conn)
        try:
            if self.draw(st.booleans()):
                self.conn.send(self.draw(SENT[self.conn.role]))
            else:
                road = self.draw(st.sampled_from([Road.CHANNEL, Road.RELAY]))
                file = ev.FileToSend("mine.bin", 10, sha256(bytes(10)))
                self.conn.send_file(file, road=road, fallback=self.draw(st.booleans()))
        except LocalProtocolError as exc:
            assert exc.code in (ErrorCode.UNEXPECTED_MESSAGE, ErrorCode.MALFORMED_FRAME)
            assert snapshot(self.conn) == before
        self.settle()


@QUICK
@given(data=st.data(), role=st.sampled_from(list(Role)), steps=st.integers(10, 60))
def test_random_runs_never_raise_and_every_refusal_changes_nothing(
    data: st.DataObject, role: Role, steps: int
) -> None:
    conn = data.draw(st.sampled_from(STARTS[role]), label="start")()
    adapter = HonestAdapter(conn, data)
    adapter.adopt()
    for _ in range(steps):
        adapter.step()
    while adapter.later:  # everything still pending ends well
        adapter.tell(adapter.later.pop())
    if conn.role is Role.WORKER:
        assert (conn.job is JobState.RUNNING) == (conn.worker.running is not None)  # type: ignore[union-attr]
    conn.close()
    adapter.settle()
    assert conn.receiver.state is ReceiverState.IDLE


@settings(QUICK, max_examples=60)
@given(role=st.sampled_from(list(Role)), frame=st.one_of(frames(), malformed_frames()))
def test_one_frame_to_a_fresh_connection(role: Role, frame: str | bytes) -> None:
    conn = worker() if role is Role.WORKER else client()
    before = snapshot(conn)
    conn.receive(frame, 0.0)
    outputs = conn.drain()
    for out in outputs:
        if isinstance(out, ev.Send):
            assert decode(out.frame) == out.message
    if any(isinstance(out, ev.Violation) for out in outputs):
        assert snapshot(conn) == before
