"""Replay a recorded exchange into a fresh worker Connection.

The client's frames (``C->W``) are fed to the worker in their recorded order; the
worker's actions are performed with the outcomes its recorded frames (``W->C``) show
(a PATH_VALIDATED or PATH_ERROR answers a path check, a FILE_READY, FILE_EXISTS or
FILE_PROOF_REQUEST a store look-up, the FILE_EXISTS or FILE_READY after a FILE_PROOF
the proof's check (a FILE_READY with no FILE_PROOF before it, the proof's deadline),
a FILE_RECEIVED or TRANSFER_ERROR a verification, a JOB_COMPLETE or
JOB_FAILED the end of a job, the worker's chunks its results; its challenges are the
recorded FILE_PROOF_REQUESTs), and the worker must then send exactly the recorded
``W->C`` frames, in the recorded order. Used for the
exchanges of :func:`protocol.testing.exchanges` and the worked examples of PROTOCOL.md.
"""

from __future__ import annotations

import dataclasses
from collections import deque
from collections.abc import Callable, Sequence

from protocol import events as ev
from protocol.codec import decode
from protocol.connection import Capabilities, Connection, new_job_id
from protocol.errors import TransferErrorCode
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.limits import Limits as _Limits
from protocol.messages import (
    JobComplete,
    JobFailed,
    JobLog,
    JobMetrics,
    Message,
    PathError,
    PathValidated,
    ProtocolErrorFrame,
    ResultsStored,
)
from protocol.routes import Role
from protocol.transfer import ReceiverState
from protocol.transfer_messages import (
    EndOfFile,
    FileExists,
    FileMeta,
    FileProofRequest,
    FileReady,
    FileReceived,
    TransferError,
)
from tests.protocol_helpers import sha256

C2W, W2C = "C->W", "W->C"
Frames = Sequence[tuple[str, str | bytes]]


class ReplayError(AssertionError):
    """The worker did not do what the recording shows."""


