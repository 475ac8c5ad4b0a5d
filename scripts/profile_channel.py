#!/usr/bin/env python3
"""Profile of the data-channel transfer path, both sides (not a test: it prints numbers).

The same transfer as row (b) of ``scripts/bench_transfer.py``: a real ``rtc-worker
serve`` process receives (partial file, sha256, fsync, content-addressed store) and an
RTCClient process sends (``project_sender`` of ``bench_channel.py``, the same code), each
process under ``cProfile``. The profiles are dumped to ``--out`` (``worker.prof``,
``client.prof``; read them with ``python -m pstats``) and summarised: the top functions
by own time (tottime) and by cumulative time, and the share of the event-loop thread's
time spent in each part: our code (``protocol/``, ``rtc_worker/``), aiortc (SCTP, data
channel), aioice, OpenSSL/DTLS and SRTP, hashing, the event loop (asyncio/uvloop),
logging, the rest. The time of a built-in function is given to whoever called it
(pstats' caller edges), except OpenSSL's and hashlib's, which are counted apart.

Only the main thread is profiled (cProfile's limit): the writer and hashing threads
are not in the figures, which is the point (what is on the event loop is what limits a
CPU-bound channel). cProfile slows calls down, so the MB/s under the profiler is lower
than without; ``--no-profile`` runs the same processes without it (several rounds,
median), for throughput.

Usage::

    .venv/bin/python scripts/profile_channel.py                      # 100 MB, profiled
    .venv/bin/python scripts/profile_channel.py --no-profile --rounds 3
    .venv/bin/python scripts/profile_channel.py --code /tmp/old-tree # another checkout
                                                                     # (its code, this script)

``--code DIR`` runs the worker and the client from another tree of this project (for a
before/after comparison within the same minute on a busy machine).
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import json
import os
import pstats
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
MB = 1_000_000

#: Categories, checked in order against a function's file name (or a built-in's name).
_OPENSSL = ("_openssl", "_rust", "OpenSSL", "cryptography", "pylibsrtp", "_cffi_backend", "SSL_")
_HASHING = ("_hashlib", "sha256", "_sha2")


def category(filename: str, name: str) -> str | None:
    """The part of the stack a profile entry belongs to; None for a built-in whose time
    goes to its callers."""
    path = filename.replace("\\", "/")
    if filename == "~":
        if any(word in name for word in _OPENSSL):
            return "OpenSSL/DTLS/SRTP"
        if any(word in name for word in _HASHING):
            return "hashing"
        return None
    if "site-packages" in path or "dist-packages" in path:
        for package, label in (
            ("/aiortc/", "aiortc"),
            ("/aioice/", "aioice"),
            ("/OpenSSL/", "OpenSSL/DTLS/SRTP"),
            ("/cryptography/", "OpenSSL/DTLS/SRTP"),
            ("/pylibsrtp/", "OpenSSL/DTLS/SRTP"),
            ("/uvloop/", "event loop"),
            ("/loguru/", "logging"),
            ("/pyee/", "aiortc"),
        ):
            if package in path:
                return label
        return "other libraries"
    for ours in ("/protocol/", "/rtc_worker/", "/signaling/", "/scripts/"):
        if ours in path:
            return "ours"
    if "/asyncio/" in path or path.endswith(("selectors.py", "socket.py")):
        return "event loop"
    if "/logging/" in path:
        return "logging"
    return "stdlib/other"


def breakdown(stats: pstats.Stats) -> dict[str, float]:
    """Seconds of own time per category (built-ins charged to their callers)."""
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    labels: dict[Any, str | None] = {key: category(key[0], key[2]) for key in raw}
    totals: dict[str, float] = defaultdict(float)
    for key, (_cc, _nc, tottime, _ct, callers) in raw.items():
        label = labels[key]
        if label is not None:
            totals[label] += tottime
            continue
        charged = sum(edge[2] for edge in callers.values()) or 1.0
        for caller, edge in callers.items():
            caller_label = labels.get(caller) or "stdlib/other"
            totals[caller_label] += tottime * edge[2] / charged
        if not callers:
            totals["stdlib/other"] += tottime
    return dict(totals)


def summarise(path: Path, title: str, top: int) -> dict[str, float]:
    """Print the top ``top`` functions by tottime and by cumtime, and the breakdown."""
    stats = pstats.Stats(str(path))
    stats.strip_dirs()
    print(f"\n=== {title}: top {top} by tottime ({path}) ===", flush=True)
    stats.sort_stats("tottime").print_stats(top)
    print(f"=== {title}: top {top} by cumtime ===", flush=True)
    stats.sort_stats("cumulative").print_stats(top)
    totals = breakdown(pstats.Stats(str(path)))
    whole = sum(totals.values()) or 1.0
    print(f"=== {title}: where the main thread's time went ({whole:.2f} s) ===")
    for label, seconds in sorted(totals.items(), key=lambda item: -item[1]):
        print(f"  {label:<20} {seconds:7.2f} s  {seconds / whole * 100:5.1f}%")
    return totals


# ------------------------------------------------------------------ child roles


def sender_role(args: argparse.Namespace) -> int:
    """The client process: the bench's ``project_sender``, optionally profiled."""
    sys.path.insert(0, str(args.code))
    sys.path.insert(1, str(args.code / "scripts"))
    try:  # the bench's own sending code
        from bench_channel import project_sender
    except ImportError:  # a tree from before bench_transfer.py was split
        from bench_transfer import project_sender  # type: ignore[no-redef,attr-defined]
    from loguru import logger

    from rtc_worker.cli import run_async

    logger.remove()
    profile = cProfile.Profile() if args.prof else None
    if profile is not None:
        profile.enable()
    out: dict[str, Any] = {}
    before = os.times()

    async def send() -> int:
        out.update(await project_sender(args.url, args.file, args.worker, 0.0))
        return 0

    try:
        run_async(send())
    finally:
        if profile is not None:
            profile.disable()
            profile.dump_stats(str(args.prof))
    after = os.times()
    out["cpu_s"] = (after.user - before.user) + (after.system - before.system)
    print(json.dumps(out), flush=True)
    return 0


