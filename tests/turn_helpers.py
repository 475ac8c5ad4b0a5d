"""A real coturn TURN server on loopback for tests and the bench.

:func:`running_coturn` starts Debian's ``turnserver`` on 127.0.0.1 with a free listening
port, a random 100-port relay range, ``--allow-loopback-peers`` (the relay addresses are
127.0.0.1) and the TURN REST shared secret (``use-auth-secret``), written in a mode-0600
configuration file as a deployment would (never on the command line). It waits for the log
line that says coturn is serving, and kills it on exit, even when the test fails.
:func:`coturn_fixture` is the pytest fixture ``coturn`` (import it into a test
module); without ``turnserver`` the test is skipped with the reason (it fails under
``RTC_REQUIRE_E2E=1``, :func:`tests.requirements.need`).

coturn logs one ``usage:`` line per session and second (``--verbose``); :func:`relayed_bytes`
(and :meth:`Coturn.relayed_bytes`) sums what it received from one peer's allocation, so a
test can show the relay carried a transfer.

In a network namespace: ``running_coturn(folder, host=NS_ADDRESS, port=3478,
argv_prefix=["ip", "netns", "exec", NS])`` (``NetNs.argv()`` gives the prefix) starts it
inside and waits the same way; ``extra_config`` adds lines to its configuration file
(e.g. ``max-allocate-lifetime=4``).

``scripts/bench_channel.py`` (for ``bench_transfer.py``'s figure through TURN) imports
this module too: it is the project's one coturn launcher, kept with the tests because
only tests and the bench run it.
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.requirements import need

__all__ = [
    "READY_LINE",
    "Coturn",
    "coturn_fixture",
    "coturn_missing",
    "relayed_bytes",
    "running_coturn",
]

READY_LINE = "Total General servers"
"""The log line coturn 4.6 prints once its listeners are up."""

_USAGE = re.compile(r" usage: realm=<[^>]*>, username=<(?P<user>[^>]*)>, rp=\d+, rb=(?P<rb>\d+),")


def relayed_bytes(log: str, peer_id: str) -> int:
    """Bytes coturn received from the allocations of ``peer_id`` (usernames
    ``"{expiry}:{peer_id}"``), summed over the ``usage:`` lines of its ``log`` (text of a
    ``--verbose`` coturn, one line per session and second): what that peer sent through
    the relay so far."""
    total = 0
    for match in _USAGE.finditer(log):
        if match.group("user").endswith(":" + peer_id):
            total += int(match.group("rb"))
    return total


@dataclass
class Coturn:
    """A running coturn.

    Attributes:
        host, port: where it listens (UDP and TCP).
        secret: the shared secret (``static-auth-secret``): a test value only.
        realm: its realm. log_path: its log (stdout and stderr).
        proc: the process.
    """

    host: str
    port: int
    secret: str
    realm: str
    log_path: Path
    proc: subprocess.Popen[bytes]
    min_port: int = 0
    max_port: int = 0
    extra: list[str] = field(default_factory=list)

    @property
    def url(self) -> str:
        """``turn:HOST:PORT`` (UDP to the TURN server)."""
        return f"turn:{self.host}:{self.port}"

    def log(self) -> str:
        """Everything coturn logged so far."""
        return self.log_path.read_text("utf-8", "replace")

    def relayed_bytes(self, peer_id: str) -> int:
        """:func:`relayed_bytes` of this coturn's log so far (coturn logs once a second)."""
        return relayed_bytes(self.log(), peer_id)

    def refused_users(self) -> list[str]:
        """Lines where coturn refused a user's credential (401)."""
        return [line for line in self.log().splitlines() if "Cannot find credentials" in line]


def coturn_missing() -> str | None:
    """Why coturn cannot run here (a sentence), or None when it can."""
    if shutil.which("turnserver") is None:
        return (
            "coturn is not installed (no turnserver on PATH): apt-get install coturn; "
            "scripts/_env.sh installs it when run as root"
        )
    if shutil.which("stdbuf") is None:
        return "stdbuf (coreutils) is missing: coturn's log would be block-buffered"
    return None


