"""The relay road end to end, with real processes: ``rtc-signaling`` with its storage
service on a local folder (a separate process), a real worker without shared storage
fetching from it, and a client over a real authenticated data channel that encrypts,
uploads and names relay objects (:class:`tests.relay_helpers.RawRelayPeer`).

Each attack is the attacker's steps: a flipped ciphertext byte, swapped chunks, another
key, a relay object named without its token, the relay road asked of a worker that does
not offer it. The attacker gets a refusal with a code; nothing it sent is stored, and
what others stored is unchanged.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from loguru import logger

from protocol import FileReady, FileReceived, JobMetrics, ProtocolErrorFrame, TransferError
from protocol.relay_messages import RelayEnded, b64url_encode
from rtc_worker.client import RTCClient
from rtc_worker.holdings import partial_key
from rtc_worker.relay_http import RelayHttp, RelayHttpError, RelayObject
from rtc_worker.settings import WorkerSettings
from rtc_worker.storage import layout
from rtc_worker.worker import RTCWorkerClient
from signaling.keys import Role
from tests.conftest import recv_until
from tests.relay_helpers import (
    Bend,
    PacedProxy,
    RawRelayPeer,
    ServiceProcess,
    service_process,
    sha,
)

pytestmark = pytest.mark.live

MIB = 1 << 20


def random_bytes(size: int, seed: int = 14) -> bytes:
    return random.Random(seed).randbytes(size)


class World:
    """The service, a worker factory, and clients with their own keys."""

    def __init__(self, service: ServiceProcess, tmp_path: Path) -> None:
        self.service = service
        self.tmp_path = tmp_path
        self.workers: list[tuple[RTCWorkerClient, asyncio.Task[None]]] = []
        self.clients: list[RTCClient] = []
        self.https: list[RelayHttp] = []
        self.proxies: list[PacedProxy] = []

    async def worker(
        self, peer_id: str = "relay-worker", *, storage_url: str | None = "", **values: Any
    ) -> RTCWorkerClient:
        """A worker without shared storage; its storage service is ``storage_url``
        (default: the service itself; None: none, so no relay road)."""
        settings: dict[str, Any] = {
            "signaling_url": self.service.url,
            "peer_id": peer_id,
            "shared_root_candidates": [],
            "reconnect_max_delay_s": 0.5,
            "data_dir": self.tmp_path / f"data-{peer_id}",
            **values,
        }
        if storage_url is not None:
            settings["storage_url"] = storage_url or self.service.http
            settings["storage_api_key"] = await self.service.make_key(Role.WORKER, peer_id)
        worker = RTCWorkerClient(WorkerSettings(**settings))
        task = asyncio.create_task(worker.run())
        self.workers.append((worker, task))
        async with asyncio.timeout(10):
            await worker.registered.wait()
        return worker

    async def client(self, name: str) -> tuple[RTCClient, RelayHttp]:
        """A client with its own key file and its own client key of the service."""
        client = RTCClient(
            self.service.url,
            key_file=self.tmp_path / f"{name}.key",
            reply_timeout=20,
            connect_timeout=20,
        )
        self.clients.append(client)
        assert client.identity is not None
        key = await self.service.make_key(Role.CLIENT, name, client.identity.fingerprint)
        http = RelayHttp(self.service.http, key, retries=3, backoff_s=0.1)
        self.https.append(http)
        return client, http

    async def sender(self, name: str, worker: str = "relay-worker") -> RawRelayPeer:
        client, http = await self.client(name)
        await client.wait_for_worker(worker, 10)
        assert client.identity is not None
        raw = await client.connect_raw(worker)
        return RawRelayPeer(raw, http, principal=client.identity.fingerprint)

    async def close(self) -> None:
        for client in self.clients:
            await client.close()
        for http in self.https:
            await http.close()
        for worker, task in self.workers:
            await worker.stop()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(task, 15)
        for proxy in self.proxies:
            await proxy.close()


@pytest_asyncio.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    async for service in service_process(tmp_path / "service"):
        state = World(service, tmp_path)
        try:
            yield state
        finally:
            await state.close()


def partial_bytes(worker: RTCWorkerClient, sender: RawRelayPeer, data: bytes) -> bytes:
    """What the worker's store holds of ``data`` in the sender's own partial file."""
    key = partial_key(sender.principal, sha(data))
    path = worker.store.root / layout.PARTIAL_DIR / f"{key}.part"
    return path.read_bytes() if path.exists() else b""


def relay_bytes(worker: RTCWorkerClient) -> float:
    """The ciphertext bytes the worker fetched from relay objects (its metrics)."""
    value = worker.resources.metrics.registry.get_sample_value("rtc_worker_relay_road_bytes_total")
    return value or 0.0


def stored_objects(worker: RTCWorkerClient) -> list[Path]:
    """Every file of the worker's store of verified objects."""
    return [path for path in (worker.store.root / layout.OBJECTS_DIR).rglob("*") if path.is_file()]


