"""The roads end to end, with real processes: ``rtc-signaling`` with its storage service
on a local folder (a separate process, so that it can be killed), a real worker without
shared storage, the real client (the Python API and the ``rtc-client`` command line).

Automatic choice (relay when both sides reach the storage service, channel when the
worker has none, shared for a shared path), forced roads (and a forced road that is
impossible: ``ROAD_UNAVAILABLE``, exit code 5), a 32 MiB file on the relay road with
its sha256 equal, the relay objects removed afterwards, and the fallback from the relay
road to the data channel from the worker's verified offset when the storage service
dies mid-transfer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import random
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from protocol import FileReady, TransferError
from protocol.roads import Road
from rtc_worker.client import RoadFailed, RTCClient
from rtc_worker.identity import Identity
from rtc_worker.roads_client import RoadChange
from signaling.keys import Role
from tests.conftest import PACKAGE, REPO, Signaling, held_partial, make_zip, offer, recv_until
from tests.relay_helpers import ServiceProcess

pytestmark = [pytest.mark.asyncio, pytest.mark.live]

MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def random_file(path: Path, size: int, seed: int = 14) -> bytes:
    data = random.Random(seed).randbytes(size)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


@pytest_asyncio.fixture
async def service(tmp_path: Path) -> AsyncIterator[ServiceProcess]:
    """The storage service (``rtc-signaling`` on a local folder) as its own process."""
    process = ServiceProcess(tmp_path / "service")
    await process.start()
    try:
        yield process
    finally:
        await process.stop()


@pytest_asyncio.fixture
async def relay_worker(start_worker: Any, service: ServiceProcess) -> Any:
    """A worker without shared storage that offers the relay road."""
    key = await service.make_key(Role.WORKER, "gpu-1")
    return await start_worker(storage_url=service.http, storage_api_key=key)


@pytest_asyncio.fixture
async def relay_client(
    signaling: Signaling, service: ServiceProcess, tmp_path: Path
) -> AsyncIterator[RTCClient]:
    """A client that reaches the storage service (a client key bound to its
    fingerprint), 3 MiB parts."""
    identity = Identity.load_or_create(tmp_path / "alice.key")
    key = await service.make_key(Role.CLIENT, "alice", identity.fingerprint)
    async with RTCClient(
        signaling.url,
        identity=identity,
        reply_timeout=20,
        connect_timeout=20,
        cache_dir=tmp_path / "cache",
        storage_url=service.http,
        storage_api_key=key,
        relay_part_mb=4,
    ) as client:
        yield client


def relay_files(service: ServiceProcess) -> list[Path]:
    """The storage folder's files but the database and the service's own key: relay
    objects and unfinished uploads."""
    return [path for path in service.files() if path.name != "capability.key"]


async def test_auto_takes_the_relay_road_for_32_mib_and_removes_the_relay_objects(
    relay_worker: Any, relay_client: RTCClient, service: ServiceProcess, tmp_path: Path
) -> None:
    data = random_file(tmp_path / "big.bin", 32 * MIB)
    plan = await relay_client.plan_road("worker-1")
    assert plan.road is Road.RELAY and plan.fallback
    roads: list[RoadChange] = []
    seen: list[bytes] = []

    def look_at_the_store(received: int, size: int) -> None:
        """The storage service's operator reads every object it holds mid-transfer."""
        if not seen:
            seen.extend(path.read_bytes() for path in relay_files(service))

    conn = await relay_client.connect("worker-1")
    sent = await conn.send_file(
        tmp_path / "big.bin", look_at_the_store, road=plan, on_road=roads.append
    )
    assert sent.outcome.status == "received" and sent.outcome.sha256 == sha(data)
    # The operator held ciphertext only: no 64-byte window of the plaintext anywhere.
    assert sum(map(len, seen)) >= relay_client.relay_part_bytes
    for at in range(0, len(data), 3 * MIB + 4097):
        assert not any(data[at : at + 64] in blob for blob in seen)
    assert (sent.road, sent.bytes_relayed, sent.bytes_sent) == ("relay", len(data), 0)
    assert roads == [RoadChange("relay", None, 0, None)]
    assert relay_worker.store.object_path(sha(data)).read_bytes() == data
    async with asyncio.timeout(10):  # the worker's deletes are in the background
        while relay_files(service):
            await asyncio.sleep(0.1)


async def test_auto_takes_the_channel_when_the_worker_has_no_storage_service(
    start_worker: Any, relay_client: RTCClient, tmp_path: Path
) -> None:
    worker = await start_worker()  # no storage service: no relay road
    assert "relay" not in worker.metadata["roads"]
    data = random_file(tmp_path / "small.bin", 3 * MIB)
    plan = await relay_client.plan_road("worker-1")
    assert plan.road is Road.CHANNEL
    conn = await relay_client.connect("worker-1")
    sent = await conn.send_file(tmp_path / "small.bin", road=plan)
    assert (sent.road, sent.bytes_sent, sent.bytes_relayed) == ("channel", len(data), 0)
    # Forcing the relay road there is impossible: refused before anything is sent.
    with pytest.raises(RoadFailed) as refused:
        await relay_client.plan_road("worker-1", "relay")
    assert refused.value.code == "ROAD_UNAVAILABLE"


