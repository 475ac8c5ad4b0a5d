"""Fixtures for end-to-end tests: a real signaling server on loopback, real workers
(in this process, or as a separate process) and real aiortc clients."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import shutil
import socket
import subprocess
import sys
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import pytest_asyncio
from loguru import logger

from rtc_worker.settings import WorkerSettings
from tests.requirements import need

REPO = Path(__file__).resolve().parent.parent

# Fixtures of the tests in a real browser (Chromium in a network namespace).
pytest_plugins = ["tests.browser_env", "tests.engine_s3"]

if TYPE_CHECKING:
    from tests.storage_service import StorageService


@pytest.fixture(autouse=True, scope="session")
def _quiet_logs() -> Iterator[None]:
    logger.remove()
    logger.add(sys.stderr, level=os.environ.get("RTC_TEST_LOG_LEVEL", "WARNING"), diagnose=False)
    yield


@pytest.fixture(autouse=True)
def _same_umask() -> Iterator[None]:
    """A worker run in the test process sets the process's umask (its ``--file-umask``)
    while it serves; one still stopping when its test ends must not change the next
    test's files."""
    before = os.umask(0o022)
    os.umask(before)
    yield
    os.umask(before)


@pytest.fixture(autouse=True)
def _private_home(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> Path:
    """Every test gets its own home: the keys, bindings databases and caches that peers
    and servers create by default (and subprocesses started by the test) land there,
    never in the real home."""
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(home / ".config"))
    for name in (
        "RTC_WORKER_KEY_FILE",
        "RTC_CLIENT_KEY_FILE",
        "RTC_DATA_DIR",
        "RTC_SIGNALING_DATA_DIR",
        "RTC_SIGNALING_BINDINGS_DB",
    ):
        monkeypatch.delenv(name, raising=False)
    return home


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Signaling:
    """A running signaling server on loopback."""

    def __init__(self, runner: Any, port: int) -> None:
        self.runner = runner
        self.port = port
        self.url = f"ws://127.0.0.1:{port}/ws"


async def start_signaling(port: int = 0, token: str | None = None, **values: Any) -> Signaling:
    """A signaling server on loopback with these settings (``values``: more fields of
    :class:`~signaling.config.SignalingSettings`, e.g. ``allow_anonymous_clients``)."""
    from signaling.app import start_server
    from signaling.config import SignalingSettings

    settings = SignalingSettings(token=token, **values) if token else SignalingSettings(**values)
    runner, bound = await start_server(settings, host="127.0.0.1", port=port)
    return Signaling(runner, bound)


@pytest_asyncio.fixture
async def signaling() -> AsyncIterator[Signaling]:
    server = await start_signaling()
    yield server
    await server.runner.cleanup()


@pytest.fixture
def blob_store(tmp_path: Path) -> Any:
    """A BlobStore in the test's temporary folder."""
    from rtc_worker.storage import BlobStore

    return BlobStore(tmp_path / "store")


@pytest.fixture
def shared_root(tmp_path: Path) -> Path:
    root = tmp_path / "shared"
    (root / "inputs").mkdir(parents=True)
    (root / "outputs").mkdir()
    return root


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


PACKAGE = {
    "data/train.csv": b"id,value\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(2000)),
    "config.json": b'{"epochs": 2, "lr": 0.001}',
    "README.md": b"# package\n\nsome text\n",
    "weights.bin": random.Random(1).randbytes(200_000),
}


@pytest.fixture
def package(shared_root: Path) -> Path:
    """A training-package ZIP at ``inputs/package.zip`` under the shared root."""
    return make_zip(shared_root / "inputs" / "package.zip", PACKAGE)


StartWorker = Callable[..., Awaitable[Any]]


