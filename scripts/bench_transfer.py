#!/usr/bin/env python3
"""Benchmark of every road a file can take to a worker (not a test: it prints numbers).

Every measurement uses separate processes on this machine (servers, a receiver and a
sender), for each size of ``--sizes`` (MB = 10^6 bytes; default 100 and 1000), the
rounds of each road alternating and their medians compared:

  (h) raw aiohttp stream-to-disk, the ceiling: one POST of the file over loopback into
      a file (1 MiB reads, fsync before the answer), server and client processes;
  (a) raw aiortc data channel: a plain send loop paced on bufferedAmount (high-water
      1 MiB, low-water 256 KiB), the receiver discarding the bytes;
  (b) the project's channel: a real ``rtc-worker serve`` receiving (partial file on
      disk, sha256 verification, fsync, content-addressed store) and an RTCClient
      process sending (hashing and reading in a thread); MB/s from FILE_META to
      FILE_RECEIVED, as before;
  (e) (b) through TURN: a coturn on 127.0.0.1 started by the bench (Debian's
      ``turnserver``) with the tests' launcher ``tests/turn_helpers.py`` (needs the
      ``test`` extra), a second signaling server handing out its credentials, worker
      and client relay-only (``--ice-transport-policy relay``); without coturn the row
      says why;
  (r) the relay road: an ``rtc-signaling`` process with the storage service (folder
      backend), a worker offering the road (``--storage-url``, ``RTC_STORAGE_API_KEY``),
      a client forcing it (``plan_road(worker, "relay")``, ``send_file(path, road=plan)``),
      with the worker's and the client's own API keys: hashing, encryption, tus upload,
      the worker's ranged download, decryption, verification; MB/s from the client's
      call to the worker's FILE_RECEIVED (hashing included, so it is the stricter
      figure); when the checkout has no relay road the row says why;
  (c) resume: a transfer cut at ``--cut-at`` (50%) and resumed, bytes sent in all: on
      the channel the connection is closed at 50% of the bytes sent and the file sent
      again over a new one; on the relay road the client reaches the storage service
      through a byte-counting proxy that resets every connection at 50% of the file
      uploaded and refuses new ones for ``--outage-s`` seconds (the service
      unreachable), bytes = uploaded through the proxy (ciphertext: 16 bytes more per
      chunk, plus HTTP headers) + sent on the data channel;
  (d) peak RSS (VmHWM) of the worker and the client of (b) and (r) for each size:
      flat in the file size when chunks are streamed, never collected.

Goals are printed next to the figures (met / not met), never asserted: relay / channel
>= 5x, channel / raw aiortc >= 0.9x.

Usage::

    .venv/bin/python scripts/bench_transfer.py                  # 100 MB and 1 GB
    .venv/bin/python scripts/bench_transfer.py --quick          # 5 and 20 MB, one round
    .venv/bin/python scripts/bench_transfer.py --sizes 100 --roads channel,raw --rounds 1
    .venv/bin/python scripts/bench_transfer.py --json transfer.json

Prints a table, then the figures as one JSON object on the last line (also written to
``--json FILE``). With the ``uvloop`` extra installed, every process runs on uvloop.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bench_common import (  # noqa: E402  (after the path: the project's packages)
    MB,
    Goal,
    Worker,
    emit,
    print_table,
    result_of,
    rss_kib,
    size_label,
    start_signaling,
    stop,
)
from bench_common import child as spawn  # noqa: E402

HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
ROADS = ("http", "raw", "channel", "turn", "relay")


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
            began = time.perf_counter()
            result = await conn.send_file(path)
            wall = time.perf_counter() - began
            total_sent += conn.io.bytes_sent
            return {
                "status": result.outcome.status,
                "seconds": result.seconds,
                "wall_s": wall,
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


def child(role: str, *args: str) -> Any:
    """This script in a new process in ``role``."""
    return spawn(Path(__file__), role, *args)


def make_file(path: Path, size: int) -> None:
    rng = random.Random(size)
    with path.open("wb") as out:
        left = size
        while left:
            block = rng.randbytes(min(left, 1 << 20))
            out.write(block)
            left -= len(block)


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


def start_turn(stack: contextlib.ExitStack, tmp: Path) -> tuple[str | None, str | None]:
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
    stack.callback(stop, server)
    return url, None


class Runs:
    """The runs of one road at one size; figures from the median run."""

    def __init__(self, size: int, time_key: str = "seconds") -> None:
        self.size, self.time_key, self.runs = size, time_key, list[dict[str, Any]]()

    def add(self, run: dict[str, Any]) -> float:
        """Record a run; its MB/s."""
        self.runs.append(run)
        return self.size / MB / run[self.time_key]

    @property
    def mid(self) -> dict[str, Any] | None:
        """The median run (by time), None without runs."""
        if not self.runs:
            return None
        return sorted(self.runs, key=lambda r: r[self.time_key])[len(self.runs) // 2]

    @property
    def mb_s(self) -> float | None:
        mid = self.mid
        return None if mid is None else self.size / MB / mid[self.time_key]

    def rounds(self) -> list[float]:
        return [round(self.size / MB / r[self.time_key], 2) for r in self.runs]


def fmt_rate(runs: Runs | None, why: str | None) -> str:
    if runs is None or runs.mb_s is None:
        return f"not available: {why}" if why else "-"
    return f"{runs.mb_s:.2f}"


def fmt_resume(run: dict[str, Any] | None, size: int) -> str:
    if run is None:
        return "-"
    total = run["total_sent"]
    return f"{total / MB:.1f} MB ({(total - size) / size * 100:+.1f}%)"


def fmt_rss(run: dict[str, Any] | None) -> tuple[str, str]:
    if run is None:
        return "-", "-"
    return (
        f"{run['worker_peak_kib'] / 1024:.0f} MiB (idle {run['worker_idle_kib'] / 1024:.0f})",
        f"{run['peak_kib'] / 1024:.0f} MiB (idle {run['idle_kib'] / 1024:.0f})",
    )


def bench_size(
    size: int,
    args: argparse.Namespace,
    url: str,
    turn_url: str | None,
    why: dict[str, str],
    tmp: Path,
) -> dict[str, Any]:
    """Every road of ``--roads`` at ``size`` bytes: rounds, then the resumes."""
    from bench_roads import run_raw_http, run_relay

    path = tmp / f"file-{size}.bin"
    make_file(path, size)
    tag = f"{size // MB}"
    roads = set(args.roads)
    runs = {
        "http": Runs(size),
        "raw": Runs(size),
        "channel": Runs(size),
        "turn": Runs(size),
        "relay": Runs(size, "wall_s"),
    }
    for number in range(1, args.rounds + 1):
        line = [f"{size_label(size)}, round {number}:"]
        if "http" in roads:
            line.append(f"(h) http {runs['http'].add(run_raw_http(path)):.1f}")
        if "raw" in roads:
            raw = run_raw(url, path, size, args.chunk_size, f"bench-a{tag}-{number}")
            line.append(f"(a) raw {runs['raw'].add(raw):.2f}")
        if "channel" in roads:
            ours = run_project(url, path, f"bench-b{tag}-{number}")
            line.append(f"(b) channel {runs['channel'].add(ours):.2f}")
        if "turn" in roads and turn_url is not None:
            turned = run_project(turn_url, path, f"bench-e{tag}-{number}", policy="relay")
            line.append(f"(e) TURN {runs['turn'].add(turned):.2f} via {turned['path']}")
        if "relay" in roads and "relay" not in why:
            try:
                relayed = run_relay(path, f"bench-r{tag}-{number}", tmp)
                line.append(f"(r) relay road {runs['relay'].add(relayed):.2f} ({relayed['road']})")
            except RuntimeError as exc:  # a road still being built must not stop the others
                why["relay"] = f"the run failed: {exc}"
                line.append("(r) relay road failed")
        print(" ".join(line) + " (MB/s)", flush=True)
    resumes: dict[str, dict[str, Any] | None] = {"channel": None, "relay": None}
    if args.cut_at and "channel" in roads:
        resumes["channel"] = run_project(url, path, f"bench-c{tag}", cut_at=args.cut_at)
        print(f"(c) channel cut at {args.cut_at:.0%}: {fmt_resume(resumes['channel'], size)}")
    if args.cut_at and "relay" in roads and "relay" not in why:
        try:
            resumes["relay"] = run_relay(path, f"bench-rc{tag}", tmp, args.cut_at, args.outage_s)
            print(f"(c) relay road cut at {args.cut_at:.0%}: {fmt_resume(resumes['relay'], size)}")
        except RuntimeError as exc:
            why["relay resume"] = f"the run failed: {exc}"
            print(f"(c) relay road cut at {args.cut_at:.0%}: failed: {exc}")
    path.unlink()
    return {
        "size": size,
        "runs": {road: r.runs for road, r in runs.items()},
        "rounds_mb_s": {road: r.rounds() for road, r in runs.items()},
        "mb_s": {road: r.mb_s for road, r in runs.items()},
        "resume": resumes,
        "_runs": runs,
    }


def report_size(
    result: dict[str, Any], args: argparse.Namespace, why: dict[str, str]
) -> tuple[list[list[str]], list[Goal]]:
    """The table rows and goals of one size."""
    size, runs, resumes = result["size"], result["_runs"], result["resume"]
    label = f"{size_label(size)}"
    roads = set(args.roads)
    rows: list[list[str]] = []
    names = {
        "http": "(h) raw aiohttp stream-to-disk (ceiling)",
        "raw": "(a) raw aiortc channel",
        "channel": "(b) project channel",
        "turn": "(e) project channel through TURN",
        "relay": "(r) relay road (encrypt, tus, ranged GET, decrypt, verify)",
    }
    for road, name in names.items():
        if road not in roads:
            continue
        mid = runs[road].mid if road in ("channel", "relay") else None
        worker, client = fmt_rss(mid)
        resume = fmt_resume(resumes.get(road), size) if road in resumes else ""
        if resumes.get(road) is None and f"{road} resume" in why:
            resume = "not available: the run failed"
        rows.append([name, label, fmt_rate(runs[road], why.get(road)), resume, worker, client])
    goals = []
    channel, raw, relay = runs["channel"].mb_s, runs["raw"].mb_s, runs["relay"].mb_s
    if "relay" in roads and "channel" in roads:
        value = None if relay is None or not channel else relay / channel
        goals.append(Goal(f"{label}: relay road / channel", value, ">=", 5, "x"))
    if "raw" in roads and "channel" in roads:
        value = None if channel is None or not raw else channel / raw
        goals.append(Goal(f"{label}: channel / raw aiortc", value, ">=", 0.9, "x"))
    return rows, goals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="5 and 20 MB, one round: a smoke run")
    parser.add_argument("--sizes", help="file sizes, MB, comma-separated (default 100,1000)")
    parser.add_argument(
        "--roads",
        default=",".join(ROADS),
        help=f"roads to measure, comma-separated (default {','.join(ROADS)})",
    )
    parser.add_argument("--chunk-size", type=int, default=65536, help="bytes (default 65536)")
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds per road and size, roads alternating (default 3; quick 1)",
    )
    parser.add_argument(
        "--cut-at",
        type=float,
        default=0.5,
        help="fraction at which the resume runs are cut; 0: none (default 0.5)",
    )
    parser.add_argument(
        "--outage-s",
        type=float,
        default=1.0,
        help="seconds the storage service stays unreachable in the relay road's cut (default 1.0)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    parser.add_argument("--role", help=argparse.SUPPRESS)
    parser.add_argument("--url", help=argparse.SUPPRESS)
    parser.add_argument("--storage-url", help=argparse.SUPPRESS)
    parser.add_argument("--file", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--target", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--policy", default="all", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.role:
        return role_main(args)

    sizes_mb = args.sizes or ("5,20" if args.quick else "100,1000")
    sizes = [int(float(text) * MB) for text in sizes_mb.split(",")]
    args.rounds = args.rounds or (1 if args.quick else 3)
    args.roads = [road.strip() for road in args.roads.split(",")]
    unknown = set(args.roads) - set(ROADS)
    if unknown:
        parser.error(f"unknown roads: {', '.join(sorted(unknown))} (known: {', '.join(ROADS)})")
    tmp = Path(tempfile.mkdtemp(prefix="bench-transfer-"))
    # throwaway identities and bindings: the clients' keys, signaling's bindings database
    os.environ["XDG_CONFIG_HOME"] = str(tmp / "config")
    os.environ["RTC_SIGNALING_DATA_DIR"] = str(tmp / "signaling")
    url, server = start_signaling({})
    stack = contextlib.ExitStack()
    why: dict[str, str] = {}
    try:
        turn_url = None
        if "turn" in args.roads:
            turn_url, turn_why = start_turn(stack, tmp)
            if turn_url is None:
                why["turn"] = str(turn_why)
        print(
            f"sizes {', '.join(size_label(s) for s in sizes)}, {args.rounds} round(s), "
            f"chunk {args.chunk_size} bytes, flow control {HIGH_WATER // 1024} KiB / "
            f"{LOW_WATER // 1024} KiB, roads {','.join(args.roads)}",
            flush=True,
        )
        for road, reason in why.items():
            print(f"{road}: not available: {reason}", flush=True)
        results = [bench_size(size, args, url, turn_url, why, tmp) for size in sizes]
    finally:
        stack.close()
        stop(server)
        shutil.rmtree(tmp, ignore_errors=True)

    rows: list[list[str]] = []
    goals: list[Goal] = []
    for result in results:
        more_rows, more_goals = report_size(result, args, why)
        rows += more_rows
        goals += more_goals
    print()
    print_table(
        [
            "road",
            "size",
            "MB/s",
            f"resume bytes (cut at {args.cut_at:.0%})" if args.cut_at else "resume bytes",
            "peak RSS worker",
            "peak RSS client",
        ],
        rows,
    )
    for result in results:
        print(
            f"{size_label(result['size'])} rounds, MB/s: "
            + "; ".join(f"{road} {v}" for road, v in result["rounds_mb_s"].items() if v)
        )
    for road in ("channel", "relay"):
        mids = [r["_runs"][road].mid for r in sorted(results, key=lambda r: r["size"])]
        mids = [mid for mid in mids if mid is not None]
        if len(mids) > 1:
            worker = round((mids[-1]["worker_peak_kib"] - mids[0]["worker_peak_kib"]) / 1024)
            client = round((mids[-1]["peak_kib"] - mids[0]["peak_kib"]) / 1024)
            print(
                f"peak RSS, largest vs smallest file ({road}): worker {worker:+d} MiB, "
                f"client {client:+d} MiB"
            )
    for result in results:
        del result["_runs"]
    report = {
        "sizes": sizes,
        "rounds": args.rounds,
        "roads": args.roads,
        "missing": why,
        "results": results,
    }
    emit(report, goals, args.json)
    return 0


def role_main(args: argparse.Namespace) -> int:
    """One child process's part; prints its figures as one JSON line."""
    import json

    from loguru import logger

    from rtc_worker.cli import run_async

    logger.remove()
    import bench_roads as roads

    async def role() -> int:
        if args.role == "raw-recv":
            out = await raw_receiver(args.url, args.size, args.worker)
        elif args.role == "raw-send":
            out = await raw_sender(args.url, args.file, args.chunk_size, args.worker)
        elif args.role == "raw-http-server":
            out = await roads.raw_http_server_role(args.port, args.file)
        elif args.role == "raw-http-client":
            out = await roads.raw_http_client_role(args.url, args.file)
        elif args.role == "proxy":
            out = await roads.proxy_role(args.port, args.target, args.size, args.outage_s)
        elif args.role == "relay-send":
            out = await roads.relay_sender_role(args.url, args.storage_url, args.file, args.worker)
        else:
            out = await project_sender(args.url, args.file, args.worker, args.cut_at, args.policy)
        print(json.dumps(out), flush=True)
        return 0

    return run_async(role())


if __name__ == "__main__":
    sys.exit(main())
