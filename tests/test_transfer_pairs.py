"""A client sending a file to a worker, both real Connections, with frames in flight
both ways and delivered in a random order per direction, through dropped connections
(the worker's store survives them) and cancels. Whatever the interleaving, the file is
stored exactly once and only when its bytes match, a resume continues from what is
on disk, and a cancelled transfer never leaks into the next one."""

from __future__ import annotations

import random
from collections import deque

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from protocol import events as ev
from protocol.codec import decode
from protocol.errors import LocalProtocolError, TransferErrorCode
from protocol.limits import Limits
from protocol.messages import Message
from protocol.sender import SenderState
from protocol.testing import ranges_digest, seeded_challenge
from protocol.transfer import ReceiverState
from protocol.transfer_messages import (
    FileExists,
    FileMeta,
    FileProgress,
    FileProofRequest,
    FileReady,
    FileReceived,
    TransferError,
)
from tests.protocol_helpers import client, sha256, worker

QUICK = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Store:
    """The worker's content store: partial files and stored objects, by sha256, and what
    the client's principal stored or proved."""

    def __init__(self) -> None:
        self.partials: dict[str, bytes] = {}
        self.objects: dict[str, bytes] = {}
        self.owned: set[str] = set()
        self.stores = 0


class Link:
    """One data channel: a client sending, a worker receiving into ``store``."""

    def __init__(self, store: Store, chunk: int, rng: random.Random) -> None:
        self.store = store
        self.rng = rng
        self.client = client(limits=Limits(chunk_bytes=chunk))
        self.worker = worker(limits=Limits(max_binary_frame_bytes=4096))
        self.worker.receiver.proof.challenge = seeded_challenge(rng.randrange(1 << 30))
        self.to_worker: deque[str | bytes] = deque()
        self.to_client: deque[str | bytes] = deque()
        self.file = b""
        self.cursor: int | None = None
        self.bytes_sent = 0
        self.chunks_sent = 0
        self.ended: list[ev.SendEnded] = []
        self.replies: list[Message] = []  # what the worker sent, in order
        self.open: dict[int, str] = {}  # transfer serial -> the sha256 its partial is under

    def send(self, file: bytes, sha: str) -> None:
        self.file = file
        self.client.send_file(ev.FileToSend("data.bin", len(file), sha))
        self.flush_client()

    def flush_client(self) -> None:
        for out in self.client.drain():
            if isinstance(out, ev.Send):
                self.to_worker.append(out.frame)
            elif isinstance(out, ev.StreamFrom):
                self.cursor = out.offset
            elif isinstance(out, ev.SendEnded):
                self.ended.append(out)
            elif isinstance(out, ev.ReadFileRanges):
                self.client.report(
                    ev.FileRanges(out.transfer, ranges_digest(self.file, out.request))
                )
                self.flush_client()

    def flush_worker(self) -> None:
        while (out := self.worker.next_output()) is not None:
            match out:
                case ev.Send(message=message, frame=frame):
                    self.to_client.append(frame)
                    self.replies.append(message)
                case ev.CheckStore(transfer=serial, meta=meta):
                    assert isinstance(meta, FileMeta)
                    if meta.sha256 in self.store.objects and meta.sha256 in self.store.owned:
                        self.worker.report(ev.StoreHas(serial))
                    else:
                        self.open[serial] = meta.sha256
                        held = self.store.partials.setdefault(meta.sha256, b"")
                        self.worker.report(ev.StoreOffset(serial, len(held)))
                case ev.Append(transfer=serial, data=data):
                    sha = self.open[serial]
                    self.store.partials[sha] += data
                    self.worker.report(ev.Written(serial, len(self.store.partials[sha])), 0.0)
                case ev.Finish(transfer=serial, meta=meta):
                    data = self.store.partials.pop(self.open.pop(serial))
                    if sha256(data) == getattr(meta, "sha256", None):
                        self.store.objects[sha256(data)] = data
                        self.store.stores += 1
                        self.worker.report(ev.Stored(serial, sha256(data)))
                    else:
                        code = TransferErrorCode.HASH_MISMATCH
                        self.worker.report(ev.StoreFailed(serial, code, "digest differs", False))
                case ev.Discard(transfer=serial, keep=keep):
                    sha = self.open.pop(serial, None)
                    if sha is not None and not keep:
                        self.store.partials.pop(sha, None)
                case ev.ReadStoredRanges(transfer=serial, sha256=sha, request=request):
                    held = self.store.objects.get(sha)
                    self.worker.report(ev.StoredRanges(serial, ranges_digest(held, request)))
                case ev.RecordOwnership(sha256=sha):
                    self.store.owned.add(sha)

    def push(self) -> None:
        """The client streams one chunk of a random size (or ends the file)."""
        assert self.cursor is not None
        meta = self.client.sender.meta
        assert meta is not None
        if self.cursor >= len(self.file):
            self.client.end_of_file()
            self.cursor = None
            self.flush_client()
            return
        piece = self.file[self.cursor : self.cursor + self.rng.randint(1, meta.chunk_size)]
        frame = self.client.send_chunk(piece)
        if frame is None:  # the transfer ended meanwhile
            self.cursor = None
            return
        self.to_worker.append(frame)
        self.cursor += len(piece)
        self.bytes_sent += len(piece)
        self.chunks_sent += 1

    def actions(self) -> list[str]:
        found = []
        if self.to_worker:
            found.append("worker")
        if self.to_client:
            found.append("client")
        if self.cursor is not None:
            found.append("push")
        return found

    def step(self, action: str, now: float) -> None:
        if action == "worker":
            self.worker.receive(self.to_worker.popleft(), now)
            self.flush_worker()
        elif action == "client":
            self.client.receive(self.to_client.popleft(), now)
            self.flush_client()
        else:
            self.push()