async def test_auto_takes_the_shared_path_for_a_shared_input(
    start_worker: Any, relay_client: RTCClient, service: ServiceProcess, shared_root: Path
) -> None:
    make_zip(shared_root / "in" / "p.zip", PACKAGE)
    key = await service.make_key(Role.WORKER, "gpu-shared")
    await start_worker(shared_root=shared_root, storage_url=service.http, storage_api_key=key)
    plan = await relay_client.plan_road("worker-1", shared_input=True)
    assert plan.road is Road.SHARED
    result = await relay_client.submit_shared("worker-1", "in/p.zip", "out")
    assert result.file_count == 1
    assert result.road == "shared"


async def test_forced_channel_and_relay_roads_and_the_jobs_metrics_name_them(
    relay_worker: Any, relay_client: RTCClient, tmp_path: Path
) -> None:
    package = make_zip(tmp_path / "client" / "package.zip", PACKAGE)
    on_channel = await relay_client.submit_file(
        "worker-1", package, tmp_path / "dl-1", job_id="by-channel", road="channel"
    )
    assert (on_channel.upload.road, on_channel.job.road) == ("channel", "channel")
    other = make_zip(tmp_path / "client" / "other.zip", {**PACKAGE, "extra.txt": b"x"})
    on_relay = await relay_client.submit_file(
        "worker-1", other, tmp_path / "dl-2", job_id="by-relay", road="relay"
    )
    assert (on_relay.upload.road, on_relay.job.road) == ("relay", "relay")
    assert on_relay.upload.bytes_sent == 0 and on_relay.upload.bytes_relayed == other.stat().st_size
    manifest = json.loads((on_relay.results_dir / "manifest.json").read_text())
    assert manifest["input"] == "other.zip"


async def test_the_relay_road_falls_back_to_the_channel_from_the_verified_offset(
    relay_worker: Any, relay_client: RTCClient, service: ServiceProcess, tmp_path: Path
) -> None:
    """The storage service is killed after the worker fetched the first part: the
    transfer goes on over the data channel from the bytes the worker verified, and the
    channel carries only the rest (no restart from zero)."""
    data = random_file(tmp_path / "big.bin", 24 * MIB, seed=5)
    plan = await relay_client.plan_road("worker-1")
    part = relay_client.relay_part_bytes
    killing: list[asyncio.Task[None]] = []

    def kill_after_first_part(received: int, size: int) -> None:
        if received >= part and not killing:
            killing.append(asyncio.ensure_future(service.kill()))

    roads: list[RoadChange] = []
    conn = await relay_client.connect("worker-1")
    sent = await conn.send_file(
        tmp_path / "big.bin", kill_after_first_part, road=plan, on_road=roads.append
    )
    assert killing, "the first part never reached the worker"
    await killing[0]
    assert sent.outcome.status == "received" and sent.outcome.sha256 == sha(data)
    assert sent.road == "relay+channel"
    assert [change.road for change in roads] == ["relay", "channel"]
    changed = roads[1]
    assert changed.previous == "relay" and changed.code is not None
    assert part <= changed.offset < len(data) and changed.offset % plan.chunk_size == 0
    assert sent.bytes_sent == len(data) - changed.offset  # the channel sent the rest only
    assert sent.bytes_relayed == changed.offset
    assert relay_worker.store.object_path(sha(data)).read_bytes() == data


async def test_a_forced_relay_road_fails_with_its_code_when_the_service_dies(
    relay_worker: Any, relay_client: RTCClient, service: ServiceProcess, tmp_path: Path
) -> None:
    random_file(tmp_path / "big.bin", 16 * MIB, seed=6)
    plan = await relay_client.plan_road("worker-1", "relay")
    assert plan.road is Road.RELAY and not plan.fallback
    killing: list[asyncio.Task[None]] = []

    def kill_at_once(received: int, size: int) -> None:
        if not killing:
            killing.append(asyncio.ensure_future(service.kill()))

    conn = await relay_client.connect("worker-1")
    with pytest.raises(RoadFailed) as failed:
        await conn.send_file(tmp_path / "big.bin", kill_at_once, road=plan)
    assert failed.value.code.startswith("RELAY_")
    assert failed.value.road == "relay"


