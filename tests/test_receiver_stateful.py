"""The transfer receiver (:class:`protocol.transfer.Receiver`) against a real BlobStore in
a real temporary directory,
driven by a hypothesis rule-based state machine: transfers opened, fed, cut, corrupted,
cancelled, disconnected, resumed and restarted in any order.

A small synchronous adapter performs the receiver's effects on the store (the worker's
adapter does the same in threads). The sender side is modelled by hand: it sends the
model file from the receiver's FILE_READY offset, and some rules break the stream on
purpose (a duplicated, dropped or reordered chunk, an oversized chunk, END_OF_FILE too
early) as a faulty or hostile peer would.

The sender may also move the rest of the file by the relay road (real AES-GCM chunks in
in-memory relay objects): the adapter then fetches, opens and writes each chunk into the
same partial file, and a fetch may drop or meet a tampered chunk; the road then ends with
RELAY_ENDED at the verified offset and the channel goes on from there.

Invariants checked after every step:

* every partial file on disk is a prefix of the bytes the receiver appended to it (in
  arrival order), and of the model file as long as no chunk of it was duplicated,
  dropped or reordered; a resumed FILE_READY offset is exactly what the disk holds;
* for the same content, the FILE_READY offset never goes back, across FILE_CANCEL,
  disconnections and restarts, unless the partial was thrown away on purpose (a hash
  mismatch or an aborted chunk), and once the content is stored the answer is FILE_EXISTS;
* FILE_RECEIVED is sent only when the stored object's sha256 is the model's and its bytes
  are the model file's; nothing else is ever stored.
"""

from __future__ import annotations

import gc
import hashlib
import random
import shutil
import tempfile
import weakref
from pathlib import Path

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from protocol import (
    Chunk,
    EndOfFile,
    ErrorCode,
    FileCancel,
    FileExists,
    FileMeta,
    FileProgress,
    FileReady,
    FileReceived,
    Message,
    RemoteProtocolError,
    TransferError,
    TransferErrorCode,
)
from protocol.errors import RelayEndCode
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
from protocol.relay_crypto import ChunkCipher, RelaySecret
from protocol.relay_events import (
    DeleteRelayObject,
    FetchRelayPart,
    RelayFailed,
    RelayFetched,
    RelayWritten,
)
from protocol.relay_messages import RelayEnded, RelayPart
from protocol.transfer import Receiver, ReceiverState
from rtc_worker.storage import BlobStore, HashMismatchError, PartialFile

