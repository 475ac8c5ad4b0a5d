"""The relay road's end-to-end tests: the real ``rtc-signaling`` with its storage service
as a separate process, and a relay sender that is both the honest client and the
attacker's tool.

:class:`ServiceProcess` runs ``python -m signaling`` with the storage service on a local
folder (SQLite, folder blobs), on a fixed loopback port so that it can be killed
(SIGKILL) and started again where it was, and makes API keys in its real database.

:class:`RawRelayPeer` opens an authenticated data channel to a worker
(:meth:`RTCClient.connect_raw`), announces a file (answering the proof of possession
as a conforming sender does), encrypts it chunk by chunk with
:class:`~protocol.relay_crypto.ChunkCipher`, uploads the ciphertext with
:class:`~rtc_worker.relay_http.RelayHttp` and sends RELAY_PART frames. What it uploads
and what it sends can be bent (:class:`Bend`): a flipped byte, two chunks swapped,
another key in the frame, an upload id it holds no token for, so that each attack is
written as the attacker's steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from protocol import FileReceived, Message, ProtocolErrorFrame, TransferError
from protocol.relay_crypto import ChunkCipher, RelaySecret
from protocol.relay_messages import RelayEnded, RelayPart
from rtc_worker.relay_http import RelayHttp, RelayObject
from signaling.db import StorageDB
from signaling.keys import Role
from tests.conftest import REPO, free_port, offer, recv_until

__all__ = [
    "ADMIN_KEY",
    "ENDINGS",
    "Bend",
    "PacedProxy",
    "RawRelayPeer",
    "ServiceProcess",
    "service_process",
    "sha",
]

ADMIN_KEY = "relay-admin-key-0123456789"
START_TIMEOUT_S = 20.0
#: The worker's answers that end a relay send.
ENDINGS = (FileReceived, RelayEnded, TransferError, ProtocolErrorFrame)


class ServiceProcess:
    """``rtc-signaling`` with its storage service, as a separate process.

    Args:
        base: a folder of its own (data dir, storage folder, log).

    Attributes:
        port: its loopback port (kept across restarts). url: the signaling WebSocket
        URL. http: the storage service's base URL. storage: the storage folder.
        log: the file its stderr goes to (appended to on each start).
    """

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}/ws"
        self.http = f"http://127.0.0.1:{self.port}"
        self.storage = base / "store"
        self.log = base / "signaling.log"
        self.proc: asyncio.subprocess.Process | None = None
        self._db: StorageDB | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def start(self) -> None:
        """Start it (again) on :attr:`port`; returns once it listens.

        Raises:
            RuntimeError: it did not start (its log's tail in the message).
        """
        self.base.mkdir(parents=True, exist_ok=True)
        argv = [
            sys.executable, "-m", "signaling",
            "--host", "127.0.0.1", "--port", str(self.port),
            "--data-dir", str(self.base / "data"),
            "--storage-path", str(self.storage),
            "--log-level", "INFO",
        ]  # fmt: skip
        env = {
            **os.environ,
            "PYTHONUNBUFFERED": "1",
            "RTC_SIGNALING_STORAGE_API_KEY": ADMIN_KEY,
        }
        env.pop("RTC_REDIS_URL", None)
        with self.log.open("ab") as err:
            self.proc = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=err
            )
        assert self.proc.stdout is not None
        line = b""
        with contextlib.suppress(TimeoutError):
            line = await asyncio.wait_for(self.proc.stdout.readline(), START_TIMEOUT_S)
        if not line.startswith(b"listening on"):
            tail = self.log.read_text(errors="replace")[-3000:]
            raise RuntimeError(f"rtc-signaling did not start:\n{tail}")

    async def kill(self) -> None:
        """SIGKILL: the service dies in the middle of whatever it serves."""
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGKILL)
        if self.proc is not None:
            await self.proc.wait()

    async def stop(self) -> None:
        """SIGTERM and wait (SIGKILL after 10 s); closes this helper's database."""
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
        if self._db is not None:
            await self._db.close()
            self._db = None

    async def make_key(self, role: Role, name: str, principal: str | None = None) -> str:
        """A new API key of ``role`` in the service's database (as ``keys add`` makes it)."""
        if self._db is None:
            self._db = StorageDB(f"sqlite:///{self.storage / 'storage.db'}")
        _, key = await self._db.add_key(role, name, principal)
        return key

    def files(self) -> list[Path]:
        """Every file under the storage folder (blobs, partial uploads), but the database."""
        return sorted(
            path
            for path in self.storage.rglob("*")
            if path.is_file() and not path.name.startswith("storage.db")
        )


async def service_process(base: Path) -> AsyncIterator[ServiceProcess]:
    """Start a :class:`ServiceProcess` under ``base``; stopped at the end (a fixture's body)."""
    service = ServiceProcess(base)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


class PacedProxy:
    """A TCP proxy on loopback in front of the storage service: it counts the bytes the
    service sends through it (what the worker's fetches receive, headers included) and
    paces them at ``rate`` bytes per second, so that a test can cut a download midway.

    A connection whose upstream cannot be reached (the service is down) is closed at
    once, as a refused connection would be.
    """

    def __init__(self, target_port: int, rate: float | None = None) -> None:
        self.target_port = target_port
        self.rate = rate
        self.downstream = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    @property
    def http(self) -> str:
        """The proxy's base URL (what the worker is told the service is)."""
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        pumps = [
            asyncio.ensure_future(self._pump(reader, up_writer, count=False)),
            asyncio.ensure_future(self._pump(up_reader, writer, count=True)),
        ]
        self._tasks.update(pumps)
        await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        for task in pumps:
            task.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        self._tasks.difference_update(pumps)
        for end in (writer, up_writer):
            end.close()

    async def _pump(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, count: bool
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await reader.read(64 * 1024):
                writer.write(data)
                await writer.drain()
                if count:
                    self.downstream += len(data)
                    if self.rate:
                        await asyncio.sleep(len(data) / self.rate)

    def cut(self) -> None:
        """Cut every connection through the proxy now (both ends are closed)."""
        for task in list(self._tasks):
            task.cancel()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass(frozen=True)
class Bend:
    """How a :class:`RawRelayPeer` departs from the protocol (an attacker's steps); the
    default departs in nothing.

    Attributes:
        flip_chunk: flip one byte of this chunk's ciphertext before the upload.
        swap_chunks: upload these two chunks of a part each in the other's place.
        other_key: the frame names a fresh key, not the one that sealed the chunks.
        upload_id / token: the frame names this relay object and token instead of the
            one uploaded (an object the sender holds no token for).
    """

    flip_chunk: int | None = None
    swap_chunks: tuple[int, int] | None = None
    other_key: bool = False
    upload_id: str | None = None
    token: str | None = None


class RawRelayPeer:
    """Sends files to a worker by the relay road over a raw authenticated channel.

    Args:
        raw: the data channel (:meth:`RTCClient.connect_raw`, handshake done).
        http: the storage service's relay client, with the sender's own key.
        chunk_size: the relay chunk size, bytes.
        principal: the sender's principal on the worker (its key's fingerprint).

    Attributes:
        objects: every relay object uploaded, in order.
        secret: the key and nonce prefix of the file being sent.
    """

    def __init__(
        self, raw: Any, http: RelayHttp, chunk_size: int = 1 << 20, principal: str = ""
    ) -> None:
        self.raw = raw
        self.principal = principal
        self.http = http
        self.chunk_size = chunk_size
        self.objects: list[RelayObject] = []
        self.secret = RelaySecret.generate()
        self._file = ""

    async def offer(self, name: str, data: bytes) -> Message:
        """FILE_META for ``data`` (answering the proof of possession as a conforming
        sender does); the worker's reply (FILE_READY, FILE_EXISTS, TRANSFER_ERROR)."""
        if sha(data) != self._file:  # a fresh secret per file (offered again: the same)
            self.secret, self._file = RelaySecret.generate(), sha(data)
        frame = f"FILE_META::{name}::{len(data)}::{sha(data)}::{65536}"
        return cast(Message, await offer(self.raw, frame, data))

    def cipher(self, data: bytes) -> ChunkCipher:
        return ChunkCipher(self.secret, sha(data), len(data), self.chunk_size)

    async def upload(
        self, data: bytes, offset: int, length: int, bend: Bend = Bend()
    ) -> RelayObject:
        """Seal the plaintext ``[offset, offset + length)`` chunk by chunk and upload it
        as one relay object (bent as ``bend`` says)."""
        cipher = self.cipher(data)
        first = offset // self.chunk_size
        end = -(-(offset + length) // self.chunk_size)
        sealed = []
        for index in range(first, end):
            start = index * self.chunk_size
            chunk = cipher.seal(index, data[start : start + cipher.plain_length(index)])
            if bend.flip_chunk == index:
                middle = len(chunk) // 2
                chunk = chunk[:middle] + bytes([chunk[middle] ^ 0x01]) + chunk[middle + 1 :]
            sealed.append(chunk)
        if bend.swap_chunks is not None:
            i, j = (n - first for n in bend.swap_chunks)
            sealed[i], sealed[j] = sealed[j], sealed[i]
        body = b"".join(sealed)

        async def pieces(at: int) -> AsyncIterator[bytes]:
            for start in range(at, len(body), 1 << 20):
                yield body[start : start + (1 << 20)]

        relay_object = await self.http.upload(len(body), pieces)
        self.objects.append(relay_object)
        return relay_object

    def part_frame(
        self, data: bytes, offset: int, length: int, relay_object: RelayObject, bend: Bend = Bend()
    ) -> RelayPart:
        """The RELAY_PART naming ``relay_object`` (bent as ``bend`` says)."""
        secret = RelaySecret.generate() if bend.other_key else self.secret
        return RelayPart(
            sha(data),
            offset,
            length,
            self.chunk_size,
            secret.key,
            secret.nonce_prefix,
            bend.upload_id or relay_object.upload_id,
            bend.token or relay_object.token,
        )

    async def send(self, data: bytes, offset: int, part_bytes: int, bend: Bend = Bend()) -> Message:
        """Upload ``data`` from ``offset`` in parts of ``part_bytes`` and send a RELAY_PART
        as each is complete (the first from the chunk at or below ``offset``, the
        receiver's); the worker's answer that ends it (FILE_RECEIVED, RELAY_ENDED,
        TRANSFER_ERROR or PROTOCOL_ERROR)."""
        position = offset - offset % self.chunk_size
        while position < len(data):
            length = min(part_bytes, len(data) - position)
            relay_object = await self.upload(data, position, length, bend)
            self.raw.send(self.part_frame(data, position, length, relay_object, bend))
            position += length
        return await recv_until(self.raw, ENDINGS, timeout=20)

    async def stream(self, data: bytes, offset: int) -> None:
        """The rest of the file on the data channel from ``offset`` (64 KiB chunks, then
        END_OF_FILE), as a sender does after RELAY_ENDED."""
        for start in range(offset, len(data), 65536):
            self.raw.send(data[start : start + 65536])
        self.raw.send("END_OF_FILE")


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
