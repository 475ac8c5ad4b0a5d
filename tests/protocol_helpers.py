"""Shared by the protocol tests: connections driven into a state through their public
API only (receive, send, report), and readers of what a connection queued.

Every driver starts from a fresh :class:`~protocol.connection.Connection` and only
feeds it frames, sends through it, and reports outcomes the way an honest adapter
would, so a state reached here is a state a real peer can reach.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Hashable, Iterable, Sequence
from typing import Any, Generic, TypeVar

import pytest
from hypothesis import Phase, find, settings
from hypothesis import strategies as st
from hypothesis.errors import NoSuchExample

from protocol import events as ev
from protocol.auth_messages import AuthResponse
from protocol.codec import decode, encode
from protocol.connection import Capabilities, Connection
from protocol.errors import TransferErrorCode
from protocol.handshake import AuthState
from protocol.job import ClientJobState, JobState, Pending
from protocol.messages import (
    JobLog,
    JobStart,
    Message,
    PathValidated,
    ResultsRequest,
    SharedInputPath,
    SharedOutputPath,
)
from protocol.proof import proof_digest
from protocol.relay_events import RelayFrom
from protocol.relay_messages import RelayPart, RelayStop
from protocol.roads import Road
from protocol.routes import Role
from protocol.sender import SenderState
from protocol.testing.keys import client_auth, worker_auth
from protocol.transfer import ReceiverState
from protocol.transfer_messages import FileMeta, FileProofRequest

T = TypeVar("T")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


#: The file most tests move: 11 bytes, in chunks of at most 4.
DATA = b"hello world"
SHA = sha256(DATA)
OTHER_SHA = sha256(b"something else")
CHUNK = 4
META = FileMeta("hello.txt", len(DATA), SHA, CHUNK)
#: The client's peer id as the worker sees it; the job id a worker makes up.
PEER = "client-1"
JOB = "job-0123456789ab"
NOW = 100.0
INPUT = "inputs/train.zip"
OUTPUT = "outputs/run-1"
#: The proof a worker asks for META (set as its challenge), and the right answer.
CHALLENGE = FileProofRequest("5a" * 16, ((0, 4), (7, 4)))
PROOF = proof_digest(CHALLENGE.nonce, [DATA[0:4], DATA[7:11]])
#: A file for the relay road: 5000 bytes, relayed in parts of whole 4096-byte chunks.
BIG = bytes(range(256)) * 19 + bytes(136)
BIG_SHA = sha256(BIG)
BIG_META = FileMeta("big.bin", len(BIG), BIG_SHA, CHUNK)
RELAY_CHUNK = 4096


def big_part(offset: int, length: int) -> RelayPart:
    """A relay part of BIG (its key and token are placeholders: nothing decrypts here)."""
    return RelayPart(BIG_SHA, offset, length, RELAY_CHUNK, bytes(32), bytes(7), "ab" * 16, "t")


# ===================================================================== drawing


class Drawn(Generic[T]):
    """One example, with a short repr (hypothesis shows the example that ends a search)."""

    __slots__ = ("value",)

    def __init__(self, value: T) -> None:
        self.value = value

    def __repr__(self) -> str:
        return "Drawn(...)"


def draw_until(
    strategy: st.SearchStrategy[T],
    want: Iterable[Hashable] = (),
    labels: Callable[[T], Iterable[Hashable]] = lambda _: (),
    *,
    at_least: int = 1,
    cap: int = 2000,
) -> list[T]:
    """Examples of ``strategy``, drawn until the labels of those drawn include every one
    of ``want`` and there are ``at_least`` of them (or all there are); fails when ``cap``
    examples do not show all of ``want``."""
    wanted, seen, found = set(want), set[Hashable](), list[T]()

    def enough(drawn: Drawn[T]) -> bool:
        found.append(drawn.value)
        seen.update(labels(drawn.value))
        return len(found) >= at_least and wanted <= seen

    quick = settings(max_examples=cap, phases=[Phase.generate], database=None, deadline=None)
    try:
        find(strategy.map(Drawn), enough, settings=quick)
    except NoSuchExample:  # cap reached, or no other example exists
        if not wanted <= seen:
            pytest.fail(f"{len(found)} examples without {wanted - seen}")
    return found


# ===================================================================== connections


def worker(
    *,
    shared_storage: bool = True,
    results_service: bool = True,
    relay_road: bool = True,
    **kw: Any,
) -> Connection:
    """A worker connection serving ``PEER`` that names unnamed jobs ``JOB``."""
    caps = Capabilities(
        shared_storage=shared_storage, results_service=results_service, relay_road=relay_road
    )
    kw.setdefault("job_id_factory", lambda: JOB)
    conn = Connection(Role.WORKER, peer=PEER, capabilities=caps, **kw)
    conn.receiver.proof.challenge = lambda size, limits: CHALLENGE
    return conn


def client(**kw: Any) -> Connection:
    return Connection(Role.CLIENT, **kw)


def new(role: Role) -> Connection:
    return worker() if role is Role.WORKER else client()


# ===================================================================== outputs


def of_type(outputs: Iterable[object], cls: type[T]) -> list[T]:
    return [out for out in outputs if isinstance(out, cls)]


def one(outputs: Iterable[object], cls: type[T]) -> T:
    found = of_type(outputs, cls)
    assert len(found) == 1, f"expected one {cls.__name__} in {list(outputs)}"
    return found[0]


def sends(outputs: Iterable[object]) -> list[Message]:
    """The messages of the queued Sends, checking that each frame is its message's."""
    messages = []
    for out in of_type(outputs, ev.Send):
        assert out.frame == encode(out.message)
        assert decode(out.frame) == out.message
        messages.append(out.message)
    return messages