R = ReceiverState
MAX_CHUNK = 512
K = 4096  # the relay road's chunk size here


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class StoreAdapter:
    """Performs a receiver's effects on a BlobStore, synchronously."""

    def __init__(self, store: BlobStore, receiver: Receiver) -> None:
        self.store = store
        self.receiver = receiver
        self.partial: PartialFile | None = None
        self.sent: list[Message] = []  # what the receiver sent to the sender
        self.appended: list[bytes] = []  # Append effects of the last run
        self.finished: str | None = None  # "stored" or "mismatch" after a Finish
        self.discarded: bool | None = None  # Discard(keep) of the last run
        self.now = 0.0
        self.relay_objects: dict[str, bytes] = {}  # the storage service's relay objects
        self.fail_at: int | None = None  # a relay fetch drops at this chunk index
        self.deleted: list[str] = []

    def run(self, effects: list) -> None:
        for effect in effects:
            match effect:
                case Message():
                    self.sent.append(effect)
                case CheckStore(transfer=serial, meta=meta):
                    assert isinstance(meta, FileMeta)
                    if self.store.has(meta.sha256):
                        self.run(self.receiver.report(StoreHas(serial), self.now))
                    else:
                        assert self.partial is None
                        self.partial = self.store.open_partial(meta.sha256, meta.size, meta.name)
                        offset = StoreOffset(serial, self.partial.offset)
                        self.run(self.receiver.report(offset, self.now))
                case Append(transfer=serial, data=data):
                    assert self.partial is not None
                    self.partial.write(data)
                    self.appended.append(data)
                    written = Written(serial, self.partial.on_disk)
                    self.run(self.receiver.report(written, self.now))
                case Finish(transfer=serial, meta=meta):
                    assert isinstance(meta, FileMeta) and self.partial is not None
                    partial, self.partial = self.partial, None
                    try:
                        stored = partial.commit(meta.sha256)
                    except HashMismatchError as exc:
                        self.finished = "mismatch"
                        code = TransferErrorCode.HASH_MISMATCH
                        failed = StoreFailed(serial, code, str(exc), False)
                        self.run(self.receiver.report(failed, self.now))
                    else:
                        self.finished = "stored"
                        self.run(self.receiver.report(Stored(serial, stored.sha256), self.now))
                case Discard(keep=keep):
                    self.discarded = keep
                    if self.partial is not None:
                        partial, self.partial = self.partial, None
                        if keep:
                            partial.close()
                        else:
                            partial.discard()
                case FetchRelayPart(transfer=serial, part=part, meta=meta, start=start):
                    self.fetch(serial, part, meta, start)
                case DeleteRelayObject(upload_id=upload_id):
                    self.deleted.append(upload_id)
                case Note() | FileHeld() | ReceiveEnded():
                    pass
                case _:
                    raise AssertionError(effect)

    def fetch(self, serial: int, part: RelayPart, meta: FileMeta, start: int) -> None:
        """A ranged GET of the part's object, each chunk opened before it is written
        (synchronous: the fetch ends before the next frame)."""
        assert self.partial is not None
        cipher = ChunkCipher(part.secret, meta.sha256, meta.size, part.chunk_size)
        blob, first, at = self.relay_objects[part.upload_id], part.offset // K, start
        while at < part.end:
            index = at // K
            lo, hi = cipher.cipher_span(first, index, index + 1)
            try:
                if index == self.fail_at:
                    raise ConnectionError("the storage service dropped the connection")
                plain = cipher.open(index, blob[lo:hi])
            except (ConnectionError, RemoteProtocolError) as exc:
                self.fail_at = None
                code = (
                    RelayEndCode.RELAY_UNREACHABLE
                    if isinstance(exc, ConnectionError)
                    else RelayEndCode.RELAY_CHUNK_INVALID
                )
                failed = RelayFailed(serial, at, code, "drawn")  # what it verified
                self.run(self.receiver.report(failed, self.now))
                return
            data = plain[at - index * K :]
            self.partial.write(data)
            self.partial.flush()
            self.appended.append(data)
            at += len(data)
            # Each chunk on disk is reported, as the worker's fetch reports its batches:
            # the machine checks the boundary and may send FILE_PROGRESS mid-part.
            sent = len(self.sent)
            self.run(self.receiver.report(RelayWritten(serial, at), self.now))
            progress, self.sent[sent:] = self.sent[sent:], []
            for reply in progress:  # only FILE_PROGRESS, with exactly what is on disk
                assert reply == FileProgress(self.partial.on_disk, meta.size)
                assert self.partial.on_disk == at
                event("FILE_PROGRESS during a relay fetch")
        self.run(self.receiver.report(RelayFetched(serial, at), self.now))

    def receive(self, message: Message, now: float) -> None:
        self.appended, self.finished, self.discarded = [], None, None
        self.now = now
        self.run(self.receiver.receive(message, now))

    def crash(self) -> None:
        """The process dies: the open partial's descriptor goes away without a flush."""
        if self.partial is None:
            return
        alive = weakref.ref(self.partial)
        self.partial = None  # the last reference: its finalizer closes the descriptor
        if alive() is not None:
            gc.collect()
        assert alive() is None


