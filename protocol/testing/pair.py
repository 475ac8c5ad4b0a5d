"""Two connections pumped against each other, with the worker's world simulated.

:class:`ConnectionPair` holds a CLIENT and a WORKER :class:`~protocol.connection.Connection`
and moves every frame one sends to the other, recording the exchange as it crosses.
The worker's actions (path checks, the store, jobs, results) are performed by
:class:`SimulatedWorld`, in memory, whose outcomes are chosen by a ``decide``
callback (hypothesis draws them in :mod:`protocol.testing.exchanges`; the default takes
the first, happy option). The client's downloads go to an in-memory store too. So an
exchange is whatever the two real connections say to each other: it cannot drift from
the tables (h11's ``ConnectionPair``). Proofs of possession are answered from the bytes
each side holds; the worker's challenges come from a seeded source, so an exchange is
the same for the same draws.

Sans-IO: no sockets, no files; time is a counter that advances per frame.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal, TypeVar

from protocol import events as ev
from protocol.connection import Capabilities, Connection, new_job_id
from protocol.errors import PathReason, TransferErrorCode
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import JobComplete, JobMetrics, Message
from protocol.names import InvalidNameError, split_path
from protocol.proof import Challenge, new_challenge, proof_digest
from protocol.relay_events import DeleteRelayObject, FetchRelayPart, HaltRelay, RelayFrom
from protocol.roads import Road
from protocol.routes import Role
from protocol.testing.relay_world import SimulatedRelay
from protocol.testing.text import sha256_of
from protocol.transfer_messages import FileMeta, FileProofRequest

__all__ = [
    "C2W",
    "W2C",
    "ConnectionPair",
    "Direction",
    "Exchange",
    "SeededSource",
    "SimulatedStore",
    "SimulatedWorld",
    "ranges_digest",
    "seeded_challenge",
]

#: Direction of a frame in an exchange: client to worker, or worker to client.
Direction = Literal["C->W", "W->C"]
C2W: Direction = "C->W"
W2C: Direction = "W->C"
#: One exchange: the frames of a conversation in the order they cross the channel.
Exchange = list[tuple[Direction, str | bytes]]

T = TypeVar("T")
Decide = Callable[[str, Sequence[T]], T]


def first(name: str, options: Sequence[T]) -> T:
    """The default decision: the first (happy) option."""
    return options[0]


class SeededSource:
    """A :class:`~protocol.proof.RandomSource` from a seed (for reproducible exchanges;
    never for a real receiver, which uses :mod:`secrets`)."""

    def __init__(self, seed: int) -> None:
        self._rng = random.Random(seed)

    def token_bytes(self, nbytes: int) -> bytes:
        """``nbytes`` bytes drawn from the seed."""
        return self._rng.randbytes(nbytes)

    def randbelow(self, exclusive_upper_bound: int) -> int:
        """An integer in ``[0, exclusive_upper_bound)`` drawn from the seed."""
        return self._rng.randrange(exclusive_upper_bound)


def seeded_challenge(seed: int = 0) -> Challenge:
    """A challenge function (:data:`protocol.proof.Challenge`) drawing from ``seed``."""
    source = SeededSource(seed)
    return lambda size, limits: new_challenge(size, limits, source)


def ranges_digest(data: bytes | None, request: FileProofRequest) -> str | None:
    """The proof digest of ``request``'s ranges of ``data`` (None when there is no data
    or a range ends past it)."""
    if data is None or request.end > len(data):
        return None
    return proof_digest(request.nonce, [data[o : o + n] for o, n in request.ranges])


@dataclass
class SimulatedStore:
    """An in-memory content store: objects by sha256 and partials kept for a resume.

    A shared store (the worker's) also records what its one principal stored or proved
    (``owned``): only that is found without a proof.
    """

    objects: dict[str, bytes] = field(default_factory=dict)
    partials: dict[str, bytes] = field(default_factory=dict)
    #: The disk fills up once a partial holds more than this many bytes (None: never).
    full_after: int | None = None
    shared: bool = False
    owned: set[str] = field(default_factory=set)
    #: The transfer whose proof deadline is running (AwaitProof), if any.
    awaiting_proof: int | None = None
    #: Every write to a partial: (the offset it landed at, its bytes), in order.
    writes: list[tuple[int, bytes]] = field(default_factory=list)
    #: The relay objects this store's receiver fetches from.
    relay: SimulatedRelay = field(default_factory=SimulatedRelay)
    _open: bytearray | None = None
    _key: str = ""
    _serial: int = -1

    def append(self, serial: int, data: bytes) -> int:
        """Append ``data`` to the open partial of transfer ``serial`` (recorded in
        :attr:`writes`): its new length."""
        assert self._open is not None and serial == self._serial
        self.writes.append((len(self._open), data))
        self._open += data
        return len(self._open)

    def perform(self, conn: Connection, action: object, now: float) -> None:
        """Perform a receiver action and report its outcome to ``conn``."""
        match action:
            case ev.CheckStore(transfer=serial, meta=meta):
                key = meta.sha256 if isinstance(meta, FileMeta) else f"anon-{serial}"
                if key in self.objects and (not self.shared or key in self.owned):
                    conn.report(ev.StoreHas(serial), now)
                    return
                self._open, self._key = bytearray(self.partials.pop(key, b"")), key
                self._serial = serial
                conn.report(ev.StoreOffset(serial, len(self._open)), now)
            case ev.Append(transfer=serial, data=data):
                if self._open is None or serial != self._serial:
                    return  # a transfer that already ended: nothing to write
                if self.full_after is not None and len(self._open) + len(data) > self.full_after:
                    self.full_after = None
                    conn.report(
                        ev.StoreFailed(serial, TransferErrorCode.DISK_FULL, "no space left"), now
                    )
                    return
                conn.report(ev.Written(serial, self.append(serial, data)), now)
            case ev.Finish(transfer=serial, meta=meta):
                assert self._open is not None and serial == self._serial
                data, self._open = bytes(self._open), None
                sha = sha256_of(data)
                if isinstance(meta, FileMeta) and sha != meta.sha256:
                    detail = f"expected {meta.sha256}, received {sha}"
                    failed = ev.StoreFailed(serial, TransferErrorCode.HASH_MISMATCH, detail, False)
                    conn.report(failed, now)
                    return
                self.objects[sha] = data
                conn.report(ev.Stored(serial, sha), now)
            case ev.Discard(transfer=serial, keep=keep):
                if serial != self._serial:
                    return
                if self._open is not None and keep and not self._key.startswith("anon-"):
                    self.partials[self._key] = bytes(self._open)
                self._open = None
            case FetchRelayPart() | HaltRelay() | DeleteRelayObject():
                self.relay.perform(conn, action, self)
            case ev.AwaitProof(transfer=serial):
                self.awaiting_proof = serial
            case ev.ReadStoredRanges(transfer=serial, sha256=sha, size=size, request=request):
                stored = self.objects.get(sha)
                held = stored if stored is not None and len(stored) == size else None
                conn.report(ev.StoredRanges(serial, ranges_digest(held, request)), now)
            case ev.RecordOwnership(sha256=sha):
                self.owned.add(sha)


@dataclass
class _Job:
    start: ev.StartJob
    output: str
    owner: str


class SimulatedWorld:
    """The worker's storage and jobs, in memory.

    Args:
        decide: picks each outcome by name among options (``"input"``, ``"output"``,
            ``"job"``, ``"logs"``, ``"file_count"``); the first option is the happy one.
        job_wait: jobs run until :meth:`ConnectionPair.finish_job` (else they end at once).
    """

    def __init__(self, decide: Decide[object] = first, *, job_wait: bool = False) -> None:
        self.decide = decide
        self.job_wait = job_wait
        self.store = SimulatedStore(shared=True)
        self.jobs: dict[str, _Job] = {}
        self.running: _Job | None = None
        self.results: dict[str, bytes] = {}

    def check_path(
        self, path: str, which: str
    ) -> ev.InputAccepted | ev.OutputAccepted | PathReason:
        """The outcome of a path check: lexically bad paths are outside the root."""
        try:
            split_path(path)
        except InvalidNameError:
            return PathReason.OUTSIDE_ROOT
        if which == "input":
            refusals = [PathReason.NOT_FOUND, PathReason.PERMISSION_DENIED, PathReason.CORRUPTED]
            options: list[object] = [ev.InputAccepted(0.5, 0.25), *refusals]
        else:
            options = [
                ev.OutputAccepted(0.5),
                PathReason.NOT_A_DIRECTORY,
                PathReason.PERMISSION_DENIED,
            ]
        outcome = self.decide(which, options)
        assert isinstance(outcome, ev.InputAccepted | ev.OutputAccepted | PathReason)
        return outcome

    def end_job(self, conn: Connection, outcome: str, now: float) -> None:
        """End the running job: ``complete``, ``failed`` or ``cancelled``."""
        job, self.running = self.running, None
        assert job is not None
        job_id = job.start.job_id
        if outcome == "complete":
            count = int(str(self.decide("file_count", [1, 0, 3])))
            complete = JobComplete(job_id, job.output, count, 0.01 * count)
            metrics = JobMetrics(job.start.validation_ms, job.start.file_access_ms, 0.5, 1.0)
            self.results[job_id] = b"PK\x05\x06" + bytes(18) + job_id.encode()
            conn.report(ev.JobEnded(job_id, complete, metrics), now)
        else:
            reason = "cancelled" if outcome == "cancelled" else "Job command exited with code 2"
            conn.report(ev.JobEnded(job_id, reason=reason), now)

    def perform(self, pair: ConnectionPair, action: object, now: float) -> None:
        """Perform one worker action and report its outcome."""
        conn = pair.worker
        match action:
            case ev.ValidateInput(path=path) | ev.PrepareOutput(path=path):
                which = "input" if isinstance(action, ev.ValidateInput) else "output"
                outcome = self.check_path(path, which)
                if isinstance(outcome, PathReason):
                    conn.report(ev.PathRefused(action, outcome), now)
                else:
                    conn.report(outcome, now)
            case ev.StartJob(job_id=job_id, output_path=output):
                shown = output if output is not None else f"jobs/{job_id}/output"
                self.running = self.jobs[job_id] = _Job(action, shown, conn.principal)
                for peer in pair.workers:
                    peer.report(ev.WorkerBusy(f"another job ({job_id}) is running"), now)
                lines = self.decide("logs", [["epoch 1 done"], [], ["a", "b::c"]])
                assert isinstance(lines, list)
                for line in lines:
                    conn.send_log(str(line))
                if not self.job_wait:
                    pair.finish_job(str(self.decide("job", ["complete", "failed"])))
            case ev.CancelJob():
                pair.finish_job("cancelled")
            case ev.UploadResults(job_id=job_id):
                stored = ev.ResultsUploaded(
                    job_id, f"/download/{job_id}", sha256_of(job_id.encode()), 22, "cap.abc_-"
                )
                conn.report(stored, now)
            case ev.LookupResults(job_id=job_id):
                job = self.jobs.get(job_id)
                running = self.running is not None and self.running.start.job_id == job_id
                owner = None if job is None else job.owner
                output = None if job is None else job.output
                conn.report(ev.ResultsFound(job_id, owner, running, output), now)
            case ev.PackResults(job_id=job_id):
                data = self.results[job_id]
                pair.outgoing[Role.WORKER] = pair.sources[Role.WORKER] = data
                conn.report(ev.FileToSend(f"results-{job_id}.zip", len(data), sha256_of(data)), now)
            case _:
                self.store.perform(conn, action, now)


class ConnectionPair:
    """A client and a worker connection, pumped against each other.

    Args:
        world: the worker's simulated world (default: every outcome happy).
        limits / capabilities: of the worker.
        peer: the client's peer id as the worker sees it.
        job_id_factory: ids the worker makes for unnamed jobs.

    Attributes:
        frames: the exchange so far, in the order frames crossed.
        events: every non-Send output of the client connection (Delivered, Refused...).
        relay: the simulated relay objects (the worker's store fetches from them).
    """

    def __init__(
        self,
        world: SimulatedWorld | None = None,
        *,
        limits: Limits = DEFAULT_LIMITS,
        capabilities: Capabilities | None = None,
        peer: str = "client-1",
        job_id_factory: Callable[[], str] | None = None,
    ) -> None:
        self.world = world or SimulatedWorld()
        caps = capabilities or Capabilities(True, True, relay_road=True)
        self.worker = Connection(
            Role.WORKER,
            peer=peer,
            limits=limits,
            capabilities=caps,
            job_id_factory=job_id_factory or new_job_id,
        )
        self.worker.receiver.proof.challenge = seeded_challenge()
        # The client's receiver fetches no relay objects (its adapter has no relay road).
        self.client = Connection(
            Role.CLIENT, limits=limits, capabilities=replace(caps, relay_road=False)
        )
        self.workers = [self.worker]
        self.client_store = SimulatedStore()
        self.frames: Exchange = []
        self.events: list[object] = []
        self.outgoing: dict[Role, bytes] = {}
        #: The whole file each side is sending (proofs are computed from it).
        self.sources: dict[Role, bytes] = {}
        self.now = 0.0
        self._cut: dict[Role, int | None] = {Role.WORKER: None, Role.CLIENT: None}
        self.relay: SimulatedRelay = self.world.store.relay

    def send(self, message: Message) -> None:
        """The client sends ``message`` (checked by its tables), then everything settles."""
        self.client.send(message)
        self.pump()

    def inject(self, frame: str | bytes) -> None:
        """The client puts a raw frame on the channel, bypassing its own tables (a
        non-conforming peer), then everything settles."""
        self._cross(C2W, frame)
        self.pump()

    def upload(
        self,
        data: bytes,
        name: str,
        *,
        sha256: str | None = None,
        stop_at: int | None = None,
        road: Road = Road.CHANNEL,
        fallback: bool = True,
    ) -> None:
        """The client sends ``data`` as ``name`` (announcing ``sha256`` if given); with
        ``stop_at`` it streams only up to that byte and then ends (END_OF_FILE). On the
        relay road its parts go through :attr:`relay` (the worker store's)."""
        self.outgoing[Role.CLIENT] = self.sources[Role.CLIENT] = data
        self._cut[Role.CLIENT] = stop_at
        file = ev.FileToSend(name, len(data), sha256 or sha256_of(data))
        self.client.send_file(file, road=road, fallback=fallback)
        self.pump()

    def cut_upload(self, data: bytes, name: str, at: int) -> None:
        """The client streams ``data`` up to byte ``at``, then cancels with FILE_CANCEL."""
        self.outgoing[Role.CLIENT] = data[:at]
        self.sources[Role.CLIENT] = data
        self._cut[Role.CLIENT] = -1
        self.client.send_file(ev.FileToSend(name, len(data), sha256_of(data)))
        self.pump()

    def finish_job(self, outcome: str = "complete") -> None:
        """End the worker's running job (``complete``, ``failed`` or ``cancelled``)."""
        self.world.end_job(self.worker, outcome, self.now)
        for peer in self.workers:
            peer.report(ev.WorkerIdle(), self.now)
        self.pump()

    def expire_proof(self) -> None:
        """The worker's proof deadline passes (its peer never answered)."""
        serial, self.world.store.awaiting_proof = self.world.store.awaiting_proof, None
        if serial is not None:
            self.worker.report(ev.ProofTimedOut(serial), self.now)
            self.pump()

    def _cross(self, direction: Direction, frame: str | bytes) -> None:
        self.frames.append((direction, frame))
        self.now += 0.3
        (self.worker if direction == C2W else self.client).receive(frame, self.now)

    def pump(self) -> None:
        """Move frames and perform actions until both connections are quiet."""
        busy = True
        while busy:
            busy = False
            for conn, direction in ((self.client, C2W), (self.worker, W2C)):
                while (out := conn.next_output()) is not None:
                    busy = True
                    self._perform(conn, direction, out)
            busy = busy or self.relay.step(self.now)

    def _perform(self, conn: Connection, direction: Direction, out: object) -> None:
        role = conn.role
        if isinstance(out, ev.Send):
            self._cross(direction, out.frame)
        elif isinstance(out, ev.StreamFrom):
            self._stream(conn, direction, out)
        elif isinstance(out, RelayFrom):
            self.relay.start_upload(conn, out, self.outgoing.get(role, b""))
        elif isinstance(out, ev.ReadFileRanges):
            digest = ranges_digest(self.sources.get(role), out.request)
            conn.report(ev.FileRanges(out.transfer, digest), self.now)
        elif role is Role.WORKER:
            if not isinstance(
                out,
                ev.Note
                | ev.Violation
                | ev.FileHeld
                | ev.ReceiveEnded
                | ev.SendEnded
                | ev.SendProgress,
            ):
                self.world.perform(self, out, self.now)
        elif isinstance(
            out,
            ev.CheckStore
            | ev.Append
            | ev.Finish
            | ev.Discard
            | ev.AwaitProof
            | ev.ReadStoredRanges
            | ev.RecordOwnership,
        ):
            self.client_store.perform(conn, out, self.now)
        else:
            self.events.append(out)

    def _stream(self, conn: Connection, direction: Direction, out: ev.StreamFrom) -> None:
        data = self.outgoing.get(conn.role, b"")
        cut = self._cut[conn.role]
        end = len(data) if cut is None or cut < 0 else cut
        size = out.meta.chunk_size
        for start in range(out.offset, end, size):
            frame = conn.send_chunk(data[start : min(start + size, end)])
            if frame is None:
                return
            self._cross(direction, frame)
            self.pump()
        if cut is not None and cut < 0:
            conn.cancel_send()
        else:
            conn.end_of_file()
        self._cut[conn.role] = None