@pytest_asyncio.fixture
async def start_worker(signaling: Signaling, tmp_path: Path) -> AsyncIterator[StartWorker]:
    """Start an in-process RTCWorkerClient; every started worker is stopped after the test."""
    from rtc_worker.worker import RTCWorkerClient

    started: list[tuple[Any, asyncio.Task[None]]] = []

    async def start(peer_id: str = "worker-1", **overrides: Any) -> RTCWorkerClient:
        values: dict[str, Any] = {
            "signaling_url": signaling.url,
            "peer_id": peer_id,
            "shared_root_candidates": [],
            "reconnect_max_delay_s": 0.5,
            "cancel_grace_s": 2.0,
            "data_dir": tmp_path / f"data-{peer_id}",
            **overrides,
        }
        worker = RTCWorkerClient(WorkerSettings(**values))
        task = asyncio.create_task(worker.run())
        started.append((worker, task))
        async with asyncio.timeout(10):
            while not worker.registered.is_set():
                if task.done():
                    task.result()
                await asyncio.sleep(0.02)
        return worker

    yield start
    for worker, task in started:
        await worker.stop()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(task, timeout=15)


StartService = Callable[..., Awaitable["StorageService"]]


@pytest.fixture(scope="session")
def postgres_engine() -> Iterator[Any]:
    """One PostgreSQL server for the session (:mod:`tests.engine_postgres`); skips with
    the reason when it cannot run here (fails with ``RTC_REQUIRE_E2E=1``:
    :func:`tests.requirements.need`)."""
    from tests.engine_postgres import PostgresUnavailable, postgres_server

    try:
        with postgres_server() as server:
            yield server
    except PostgresUnavailable as exc:
        need(f"PostgreSQL unavailable: {exc}")


@pytest.fixture(params=["sqlite+folder", "postgresql+s3"])
def storage_engines(request: pytest.FixtureRequest) -> tuple[str, str]:
    """The engines of this run of a storage-service test, ``(database, blobs)``: the
    embedded defaults (SQLite, the folder), then the scaled-out ones (PostgreSQL, an S3
    bucket)."""
    database, blobs = str(request.param).split("+")
    return database, blobs


@pytest.fixture
def storage_database(
    request: pytest.FixtureRequest, storage_engines: tuple[str, str]
) -> str | None:
    """The storage service's database URL for this run of the test: ``None`` (the
    default SQLite file in the storage folder) or PostgreSQL's shared database, emptied
    for the test."""
    if storage_engines[0] == "sqlite":
        return None
    server = request.getfixturevalue("postgres_engine")
    return str(server.emptied_database())


@pytest.fixture
def storage_blobs(
    request: pytest.FixtureRequest,
    storage_engines: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> dict[str, Any]:
    """The blob-backend settings of this run of the test: none (the folder in the
    storage path) or a bucket of the test on moto's S3 server (:mod:`tests.engine_s3`),
    whose unreferenced blobs are swept at once (no grace period)."""
    if storage_engines[1] == "folder":
        return {}
    bucket = request.getfixturevalue("s3_bucket")
    monkeypatch.setattr("signaling.blobs_s3.DEFAULT_SWEEP_GRACE_S", 0.0)
    return dict(bucket.settings())


@pytest_asyncio.fixture
async def start_storage_service(
    tmp_path: Path, storage_database: str | None, storage_blobs: dict[str, Any]
) -> AsyncIterator[StartService]:
    """Start the test's storage service with these settings (as ``cls``, a
    :class:`~tests.storage_service.StorageService` helper); stopped at the end. Runs
    each test twice (:func:`storage_engines`): on SQLite with the folder, and on
    PostgreSQL with an S3 bucket."""
    import aiohttp

    from signaling.app import start_server
    from tests.storage_service import StorageService, service_settings

    started: list[StorageService] = []
    async with aiohttp.ClientSession() as session:

        async def start(cls: type[StorageService] = StorageService, **overrides: Any) -> Any:
            root = tmp_path / "store"
            if storage_database is not None:
                overrides.setdefault("database_url", storage_database)
            for name, value in storage_blobs.items():
                overrides.setdefault(name, value)
            runner, port = await start_server(service_settings(root, **overrides))
            service = cls(root, session, runner, port, overrides)
            started.append(service)
            return service

        try:
            yield start
        finally:
            for service in started:
                await service.stop()


@pytest_asyncio.fixture
async def client(signaling: Signaling) -> AsyncIterator[Any]:
    from rtc_worker.client import RTCClient

    async with RTCClient(signaling.url, reply_timeout=20, connect_timeout=20) as rtc_client:
        yield rtc_client


@contextmanager
def tiny_tmpfs(mountpoint: Path, size: str = "64k") -> Iterator[Path]:
    """Mount a size-limited tmpfs at ``mountpoint`` (skips the test if not permitted)."""
    mountpoint.mkdir()
    if shutil.which("mount") is None:
        pytest.skip("no mount command to create a size-limited filesystem")
    try:
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mountpoint)],
            capture_output=True,
            text=True,
            check=False,
        )
    except PermissionError as exc:
        pytest.skip(f"cannot mount a tmpfs: {exc}")
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs (needs CAP_SYS_ADMIN): {result.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", str(mountpoint)], check=False, capture_output=True)


def worker_subprocess(
    signaling_url: str,
    peer_id: str,
    shared_root: Path | None,
    *,
    extra_env: dict[str, str] | None = None,
    honour_permissions: bool = False,
    log_path: Path | None = None,
) -> subprocess.Popen[bytes]:
    """``rtc-worker serve`` as a separate process.

    With ``honour_permissions`` and when running as root, the worker runs without the
    capabilities that let root ignore file permission bits (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH), so a mode-000 file is really unreadable to it.
    """
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
    env.pop("SHARED_STORAGE_ROOT", None)
    env.pop("RTC_SHARED_ROOT", None)
    argv = [
        sys.executable,
        "-m",
        "rtc_worker",
        "serve",
        "--signaling-url",
        signaling_url,
        "--peer-id",
        peer_id,
        "--log-level",
        "INFO",
    ]
    if shared_root is not None:
        argv += ["--shared-root", str(shared_root)]
    if honour_permissions and os.geteuid() == 0:
        caps = "-dac_override,-dac_read_search"
        argv = ["setpriv", f"--inh-caps={caps}", f"--bounding-set={caps}", *argv]
    out = log_path.open("wb") if log_path else subprocess.DEVNULL
    return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT, cwd=REPO)