class Replay:
    """One replay (see the module docstring).

    Args:
        exchange: ``(direction, frame)`` pairs in the order they crossed.
        step: the clock advance per crossed frame, seconds (ConnectionPair's 0.3).
        known_binary: whether recorded chunks hold the real bytes (then every
            FILE_RECEIVED must name the sha256 of the bytes that crossed).
    """

    def __init__(
        self,
        exchange: Frames,
        *,
        limits: Limits = DEFAULT_LIMITS,
        capabilities: Capabilities | None = None,
        peer: str = "client-1",
        job_id_factory: Callable[[], str] | None = None,
        step: float = 0.3,
        known_binary: bool = True,
    ) -> None:
        self.exchange = list(exchange)
        self.step = step
        self.known_binary = known_binary
        factory = job_id_factory or self.recorded_job_id
        caps = capabilities or Capabilities(shared_storage=True, results_service=True)
        self.conn = Connection(
            Role.WORKER, peer=peer, limits=limits, capabilities=caps, job_id_factory=factory
        )
        self.conn.receiver.proof.challenge = self.recorded_challenge
        self.pos = 0
        self.now = 0.0
        self.pending: deque[object] = deque()
        self.prefix: dict[int, bytes | None] = {}  # serial -> bytes held before it resumed
        self.offsets: dict[int, int] = {}  # serial -> where it resumed
        self.data: dict[int, bytearray] = {}  # serial -> bytes appended
        self.metas: dict[int, object] = {}
        self.partials: dict[str, bytes] = {}  # kept during this replay, by sha256
        self.running: ev.StartJob | None = None
        self.jobs: dict[str, str] = {}  # job_id -> output folder
        self.streaming = False
        self.checked: list[str] = []  # what the replay verified, for the tests' own checks

    def recorded_job_id(self) -> str:
        """The id the worker gave the job it starts now: the one its end names."""
        for direction, frame in self.exchange[self.pos :]:
            message = decode(frame, self.conn.limits) if direction == W2C else None
            if isinstance(message, JobComplete | JobFailed):
                return message.job_id
        return new_job_id()

    def recorded_challenge(self, size: int, limits: _Limits) -> FileProofRequest:
        """The proof the worker asks now: the recorded FILE_PROOF_REQUEST coming next."""
        for direction, frame in self.exchange[self.pos :]:
            message = decode(frame, self.conn.limits) if direction == W2C else None
            if isinstance(message, FileProofRequest):
                return message
        raise ReplayError(f"frame {self.pos}: the worker asks a proof not recorded")

    # ------------------------------------------------------------------ driving

    def expected(self) -> tuple[str, str | bytes] | None:
        return self.exchange[self.pos] if self.pos < len(self.exchange) else None

    def upcoming(self) -> Message | None:
        """The next recorded frame when it is the worker's, decoded."""
        nxt = self.expected()
        return decode(nxt[1], self.conn.limits) if nxt and nxt[0] == W2C else None

    def run(self) -> Replay:
        while (nxt := self.expected()) is not None:
            direction, frame = nxt
            if direction == C2W:
                self.pos += 1
                self.now += self.step
                self.conn.receive(frame, self.now)
                self.settle()
                continue
            before = self.pos
            self.settle()
            if self.pos == before:
                self.later(decode(frame, self.conn.limits), frame)
                self.settle()
            if self.pos == before:
                raise ReplayError(f"frame {before}: the worker does not send {frame!r} here")
        self.settle()
        left = [out for out in self.pending if isinstance(out, ev.Send)]
        if left:
            raise ReplayError(f"the worker also sends {[out.frame for out in left]!r}")
        return self

    def settle(self) -> None:
        """Perform the worker's outputs in order; its frames must be the recorded ones."""
        self.pending.extend(self.conn.drain())
        while self.pending:
            out = self.pending[0]
            if isinstance(out, ev.Send):
                nxt = self.expected()
                if nxt is None or nxt[0] != W2C:
                    return  # a frame of the client's crossed first
                if nxt[1] != out.frame:
                    raise ReplayError(f"frame {self.pos}: recorded {nxt[1]!r}, sent {out.frame!r}")
                self.pending.popleft()
                self.pos += 1
                self.now += self.step
                continue
            self.pending.popleft()
            self.perform(out)
            self.pending.extend(self.conn.drain())

    def tell(self, outcome: object) -> None:
        self.conn.report(outcome, self.now)

    # ------------------------------------------------------------------ what comes later

    def later(self, message: Message, frame: str | bytes) -> None:
        """A recorded frame that no queued output produces: the end of the running job,
        or the next piece of the results being streamed."""
        running = self.running
        if isinstance(message, JobMetrics | JobComplete | JobFailed | PathError) and running:
            self.end_job(running, message)
        elif isinstance(frame, bytes) and self.streaming:
            if self.conn.send_chunk(frame) != frame:
                raise ReplayError("the worker stopped streaming its results")
            self.pos += 1
            self.now += self.step
        elif isinstance(message, EndOfFile) and self.streaming:
            self.conn.end_of_file()
        elif isinstance(message, FileReady) and self.conn.receiver.state is ReceiverState.PROVING:
            self.tell(ev.ProofTimedOut(self.conn.receiver.serial))  # no FILE_PROOF in time
            self.checked.append("proof deadline")

    def end_job(self, running: ev.StartJob, message: Message) -> None:
        job_id = running.job_id
        if isinstance(message, JobMetrics):
            complete = decode(self.exchange[self.pos + 1][1])
            assert isinstance(complete, JobComplete)
            # the timings of the checks, summed by the worker, reach JOB_METRICS
            assert (message.validation_ms, message.file_access_ms) == (
                running.validation_ms,
                running.file_access_ms,
            ) or not self.known_binary
            ended = ev.JobEnded(job_id, complete, message)
        elif isinstance(message, JobComplete):
            ended = ev.JobEnded(job_id, message)
        elif isinstance(message, PathError):
            ended = ev.JobEnded(job_id, path_error=message.kind)
        else:
            assert isinstance(message, JobFailed)
            ended = ev.JobEnded(job_id, reason=message.reason)
        self.running = None
        self.tell(ended)
        self.tell(ev.WorkerIdle())
        self.checked.append("job end")

    # ------------------------------------------------------------------ actions

    def perform(self, out: object) -> None:
        reply = self.upcoming()
        match out:
            case ev.ValidateInput() | ev.PrepareOutput():
                self.checked_path(out, reply)
            case ev.StartJob(job_id=job_id, output_path=output):
                self.running = out
                self.jobs[job_id] = output if output is not None else f"jobs/{job_id}/output"
                self.tell(ev.WorkerBusy(f"another job ({job_id}) is running"))
                for line in self.logs():  # the job prints while it starts
                    assert self.conn.send_log(line)
            case ev.UploadResults(job_id=job_id):
                assert isinstance(reply, ResultsStored) and reply.sha256 is not None, reply
                assert reply.size is not None and reply.token is not None
                stored = ev.ResultsUploaded(
                    job_id, reply.download_path, reply.sha256, reply.size, reply.token
                )
                self.tell(stored)
            case ev.LookupResults(job_id=job_id):
                running = self.running is not None and self.running.job_id == job_id
                known = job_id in self.jobs
                self.tell(
                    ev.ResultsFound(
                        job_id,
                        self.conn.peer if known else None,
                        running,
                        self.jobs.get(job_id),
                    )
                )
            case ev.PackResults():
                assert isinstance(reply, FileMeta), reply
                self.tell(ev.FileToSend(reply.name, reply.size, reply.sha256))
            case ev.CheckStore(transfer=serial, meta=meta):
                self.checked_store(serial, meta, reply)
            case ev.Append(transfer=serial, data=data):
                if isinstance(reply, TransferError) and reply.code == TransferErrorCode.DISK_FULL:
                    # the write failed: nothing of this chunk is on disk
                    self.tell(ev.StoreFailed(serial, TransferErrorCode.DISK_FULL, reply.detail))
                else:
                    self.data[serial] += data
                    self.tell(ev.Written(serial, self.offsets[serial] + len(self.data[serial])))
            case ev.Finish(transfer=serial, meta=meta):
                self.finished(serial, meta, reply)
            case ev.ReadStoredRanges(transfer=serial):
                # the held copy's digest: the sender's own when FILE_EXISTS follows
                matched = isinstance(reply, FileExists)
                answer = self.conn.receiver.proof.answer
                self.tell(ev.StoredRanges(serial, answer if matched else None))
                self.checked.append("proof")
            case ev.Discard(transfer=serial, keep=keep):
                meta = self.metas.get(serial)
                held = self.prefix.get(serial)
                if keep and isinstance(meta, FileMeta) and held is not None:
                    self.partials[meta.sha256] = held + bytes(self.data[serial])
            case ev.StreamFrom():
                self.streaming = True
            case ev.SendEnded():
                self.streaming = False

    def logs(self) -> list[str]:
        """The job's lines: the worker's JOB_LOG frames recorded from here on."""
        lines = []
        for direction, frame in self.exchange[self.pos :]:
            message = decode(frame, self.conn.limits) if direction == W2C else None
            if not isinstance(message, JobLog):
                break
            lines.append(message.line)
        return lines

    def checked_path(self, action: ev.ValidateInput | ev.PrepareOutput, reply: object) -> None:
        is_input = isinstance(action, ev.ValidateInput)
        if isinstance(reply, PathValidated):
            assert reply.which == ("input" if is_input else "output")
            self.tell(ev.InputAccepted(0.5, 0.25) if is_input else ev.OutputAccepted(0.5))
        elif isinstance(reply, PathError):
            assert reply.kind is not None and reply.path == action.path, reply
            self.tell(ev.PathRefused(action, reply.kind))
        else:
            assert isinstance(reply, ProtocolErrorFrame), reply
            self.tell(ev.ActionFailed(action, reply.detail))
        self.checked.append("path")

    def checked_store(self, serial: int, meta: object, reply: object) -> None:
        self.metas[serial] = meta
        self.data[serial] = bytearray()
        if isinstance(reply, FileExists):
            self.tell(ev.StoreHas(serial))
        elif isinstance(reply, FileProofRequest):  # new content of this peer's
            self.prefix[serial] = b""
            self.offsets[serial] = 0
            self.tell(ev.StoreOffset(serial, 0))
        elif isinstance(reply, FileReady):
            # The store decides the offset: what this replay saw kept, or what was there
            # before (a partial the world held already); only the first is known here.
            held = self.partials.get(getattr(meta, "sha256", ""))
            if held is None or len(held) != reply.offset:
                held = b"" if reply.offset == 0 else None
            self.prefix[serial] = held
            self.offsets[serial] = reply.offset
            self.tell(ev.StoreOffset(serial, reply.offset))
        elif isinstance(reply, TransferError) and isinstance(meta, FileMeta):
            self.tell(ev.StoreFailed(serial, TransferErrorCode(reply.code), reply.detail))
        else:  # a legacy transfer: chunks follow at once, no reply
            self.prefix[serial] = b""
            self.offsets[serial] = 0
            self.tell(ev.StoreOffset(serial, 0))

    def finished(self, serial: int, meta: object, reply: object) -> None:
        held = self.prefix.get(serial)
        whole = None if held is None else held + bytes(self.data[serial])
        if isinstance(reply, FileReceived):
            if whole is not None and self.known_binary:
                assert sha256(whole) == reply.sha256, "FILE_RECEIVED names the bytes that crossed"
                self.checked.append("sha256 of the bytes")
            self.tell(ev.Stored(serial, reply.sha256))
        else:
            assert isinstance(reply, TransferError), reply
            assert reply.code == TransferErrorCode.HASH_MISMATCH
            if whole is not None and isinstance(meta, FileMeta) and self.known_binary:
                assert sha256(whole) != meta.sha256
            code = TransferErrorCode.HASH_MISMATCH
            self.tell(ev.StoreFailed(serial, code, reply.detail, keep_partial=False))
        self.partials.pop(getattr(meta, "sha256", ""), None)


def chunk_bytes_of(exchange: Frames, default: int = DEFAULT_LIMITS.chunk_bytes) -> int:
    """The chunk size the peers of ``exchange`` send with: their FILE_META's."""
    for _, frame in exchange:
        message = decode(frame) if isinstance(frame, str) else None
        if isinstance(message, FileMeta):
            return message.chunk_size
    return default


def replay(exchange: Frames, *, limits: Limits = DEFAULT_LIMITS, **kwargs: object) -> Replay:
    """Replay ``exchange`` (see :class:`Replay`) with ``limits`` and the chunk size its
    peers used; raises ReplayError or AssertionError."""
    limits = dataclasses.replace(limits, chunk_bytes=chunk_bytes_of(exchange, limits.chunk_bytes))
    return Replay(exchange, limits=limits, **kwargs).run()  # type: ignore[arg-type]


__all__ = ["C2W", "W2C", "Replay", "ReplayError", "chunk_bytes_of", "replay"]