# ------------------------------------------------------------------ orchestration


def start_worker(
    code: Path, url: str, name: str, data: Path, prof: Path | None
) -> subprocess.Popen[bytes]:
    """``rtc-worker serve`` from ``code`` (under cProfile when ``prof`` is given)."""
    env = {
        **os.environ,
        "RTC_DATA_DIR": str(data),
        "RTC_SHARED_ROOT_CANDIDATES": "",
        "RTC_ICE_TRANSPORT_POLICY": "all",
        "PYTHONPATH": str(code),
    }
    env.pop("SHARED_STORAGE_ROOT", None)
    profiler = ["-m", "cProfile", "-o", str(prof)] if prof is not None else []
    command = [sys.executable, *profiler, "-m", "rtc_worker", "serve"]
    command += ["--signaling-url", url, "--peer-id", name, "--log-level", "WARNING"]
    return subprocess.Popen(
        command, env=env, cwd=code, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (all its threads), seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_once(
    args: argparse.Namespace, url: str, big: Path, name: str, out: Path | None
) -> dict[str, Any]:
    """One transfer of ``big``; with ``out`` both processes are profiled into it."""
    data = Path(tempfile.mkdtemp(prefix="profile-worker-"))
    worker_prof = out / "worker.prof" if out is not None else None
    worker = start_worker(args.code, url, name, data, worker_prof)
    try:
        time.sleep(1.5)
        idle_cpu = cpu_seconds(worker.pid)
        command = [sys.executable, __file__, "--role", "send", "--url", url]
        command += ["--file", str(big), "--worker", name, "--code", str(args.code)]
        if out is not None:
            command += ["--prof", str(out / "client.prof")]
        sender = subprocess.run(
            command, cwd=args.code, stdout=subprocess.PIPE, text=True, timeout=1800, check=True
        )
        result = dict(json.loads(sender.stdout.strip().splitlines()[-1]))
        result["worker_cpu_s"] = cpu_seconds(worker.pid) - idle_cpu
        return result
    finally:
        worker.send_signal(signal.SIGTERM)  # a clean stop: cProfile dumps its file
        try:
            worker.wait(60)
        except subprocess.TimeoutExpired:
            worker.kill()
            worker.wait(10)
        shutil.rmtree(data, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=float, default=100.0, help="file size, MB (100)")
    parser.add_argument("--top", type=int, default=25, help="functions listed per side (25)")
    parser.add_argument("--out", type=Path, help="where the .prof files go (a temp folder)")
    parser.add_argument("--rounds", type=int, default=1, help="transfers (median MB/s)")
    parser.add_argument("--no-profile", action="store_true", help="throughput only")
    parser.add_argument("--code", type=Path, default=REPO, help="the project tree to run")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--prof", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.code = args.code.resolve()
    if args.role == "send":
        return sender_role(args)

    sys.path.insert(0, str(REPO / "scripts"))
    from bench_common import make_file, start_signaling

    size = int(args.size_mb * MB)
    tmp = Path(tempfile.mkdtemp(prefix="profile-channel-"))
    os.environ["XDG_CONFIG_HOME"] = str(tmp / "config")
    os.environ["RTC_SIGNALING_DATA_DIR"] = str(tmp / "signaling")
    out = None if args.no_profile else (args.out or tmp / "profiles")
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    url, server = start_signaling({})
    try:
        big = tmp / "large.bin"
        make_file(big, size)
        speeds, cpu = [], []
        for number in range(1, args.rounds + 1):
            started = time.strftime("%H:%M:%S")
            result = run_once(args, url, big, f"profile-{os.getpid()}-{number}", out)
            speeds.append(size / MB / result["seconds"])
            cpu.append(
                (result["cpu_s"] * 1e3 / (size / MB), result["worker_cpu_s"] * 1e3 / (size / MB))
            )
            print(
                f"{started} round {number}: {speeds[-1]:.2f} MB/s, CPU ms per MB: sender "
                f"{cpu[-1][0]:.1f}, receiver {cpu[-1][1]:.1f} "
                f"({result['status']}, {result['seconds']:.1f} s, {result['loop']}"
                f"{', profiled' if out is not None else ''}) code {args.code}",
                flush=True,
            )
        middle = len(speeds) // 2
        print(
            f"median of {len(speeds)}: {sorted(speeds)[middle]:.2f} MB/s, CPU ms per MB: "
            f"sender {sorted(c[0] for c in cpu)[middle]:.1f}, "
            f"receiver {sorted(c[1] for c in cpu)[middle]:.1f}"
        )
        if out is not None:
            for side in ("client", "worker"):
                title = "sender (client)" if side == "client" else "receiver (worker)"
                summarise(out / f"{side}.prof", title, args.top)
            if args.out is None:
                kept = Path(tempfile.mkdtemp(prefix="profile-channel-out-"))
                for side in ("client", "worker"):
                    shutil.copy(out / f"{side}.prof", kept / f"{side}.prof")
                print(f"\nprofiles kept in {kept}")
        return 0
    finally:
        server.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