#: Test modules that run real peers, servers or processes (end to end). The test
#: command runs them in a second pass without coverage tracing, which would double
#: their time while measuring nothing of protocol/.
LIVE_MODULES = frozenset(
    {
        "test_attacks_signaling",
        "test_attacks_dedupe",
        "test_e2e_shared",
        "test_e2e_transfer",
        "test_channel",
        "test_config_cli",
        "test_fuzz_worker",
        "test_results_storage",
        "test_attacks_files",
        "test_attacks_secrets",
        "test_cli_identity",
        "test_attacks_identity",
        "test_attacks_identity_ownership",
    }
)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        module = item.module.__name__.rsplit(".", 1)[-1] if item.module else ""
        if module in LIVE_MODULES:
            item.add_marker(pytest.mark.live)


async def recv_until(conn: Any, kinds: tuple[type, ...], timeout: float = 20) -> Any:
    """A raw channel's next message of one of ``kinds`` (the others are skipped:
    JOB_LOG, FILE_PROGRESS...)."""
    async with asyncio.timeout(timeout):
        while True:
            message = await conn.recv(timeout)
            if isinstance(message, kinds):
                return message


async def offer(conn: Any, frame: str, data: bytes, timeout: float = 10) -> Any:
    """Send ``frame`` (a FILE_META) on a raw channel and, when the worker asks its proof
    of possession, answer it from ``data`` as a conforming sender does; returns the
    worker's reply after that (FILE_READY, FILE_EXISTS or TRANSFER_ERROR)."""
    from protocol import FileProof, FileProofRequest
    from protocol.proof import proof_digest

    conn.send(frame)
    reply = await conn.recv(timeout)
    if isinstance(reply, FileProofRequest):
        parts = [data[offset : offset + length] for offset, length in reply.ranges]
        conn.send(FileProof(proof_digest(reply.nonce, parts)))
        reply = await conn.recv(timeout)
    return reply


def held_partial(store: Any, principal: str, data: bytes) -> int:
    """Bytes of ``data`` a worker's store holds in ``principal``'s own partial file."""
    import hashlib

    from rtc_worker.holdings import partial_key

    digest = hashlib.sha256(data).hexdigest()
    return int(store.partial_size(partial_key(principal, digest), len(data), sha256=digest))