def received(links: list[Link]) -> int:
    return sum(isinstance(m, FileReceived) for link in links for m in link.replies)


def run(
    file: bytes, sha: str, store: Store, chunk: int, rng: random.Random, drops: int, rate: float
) -> list[Link]:
    """Run until both sides settle, dropping the connection up to ``drops`` times (a new
    link then sends the same file); check the invariants after every step."""
    good = sha == sha256(file)
    link = Link(store, chunk, rng)
    link.send(file, sha)
    links, offsets, clock = [link], [], 0.0
    for _ in range(100_000):
        if drops and rng.random() < rate:
            drops -= 1
            link.worker.close()
            link.flush_worker()
            link = Link(store, chunk, rng)  # a reconnection: the store stays
            link.send(file, sha)
            links.append(link)
            continue
        actions = link.actions()
        if not actions:
            break
        clock += 0.1
        seen = len(link.replies)
        link.step(rng.choice(actions), clock)
        for key, held in store.partials.items():
            assert key == sha and file.startswith(held), "the store holds only a prefix"
        for message in link.replies[seen:]:
            if isinstance(message, FileReady):
                assert message.offset <= len(file)
                assert not good or not offsets or message.offset >= offsets[-1]
                offsets.append(message.offset)
            elif isinstance(message, FileReceived):
                assert good and message.sha256 == sha and store.objects[sha] == file
            elif isinstance(message, FileProgress):
                assert message.received <= message.size == len(file)
            elif isinstance(message, TransferError):
                assert not good and message.code == TransferErrorCode.HASH_MISMATCH
    else:  # pragma: no cover
        raise AssertionError("the transfer never settled")
    return links


@settings(QUICK, max_examples=100)
@given(
    file=st.binary(max_size=3000),
    chunk=st.integers(1, 1024),
    drops=st.integers(0, 3),
    rate=st.sampled_from([0.0, 0.01, 0.05, 0.3]),
    rng=st.randoms(use_true_random=False),
)
def test_a_file_survives_reconnections_and_is_stored_once(
    file: bytes, chunk: int, drops: int, rate: float, rng: random.Random
) -> None:
    store = Store()
    sha = sha256(file)
    links = run(file, sha, store, chunk, rng, drops, rate)
    last = links[-1]
    (outcome,) = last.ended
    assert outcome.status in ("received", "exists")
    assert last.client.sender.state is SenderState.IDLE
    assert last.worker.receiver.state is ReceiverState.IDLE
    assert (store.objects, store.partials, store.stores) == ({sha: file}, {}, 1)
    assert received(links) == 1
    if outcome.status == "received":  # verified on this very link, from the offset it asked
        assert received([last]) == 1
        assert last.bytes_sent == len(file) - outcome.offset
        assert last.worker.worker.input_sha256 == sha  # type: ignore[union-attr]
    else:  # stored earlier; the FILE_RECEIVED was lost with its connection
        assert (last.bytes_sent, last.chunks_sent) == (0, 0)
        assert last.replies == [FileExists(sha)]  # it stored it itself: no proof asked


@settings(QUICK, max_examples=50)
@given(
    file=st.binary(max_size=2000),
    chunk=st.integers(1, 512),
    drops=st.integers(0, 2),
    rate=st.sampled_from([0.0, 0.05, 0.3]),
    rng=st.randoms(use_true_random=False),
)
def test_a_wrong_sha256_never_yields_file_received(
    file: bytes, chunk: int, drops: int, rate: float, rng: random.Random
) -> None:
    store = Store()
    links = run(file, sha256(file + b"!"), store, chunk, rng, drops, rate)
    (outcome,) = links[-1].ended
    assert (outcome.status, outcome.code) == ("failed", TransferErrorCode.HASH_MISMATCH)
    assert received(links) == 0
    assert store.objects == {} and store.partials == {}


