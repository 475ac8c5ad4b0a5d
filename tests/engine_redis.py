"""A real ``redis-server`` for the tests: 127.0.0.1, a free port, a temporary folder, no
persistence, started by the fixture and stopped after it, even on failure.

* ``redis_engine`` (session): one server for the whole run;
* ``redis_url`` (function): that server's URL, emptied (``FLUSHALL``) before the test;
* :class:`RedisServer`: a server a test starts, stops and restarts itself (on the same
  port, empty again: no persistence), for the tests of a Redis that goes away.

Without the ``redis-server`` binary the tests skip, saying so, or fail under
``RTC_REQUIRE_E2E=1`` (``scripts/test.sh`` installs the Debian package ``redis-server``).
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.requirements import need

__all__ = ["RedisServer", "redis_engine", "redis_url", "require_redis_server"]

READY_TIMEOUT_S = 10.0


def require_redis_server() -> str:
    """The path of ``redis-server``; skips the test when it is not installed (fails it
    under ``RTC_REQUIRE_E2E=1``: :func:`tests.requirements.need`)."""
    binary = shutil.which("redis-server")
    if binary is None:
        need(
            "redis-server is not installed (Debian: apt-get install redis-server; "
            "scripts/test.sh installs it)"
        )
    return binary


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _command(port: int, password: str | None, command: bytes, timeout: float) -> bytes:
    """Send ``command`` (after ``AUTH`` when there is a password); the last reply line."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        if password is not None:
            sock.sendall(f"AUTH {password}\r\n".encode())
            if not sock.recv(64).startswith(b"+OK"):
                return b""
        sock.sendall(command + b"\r\n")
        return sock.recv(64)


def _answers(port: int, password: str | None = None) -> bool:
    try:
        return _command(port, password, b"PING", 0.5).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One ``redis-server`` process in its own folder (``start``, ``stop``, ``restart``).

    With a ``password``, it is written to a 0600 config file (``requirepass``), never on
    the command line, and the URL carries it.

    Attributes:
        port: its TCP port on 127.0.0.1 (the same across restarts).
        url: ``redis://127.0.0.1:PORT/0`` (``redis://:PASSWORD@127.0.0.1:PORT/0``).
    """

    def __init__(self, binary: str, port: int | None = None, password: str | None = None) -> None:
        self.binary = binary
        self.port = port or _free_port()
        self.password = password
        auth = f":{password}@" if password is not None else ""
        self.url = f"redis://{auth}127.0.0.1:{self.port}/0"
        self.dir = Path(tempfile.mkdtemp(prefix="rtc-redis-"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> RedisServer:
        """Start the server and wait until it answers PING.

        Raises:
            RuntimeError: it exited or did not answer within 10 s (its log is quoted).
        """
        config = self.dir / "redis.conf"
        config.touch(mode=0o600)
        if self.password is not None:
            config.write_text(f"requirepass {self.password}\n")
        argv = [
            self.binary,
            str(config),
            "--port", str(self.port),
            "--bind", "127.0.0.1",
            "--save", "",
            "--appendonly", "no",
            "--dir", str(self.dir),
            "--daemonize", "no",
            "--logfile", str(self.dir / "redis.log"),
        ]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not _answers(self.port, self.password):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                log = (self.dir / "redis.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"redis-server did not start on {self.port}:\n{log}")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s); its data is gone."""
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port, empty."""
        self.stop()
        self.start()

    def close(self) -> None:
        """Stop the server and remove its folder."""
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def flushall(self) -> None:
        """Empty every database (``FLUSHALL``)."""
        assert _command(self.port, self.password, b"FLUSHALL", 5).startswith(b"+OK")


@pytest.fixture(scope="session")
def redis_engine() -> Iterator[RedisServer]:
    """One redis-server for the test session."""
    server = RedisServer(require_redis_server())
    try:
        yield server.start()
    finally:
        server.close()


@pytest.fixture
def redis_url(redis_engine: RedisServer) -> str:
    """The session's Redis, empty at the start of the test."""
    redis_engine.flushall()
    return redis_engine.url
