"""``rtc-signaling`` as separate processes on one Redis, for the scale-out tests: each on
its own free port, its log in a file, stopped (or killed) by the fixture that started it."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest_asyncio

from tests.conftest import REPO, free_port

__all__ = ["SignalingProcess", "StartProcess", "signaling_processes"]

START_TIMEOUT_S = 20.0


class SignalingProcess:
    """One running ``python -m signaling`` process.

    Attributes:
        name: a label for its log. port: its port. url: its WebSocket URL.
        log: the file its stderr goes to.
    """

    def __init__(self, name: str, proc: asyncio.subprocess.Process, port: int, log: Path) -> None:
        self.name, self.proc, self.port, self.log = name, proc, port, log
        self.url = f"ws://127.0.0.1:{port}/ws"
        self.health_url = f"http://127.0.0.1:{port}/health"

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    async def kill(self) -> None:
        """SIGKILL: the process dies without unregistering anything."""
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        await self.proc.wait()

    async def stop(self) -> int:
        """SIGTERM and wait (SIGKILL after 10 s); returns the exit status."""
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), 10)
            except TimeoutError:
                self.proc.kill()
        return await self.proc.wait()

    async def health(self, session: aiohttp.ClientSession) -> dict[str, object]:
        async with session.get(self.health_url) as response:
            assert response.status == 200
            body: dict[str, object] = await response.json()
            return body


StartProcess = Callable[..., Awaitable[SignalingProcess]]


@pytest_asyncio.fixture
async def signaling_processes(tmp_path: Path) -> AsyncIterator[StartProcess]:
    """Start signaling processes (``name``, ``redis_url``, more flags as ``args``, more
    variables as ``env``); every one is stopped after the test, even on failure."""
    started: list[SignalingProcess] = []

    async def start(
        name: str, redis_url: str, *args: str, env: dict[str, str] | None = None
    ) -> SignalingProcess:
        port = free_port()
        log = tmp_path / f"signaling-{name}.log"
        argv = [
            sys.executable, "-m", "signaling",
            "--host", "127.0.0.1", "--port", str(port),
            "--data-dir", str(tmp_path / f"data-{name}"),
            "--log-level", "INFO",
            *args,
        ]  # fmt: skip
        environment = {**os.environ, "PYTHONUNBUFFERED": "1", "RTC_REDIS_URL": redis_url}
        environment.update(env or {})
        with log.open("wb") as err:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=REPO, env=environment, stdout=asyncio.subprocess.PIPE, stderr=err
            )
        process = SignalingProcess(name, proc, port, log)
        started.append(process)
        assert proc.stdout is not None
        try:
            line = await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)
        except TimeoutError:
            line = b""
        if not line.startswith(b"listening on"):
            raise RuntimeError(f"signaling {name} did not start:\n{process.log_text()[-3000:]}")
        return process

    try:
        yield start
    finally:
        for process in started:
            with contextlib.suppress(ProcessLookupError):
                await process.stop()