def frames(outputs: Iterable[object]) -> list[str | bytes]:
    return [out.frame for out in of_type(outputs, ev.Send)]


def violations(outputs: Iterable[object]) -> list[ev.Violation]:
    return of_type(outputs, ev.Violation)


def feed(conn: Connection, frame: str | bytes | Message, now: float = NOW) -> list[object]:
    """``conn`` receives one frame (a message is encoded first); returns what it queued."""
    conn.receive(encode(frame) if isinstance(frame, Message) else frame, now)
    return conn.drain()


def tell(conn: Connection, outcome: object, now: float = NOW) -> list[object]:
    """``conn`` is told an action's outcome; returns what it queued."""
    conn.report(outcome, now)
    return conn.drain()


def say(conn: Connection, message: Message) -> list[object]:
    """``conn`` sends one of its own messages; returns what it queued."""
    conn.send(message)
    return conn.drain()


def deliver(outputs: Sequence[object], to: Connection, now: float = NOW) -> list[object]:
    """Every frame in ``outputs`` crosses to ``to``; returns what ``to`` queued."""
    queued: list[object] = []
    for frame in frames(outputs):
        queued += feed(to, frame, now)
    return queued


def snapshot(conn: Connection) -> tuple[object, ...]:
    """Everything a refusal must leave unchanged, read through public attributes."""
    r, s, side = conn.receiver, conn.sender, conn.worker
    worker_side = (
        None
        if side is None
        else (
            side.job_id,
            side.input_path,
            side.input_sha256,
            side.input_name,
            side.output_path,
            side.running,
            side.via_storage,
            side.busy,
        )
    )
    hs = conn.handshake
    return (
        None if hs is None else (hs.state, hs.principal),
        conn.principal,
        conn.job,
        conn.closed,
        (r.state, r.meta, r.serial, r.received, r.on_disk),
        (s.state, s.meta, s.offset, s.sent),
        worker_side,
    )


# ===================================================================== drivers: job


