"""Results uploaded to the storage service: real signaling servers (one with storage,
on SQLite with a folder and on PostgreSQL with an S3 bucket), real in-process workers
and a real aiortc client."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from protocol import (
    JobComplete,
    JobStart,
    ProtocolErrorFrame,
    ResultsStored,
    ResultsViaStorage,
    SharedInputPath,
    SharedOutputPath,
)
from rtc_worker.client import RTCClient, WorkerProtocolError
from signaling.app import start_server
from signaling.config import SignalingSettings
from tests.conftest import REPO, free_port

pytestmark = pytest.mark.asyncio

KEY = "test-storage-key"
PY = sys.executable


class Storage:
    def __init__(self, runner: Any, port: int) -> None:
        self.runner = runner
        self.url = f"http://127.0.0.1:{port}"


async def start_storage(root: Path, engines: dict[str, Any], port: int = 0) -> Storage:
    settings = SignalingSettings(storage_path=root, storage_api_key=KEY, **engines)
    runner, bound = await start_server(settings, host="127.0.0.1", port=port)
    return Storage(runner, bound)


@pytest.fixture
def engines(storage_database: str | None, storage_blobs: dict[str, Any]) -> dict[str, Any]:
    """The storage service's engine settings: each test using it runs on SQLite with the
    folder and on PostgreSQL with an S3 bucket (``storage_engines`` in conftest)."""
    database = {} if storage_database is None else {"database_url": storage_database}
    return {**database, **storage_blobs}


@pytest_asyncio.fixture
async def storage(tmp_path: Path, engines: dict[str, Any]) -> AsyncIterator[Storage]:
    server = await start_storage(tmp_path / "store", engines)
    yield server
    await server.runner.cleanup()


@pytest_asyncio.fixture
async def client(signaling: Any, tmp_path: Path) -> AsyncIterator[RTCClient]:
    async with RTCClient(signaling.url, cache_dir=tmp_path / "cache", reply_timeout=20) as rtc:
        yield rtc


async def fetch(storage: Storage, path: str) -> tuple[int, bytes]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(storage.url + path, headers={"X-API-Key": KEY}) as response,
    ):
        return response.status, await response.read()


def manifest_of(data: bytes) -> dict[str, Any]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        result: dict[str, Any] = json.loads(archive.read("manifest.json"))
        return result


async def test_results_via_storage_are_stored_and_announced(
    start_worker: Any, client: RTCClient, storage: Storage, shared_root: Path, package: Path
) -> None:
    await start_worker(shared_root=shared_root, storage_url=storage.url, storage_api_key=KEY)
    result = await client.submit_shared(
        "worker-1", "inputs/package.zip", "outputs/st-1", job_id="st-1", via_storage=True
    )
    assert result.job_id == "st-1"
    assert result.stored_path == "/download/st-1"
    status, body = await fetch(storage, "/download/st-1?keep=true")
    assert status == 200
    assert manifest_of(body)["input"] == "inputs/package.zip"


async def test_results_are_stored_when_the_client_has_gone(
    start_worker: Any, client: RTCClient, storage: Storage, shared_root: Path, package: Path
) -> None:
    command = f'{PY} -c "import time; time.sleep(1)"'
    await start_worker(
        shared_root=shared_root,
        job_command=command,
        storage_url=storage.url,
        storage_api_key=KEY,
    )
    conn = await client.connect("worker-1", raw=True)
    conn.send("JOB_ID::gone-1")
    conn.send(SharedInputPath("inputs/package.zip"))
    await conn.recv(10)
    conn.send(SharedOutputPath("outputs/gone-1"))
    await conn.recv(10)
    conn.send(JobStart())
    await asyncio.sleep(0.2)
    await conn.close()
    async with asyncio.timeout(15):
        while True:
            status, body = await fetch(storage, "/list")
            assert status == 200
            if any(f["job_id"] == "gone-1" for f in json.loads(body)["files"]):
                break
            await asyncio.sleep(0.2)


async def test_results_via_storage_without_storage_is_refused(
    start_worker: Any, client: RTCClient
) -> None:
    await start_worker()
    conn = await client.connect("worker-1", raw=True)
    conn.send(ResultsViaStorage())
    reply = await conn.recv(10)
    assert isinstance(reply, ProtocolErrorFrame)
    assert reply.code == "NO_STORAGE"


async def test_submit_via_storage_without_storage_raises(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    await start_worker(shared_root=shared_root)
    with pytest.raises(WorkerProtocolError) as info:
        await client.submit_shared(
            "worker-1", "inputs/package.zip", "outputs/x", job_id="x", via_storage=True
        )
    assert info.value.code == "NO_STORAGE"


async def test_upload_is_retried_until_the_storage_service_is_up(
    start_worker: Any,
    client: RTCClient,
    shared_root: Path,
    package: Path,
    tmp_path: Path,
    engines: dict[str, Any],
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    await start_worker(
        shared_root=shared_root, storage_url=url, storage_api_key=KEY, storage_backoff_s=0.3
    )
    conn = await client.connect("worker-1", raw=True)
    for frame in (
        "JOB_ID::late-1",
        "RESULTS_VIA_STORAGE",
        "SHARED_INPUT_PATH::inputs/package.zip",
        "SHARED_OUTPUT_PATH::outputs/late-1",
        "JOB_START",
    ):
        conn.send(frame)
    storage: Storage | None = None
    try:
        async with asyncio.timeout(20):
            while True:
                message = await conn.recv()
                if isinstance(message, JobComplete):
                    break
            await asyncio.sleep(0.8)  # the first attempts find nothing listening
            storage = await start_storage(tmp_path / "late-store", engines, port=port)
            while not isinstance(message := await conn.recv(), ResultsStored):
                pass
        assert (message.job_id, message.download_path) == ("late-1", "/download/late-1")
        assert message.sha256 is not None and message.size is not None
        status, body = await fetch(storage, "/download/late-1?keep=true")
        assert status == 200
        assert "manifest.json" in zipfile.ZipFile(io.BytesIO(body)).namelist()
    finally:
        if storage is not None:
            await storage.runner.cleanup()


async def test_rtc_client_download_fetches_and_verifies(
    start_worker: Any,
    client: RTCClient,
    storage: Storage,
    shared_root: Path,
    package: Path,
    tmp_path: Path,
) -> None:
    await start_worker(shared_root=shared_root, storage_url=storage.url, storage_api_key=KEY)
    result = await client.submit_shared(
        "worker-1", "inputs/package.zip", "outputs/dl-1", job_id="dl-1", via_storage=True
    )
    assert result.stored_path == "/download/dl-1"
    _, listing = await fetch(storage, "/list")
    record = next(f for f in json.loads(listing)["files"] if f["job_id"] == "dl-1")
    out = tmp_path / "got"

    def run(*extra: str) -> subprocess.CompletedProcess[str]:
        argv = [
            PY,
            "-c",
            "import sys; from rtc_worker.cli import client_main; sys.exit(client_main())",
            "download",
            "--job-id",
            "dl-1",
            "--storage-url",
            storage.url,
            "--storage-api-key",
            KEY,
            "--output",
            str(out),
            *extra,
        ]
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30)

    bad = await asyncio.to_thread(run, "--sha256", "0" * 64, "--keep")
    assert bad.returncode != 0, bad.stdout
    assert not (out / "results-dl-1.zip").exists()
    good = await asyncio.to_thread(run, "--sha256", record["sha256"])
    assert good.returncode == 0, good.stderr
    saved = out / "results-dl-1.zip"
    assert str(saved) in good.stdout
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == record["sha256"]
    assert "manifest.json" in zipfile.ZipFile(saved).namelist()


async def test_rtc_client_download_with_the_token_of_results_stored(
    start_worker: Any,
    client: RTCClient,
    storage: Storage,
    shared_root: Path,
    package: Path,
    tmp_path: Path,
) -> None:
    """The owner needs no storage key: RESULTS_STORED's token fetches that one result,
    verified against RESULTS_STORED's sha256; another job's token fetches nothing."""
    await start_worker(shared_root=shared_root, storage_url=storage.url, storage_api_key=KEY)
    first = await client.submit_shared(
        "worker-1", "inputs/package.zip", "outputs/tk-1", job_id="tk-1", via_storage=True
    )
    second = await client.submit_shared(
        "worker-1", "inputs/package.zip", "outputs/tk-2", job_id="tk-2", via_storage=True
    )
    assert first.download_token and second.download_token and first.stored_sha256
    out = tmp_path / "got"

    def run(token: str) -> subprocess.CompletedProcess[str]:
        argv = [
            PY,
            "-c",
            "import sys; from rtc_worker.cli import client_main; sys.exit(client_main())",
            "download",
            "--job-id",
            "tk-1",
            "--storage-url",
            storage.url,
            "--output",
            str(out),
            "--sha256",
            str(first.stored_sha256),
        ]
        env = {k: v for k, v in os.environ.items() if "API_KEY" not in k}
        env["RTC_DOWNLOAD_TOKEN"] = token
        return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=30, env=env)

    stolen = await asyncio.to_thread(run, str(second.download_token))  # another job's token
    assert stolen.returncode != 0 and not (out / "results-tk-1.zip").exists()
    assert "FORBIDDEN" in stolen.stderr or "403" in stolen.stderr, stolen.stderr
    good = await asyncio.to_thread(run, str(first.download_token))
    assert good.returncode == 0, good.stderr
    saved = out / "results-tk-1.zip"
    assert hashlib.sha256(saved.read_bytes()).hexdigest() == first.stored_sha256
    assert saved.stat().st_size == first.stored_size


async def test_the_owner_running_a_job_id_again_replaces_its_stored_results(
    start_worker: Any, client: RTCClient, storage: Storage, shared_root: Path, package: Path
) -> None:
    await start_worker(shared_root=shared_root, storage_url=storage.url, storage_api_key=KEY)
    first = await client.submit_shared(
        "worker-1", "inputs/package.zip", "outputs/again-1", job_id="again", via_storage=True
    )
    second = await client.submit_shared(
        "worker-1", "inputs/package.zip", "outputs/again-2", job_id="again", via_storage=True
    )
    assert first.stored_sha256 and second.stored_sha256
    _, listing = await fetch(storage, "/list")
    records = [f for f in json.loads(listing)["files"] if f["job_id"] == "again"]
    assert [r["sha256"] for r in records] == [second.stored_sha256]