def _free_port(host: str) -> int:
    """A port free for both UDP and TCP on ``host``."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.bind((host, 0))
            port = int(udp.getsockname()[1])
            with socket.socket() as tcp, contextlib.suppress(OSError):
                tcp.bind((host, port))
                return port
    raise OSError("no port free for both UDP and TCP")


@contextlib.contextmanager
def running_coturn(
    folder: Path | None = None,
    *,
    host: str = "127.0.0.1",
    secret: str | None = None,
    verbose: bool = True,
    timeout_s: float = 10.0,
    port: int | None = None,
    extra_config: Sequence[str] = (),
    argv_prefix: Sequence[str] = (),
) -> Iterator[Coturn]:
    """Run coturn until the block exits (then it is killed).

    Args:
        folder: where its configuration, log, pid file and database go (a temporary
            folder when None, removed at the end).
        host: the listening and relay address.
        secret: the shared secret; a random one when None.
        verbose: log sessions and their ``usage:`` lines (needed by
            :meth:`Coturn.relayed_bytes`).
        timeout_s: longest wait for the ready line, seconds.
        port: its listening port (UDP and TCP); None: one free on ``host`` here (give
            one when it runs in another namespace).
        extra_config: more lines of its configuration file (``name=value``).
        argv_prefix: prepended to its command line, e.g. ``["ip", "netns", "exec", NS]``
            to run it in a network namespace (the prefix must exec the command).

    Raises:
        RuntimeError: turnserver is missing, exited, or was not ready in time (the
            message holds the end of its log).
    """
    missing = coturn_missing()
    if missing is not None:
        raise RuntimeError(missing)
    with contextlib.ExitStack() as stack:
        if folder is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="coturn-")))
        folder.mkdir(parents=True, exist_ok=True)
        secret = secret or secrets.token_urlsafe(24)
        port = _free_port(host) if port is None else port
        low = random.randrange(20000, 60000 - 100, 2)
        realm = "rtc.test"
        conf = folder / "turnserver.conf"
        lines = [
            f"listening-ip={host}",
            f"relay-ip={host}",
            f"listening-port={port}",
            f"min-port={low}",
            f"max-port={low + 99}",
            f"realm={realm}",
            "use-auth-secret",
            f"static-auth-secret={secret}",
            "fingerprint",
            "no-cli",
            "no-tls",
            "no-dtls",
            "no-software-attribute",
            "allow-loopback-peers",
            "simple-log",
            "log-file=stdout",
            f"pidfile={folder / 'turnserver.pid'}",
            f"userdb={folder / 'turndb'}",
        ]
        if verbose:
            lines.append("verbose")
        lines += extra_config
        conf.touch(mode=0o600)
        conf.write_text("\n".join(lines) + "\n")
        log_path = folder / "turnserver.log"
        with log_path.open("wb") as out:
            proc = subprocess.Popen(
                [*argv_prefix, "stdbuf", "-oL", "-eL", "turnserver", "-c", str(conf)],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        server = Coturn(
            host, port, secret, realm, log_path, proc, low, low + 99, list(extra_config)
        )
        try:
            deadline = time.monotonic() + timeout_s
            while READY_LINE not in server.log():
                if proc.poll() is not None or time.monotonic() > deadline:
                    state = "exited" if proc.returncode is not None else "was not ready"
                    raise RuntimeError(f"turnserver {state}: {server.log()[-2000:]}")
                time.sleep(0.05)
            yield server
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """Terminate coturn (its own process group), kill it after 5 s."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=5)


@pytest.fixture(name="coturn")
def coturn_fixture(tmp_path: Path) -> Iterator[Coturn]:
    """A coturn on 127.0.0.1 for this test (skipped, with the reason, without coturn)."""
    missing = coturn_missing()
    if missing is not None:
        need(missing)
    with running_coturn(tmp_path / "coturn") as server:
        yield server
