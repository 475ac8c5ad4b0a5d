"""What the ``bench_*.py`` scripts share: their command line's common flags, process
figures, percentiles, goals, test files, and one way to print a table and write the JSON.

Units: sizes in bytes, MB = 10^6 bytes, MiB = 2^20 bytes, times in seconds unless a
name ends in ``_ms``. Not a test and not part of the package: the benchmarks import it
from their own folder (``scripts/``), which Python puts first on ``sys.path``.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # the project's packages, for every script importing this one
MB = 1_000_000
MIB = 1 << 20


def bench_parser(doc: str, quick: str) -> argparse.ArgumentParser:
    """A benchmark's parser: its description the first paragraph of ``doc`` (the script's
    docstring) and ``--quick`` (help ``quick``); add the script's own flags, then
    ``add_output_and_roles``."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help=quick)
    return parser


def add_output_and_roles(
    parser: argparse.ArgumentParser, **hidden: type | tuple[type, Any]
) -> None:
    """``--json FILE`` and the hidden flags of the child processes: ``--role`` and one per
    keyword (``interval_ms=float`` is ``--interval-ms``; a ``(type, default)`` pair sets a
    default)."""
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    for name, spec in hidden.items():
        kind, default = spec if isinstance(spec, tuple) else (spec, None)
        flag = "--" + name.replace("_", "-")
        parser.add_argument(flag, type=kind, default=default, help=argparse.SUPPRESS)