async def read_all(http: RelayHttp, relay_object: RelayObject) -> bytes:
    pieces = http.fetch(relay_object.upload_id, relay_object.token, 0, relay_object.size)
    return b"".join([piece async for piece in pieces])


async def gone(http: RelayHttp, relay_object: RelayObject, within_s: float = 5.0) -> bool:
    """Whether the relay object answers RELAY_GONE within ``within_s`` seconds."""
    async with asyncio.timeout(within_s):
        while True:
            try:
                async for _ in http.fetch(relay_object.upload_id, relay_object.token, 0, 1):
                    pass
            except RelayHttpError as exc:
                if exc.code == "RELAY_GONE":
                    return True
                raise
            await asyncio.sleep(0.05)


def capture_logs() -> tuple[list[str], Callable[[], None]]:
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    return lines, lambda: logger.remove(sink)


# ---------------------------------------------------------------------- the road


async def test_a_32_mib_file_by_the_relay_road_is_stored_and_its_relay_objects_removed(
    world: World,
) -> None:
    worker = await world.worker()
    assert worker.metadata["roads"] == ["relay", "channel"]
    sender = await world.sender("honest")
    data = random_bytes(32 * MIB)
    lines, stop_capture = capture_logs()
    try:
        assert await sender.offer("big.bin", data) == FileReady(0)
        ended = await sender.send(data, 0, part_bytes=12 * MIB)  # parts of 12, 12 and 8 MiB
        assert ended == FileReceived(sha(data))
        assert sha(worker.store.object_path(sha(data)).read_bytes()) == sha(data)
        assert partial_bytes(worker, sender, data) == b""  # committed, nothing left over
        # every relay object is removed from the storage service once fetched
        assert len(sender.objects) == 3
        for relay_object in sender.objects:
            assert await gone(sender.http, relay_object)
        stored = {path.name for path in world.service.files()}
        assert not stored & {relay_object.sha256 for relay_object in sender.objects}
        # a job on the received file names the road and its speed
        sender.raw.send("JOB_START")
        metrics = await recv_until(sender.raw, (JobMetrics,))
        assert metrics.road == "relay"
        assert metrics.transfer_mb_s is not None and metrics.transfer_mb_s > 0
    finally:
        stop_capture()
    fetched = relay_bytes(worker)
    assert fetched == sum(relay_object.size for relay_object in sender.objects)
    assert any("by the relay road" in line and "MB/s" in line for line in lines)
    # neither the key nor a token reaches the log
    secrets = [b64url_encode(sender.secret.key), *(o.token for o in sender.objects)]
    assert not [line for line in lines if any(secret in line for secret in secrets)]


# ---------------------------------------------------------------------- attacks


@pytest.mark.parametrize(
    ("bend", "verified_chunks"),
    [
        (Bend(flip_chunk=5), 5),  # one byte of chunk 5 flipped in the storage service
        (Bend(swap_chunks=(3, 4)), 3),  # chunks 3 and 4 in each other's place
        (Bend(other_key=True), 0),  # the frame names another key than the one that sealed
    ],
    ids=["tampered", "swapped", "wrong-key"],
)
async def test_a_chunk_that_does_not_authenticate_is_refused_and_not_written(
    world: World, bend: Bend, verified_chunks: int
) -> None:
    worker = await world.worker()
    attacker = await world.sender("attacker")
    data = random_bytes(8 * MIB, seed=5)
    assert await attacker.offer("forged.bin", data) == FileReady(0)
    ended = await attacker.send(data, 0, part_bytes=len(data), bend=bend)
    assert isinstance(ended, RelayEnded)
    assert (ended.code, ended.offset) == ("RELAY_CHUNK_INVALID", verified_chunks * MIB)
    # only the chunks before the bad one were written, exactly as sent
    assert partial_bytes(worker, attacker, data) == data[: verified_chunks * MIB]
    assert not worker.store.object_path(sha(data)).exists()
    # the transfer stays open at the verified offset until the sender cancels it
    attacker.raw.send("FILE_CANCEL")
    cancelled = await recv_until(attacker.raw, (TransferError,))
    assert cancelled.code == "CANCELLED"
    assert stored_objects(worker) == []


