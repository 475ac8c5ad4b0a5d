"""The relay road in memory: the storage service's relay objects, the sender's uploads
and the receiver's fetches, for :class:`~protocol.testing.pair.ConnectionPair`.

Both ends really encrypt and decrypt (:class:`~protocol.relay_crypto.ChunkCipher`), so a
tampered object is refused as a real receiver refuses it. Uploads and fetches advance one
step at a time when both connections are quiet (:meth:`SimulatedRelay.step`): a part per
upload step, a chunk per fetch step, so parts queue and RELAY_STOP crosses fetches as on
a real channel. Failures are injected by offset: :attr:`SimulatedRelay.fetch_failures`
(the fetch of the chunk at that plaintext offset fails with the code) and
:attr:`SimulatedRelay.upload_failures` (the upload of the part at that offset fails: the
sender calls ``relay_stop``).

Sans-IO: no sockets, no files.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from protocol.errors import RelayEndCode, RemoteProtocolError
from protocol.limits import RELAY_MIN_CHUNK_BYTES
from protocol.relay_crypto import ChunkCipher, RelaySecret
from protocol.relay_events import (
    DeleteRelayObject,
    FetchRelayPart,
    HaltRelay,
    RelayFailed,
    RelayFetched,
    RelayFrom,
    RelayWritten,
)
from protocol.relay_messages import RelayPart

if TYPE_CHECKING:
    from protocol.connection import Connection
    from protocol.testing.pair import SimulatedStore

__all__ = ["SimulatedRelay"]


@dataclass
class _Upload:
    conn: Connection
    cipher: ChunkCipher
    secret: RelaySecret
    data: bytes
    next_offset: int
    serial: int


@dataclass
class _Fetch:
    conn: Connection
    store: SimulatedStore
    action: FetchRelayPart
    at: int


@dataclass
class SimulatedRelay:
    """Relay objects by upload id, and the uploads and fetches in progress.

    Attributes:
        chunk_size: the senders' relay chunk size, bytes.
        part_chunks: chunks per part.
        objects: upload id -> (ciphertext, token).
        deleted: upload ids the receiver deleted, in order.
        fetch_failures: plaintext offset -> the code a fetch fails with on reaching it
            (each used once).
        upload_failures: part offsets whose upload fails (each used once).
        tamper: upload ids whose first ciphertext byte is flipped when stored.
        lose: upload ids the service loses at once (expired): fetching them fails with
            RELAY_GONE.
    """

    chunk_size: int = RELAY_MIN_CHUNK_BYTES
    part_chunks: int = 2
    objects: dict[str, tuple[bytes, str]] = field(default_factory=dict)
    deleted: list[str] = field(default_factory=list)
    fetch_failures: dict[int, RelayEndCode] = field(default_factory=dict)
    upload_failures: set[int] = field(default_factory=set)
    tamper: set[str] = field(default_factory=set)
    lose: set[str] = field(default_factory=set)
    _uploads: deque[_Upload] = field(default_factory=deque)
    _fetch: _Fetch | None = None
    _ids: int = 0
    _turn: bool = False

    def start_upload(self, conn: Connection, out: RelayFrom, data: bytes) -> None:
        """RelayFrom: the sender seals and uploads ``data`` from ``out.offset``, a part per
        step."""
        secret = RelaySecret.generate()
        cipher = ChunkCipher(secret, out.meta.sha256, out.meta.size, self.chunk_size)
        self._uploads.append(_Upload(conn, cipher, secret, data, out.offset, conn.sender.serial))

    def perform(self, conn: Connection, action: object, store: SimulatedStore) -> None:
        """A receiver's relay action (FetchRelayPart, HaltRelay, DeleteRelayObject)."""
        if isinstance(action, FetchRelayPart):
            self._fetch = _Fetch(conn, store, action, action.start)
        elif isinstance(action, HaltRelay):  # a fetch of that transfer always runs here
            fetch, self._fetch = self._fetch, None
            assert fetch is not None and fetch.action.transfer == action.transfer
            conn.report(RelayFailed(action.transfer, fetch.at, RelayEndCode.STOPPED))
        else:  # DeleteRelayObject: its part was verified, so the object is here
            assert isinstance(action, DeleteRelayObject)
            assert self.objects.pop(action.upload_id)[1] == action.token
            self.deleted.append(action.upload_id)

    def step(self, now: float) -> bool:
        """Advance one fetch chunk or one upload part, in turns (so RELAY_STOP may cross
        a fetch and parts may queue); False when nothing is left."""
        self._turn = not self._turn
        if self._fetch is not None and (self._turn or not self._pending_uploads()):
            self._fetch_chunk(self._fetch, now)
            return True
        while self._uploads:
            upload = self._uploads[0]
            sender = upload.conn.sender
            if sender.serial != upload.serial or sender.state != "RELAYING":
                self._uploads.popleft()  # the transfer moved on: nothing more to upload
                continue
            self._upload_part(upload)
            return True
        return False

    def _pending_uploads(self) -> bool:
        return any(
            u.conn.sender.serial == u.serial and u.conn.sender.state == "RELAYING"
            for u in self._uploads
        )

    def _upload_part(self, upload: _Upload) -> None:
        cipher, start = upload.cipher, upload.next_offset
        if start in self.upload_failures:
            self.upload_failures.discard(start)
            self._uploads.popleft()
            upload.conn.relay_stop()
            return
        first = start // cipher.chunk_size  # the chunk boundary at or below the offset
        last = min(first + self.part_chunks, cipher.chunk_count)
        begin = first * cipher.chunk_size
        sealed = b"".join(
            cipher.seal(i, upload.data[i * cipher.chunk_size : (i + 1) * cipher.chunk_size])
            for i in range(first, last)
        )
        end = min(last * cipher.chunk_size, cipher.size)
        self._ids += 1
        upload_id, token = f"{self._ids:032x}", f"token-{self._ids}"
        if upload_id in self.tamper:
            sealed = bytes([sealed[0] ^ 1]) + sealed[1:]
        if upload_id not in self.lose:
            self.objects[upload_id] = (sealed, token)
        part = RelayPart.of(
            cipher.sha256, begin, end - begin, cipher.chunk_size, upload.secret, upload_id, token
        )
        upload.next_offset = end
        if end >= cipher.size:
            self._uploads.popleft()
        upload.conn.relay_part(part)

    def _fetch_chunk(self, fetch: _Fetch, now: float) -> None:
        action, conn = fetch.action, fetch.conn
        part, serial = action.part, action.transfer
        if fetch.at >= part.end:
            self._fetch = None
            conn.report(RelayFetched(serial, fetch.at), now)
            return
        code = self.fetch_failures.pop(fetch.at, None)
        stored = self.objects.get(part.upload_id)
        if code is None and (stored is None or stored[1] != part.token):
            code = RelayEndCode.RELAY_GONE
        if code is not None:
            self._fetch = None
            conn.report(RelayFailed(serial, fetch.at, code, f"simulated {code}"), now)
            return
        assert stored is not None  # (a resume inside a chunk keeps its bytes from there)
        cipher = ChunkCipher(part.secret, action.meta.sha256, action.meta.size, part.chunk_size)
        index, first = fetch.at // part.chunk_size, part.offset // part.chunk_size
        lo, hi = cipher.cipher_span(first, index, index + 1)
        try:
            plain = cipher.open(index, stored[0][lo:hi])
        except RemoteProtocolError as exc:
            self._fetch = None
            conn.report(RelayFailed(serial, fetch.at, RelayEndCode.RELAY_CHUNK_INVALID, exc.detail))
            return
        fetch.at = fetch.store.append(serial, plain[fetch.at - index * part.chunk_size :])
        conn.report(RelayWritten(serial, fetch.at), now)