def make_file(path: Path, size: int) -> None:
    """Write ``size`` bytes of seeded random data (the same for the same size) to ``path``."""
    rng = random.Random(size)
    with path.open("wb") as out:
        left = size
        while left:
            block = rng.randbytes(min(left, 1 << 20))
            out.write(block)
            left -= len(block)


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    """``VmHWM`` (peak resident set) or ``VmRSS`` (now) of a process, KiB; 0 when gone."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in text.splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def size_label(size: int) -> str:
    """``5 MB``, ``1 GB``, ``10 GB`` (decimal units)."""
    return f"{size / 1000 / MB:g} GB" if size >= 1000 * MB else f"{size / MB:g} MB"


def percentile(values: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile of ``values`` (``fraction`` 0..1); 0.0 when empty."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def median(values: Sequence[float]) -> float:
    """The median of ``values`` (the upper one of an even count); 0.0 when empty."""
    return percentile(values, 0.5)


@dataclass(frozen=True)
class Goal:
    """A goal printed next to a figure, never asserted: ``value`` compared with
    ``target`` by ``op`` (``">="``, ``"<="``, ``"<"``)."""

    name: str
    value: float | None
    op: str
    target: float
    unit: str = ""

    @property
    def met(self) -> bool | None:
        """True/False, or None when the figure is missing."""
        if self.value is None:
            return None
        return {
            ">=": self.value >= self.target,
            "<=": self.value <= self.target,
            "<": self.value < self.target,
        }[self.op]

    def line(self) -> str:
        """``name: 5.21x (goal >= 5x): met``."""
        if self.value is None:
            return f"{self.name}: missing (goal {self.op} {self.target:g}{self.unit})"
        verdict = "met" if self.met else "not met"
        return (
            f"{self.name}: {self.value:.2f}{self.unit} "
            f"(goal {self.op} {self.target:g}{self.unit}): {verdict}"
        )

    def as_dict(self) -> dict[str, Any]:
        """The goal as JSON."""
        return {
            "name": self.name,
            "value": self.value,
            "op": self.op,
            "target": self.target,
            "unit": self.unit,
            "met": self.met,
        }


def print_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print a Markdown table (the README's format)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    print("| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |")
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells:
        print("| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |")


def emit(report: dict[str, Any], goals: Sequence[Goal], json_path: Path | None) -> None:
    """Print each goal's line, then the report (with the goals) as one JSON line, also
    written to ``json_path`` when given."""
    print()
    for goal in goals:
        print(goal.line())
    report = {
        **report,
        "goals": [g.as_dict() for g in goals],
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
        "load_average": os.getloadavg(),
    }
    text = json.dumps(report)
    if json_path is not None:
        json_path.write_text(text + "\n")
    print(text, flush=True)


def wait_http(url: str, timeout: float = 30.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Wait until ``url`` answers (any HTTP status).

    Raises:
        RuntimeError: no answer within ``timeout`` seconds, or ``proc`` exited first.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the process serving {url} exited with {proc.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not answer within {timeout:g} s")
        time.sleep(0.1)


def stop(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """Terminate a child process (and kill it after ``timeout`` seconds)."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def child(
    script: Path, role: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.Popen[str]:
    """``script --role ROLE ARGS`` in a new process (stdout piped: its last line is JSON);
    ``env``: more environment variables (secrets go there, never in ``args``)."""
    return subprocess.Popen(
        [sys.executable, str(script), "--role", role, *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO,
        env={**os.environ, **(env or {})},
    )


def result_of(proc: subprocess.Popen[str], timeout: float = 1800) -> dict[str, Any]:
    """The JSON object on the last line a child printed.

    Raises:
        RuntimeError: the child failed (its stderr is copied to ours; the message
            holds its last line).
    """
    out, err = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        if err:
            sys.stderr.write(err)
        last = (err or "").strip().splitlines()[-1:] or ["no error output"]
        raise RuntimeError(f"benchmark process failed ({proc.returncode}): {last[0][:200]}")
    return dict(json.loads(out.strip().splitlines()[-1]))


def start_signaling(env: dict[str, str], *flags: str) -> tuple[str, subprocess.Popen[bytes]]:
    """A signaling server process on a free port (``env``: more variables, ``flags``:
    more flags); returns its WebSocket URL once it answers /health."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "signaling", "--port", str(port), "--log-level", "WARNING", *flags],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_http(f"http://127.0.0.1:{port}/health", proc=server)
    return f"ws://127.0.0.1:{port}/ws", server


class Worker:
    """A real ``rtc-worker serve`` process with its own empty data dir.

    Args:
        url: the signaling server's WebSocket URL; ``name`` the worker's peer id.
        policy: ``all`` or ``relay`` (TURN only).
        shared_root: the worker's shared root (none: no shared storage).
        storage_url / storage_key: the storage service (the key through the
            environment, never a flag); none: no storage service.
    """

    def __init__(
        self,
        url: str,
        name: str,
        policy: str = "all",
        *,
        shared_root: Path | None = None,
        storage_url: str | None = None,
        storage_key: str | None = None,
    ) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="bench-worker-"))
        env = {
            **os.environ,
            "RTC_DATA_DIR": str(self.data),
            "RTC_SHARED_ROOT_CANDIDATES": "",
            "RTC_ICE_TRANSPORT_POLICY": policy,
        }
        for name_ in (
            "SHARED_STORAGE_ROOT",
            "RTC_SHARED_ROOT",
            "RTC_STORAGE_API_KEY",
            "STORAGE_API_KEY",
        ):
            env.pop(name_, None)
        if shared_root is not None:
            env["RTC_SHARED_ROOT"] = str(shared_root)
        flags = ["--signaling-url", url, "--peer-id", name, "--log-level", "WARNING"]
        if storage_url is not None:
            flags += ["--storage-url", storage_url]
        if storage_key is not None:
            env["RTC_STORAGE_API_KEY"] = storage_key
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtc_worker", "serve", *flags],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.5)
        self.idle_kib = rss_kib(self.proc.pid, "VmRSS")

    def peak_kib(self) -> int:
        """The worker's peak RSS so far, KiB."""
        return rss_kib(self.proc.pid)

    def stop(self) -> None:
        """Stop the worker and remove its data dir."""
        stop(self.proc)
        shutil.rmtree(self.data, ignore_errors=True)