async def test_a_relay_object_named_without_its_token_is_gone_and_the_victims_is_unchanged(
    world: World,
) -> None:
    worker = await world.worker()
    _, victim_http = await world.client("victim")
    victim_data = random_bytes(3 * MIB, seed=7)
    victim = RawRelayPeer(None, victim_http)  # uploads only: its id leaks, its token does not
    victims = await victim.upload(victim_data, 0, len(victim_data))
    attacker = await world.sender("attacker")
    data = random_bytes(3 * MIB, seed=8)
    own = await attacker.upload(data, 0, len(data))  # a token the attacker does hold
    for token in ("made-up-token", own.token):  # a guess, and the token of another object
        assert await attacker.offer("mine.bin", data) == FileReady(0)
        bend = Bend(upload_id=victims.upload_id, token=token)
        attacker.raw.send(attacker.part_frame(data, 0, len(data), own, bend))
        ended = await recv_until(attacker.raw, (RelayEnded, TransferError, ProtocolErrorFrame))
        assert isinstance(ended, RelayEnded)
        assert (ended.code, ended.offset) == ("RELAY_GONE", 0)
        attacker.raw.send("FILE_CANCEL")  # the road ended for this transfer: a new one
        assert (await recv_until(attacker.raw, (TransferError,))).code == "CANCELLED"
    assert partial_bytes(worker, attacker, data) == b""
    assert stored_objects(worker) == []
    assert relay_bytes(worker) == 0
    # the victim's object is untouched: still there, still its bytes
    assert sha(await read_all(victim_http, victims)) == victims.sha256


async def test_a_worker_without_the_relay_road_refuses_relay_part_and_the_channel_goes_on(
    world: World,
) -> None:
    worker = await world.worker(storage_url=None)
    assert worker.metadata["roads"] == ["channel"]
    sender = await world.sender("hopeful")
    data = random_bytes(2 * MIB, seed=9)
    assert await sender.offer("plain.bin", data) == FileReady(0)
    relay_object = await sender.upload(data, 0, len(data))
    sender.raw.send(sender.part_frame(data, 0, len(data), relay_object))
    refused = await recv_until(sender.raw, (RelayEnded, TransferError, ProtocolErrorFrame))
    assert refused == RelayEnded(sha(data), 0, "RELAY_UNREACHABLE", refused.detail)  # a code
    assert relay_bytes(worker) == 0
    assert sha(await read_all(sender.http, relay_object)) == relay_object.sha256  # not fetched
    # the client falls back to the data channel from the offset it was given
    await sender.stream(data, refused.offset)
    assert await recv_until(sender.raw, (FileReceived, TransferError)) == FileReceived(sha(data))


# ---------------------------------------------------------------------- resume


async def test_the_storage_service_killed_mid_download_is_resumed_at_the_last_verified_chunk(
    world: World,
) -> None:
    proxy = PacedProxy(world.service.port, rate=12e6)  # 12 MB/s: the cut lands midway
    await proxy.start()
    world.proxies.append(proxy)
    worker = await world.worker(storage_url=proxy.http, relay_fetch_retries=8)
    sender = await world.sender("patient")
    data = random_bytes(24 * MIB, seed=11)
    assert await sender.offer("cut.bin", data) == FileReady(0)
    relay_object = await sender.upload(data, 0, len(data))
    sender.raw.send(sender.part_frame(data, 0, len(data), relay_object))
    async with asyncio.timeout(10):
        while proxy.downstream < relay_object.size * 0.4:
            await asyncio.sleep(0.02)
    await world.service.kill()
    assert relay_bytes(worker) < relay_object.size  # cut in the middle of the object
    await world.service.start()  # where it was: same port, same folder, same database
    ended = await recv_until(sender.raw, (FileReceived, RelayEnded, TransferError), timeout=20)
    assert ended == FileReceived(sha(data))
    assert sha(worker.store.object_path(sha(data)).read_bytes()) == sha(data)
    fetched = relay_bytes(worker)
    assert relay_object.size <= fetched < 1.1 * relay_object.size
    assert proxy.downstream < 1.1 * relay_object.size