def open_receive(conn: Connection, meta: Message = META) -> int:
    """``conn`` receives FILE_META; returns the transfer's serial (receiver CHECKING)."""
    return one(feed(conn, meta), ev.CheckStore).transfer


def ready_at_zero(conn: Connection, serial: int, now: float = NOW) -> list[object]:
    """The store holds nothing of this content for ``conn``'s peer (StoreOffset 0): a
    client answers FILE_READY::0 at once; a worker first asks its proof of possession
    (CHALLENGE), takes the peer's FILE_PROOF, finds no held copy, then answers
    FILE_READY::0. Returns every output, the proof's included."""
    outputs = tell(conn, ev.StoreOffset(serial, 0), now)
    if conn.receiver.state is ReceiverState.PROVING:
        read = one(feed(conn, f"FILE_PROOF::{PROOF}", now), ev.ReadStoredRanges)
        outputs += tell(conn, ev.StoredRanges(read.transfer, None), now)
    assert conn.receiver.state is ReceiverState.RECEIVING
    return outputs


def hold_file(conn: Connection) -> list[object]:
    """``conn`` receives FILE_META of content its store holds: FILE_EXISTS."""
    serial = open_receive(conn)
    return tell(conn, ev.StoreHas(serial))


def worker_in(state: JobState, conn: Connection | None = None) -> Connection:
    """A worker whose job session is in ``state`` (paths INPUT and OUTPUT, or a held
    file for HAVE_FILE)."""
    conn = conn or worker()
    if state is JobState.HAVE_FILE:
        hold_file(conn)
    if state in (JobState.HAVE_INPUT, JobState.READY, JobState.RUNNING):
        feed(conn, SharedInputPath(INPUT))
        tell(conn, ev.InputAccepted(1.0, 2.0))
    if state in (JobState.HAVE_OUTPUT, JobState.READY, JobState.RUNNING):
        feed(conn, SharedOutputPath(OUTPUT))
        tell(conn, ev.OutputAccepted(3.0))
    if state is JobState.RUNNING:
        one(feed(conn, JobStart()), ev.StartJob)
    assert conn.job is state
    return conn


#: The client states reached from IDLE (PROTOCOL.md 4.3): a pending START only where
#: the worker's table takes JOB_START, and nothing pending while a job runs.
CLIENT_REACHABLE: tuple[ClientJobState, ...] = tuple(
    ClientJobState(s, p)
    for s in JobState
    for p in Pending
    if p is Pending.NONE
    or (s is not JobState.RUNNING and p is not Pending.START)
    or (s in (JobState.READY, JobState.HAVE_FILE) and p is Pending.START)
)


def client_in(state: ClientJobState, conn: Connection | None = None) -> Connection:
    """A client in ``state``, told by the worker's frames as a real worker sends them."""
    assert state in CLIENT_REACHABLE, state
    conn = conn or client()
    target = state.worker
    if target is JobState.HAVE_FILE:
        conn.send_file(ev.FileToSend(META.name, META.size, META.sha256))
        conn.drain()
        feed(conn, f"FILE_EXISTS::{SHA}")
    if target in (JobState.HAVE_INPUT, JobState.READY, JobState.RUNNING):
        say(conn, SharedInputPath(INPUT))
        feed(conn, PathValidated("input"))
    if target in (JobState.HAVE_OUTPUT, JobState.READY, JobState.RUNNING):
        say(conn, SharedOutputPath(OUTPUT))
        feed(conn, PathValidated("output"))
    if target is JobState.RUNNING:
        say(conn, JobStart())
        feed(conn, JobLog("epoch 1"))
    if state.pending is Pending.INPUT:
        say(conn, SharedInputPath(INPUT))
    elif state.pending is Pending.OUTPUT:
        say(conn, SharedOutputPath(OUTPUT))
    elif state.pending is Pending.START:
        say(conn, JobStart())
    assert conn.job == state, (conn.job, state)
    return conn


# ===================================================================== drivers: transfers