class ReceiverWithStore(RuleBasedStateMachine):
    """One model file; transfers of it (and of a wrong sha256) into a real store."""

    def __init__(self) -> None:
        super().__init__()
        self.tmp = Path(tempfile.mkdtemp(prefix="rtc-stateful-"))
        self.store_root = self.tmp / "store"
        self.model = b""
        self.sha = ""
        self.wrong_sha = ""
        self.now = 0.0
        # the sender's side: the transfer it believes open and where its next chunk starts
        self.sending: FileMeta | None = None
        self.next_offset = 0
        # per partial (by sha256): what the receiver appended to it, oldest first, and
        # the minimum the disk must hold (flushed at a close)
        self.appended: dict[str, bytes] = {}
        self.durable: dict[str, bytes] = {}
        self.last_ready: dict[str, int] = {}
        # where a partial stops being the model's bytes (a duplicated, dropped or
        # reordered chunk was appended there); before it, the partial must match the model
        self.fault_at: dict[str, int] = {}
        self.gap = False  # a chunk was dropped: the next one appended is out of place
        self.stored = False

    # ------------------------------------------------------------------ set-up

    @initialize(
        size=st.integers(1, 3 * K + 100),
        seed=st.integers(0, 2**32 - 1),
        chunk_size=st.integers(64, MAX_CHUNK),
    )
    def make_model(self, size: int, seed: int, chunk_size: int) -> None:
        self.model = random.Random(seed).randbytes(size)
        self.sha = sha256(self.model)
        self.wrong_sha = sha256(self.model + b"!")
        self.chunk_size = chunk_size
        self.new_connection(BlobStore(self.store_root))

    def new_connection(self, store: BlobStore) -> None:
        self.receiver = Receiver(Limits(max_file_bytes=1 << 20, max_binary_frame_bytes=MAX_CHUNK))
        self.adapter = StoreAdapter(store, self.receiver)
        self.sending = None

    def teardown(self) -> None:
        adapter = getattr(self, "adapter", None)
        if adapter is not None and adapter.partial is not None:
            adapter.partial.close()
        shutil.rmtree(self.tmp, ignore_errors=True)

    # ------------------------------------------------------------------ helpers

    def part_path(self, sha: str) -> Path:
        return self.store_root / "partial" / f"{sha}.part"

    def on_disk(self, sha: str) -> bytes | None:
        path = self.part_path(sha)
        return path.read_bytes() if path.exists() else None

    def forget(self, sha: str) -> None:
        """The partial is gone on purpose (stored, hash mismatch, aborted chunk)."""
        for table in (self.appended, self.durable, self.last_ready, self.fault_at):
            table.pop(sha, None)

    def replies(self) -> list[Message]:
        sent, self.adapter.sent = self.adapter.sent, []
        return sent

    def deliver(self, message: Message) -> list[Message]:
        """Send one frame to the receiver; track what it appended; return its replies."""
        self.now += 0.2
        meta = self.receiver.meta
        self.adapter.receive(message, self.now)
        if isinstance(meta, FileMeta):
            for data in self.adapter.appended:
                self.appended[meta.sha256] = self.appended.get(meta.sha256, b"") + data
            if self.adapter.discarded is False or self.adapter.finished == "mismatch":
                self.forget(meta.sha256)
            elif self.adapter.discarded is True:  # closed: everything appended is flushed
                self.durable[meta.sha256] = self.appended.get(meta.sha256, b"")
        replies = self.replies()
        for reply in replies:
            if isinstance(reply, FileProgress):  # bytes on disk, never more than received
                assert meta is not None and reply.size == meta.size
                partial = self.adapter.partial
                assert partial is not None and reply.received == partial.on_disk
                assert reply.received <= self.receiver.received
            if isinstance(reply, TransferError | FileReceived | FileExists):
                self.sending = None
        return replies

    def check_received(self, replies: list[Message], meta: FileMeta) -> None:
        received = [r for r in replies if isinstance(r, FileReceived)]
        if not received:
            return
        # FILE_RECEIVED only for the model, stored with exactly its bytes
        assert received == [FileReceived(self.sha)]
        assert meta.sha256 == self.sha
        obj = self.adapter.store.object_path(self.sha)
        assert obj.read_bytes() == self.model
        assert sha256(obj.read_bytes()) == self.sha
        assert self.appended.get(self.sha, b"") == self.model
        self.stored = True
        self.forget(self.sha)

    # ------------------------------------------------------------------ opening

    def open(self, sha: str) -> None:
        meta = FileMeta("model.bin", len(self.model), sha, self.chunk_size)
        replies = self.deliver(meta)
        assert len(replies) == 1, replies
        reply = replies[0]
        if sha == self.sha and self.stored:
            assert reply == FileExists(self.sha)
            assert self.receiver.state is R.IDLE
            event("FILE_EXISTS for stored content")
            return
        assert isinstance(reply, FileReady), reply
        offset = reply.offset
        disk = self.on_disk(sha) or b""
        # the offset is what the disk holds, at least what was flushed, never less
        # than any earlier offset for this content
        assert offset == len(disk)
        assert disk.startswith(self.durable.get(sha, b""))
        assert offset >= self.last_ready.get(sha, 0)
        if offset:
            event("FILE_READY resumes at an offset > 0")
        self.last_ready[sha] = offset
        self.appended[sha] = disk
        self.durable[sha] = disk
        self.sending, self.next_offset, self.gap = meta, offset, False

    @precondition(lambda self: not self.receiver.active)
    @rule(wrong=st.booleans())
    def open_transfer(self, wrong: bool) -> None:
        self.open(self.wrong_sha if wrong else self.sha)

    @precondition(lambda self: self.receiver.state is R.RECEIVING)
    @rule()
    def file_meta_while_receiving_is_refused(self) -> None:
        before = (self.receiver.state, self.receiver.meta, self.receiver.received)
        with pytest.raises(RemoteProtocolError) as info:
            self.adapter.receive(FileMeta("other.bin", 1, self.sha, 64), self.now)
        assert info.value.code == ErrorCode.UNEXPECTED_MESSAGE
        assert (self.receiver.state, self.receiver.meta, self.receiver.received) == before

    # ------------------------------------------------------------------ chunks

    def chunk_at(self, offset: int) -> bytes:
        return self.model[offset : offset + self.chunk_size]

    def send_chunk(self, data: bytes, *, out_of_place: bool = False) -> None:
        meta = self.receiver.meta
        sha = getattr(meta, "sha256", "")
        before = len(self.appended.get(sha, b""))
        replies = self.deliver(Chunk(data))
        if self.adapter.appended and (out_of_place or self.gap):
            self.fault_at.setdefault(sha, before)
            self.gap = False
        if meta is None:
            assert replies == []  # DRAINING: dropped silently
            return
        errors = [r for r in replies if isinstance(r, TransferError)]
        if errors:  # beyond the announced size: aborted, the partial is thrown away
            assert [e.code for e in errors] == [TransferErrorCode.SIZE_MISMATCH]
            assert self.receiver.state is R.DRAINING
            assert self.on_disk(meta.sha256) is None

    @precondition(lambda self: self.sending is not None and self.receiver.state is R.RECEIVING)
    @rule()
    def send_next_chunk(self) -> None:
        data = self.chunk_at(self.next_offset)
        self.next_offset += len(data)
        if data:
            self.send_chunk(data)

    @precondition(
        lambda self: (
            self.sending is not None
            and self.sending.sha256 == self.sha
            and self.receiver.state is R.RECEIVING
            and self.receiver.received == self.next_offset < len(self.model)
            and not self.receiver.relay.ended
            and not self.gap
            and self.sha not in self.fault_at
        )
    )
    @rule(
        part_chunks=st.integers(1, 3),
        fault=st.sampled_from([None, "drop", "tamper"]),
        where=st.integers(0, 3),
    )
    def relay_the_rest(self, part_chunks: int, fault: str | None, where: int) -> None:
        """The sender moves the rest by the relay road, part by part, from the chunk
        boundary at or below the receiver's offset; a fetch may drop or meet a tampered
        chunk, and then the channel goes on from the verified offset."""
        secret, size = RelaySecret.generate(), len(self.model)
        cipher = ChunkCipher(secret, self.sha, size, K)
        offset = self.next_offset - self.next_offset % K
        self.adapter.fail_at = where if fault == "drop" else None
        while offset < size:
            end = min(offset + part_chunks * K, size)
            blob = b"".join(
                cipher.seal(i, self.model[i * K : (i + 1) * K])
                for i in range(offset // K, -(-end // K))
            )
            if fault == "tamper" and offset // K <= where < -(-end // K):  # chunk `where`
                at = (where - offset // K) * (K + 16)
                blob = blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]
            upload_id = f"{len(self.adapter.relay_objects) + 1:032x}"
            self.adapter.relay_objects[upload_id] = blob
            replies = self.deliver(
                RelayPart.of(self.sha, offset, end - offset, K, secret, upload_id, "t")
            )
            ended = [r for r in replies if isinstance(r, RelayEnded)]
            if ended:  # the channel goes on from exactly what is on disk
                (relay_ended,) = ended
                partial = self.adapter.partial
                assert partial is not None  # the offset is where the next byte goes
                assert relay_ended.offset == self.receiver.received == partial.offset
                event(f"relay road ended: {relay_ended.code}")
                self.next_offset = relay_ended.offset
                return
            assert self.adapter.deleted[-1] == upload_id  # verified: its object goes
            if self.sending is None:  # FILE_RECEIVED (checked by the sender's model)
                self.check_received(replies, FileMeta("model.bin", size, self.sha, 64))
                event("relay road verified the whole file")
                return
            offset = end
        self.next_offset = size

    @precondition(lambda self: self.sending is not None and self.receiver.state is R.RECEIVING)
    @rule()
    def send_the_remaining_chunks(self) -> None:
        """The sender streams on to the end of the file, in order."""
        while self.next_offset < len(self.model) and self.receiver.state is R.RECEIVING:
            self.send_next_chunk()

    @precondition(lambda self: self.sending is not None and self.receiver.state is R.RECEIVING)
    @rule()
    def finish_the_transfer(self) -> None:
        """The sender streams on to the end, then sends END_OF_FILE."""
        self.send_the_remaining_chunks()
        self.end_of_file()

    @precondition(lambda self: self.sending is not None and self.receiver.state is R.RECEIVING)
    @rule()
    def send_a_duplicate_chunk(self) -> None:
        """The chunk sent last, once more (or the next one, which will come again)."""
        start = max(0, self.next_offset - self.chunk_size)
        data = self.model[start : self.next_offset] or self.chunk_at(self.next_offset)
        if data:
            self.send_chunk(data, out_of_place=True)

    @precondition(lambda self: self.sending is not None and self.receiver.state is R.RECEIVING)
    @rule()
    def drop_a_chunk(self) -> None:
        dropped = self.chunk_at(self.next_offset)  # never sent
        self.next_offset += len(dropped)
        self.gap = self.gap or bool(dropped)

    @precondition(lambda self: self.sending is not None and self.receiver.state is R.RECEIVING)
    @rule()
    def reorder_two_chunks(self) -> None:
        first = self.chunk_at(self.next_offset)
        second = self.chunk_at(self.next_offset + len(first))
        self.next_offset += len(first) + len(second)
        if not second:  # nothing to swap with: the last chunk goes as usual
            if first:
                self.send_chunk(first)
            return
        self.send_chunk(second, out_of_place=True)
        if self.receiver.state is R.RECEIVING:
            self.send_chunk(first, out_of_place=True)

    @precondition(lambda self: self.sending is not None and self.receiver.state is R.RECEIVING)
    @rule()
    def send_an_oversized_chunk(self) -> None:
        meta = self.receiver.meta
        assert meta is not None
        replies = self.deliver(Chunk(b"\x00" * (self.chunk_size + 1)))
        assert [r.code for r in replies if isinstance(r, TransferError)] == [
            TransferErrorCode.UNEXPECTED_DATA
        ]
        assert self.receiver.state is R.DRAINING
        assert self.on_disk(meta.sha256) is None

    @precondition(lambda self: self.receiver.state in (R.IDLE, R.DRAINING))
    @rule(data=st.binary(min_size=1, max_size=64))
    def send_a_stray_chunk(self, data: bytes) -> None:
        if self.receiver.state is R.DRAINING:
            assert self.deliver(Chunk(data)) == []
            return
        before = self.receiver.state
        with pytest.raises(RemoteProtocolError) as info:
            self.adapter.receive(Chunk(data), self.now)
        assert info.value.code == ErrorCode.UNEXPECTED_DATA
        assert self.receiver.state is before

    # ------------------------------------------------------------------ endings

    @precondition(lambda self: self.receiver.state in (R.RECEIVING, R.DRAINING))
    @rule()
    def end_of_file(self) -> None:
        """END_OF_FILE: complete, early (truncated), or after a broken stream."""
        meta = self.receiver.meta
        received = self.receiver.received
        replies = self.deliver(EndOfFile())
        if meta is None:  # DRAINING ends quietly
            assert replies == []
            assert self.receiver.state is R.IDLE
            return
        assert isinstance(meta, FileMeta)
        assert self.receiver.state is R.IDLE
        assert len(replies) == 1, replies
        reply = replies[0]
        if received < meta.size:
            assert isinstance(reply, TransferError)
            assert reply.code == TransferErrorCode.SIZE_MISMATCH
            assert self.on_disk(meta.sha256) == self.appended[meta.sha256]  # kept
            return
        whole = self.appended.get(meta.sha256, b"")
        if meta.sha256 == self.sha and whole == self.model:
            assert reply == FileReceived(self.sha)
            event("FILE_RECEIVED")
        else:
            event("HASH_MISMATCH")
            assert isinstance(reply, TransferError)
            assert reply.code == TransferErrorCode.HASH_MISMATCH
            assert self.on_disk(meta.sha256) is None
        self.check_received(replies, meta)

    @precondition(
        lambda self: (
            self.receiver.state is R.RECEIVING
            and self.receiver.meta is not None
            and self.receiver.received < self.receiver.meta.size
        )
    )
    @rule()
    def truncate(self) -> None:
        """END_OF_FILE before every byte arrived: SIZE_MISMATCH, the partial is kept."""
        self.end_of_file()

    @precondition(lambda self: self.receiver.state in (R.IDLE, R.RECEIVING, R.DRAINING))
    @rule()
    def file_cancel(self) -> None:
        meta = self.receiver.meta
        state = self.receiver.state
        replies = self.deliver(FileCancel())
        assert len(replies) == 1
        assert isinstance(replies[0], TransferError)
        assert replies[0].code == TransferErrorCode.CANCELLED
        assert self.receiver.state is R.IDLE
        if state is R.RECEIVING:
            assert meta is not None
            assert self.on_disk(meta.sha256) == self.appended[meta.sha256]  # kept, flushed

    # ------------------------------------------------------------------ connections

    @rule()
    def disconnect(self) -> None:
        """The data channel drops: the adapter closes (flushes) the partial."""
        partial = self.adapter.partial
        if partial is not None:
            sha = partial.sha256
            assert sha is not None
            partial.close()
            self.durable[sha] = self.appended.get(sha, b"")
        self.new_connection(self.adapter.store)

    @rule()
    def restart(self) -> None:
        """The worker process dies (nothing buffered is flushed) and starts again with a
        new BlobStore on the same directory."""
        self.adapter.crash()
        for sha in list(self.appended):
            disk = self.on_disk(sha)
            if disk is None:
                self.forget(sha)
                continue
            # what survived is between what was flushed and what was appended
            assert disk.startswith(self.durable.get(sha, b""))
            assert self.appended[sha].startswith(disk)
            self.appended[sha] = self.durable[sha] = disk
            if len(disk) <= self.fault_at.get(sha, len(disk)):
                self.fault_at.pop(sha, None)  # the misplaced bytes were never written
        self.new_connection(BlobStore(self.store_root))

    @precondition(lambda self: not self.receiver.active and self.sending is None)
    @rule()
    def resume(self) -> None:
        """A new FILE_META for the model after whatever happened before."""
        self.open(self.sha)

    # ------------------------------------------------------------------ invariants

    @invariant()
    def partials_are_prefixes(self) -> None:
        if not self.model:
            return
        partial_dir = self.store_root / "partial"
        for path in partial_dir.glob("*.part"):
            sha = path.name.removesuffix(".part")
            assert sha in (self.sha, self.wrong_sha), path.name  # no anonymous partial
            disk = path.read_bytes()
            assert self.appended.get(sha, b"").startswith(disk)
            assert disk.startswith(self.durable.get(sha, b""))
            clean = disk[: self.fault_at.get(sha, len(disk))]
            assert self.model.startswith(clean)

    @invariant()
    def only_the_model_is_stored(self) -> None:
        if not self.model:
            return
        objects = [p for p in (self.store_root / "objects").rglob("*") if p.is_file()]
        if self.stored:
            assert [p.name for p in objects] == [self.sha]
            assert objects[0].read_bytes() == self.model
            assert not self.part_path(self.sha).exists()
        else:
            assert objects == []


ReceiverWithStore.TestCase.settings = settings(
    max_examples=100,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestReceiverWithStore = ReceiverWithStore.TestCase
