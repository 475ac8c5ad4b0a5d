#!/usr/bin/env python3
"""Benchmark of file transfers over the data channel (not a test: it prints numbers).

Every measurement uses separate processes on this machine (a signaling server, a
receiver and a sender), the same chunk size and the same flow control:

  (a) raw aiortc data-channel throughput: a plain send loop paced on bufferedAmount
      (high-water 1 MiB, low-water 256 KiB), the receiver discarding the bytes;
  (b) this project's transfer of the same file: a real ``rtc-worker serve`` process
      receiving (partial file on disk, sha256 verification, fsync, content-addressed
      store) and an RTCClient process sending (hashing and reading in a thread);
  (c) a transfer cut off at 50% and resumed over a new connection: bytes sent in all;
  (d) peak RSS of both processes of (b) for a small and a large file;
  (e) the transfer of (b) through a TURN relay: a coturn on 127.0.0.1 started by the
      bench (Debian's ``turnserver``; without it the figure is missing and the bench
      says why), a second signaling server handing out its time-limited credentials,
      worker and client both relay-only (``--ice-transport-policy relay``). The bench
      starts coturn with the tests' launcher, ``tests/turn_helpers.py`` (the project's one
      coturn launcher; it needs the ``test`` extra, i.e. pytest, to import): a benchmark
      run from a checkout may use the test helpers, an installed package does not ship
      them, and without them the relay figure is missing with the reason.

Usage::

    .venv/bin/python scripts/bench_transfer.py            # 100 MB and 10 MB files
    .venv/bin/python scripts/bench_transfer.py --quick    # 20 MB and 5 MB, under a minute

With the ``uvloop`` extra installed, every process runs on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
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
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
MB = 1_000_000


def rss_kib(pid: int, field: str = "VmHWM") -> int:
    """``VmHWM`` (peak) or ``VmRSS`` (now) of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def loop_name() -> str:
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


# ------------------------------------------------------------------ child roles


async def raw_receiver(url: str, size: int, name: str) -> dict[str, Any]:
    """Answer one offer and discard ``size`` bytes of chunks; report when all arrived."""
    from aiortc import RTCPeerConnection, RTCSessionDescription

    from protocol.signaling import Answer, RelayedOffer
    from rtc_worker.identity import Identity
    from rtc_worker.rtc import rtc_configuration
    from rtc_worker.signaling_client import SignalingClient

    signaling = SignalingClient(url, name, "worker", identity=Identity.generate())
    await signaling.connect()
    print("READY", flush=True)
    offer = await signaling.recv()
    assert isinstance(offer, RelayedOffer)
    pc = RTCPeerConnection(rtc_configuration([]))
    done = asyncio.get_running_loop().create_future()
    state = {"bytes": 0, "first": 0.0}

    @pc.on("datachannel")
    def on_channel(channel: Any) -> None:
        def on_message(message: str | bytes) -> None:
            if isinstance(message, bytes):
                if not state["bytes"]:
                    state["first"] = time.perf_counter()
                state["bytes"] += len(message)
                if state["bytes"] >= size and not done.done():
                    channel.send(f"JOB_LOG::received {state['bytes']}")
                    done.set_result(time.perf_counter())

        channel.on("message", on_message)

    await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
    await pc.setLocalDescription(await pc.createAnswer())
    await signaling.send(Answer(to=offer.from_, sdp=pc.localDescription.sdp))
    await done
    await asyncio.sleep(0.5)
    await pc.close()
    await signaling.close()
    return {"bytes": state["bytes"], "peak_kib": rss_kib(os.getpid()), "loop": loop_name()}