@settings(QUICK, max_examples=30)
@given(file=st.binary(max_size=3000), chunk=st.integers(1, 1024), rng=st.randoms())
def test_content_already_held_is_answered_file_exists_without_a_chunk(
    file: bytes, chunk: int, rng: random.Random
) -> None:
    store = Store()
    sha = sha256(file)
    store.objects[sha] = file  # held, stored by another principal: a proof first
    (link,) = run(file, sha, store, chunk, rng, 0, 0.0)
    if not file:  # nothing to prove: the empty file crosses (and is stored once)
        assert link.ended == [ev.SendEnded("received", sha)]
        return
    assert link.ended == [ev.SendEnded("exists", sha)]
    (request, exists) = link.replies
    assert isinstance(request, FileProofRequest) and exists == FileExists(sha)
    assert (link.chunks_sent, store.stores, store.owned) == (0, 0, {sha})
    (again,) = run(file, sha, store, chunk, rng, 0, 0.0)  # now its own: no proof
    assert again.replies == [FileExists(sha)]


@settings(QUICK, max_examples=100)
@given(
    file_a=st.binary(max_size=2000),
    file_b=st.binary(max_size=2000),
    chunk=st.integers(1, 512),
    held=st.integers(0, 2000),
    a_stored=st.booleans(),
    cancel_at=st.integers(0, 200),
    rng=st.randoms(use_true_random=False),
)
def test_a_cancelled_transfer_never_leaks_into_the_next_one(
    file_a: bytes,
    file_b: bytes,
    chunk: int,
    held: int,
    a_stored: bool,
    cancel_at: int,
    rng: random.Random,
) -> None:
    """A, then B on the same link; the client cancels A at a random step (frames in
    flight both ways) and opens B as soon as the worker has acknowledged. B is answered,
    sent and stored as B, from B's own offset (0), whatever of A was still on its way."""
    sha_a, sha_b = sha256(file_a), sha256(file_b)
    assume(sha_a != sha_b)
    store = Store()
    if a_stored:
        store.objects[sha_a] = file_a
    else:
        store.partials[sha_a] = file_a[: min(held, len(file_a))]  # A resumes there
    link = Link(store, chunk, rng)
    link.send(file_a, sha_a)
    cancelled = b_open = False
    for step in range(100_000):
        sender = link.client.sender
        if not cancelled and not b_open and step >= cancel_at and sender.active:
            link.client.cancel_send()
            link.flush_client()
            link.cursor = None
            cancelled = True
        if sender.state is SenderState.CANCELLED:
            with pytest.raises(LocalProtocolError):
                link.client.send_file(ev.FileToSend("b.bin", len(file_b), sha_b))
        if not b_open and sender.state is SenderState.IDLE:
            sent_before = link.bytes_sent
            link.send(file_b, sha_b)
            b_open = True
        actions = link.actions()
        if not actions:
            break
        link.step(rng.choice(actions), step * 0.1)
        for key, part in store.partials.items():
            assert (file_a if key == sha_a else file_b).startswith(part)
        if b_open and sender.state is SenderState.SENDING:
            assert (sender.meta.sha256, sender.offset) == (sha_b, 0)  # type: ignore[union-attr]
    else:  # pragma: no cover
        raise AssertionError("the transfers never settled")
    assert b_open
    assert link.ended[-1] == ev.SendEnded("received", sha_b, 0)
    assert link.bytes_sent - sent_before == len(file_b)
    assert store.objects[sha_b] == file_b and sha_b not in store.partials
    if sha_a in store.objects:
        assert store.objects[sha_a] == file_a
    errors = [m for m in link.replies if isinstance(m, TransferError)]
    assert [e.code for e in errors] == ([TransferErrorCode.CANCELLED] if cancelled else [])
    assert link.replies[-1] == FileReceived(sha_b)


def test_a_refusal_of_the_cancelled_transfer_is_no_acknowledgement() -> None:
    store = Store()
    link = Link(store, 4, random.Random(0))
    link.worker = worker(limits=Limits(max_file_bytes=10))
    link.worker.receiver.proof.challenge = seeded_challenge()
    link.send(b"x" * 11, sha256(b"x" * 11))  # too large for this worker
    link.client.cancel_send()  # before any answer
    link.flush_client()
    while link.to_worker:
        link.step("worker", 0.0)
    refusal, ack = (decode(frame) for frame in link.to_client)
    assert isinstance(refusal, TransferError) and refusal.code == TransferErrorCode.FILE_TOO_LARGE
    assert ack == TransferError(TransferErrorCode.CANCELLED, "no transfer open")
    link.step("client", 0.0)
    assert link.client.sender.state is SenderState.CANCELLED  # absorbed: still waiting
    link.step("client", 0.0)
    assert link.client.sender.state is SenderState.IDLE
    link.send(b"small", sha256(b"small"))
    while link.actions():
        link.step(link.actions()[0], 0.0)
    assert link.ended[-1] == ev.SendEnded("received", sha256(b"small"))