def rtc_client(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    command = "import sys; from rtc_worker.cli import client_main; sys.exit(client_main())"
    return subprocess.run(
        [sys.executable, "-c", command, *args],
        cwd=REPO,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_command_line_takes_the_relay_road_and_refuses_an_impossible_road(
    relay_worker: Any, signaling: Signaling, service: ServiceProcess, tmp_path: Path
) -> None:
    package = make_zip(tmp_path / "client" / "package.zip", PACKAGE)
    identity = Identity.load_or_create(tmp_path / "cli-identity.key")
    key_file = tmp_path / "storage.key"
    key_file.write_text(await service.make_key(Role.CLIENT, "cli", identity.fingerprint))
    key_file.chmod(0o600)
    common = ["--signaling-url", signaling.url, "--worker", "worker-1", "--no-progress"]
    common += ["--key-file", str(identity.path)]
    common += ["--storage-url", service.http, "--api-key-file", str(key_file)]
    env = {"RTC_CLIENT_CACHE_DIR": str(tmp_path / "cli-cache")}
    ran = await asyncio.to_thread(
        rtc_client, "submit", *common, "--file", str(package), "--download",
        str(tmp_path / "dl"), "--job-id", "cli-relay", "--trace", env=env,
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "input package.zip: received, " in ran.stdout and " bytes sent by relay" in ran.stdout
    assert "road (the worker's JOB_METRICS): relay" in ran.stdout
    parts = [line for line in ran.stdout.splitlines() if "RELAY_PART::" in line]
    assert parts and all(line.endswith("::...<hidden>") for line in parts)
    assert key_file.read_text() not in ran.stdout + ran.stderr
    refused = await asyncio.to_thread(
        rtc_client, "submit", *common, "--file", str(package), "--download",
        str(tmp_path / "dl2"), "--road", "shared", env=env,
    )  # fmt: skip
    assert refused.returncode == 5
    assert "ROAD_UNAVAILABLE" in refused.stderr


@pytest.mark.parametrize("road", ["auto", "relay"])
async def test_a_relay_resume_from_a_channel_partial_inside_a_chunk_completes(
    relay_worker: Any, relay_client: RTCClient, tmp_path: Path, road: str
) -> None:
    """A transfer cut on the data channel at 64 KiB and 7 bytes (a partial that ends
    inside a relay chunk) resumes on the relay road from the chunk at or below it, and
    completes with the sha256 equal (it used to wait forever)."""
    data = random_file(tmp_path / "cut.bin", 5 * MIB + 12345, seed=7)
    cut = 65536 + 7
    raw = await relay_client.connect("worker-1", raw=True)  # the same principal's channel
    try:
        meta = f"FILE_META::cut.bin::{len(data)}::{sha(data)}::65536"
        assert await offer(raw, meta, data) == FileReady(0)
        raw.send(data[:65536])
        raw.send(data[65536:cut])
        raw.send("FILE_CANCEL")
        assert (await recv_until(raw, (TransferError,))).code == "CANCELLED"
    finally:
        await raw.close()
    assert held_partial(relay_worker.store, relay_client.identity.fingerprint, data) == cut
    plan = await relay_client.plan_road("worker-1", road)
    assert plan.road is Road.RELAY
    roads: list[RoadChange] = []
    conn = await relay_client.connect("worker-1")
    async with asyncio.timeout(30):
        sent = await conn.send_file(tmp_path / "cut.bin", road=plan, on_road=roads.append)
    assert sent.outcome.status == "received" and sent.outcome.sha256 == sha(data)
    assert roads == [RoadChange("relay", None, cut, None)]
    assert (sent.road, sent.bytes_sent, sent.bytes_relayed) == ("relay", 0, len(data) - cut)
    assert relay_worker.store.object_path(sha(data)).read_bytes() == data


async def test_a_forced_relay_road_fails_with_a_code_when_the_file_cannot_be_opened(
    relay_worker: Any, relay_client: RTCClient, tmp_path: Path
) -> None:
    """The file is removed as the relay road starts: the sender fails with a code and
    the transfer ends (it used to wait forever)."""
    path = tmp_path / "gone.bin"
    random_file(path, 2 * MIB, seed=8)
    plan = await relay_client.plan_road("worker-1", "relay")

    def remove_it(change: RoadChange) -> None:
        path.unlink()

    conn = await relay_client.connect("worker-1")
    with pytest.raises(RoadFailed) as failed:
        async with asyncio.timeout(30):
            await conn.send_file(path, road=plan, on_road=remove_it)
    assert (failed.value.code, failed.value.road) == ("READ_FAILED", "relay")


async def test_a_forced_relay_road_fails_with_file_changed_when_the_file_is_truncated(
    relay_worker: Any, relay_client: RTCClient, tmp_path: Path
) -> None:
    """The file is cut short after the worker fetched the first part: the sender stops
    the road with FILE_CHANGED, the transfer fails with it and ends."""
    path = tmp_path / "shrinks.bin"
    data = random_file(path, 16 * MIB, seed=9)
    plan = await relay_client.plan_road("worker-1", "relay")
    truncated: list[int] = []

    def truncate_after_first_part(received: int, size: int) -> None:
        if received >= relay_client.relay_part_bytes and not truncated:
            os.truncate(path, MIB)
            truncated.append(received)

    conn = await relay_client.connect("worker-1")
    with pytest.raises(RoadFailed) as failed:
        async with asyncio.timeout(30):
            await conn.send_file(path, truncate_after_first_part, road=plan)
    assert truncated and (failed.value.code, failed.value.road) == ("FILE_CHANGED", "relay")
    assert not relay_worker.store.object_path(sha(data)).exists()