async def raw_sender(url: str, path: Path, chunk_size: int, name: str) -> dict[str, Any]:
    """Send ``path`` with a plain flow-controlled loop; time until the receiver has it all."""
    from rtc_worker.client import RTCClient

    async with RTCClient(url, connect_timeout=30) as client:
        await client.wait_for_worker(name, 30)
        conn = await client.connect_raw(name, authenticate=False)  # a bare channel
        channel = conn.channel.channel
        channel.bufferedAmountLowThreshold = LOW_WATER
        drained = asyncio.Event()
        channel.on("bufferedamountlow", drained.set)
        started = time.perf_counter()
        with path.open("rb") as handle:
            while block := await asyncio.to_thread(handle.read, 1 << 20):
                for start in range(0, len(block), chunk_size):
                    while channel.bufferedAmount > HIGH_WATER:
                        drained.clear()
                        await drained.wait()
                    channel.send(block[start : start + chunk_size])
        reply = await conn.recv(600)
        seconds = time.perf_counter() - started
        assert getattr(reply, "line", "").startswith("received "), reply
        return {"seconds": seconds, "peak_kib": rss_kib(os.getpid()), "loop": loop_name()}


async def project_sender(
    url: str, path: Path, worker: str, cut_at: float, policy: str = "all"
) -> dict[str, Any]:
    """Send ``path`` with RTCClient; with ``cut_at`` the connection is closed once the
    receiver reports that fraction, and the file is sent again over a new one."""
    from rtc_worker.client import RTCClient
    from rtc_worker.rtc import ChannelClosed, describe_path

    cache = Path(tempfile.mkdtemp(prefix="bench-client-"))
    try:
        async with RTCClient(
            url,
            connect_timeout=30,
            cache_dir=cache,
            ice_transport_policy="relay" if policy == "relay" else "all",
        ) as client:
            await client.wait_for_worker(worker, 30)
            conn = await client.connect(worker)
            idle_kib = rss_kib(os.getpid(), "VmRSS")
            total_sent = 0
            attempts = 0
            if cut_at:
                size = path.stat().st_size
                first = conn

                async def cut() -> None:
                    while first.io.bytes_sent < size * cut_at:
                        await asyncio.sleep(0.005)
                    await first.close()

                cutter = asyncio.ensure_future(cut())
                attempts += 1
                with contextlib.suppress(ChannelClosed):
                    await conn.send_file(path)
                await cutter
                total_sent += conn.io.bytes_sent
                await asyncio.sleep(1.0)  # the worker notices the drop and keeps the partial
                conn = await client.connect(worker)
            attempts += 1
            result = await conn.send_file(path)
            total_sent += conn.io.bytes_sent
            return {
                "status": result.outcome.status,
                "seconds": result.seconds,
                "bytes_sent": result.bytes_sent,
                "offset": result.outcome.offset,
                "total_sent": total_sent,
                "attempts": attempts,
                "idle_kib": idle_kib,
                "peak_kib": rss_kib(os.getpid()),
                "loop": loop_name(),
                "path": describe_path(conn.pc),
            }
    finally:
        shutil.rmtree(cache, ignore_errors=True)


# ------------------------------------------------------------------ orchestration


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def make_file(path: Path, size: int) -> None:
    rng = random.Random(size)
    with path.open("wb") as out:
        left = size
        while left:
            block = rng.randbytes(min(left, 1 << 20))
            out.write(block)
            left -= len(block)


def child(role: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, __file__, "--role", role, *args],
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )


def result_of(proc: subprocess.Popen[str], timeout: float = 900) -> dict[str, Any]:
    out, _ = proc.communicate(timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark process failed ({proc.returncode})")
    return dict(json.loads(out.strip().splitlines()[-1]))


class Worker:
    """A real ``rtc-worker serve`` process with its own empty data dir."""

    def __init__(self, url: str, name: str, policy: str = "all") -> None:
        self.data = Path(tempfile.mkdtemp(prefix="bench-worker-"))
        env = {
            **os.environ,
            "RTC_DATA_DIR": str(self.data),
            "RTC_SHARED_ROOT_CANDIDATES": "",
            "RTC_ICE_TRANSPORT_POLICY": policy,
        }
        env.pop("SHARED_STORAGE_ROOT", None)
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "rtc_worker",
                "serve",
                "--signaling-url",
                url,
                "--peer-id",
                name,
                "--log-level",
                "WARNING",
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        time.sleep(1.5)
        self.idle_kib = rss_kib(self.proc.pid, "VmRSS")

    def peak_kib(self) -> int:
        return rss_kib(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)
        shutil.rmtree(self.data, ignore_errors=True)


def run_raw(url: str, path: Path, size: int, chunk: int, name: str) -> dict[str, Any]:
    receiver = child("raw-recv", "--url", url, "--size", str(size), "--worker", name)
    assert receiver.stdout is not None
    receiver.stdout.readline()  # READY
    sender = child(
        "raw-send", "--url", url, "--file", str(path), "--chunk-size", str(chunk), "--worker", name
    )
    sent = result_of(sender)
    got = result_of(receiver)
    return {**sent, "receiver_peak_kib": got["peak_kib"], "receiver_loop": got["loop"]}


def run_project(
    url: str, path: Path, name: str, cut_at: float = 0.0, policy: str = "all"
) -> dict[str, Any]:
    worker = Worker(url, name, policy)
    try:
        sender = child(
            "send",
            *("--url", url, "--file", str(path), "--worker", name),
            *("--cut-at", str(cut_at), "--policy", policy),
        )
        sent = result_of(sender)
        return {**sent, "worker_idle_kib": worker.idle_kib, "worker_peak_kib": worker.peak_kib()}
    finally:
        worker.stop()


def start_signaling(env: dict[str, str]) -> tuple[str, subprocess.Popen[bytes]]:
    """A signaling server process on a free port (``env``: more variables); returns its
    URL once it answers /health."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "signaling", "--port", str(port), "--log-level", "WARNING"],
        cwd=REPO,
        env={**os.environ, **env},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    for _ in range(100):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    return f"ws://127.0.0.1:{port}/ws", server


def start_relay(stack: contextlib.ExitStack, tmp: Path) -> tuple[str | None, str | None]:
    """coturn on 127.0.0.1 and a signaling server handing out its credentials, both
    stopped by ``stack``; returns (that server's URL, None), or (None, why not)."""
    try:
        from tests.turn_helpers import coturn_missing, running_coturn
    except ImportError as exc:  # the test extra (pytest) is not installed
        return None, f"tests.turn_helpers cannot be imported ({exc})"
    missing = coturn_missing()
    if missing is not None:
        return None, missing
    try:
        turn = stack.enter_context(running_coturn(tmp / "coturn", verbose=False))
    except RuntimeError as exc:
        return None, str(exc)
    env = {
        "RTC_TURN_URLS": turn.url,
        "RTC_TURN_SECRET": turn.secret,  # the environment, never a flag
        "RTC_SIGNALING_DATA_DIR": str(tmp / "signaling-turn"),
    }
    url, server = start_signaling(env)
    stack.callback(server.wait, 10)
    stack.callback(server.terminate)
    return url, None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="20 MB and 5 MB: under a minute")
    parser.add_argument("--size-mb", type=float, help="large file, MB (default 100; quick 20)")
    parser.add_argument("--small-mb", type=float, help="small file, MB (default 10; quick 5)")
    parser.add_argument("--chunk-size", type=int, default=65536, help="bytes (default 65536)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="(a) and (b) are run alternately this many times and their medians compared "
        "(default 3; quick 2)",
    )
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--cut-at", type=float, default=0.0, help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="all", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.role:
        from loguru import logger

        from rtc_worker.cli import run_async

        logger.remove()

        async def role() -> int:
            if args.role == "raw-recv":
                out = await raw_receiver(args.url, args.size, args.worker)
            elif args.role == "raw-send":
                out = await raw_sender(args.url, args.file, args.chunk_size, args.worker)
            else:
                out = await project_sender(
                    args.url, args.file, args.worker, args.cut_at, args.policy
                )
            print(json.dumps(out), flush=True)
            return 0

        return run_async(role())

    large = int((args.size_mb or (20 if args.quick else 100)) * MB)
    small = int((args.small_mb or (5 if args.quick else 10)) * MB)
    tmp = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    # throwaway identities and bindings: the clients' keys, signaling's bindings database
    os.environ["XDG_CONFIG_HOME"] = str(tmp / "config")
    os.environ["RTC_SIGNALING_DATA_DIR"] = str(tmp / "signaling")
    url, server = start_signaling({})
    stack = contextlib.ExitStack()
    turn_url, turn_why = None, None
    try:
        turn_url, turn_why = start_relay(stack, tmp)
        big, little = tmp / "large.bin", tmp / "small.bin"
        make_file(big, large)
        make_file(little, small)
        print(
            f"files: {large / MB:.0f} MB and {small / MB:.0f} MB, chunk {args.chunk_size} "
            f"bytes, flow control {HIGH_WATER // 1024} KiB / {LOW_WATER // 1024} KiB",
            flush=True,
        )

        rounds = args.rounds or (2 if args.quick else 3)
        raws, projects, relays = [], [], []
        for number in range(1, rounds + 1):
            raws.append(run_raw(url, big, large, args.chunk_size, f"bench-a{number}"))
            projects.append(run_project(url, big, f"bench-b{number}"))
            line = (
                f"round {number}: (a) raw {large / MB / raws[-1]['seconds']:.2f} MB/s, "
                f"(b) project {large / MB / projects[-1]['seconds']:.2f} MB/s"
            )
            if turn_url is not None:
                relays.append(run_project(turn_url, big, f"bench-e{number}", policy="relay"))
                line += f", (e) relay {large / MB / relays[-1]['seconds']:.2f} MB/s"
                line += f" via {relays[-1]['path']}"
            print(line, flush=True)
        raw = sorted(raws, key=lambda r: r["seconds"])[len(raws) // 2]
        ours = sorted(projects, key=lambda r: r["seconds"])[len(projects) // 2]
        resumed = run_project(url, big, "bench-c", cut_at=0.5)
        print(f"(c) resumed transfer: {resumed['total_sent'] / MB:.2f} MB sent", flush=True)
        small_run = run_project(url, little, "bench-d")

        a = large / MB / raw["seconds"]
        b = large / MB / ours["seconds"]
        extra = (resumed["total_sent"] - large) / large * 100
        rows = [
            (
                "(a) raw aiortc channel",
                f"{a:.2f} MB/s",
                f"median of {rounds}: {raw['seconds']:.1f} s",
            ),
            (
                "(b) project transfer",
                f"{b:.2f} MB/s",
                f"median of {rounds}: {ours['seconds']:.1f} s",
            ),
            ("ratio b/a", f"{b / a:.2f}", "target >= 0.9"),
            (
                "(c) cut at 50%, resumed",
                f"{resumed['total_sent'] / MB:.2f} MB sent for {large / MB:.0f} MB",
                f"{extra:+.1f}% (target <= +5%), resumed at {resumed['offset'] / MB:.1f} MB",
            ),
        ]
        for label, run, size in (("small", small_run, small), ("large", ours, large)):
            rows.append(
                (
                    f"(d) peak RSS, {label} file ({size / MB:.0f} MB)",
                    f"worker {run['worker_peak_kib'] / 1024:.0f} MiB "
                    f"(idle {run['worker_idle_kib'] / 1024:.0f})",
                    f"client {run['peak_kib'] / 1024:.0f} MiB (idle {run['idle_kib'] / 1024:.0f})",
                )
            )
        if relays:
            relayed = sorted(relays, key=lambda r: r["seconds"])[len(relays) // 2]
            e = large / MB / relayed["seconds"]
            rows.append(
                (
                    "(e) project transfer via coturn",
                    f"{e:.2f} MB/s",
                    f"median of {rounds}: {relayed['seconds']:.1f} s, path {relayed['path']}, "
                    f"e/b {e / b:.2f}",
                )
            )
        else:
            rows.append(("(e) project transfer via coturn", "missing", str(turn_why)))
        rows.append(
            (
                "event loops",
                f"worker/client {ours['loop']}",
                f"raw {raw['loop']}/{raw['receiver_loop']}",
            )
        )
        width = max(len(r[0]) for r in rows)
        print()
        print(f"| {'measure':<{width}} | value | detail |")
        print(f"|{'-' * (width + 2)}|---|---|")
        for label, value, detail in rows:
            print(f"| {label:<{width}} | {value} | {detail} |")
        return 0
    finally:
        stack.close()
        server.terminate()
        server.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