async def test_relay_stop_mid_fetch_ends_at_a_verified_chunk_and_the_channel_goes_on(
    world: World,
) -> None:
    proxy = PacedProxy(world.service.port, rate=8e6)  # slow enough to stop midway
    await proxy.start()
    world.proxies.append(proxy)
    worker = await world.worker(storage_url=proxy.http)
    sender = await world.sender("changes-its-mind")
    data = random_bytes(16 * MIB, seed=12)
    assert await sender.offer("stop.bin", data) == FileReady(0)
    relay_object = await sender.upload(data, 0, len(data))
    sender.raw.send(sender.part_frame(data, 0, len(data), relay_object))
    async with asyncio.timeout(10):
        while relay_bytes(worker) < relay_object.size * 0.3:
            await asyncio.sleep(0.02)
    sender.raw.send(f"RELAY_STOP::{sha(data)}")
    ended = await recv_until(sender.raw, (RelayEnded, FileReceived, TransferError))
    assert isinstance(ended, RelayEnded) and ended.code == "STOPPED"
    assert 0 < ended.offset < len(data) and ended.offset % MIB == 0
    assert partial_bytes(worker, sender, data) == data[: ended.offset]  # verified, on disk
    await sender.stream(data, ended.offset)  # the rest on the data channel
    assert await recv_until(sender.raw, (FileReceived, TransferError)) == FileReceived(sha(data))
    assert sha(worker.store.object_path(sha(data)).read_bytes()) == sha(data)


async def test_a_cancel_mid_fetch_keeps_the_verified_chunks_for_a_resume(world: World) -> None:
    proxy = PacedProxy(world.service.port, rate=8e6)
    await proxy.start()
    world.proxies.append(proxy)
    worker = await world.worker(storage_url=proxy.http)
    sender = await world.sender("comes-back")
    data = random_bytes(16 * MIB, seed=13)
    assert await sender.offer("again.bin", data) == FileReady(0)
    relay_object = await sender.upload(data, 0, len(data))
    sender.raw.send(sender.part_frame(data, 0, len(data), relay_object))
    async with asyncio.timeout(10):
        while relay_bytes(worker) < relay_object.size * 0.3:
            await asyncio.sleep(0.02)
    sender.raw.send("FILE_CANCEL")
    assert (await recv_until(sender.raw, (TransferError,))).code == "CANCELLED"
    kept = partial_bytes(worker, sender, data)
    assert 0 < len(kept) < len(data) and kept == data[: len(kept)]
    # the next FILE_META resumes there (the first part from the chunk at or below it)
    ready = await sender.offer("again.bin", data)
    assert ready == FileReady(len(kept))
    assert await sender.send(data, len(kept), part_bytes=len(data)) == FileReceived(sha(data))
    assert sha(worker.store.object_path(sha(data)).read_bytes()) == sha(data)


async def test_a_client_gone_mid_fetch_leaves_its_verified_chunks_for_its_next_connection(
    world: World,
) -> None:
    proxy = PacedProxy(world.service.port, rate=8e6)
    await proxy.start()
    world.proxies.append(proxy)
    worker = await world.worker(storage_url=proxy.http)
    client, http = await world.client("flaky")
    assert client.identity is not None
    await client.wait_for_worker("relay-worker", 10)
    first = RawRelayPeer(
        await client.connect_raw("relay-worker"), http, principal=client.identity.fingerprint
    )
    data = random_bytes(16 * MIB, seed=14)
    assert await first.offer("flaky.bin", data) == FileReady(0)
    relay_object = await first.upload(data, 0, len(data))
    first.raw.send(first.part_frame(data, 0, len(data), relay_object))
    async with asyncio.timeout(10):
        while relay_bytes(worker) < relay_object.size * 0.3:
            await asyncio.sleep(0.02)
    await first.raw.close()  # the client is gone in the middle of the fetch
    async with asyncio.timeout(10):
        while worker.active_sessions:
            await asyncio.sleep(0.05)
    stopped_at = relay_bytes(worker)
    await asyncio.sleep(0.3)
    assert relay_bytes(worker) == stopped_at < relay_object.size  # the fetch stopped
    kept = partial_bytes(worker, first, data)
    assert 0 < len(kept) < len(data) and len(kept) % MIB == 0 and kept == data[: len(kept)]
    again = RawRelayPeer(await client.connect_raw("relay-worker"), http, principal=first.principal)
    assert await again.offer("flaky.bin", data) == FileReady(len(kept))
    assert await again.send(data, len(kept), part_bytes=len(data)) == FileReceived(sha(data))
    assert sha(worker.store.object_path(sha(data)).read_bytes()) == sha(data)
