"""The relay road's end-to-end tests: the real ``rtc-signaling`` with its storage service
as a separate process, and a relay sender that is both the honest client and the
attacker's tool.

:class:`ServiceProcess` runs ``python -m signaling`` with the storage service on a local
folder (SQLite, folder blobs), on a fixed loopback port so that it can be killed
(SIGKILL) and started again where it was, and makes API keys in its real database.

:class:`RelaySender` opens an authenticated data channel to a worker
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
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

from signaling.db import StorageDB
from signaling.keys import Role
from tests.conftest import REPO, free_port

__all__ = ["ADMIN_KEY", "ServiceProcess"]

ADMIN_KEY = "relay-admin-key-0123456789"
START_TIMEOUT_S = 20.0


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
            self._db = StorageDB(str(self.storage / "storage.db"))
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
