"""Network namespaces for end-to-end tests, and processes started inside them.

A :class:`NetNs` is one namespace named ``rtcb<pid>-<n>`` (the pid of the test process,
so parallel runs never collide) holding ``lo`` and a veth pair whose two ends are both
inside it (``rtcb0`` 10.231.0.1/24 and ``rtcb1`` 10.231.0.2/24), with a default route via
the ``rtcb1`` end. Chromium then has a default interface and signals a host candidate
(an mDNS name), and every packet it sends, multicast included, stays in the namespace.

Teardown kills every process ``ip netns pids`` lists in the namespace and deletes it,
even when the test failed; a namespace left by a test process that no longer exists (a
run killed with SIGKILL), with nothing running inside, is deleted before a new one is
made, and the deletion is said on stderr.

Needs root (CAP_NET_ADMIN, CAP_SYS_ADMIN) and ``ip`` from iproute2.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

__all__ = [
    "ADDRESS",
    "PEER_ADDRESS",
    "NetNs",
    "NetnsUnavailable",
    "Process",
    "netns",
    "netns_names",
    "netns_unavailable_reason",
]

ADDRESS = "10.231.0.1"
"""The namespace's own address (the ``rtcb0`` end, where the default route leaves)."""
PEER_ADDRESS = "10.231.0.2"
"""The other end of the veth pair (``rtcb1``), the default route's gateway."""

PREFIX = "rtcb"
_counter = itertools.count(1)
_OURS = re.compile(rf"^{PREFIX}(\d+)-\d+$")


class NetnsUnavailable(RuntimeError):
    """A namespace cannot be made here (not root, no ``ip``, or ``ip`` failed)."""


def netns_unavailable_reason() -> str | None:
    """Why no network namespace can be made here, or None when one can."""
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); run the tests as root"
    if shutil.which("ip") is None:
        return "no 'ip' command: install the Debian package iproute2"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        return f"'ip netns list' failed: {probe.stderr.strip() or probe.returncode}"
    return None


def netns_names() -> list[str]:
    """The names of the network namespaces that exist now (``ip netns list``)."""
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=False)
    return [line.split()[0] for line in out.stdout.splitlines() if line.strip()]