def receiver_in(
    role: Role, state: ReceiverState, *, full: bool = False, relay: bool = False
) -> Connection:
    """A connection whose receiver is in ``state`` (about META; nothing being sent).

    With ``relay`` (always for RELAYING and HALTING) the transfer is of BIG_META from
    offset 0, and a client's capabilities give it the relay road: RELAYING fetches its
    first chunk (``big_part(0, 4096)``), HALTING took RELAY_STOP during that fetch.

    RECEIVING holds 3 of META's 11 bytes, or all of them with ``full`` (a resume of a
    complete partial, so that END_OF_FILE verifies). IDLE comes right after a
    completed legacy transfer with ``full`` (its trailing END_OF_FILE is then taken).
    PROVING (a worker only) asked CHALLENGE for a new file of the peer's.
    """
    relaying = (ReceiverState.RELAYING, ReceiverState.HALTING)
    relay = state in relaying or (relay and state is ReceiverState.RECEIVING)
    if relay and role is Role.CLIENT:  # its capabilities must give it the relay road
        conn = client(capabilities=Capabilities(relay_road=True))
    else:
        conn = new(role)
    if relay:
        ready_at_zero(conn, open_receive(conn, BIG_META))
        if state in relaying:
            feed(conn, big_part(0, RELAY_CHUNK))
        if state is ReceiverState.HALTING:
            feed(conn, RelayStop(BIG_SHA))
    elif state is ReceiverState.IDLE and full:
        serial = open_receive(conn, decode("FILE_META::notes.txt:11:gui-1"))
        tell(conn, ev.StoreOffset(serial, 0))
        feed(conn, DATA)
        tell(conn, ev.Stored(serial, SHA))
    elif state is ReceiverState.REQUESTED:
        say(conn, ResultsRequest(JOB))  # a client only: a worker never asks for results
    elif state is not ReceiverState.IDLE:
        serial = open_receive(conn)
        if state is ReceiverState.RECEIVING:
            tell(conn, ev.StoreOffset(serial, len(DATA) if full else 3))
        elif state is ReceiverState.VERIFYING:
            tell(conn, ev.StoreOffset(serial, len(DATA)))
            one(feed(conn, "END_OF_FILE"), ev.Finish)
        elif state is ReceiverState.PROVING:
            assert sends(tell(conn, ev.StoreOffset(serial, 0))) == [CHALLENGE]
        elif state is ReceiverState.DRAINING:
            tell(conn, ev.StoreOffset(serial, 1))
            tell(conn, ev.StoreFailed(serial, TransferErrorCode.DISK_FULL, "no space left"))
    assert conn.receiver.state is state
    return conn


def announce(conn: Connection) -> list[object]:
    """``conn`` opens a send of META: a client its file, a worker the results of JOB."""
    if conn.role is Role.CLIENT:
        conn.send_file(ev.FileToSend(META.name, META.size, META.sha256))
        return conn.drain()
    one(feed(conn, ResultsRequest(JOB)), ev.LookupResults)
    one(tell(conn, ev.ResultsFound(JOB, PEER, False, OUTPUT)), ev.PackResults)
    return tell(conn, ev.FileToSend(META.name, META.size, META.sha256))


def sender_in(role: Role, state: SenderState) -> Connection:
    """A connection whose sender is in ``state`` (sending META; nothing being received).
    PREPARING is a worker's (RESULTS_REQUEST taken); PROVING and PROVED answer CHALLENGE;
    RELAYING and RELAY_STOPPING are a client's on the relay road (FILE_READY::0 taken,
    then RELAY_STOP sent for RELAY_STOPPING)."""
    conn = new(role)
    if state is SenderState.PREPARING:
        one(feed(conn, ResultsRequest(JOB)), ev.LookupResults)
    elif state in (SenderState.RELAYING, SenderState.RELAY_STOPPING):
        assert role is Role.CLIENT  # a worker sends its results on the channel
        conn.send_file(ev.FileToSend(META.name, META.size, META.sha256), road=Road.RELAY)
        conn.drain()
        one(feed(conn, "FILE_READY::0"), RelayFrom)
        if state is SenderState.RELAY_STOPPING:
            conn.relay_stop()
            conn.drain()
    elif state is not SenderState.IDLE:
        announce(conn)
        if state in (SenderState.PROVING, SenderState.PROVED):
            read = one(feed(conn, encode(CHALLENGE)), ev.ReadFileRanges)
            if state is SenderState.PROVED:
                assert sends(tell(conn, ev.FileRanges(read.transfer, PROOF))) == [
                    decode(f"FILE_PROOF::{PROOF}")
                ]
        if state in (SenderState.SENDING, SenderState.AWAIT_RECEIVED):
            one(feed(conn, "FILE_READY::0"), ev.StreamFrom)
        if state is SenderState.AWAIT_RECEIVED:
            for start in range(0, len(DATA), CHUNK):
                assert conn.send_chunk(DATA[start : start + CHUNK]) is not None
            conn.end_of_file()
            assert sends(conn.drain()) == [decode("END_OF_FILE")]
        if state is SenderState.CANCELLED:
            conn.cancel_send()
            conn.drain()
    assert conn.sender.state is state
    return conn


# ===================================================================== drivers: handshake


def authenticated_pair(**worker_kw: Any) -> tuple[Connection, Connection]:
    """A client and a worker connection (keys 1 and 2) after a whole handshake."""
    w = Connection(Role.WORKER, peer=PEER, auth=worker_auth(**worker_kw))
    c = Connection(Role.CLIENT, auth=client_auth())
    c.start_handshake()
    pending = c.drain()
    while frames(pending):
        back = deliver(pending, w)
        pending = deliver(back, c)
    return c, w


def auth_in(role: Role, state: AuthState) -> Connection:
    """A connection with a handshake in ``state`` (HELLO_SENT and RESPONDED are a
    client's; CHALLENGED a worker's)."""
    worker_states = {AuthState.NEW, AuthState.CHALLENGED, AuthState.AUTHENTICATED,
                     AuthState.ANONYMOUS, AuthState.FAILED}  # fmt: skip
    if role is Role.WORKER:
        assert state in worker_states
        if state is AuthState.AUTHENTICATED:
            return authenticated_pair()[1]
        w = Connection(
            Role.WORKER, peer=PEER, auth=worker_auth(allow_anonymous=state is AuthState.ANONYMOUS)
        )
        c = Connection(Role.CLIENT, auth=client_auth())
        if state is AuthState.ANONYMOUS:
            feed(w, "JOB_ID::anon-1")
        elif state in (AuthState.CHALLENGED, AuthState.FAILED):
            c.start_handshake()
            deliver(c.drain(), w)
            if state is AuthState.FAILED:
                feed(w, AuthResponse(bytes(64)))
        assert w.handshake is not None and w.handshake.state is state
        return w
    assert state is not AuthState.CHALLENGED
    if state is AuthState.AUTHENTICATED:
        return authenticated_pair()[0]
    if state is AuthState.ANONYMOUS:
        c = Connection(Role.CLIENT, auth=dataclasses.replace(client_auth(), identity=None))
    else:
        c = Connection(Role.CLIENT, auth=client_auth())
    if state in (AuthState.HELLO_SENT, AuthState.RESPONDED, AuthState.FAILED):
        w = Connection(Role.WORKER, peer=PEER, auth=worker_auth())
        c.start_handshake()
        challenge = deliver(c.drain(), w)
        if state is AuthState.RESPONDED:
            deliver(challenge, c)
        elif state is AuthState.FAILED:
            feed(c, "PROTOCOL_ERROR::AUTH_FAILED::refused")
    assert c.handshake is not None and c.handshake.state is state
    return c