def _ip(*argv: str) -> None:
    result = subprocess.run(["ip", *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise NetnsUnavailable(f"ip {' '.join(argv)}: {result.stderr.strip()}")


def _pids(name: str) -> list[int]:
    out = subprocess.run(["ip", "netns", "pids", name], capture_output=True, text=True, check=False)
    return [int(word) for word in out.stdout.split() if word.isdigit()]


def _delete(name: str) -> None:
    """Kill every process in namespace ``name`` (SIGKILL) and delete it."""
    deadline = time.monotonic() + 5
    while (pids := _pids(name)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)


def _delete_stale() -> None:
    """Delete our namespaces left by a run that is gone (killed before its teardown).

    A namespace ``rtcb<pid>-<n>`` is deleted only when process ``pid`` does not exist
    AND nothing runs inside it; each deletion is said on stderr. A namespace of a live
    run (its pid exists, or processes still run in it: a run in another pid namespace)
    is left alone.
    """
    for name in netns_names():
        match = _OURS.match(name)
        if match is None or int(match.group(1)) == os.getpid():
            continue
        pid = int(match.group(1))
        try:
            os.kill(pid, 0)
            continue  # alive (or reused by another process): not ours to judge
        except PermissionError:
            continue  # exists, owned by someone else
        except ProcessLookupError:
            pass
        inside = _pids(name)
        if inside:
            print(
                f"tests.netns: keeping {name}: pid {pid} is gone but {len(inside)} "
                "process(es) run inside it",
                file=sys.stderr,
            )
            continue
        print(f"tests.netns: deleting stale namespace {name} (pid {pid} is gone)", file=sys.stderr)
        _delete(name)


class Process:
    """A process started in a namespace, its output (stdout and stderr) in ``log_path``."""

    def __init__(self, name: str, popen: subprocess.Popen[bytes], log_path: Path) -> None:
        self.name = name
        self.popen = popen
        self.log_path = log_path

    @property
    def alive(self) -> bool:
        """Whether the process is still running."""
        return self.popen.poll() is None

    def log(self) -> str:
        """Everything the process wrote so far (UTF-8, undecodable bytes replaced)."""
        try:
            return self.log_path.read_bytes().decode("utf-8", "replace")
        except FileNotFoundError:
            return ""

    def wait_for_line(self, pattern: str, timeout: float = 15.0) -> re.Match[str]:
        """Wait until a line of the log matches the regular expression ``pattern``.

        Raises:
            RuntimeError: when the process exits or ``timeout`` seconds pass first (the
                message holds the log).
        """
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        while True:
            match = regex.search(self.log())
            if match is not None:
                return match
            if not self.alive:
                raise RuntimeError(
                    f"{self.name} exited ({self.popen.returncode}) before /{pattern}/:\n"
                    f"{self.log()}"
                )
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: no /{pattern}/ in {timeout} s:\n{self.log()}")
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout`` seconds; returns the exit status."""
        if self.alive:
            self.popen.send_signal(signal.SIGTERM)
            try:
                return self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.kill()

    def kill(self) -> int:
        """SIGKILL (no chance to clean up, like a crash); returns the exit status."""
        if self.alive:
            self.popen.kill()
        return self.popen.wait(10)


class NetNs:
    """One network namespace (see the module's docstring); use :func:`netns` to make one."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.address = ADDRESS
        self.peer_address = PEER_ADDRESS
        self.processes: list[Process] = []

    def _create(self) -> None:
        ns = self.name
        _ip("netns", "add", ns)
        _ip("-n", ns, "link", "set", "lo", "up")
        veth = ("rtcb0", "netns", ns, "type", "veth", "peer", "name", "rtcb1", "netns", ns)
        _ip("link", "add", *veth)
        _ip("-n", ns, "addr", "add", f"{ADDRESS}/24", "dev", "rtcb0")
        _ip("-n", ns, "addr", "add", f"{PEER_ADDRESS}/24", "dev", "rtcb1")
        _ip("-n", ns, "link", "set", "rtcb0", "up")
        _ip("-n", ns, "link", "set", "rtcb1", "up")
        _ip("-n", ns, "route", "add", "default", "via", PEER_ADDRESS, "dev", "rtcb0")

    def argv(self, *argv: str) -> list[str]:
        """``argv`` prefixed so that it runs inside the namespace."""
        return ["ip", "netns", "exec", self.name, *argv]

    def start(
        self,
        name: str,
        argv: Sequence[str],
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Process:
        """Start ``argv`` inside the namespace, its output to ``log_path``.

        ``ip netns exec`` execs the command itself, so the process's pid (and its
        signals) are the command's. Killed at teardown if still running.
        """
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with log_path.open("wb") as out:
            popen = subprocess.Popen(
                self.argv(*argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
            )
        process = Process(name, popen, log_path)
        self.processes.append(process)
        return process

    def run(
        self, argv: Sequence[str], timeout: float = 20.0, env: Mapping[str, str] | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` inside the namespace to completion (text output, not checked)."""
        return subprocess.run(
            self.argv(*argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=dict(env) if env is not None else None,
        )

    def http_get(self, url: str, timeout: float = 10.0) -> tuple[int, str]:
        """``GET url`` from inside the namespace: (status, body as text).

        Raises:
            RuntimeError: when no HTTP response came (refused, timed out).
        """
        code = (
            "import sys, urllib.request, urllib.error\n"
            "try:\n"
            f"    r = urllib.request.urlopen(sys.argv[1], timeout={timeout})\n"
            "    status, body = r.status, r.read()\n"
            "except urllib.error.HTTPError as e:\n"
            "    status, body = e.code, e.read()\n"
            "sys.stdout.write(str(status) + '\\n' + body.decode('utf-8', 'replace'))\n"
        )
        result = self.run(["python3", "-c", code, url], timeout=timeout + 10)
        if result.returncode != 0:
            raise RuntimeError(f"GET {url} in {self.name}: {result.stderr.strip()}")
        status, _, body = result.stdout.partition("\n")
        return int(status), body

    def close(self) -> None:
        """Stop our processes, kill whatever else runs inside, delete the namespace."""
        for process in self.processes:
            with contextlib.suppress(Exception):
                process.kill()
        _delete(self.name)


@contextlib.contextmanager
def netns() -> Iterator[NetNs]:
    """A fresh namespace ``rtcb<pid>-<n>``, deleted on exit (also after an error).

    Raises:
        NetnsUnavailable: when it cannot be made (the caller usually skips).
    """
    reason = netns_unavailable_reason()
    if reason is not None:
        raise NetnsUnavailable(reason)
    _delete_stale()
    ns = NetNs(f"{PREFIX}{os.getpid()}-{next(_counter)}")
    try:
        ns._create()
        yield ns
    finally:
        ns.close()
