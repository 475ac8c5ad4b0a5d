#!/usr/bin/env python3
"""Benchmark of signaling relay latency, in memory and on Redis (not a test: it prints
numbers).

Every server is a separate ``rtc-signaling`` process on this machine; the peers are
WebSockets held by this script's process (anonymous clients, so the figure is the relay,
not key checks). With ``--peers`` (1000) peers registered:

  (a) memory, one process: offers between random pairs, one in flight at a time;
  (b) Redis, one process (``--redis-url``): the same;
  (c) Redis, two processes: the peers split between them, every pair across them;
  (d) memory per connected peer: growth of each signaling process's resident set size
      (VmRSS) from before the peers registered to after, divided by its peers; for (b)
      and (c) also Redis's ``used_memory`` growth per peer.

The latency of one offer is the time from sending it on the sender's socket to reading
it, relayed, on the receiver's (same clock, this process). A ``redis-server`` on
127.0.0.1 (no persistence) is started by the bench; without the binary, (b) and (c) are
missing and the bench says why.

Usage::

    .venv/bin/python scripts/bench_signaling.py                  # 1000 peers, 2000 offers
    .venv/bin/python scripts/bench_signaling.py --peers 200 --offers 500 --json out.json

Prints a table, then the figures as one JSON object on the last line.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
SDP_BYTES = 1500  # about the size of a data-channel offer from aiortc
TIMEOUT_S = 10.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def rss_kib(pid: int) -> int:
    """VmRSS of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def redis_used_memory(port: int) -> int:
    """Redis ``INFO memory`` ``used_memory``, bytes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"INFO memory\r\n")
        data = b""
        while b"used_memory:" not in data or not data.endswith(b"\r\n"):
            data += sock.recv(65536)
    for line in data.decode().splitlines():
        if line.startswith("used_memory:"):
            return int(line.split(":")[1])
    return 0


@contextlib.contextmanager
def redis_server() -> Any:
    """A throwaway redis-server (yields its port), or None without the binary."""
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    folder = Path(tempfile.mkdtemp(prefix="bench-redis-"))
    port = free_port()
    argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(folder), "--daemonize", "no",
            "--logfile", str(folder / "redis.log")]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError):
                redis_used_memory(port)
                break
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.02)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(folder, ignore_errors=True)


class Server:
    """One ``rtc-signaling`` process."""

    def __init__(self, proc: asyncio.subprocess.Process, port: int) -> None:
        self.proc, self.port = proc, port
        self.url = f"ws://127.0.0.1:{port}/ws"


@contextlib.asynccontextmanager
async def signaling(count: int, redis_url: str | None, folder: Path) -> AsyncIterator[list[Server]]:
    """``count`` signaling processes (on ``redis_url`` when given), stopped on exit."""
    servers: list[Server] = []
    env = {**os.environ, "RTC_LOG_LEVEL": "ERROR", "RTC_REDIS_URL": redis_url or ""}
    env["RTC_REDIS_KEY_PREFIX"] = f"bench{random.randrange(10**9)}:"
    try:
        for index in range(count):
            port = free_port()
            proc = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "signaling", "--port", str(port),
                "--allow-anonymous-clients", "--max-connections-per-address", "100000",
                "--data-dir", str(folder / f"data-{index}"),
                cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE,
            )  # fmt: skip
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 30)
            if not line.startswith(b"listening on"):
                raise RuntimeError("rtc-signaling did not start")
            servers.append(Server(proc, port))
        yield servers
    finally:
        for server in servers:
            with contextlib.suppress(ProcessLookupError):
                server.proc.send_signal(signal.SIGTERM)
        for server in servers:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(server.proc.wait(), 15)


class Peers:
    """Registered anonymous peers and the offers they are waiting for."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self.session = session
        self.sockets: dict[str, aiohttp.ClientWebSocketResponse] = {}
        self.waiting: dict[int, asyncio.Future[float]] = {}
        self.readers: list[asyncio.Task[None]] = []

    async def register(self, url: str, peer_id: str) -> None:
        ws = await self.session.ws_connect(url, heartbeat=None, max_msg_size=0)
        await ws.receive_json(timeout=TIMEOUT_S)  # challenge
        await ws.send_json({"type": "register", "peer_id": peer_id, "role": "client"})
        reply = await ws.receive_json(timeout=TIMEOUT_S)
        if reply.get("type") != "registered":
            raise RuntimeError(f"registration of {peer_id} refused: {reply}")
        self.sockets[peer_id] = ws
        self.readers.append(asyncio.create_task(self._read(ws)))

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            now = time.perf_counter()
            frame = json.loads(msg.data)
            if frame.get("type") == "offer":
                waiter = self.waiting.pop(int(frame["sdp"].split(" ", 1)[0]), None)
                if waiter is not None and not waiter.done():
                    waiter.set_result(now)
            elif frame.get("type") == "error":
                print(f"error frame: {frame}", file=sys.stderr)

    async def offer(self, seq: int, sender: str, receiver: str, sdp: str) -> float:
        """Send one offer; return its latency, seconds."""
        waiter = asyncio.get_running_loop().create_future()
        self.waiting[seq] = waiter
        began = time.perf_counter()
        await self.sockets[sender].send_str(
            json.dumps({"type": "offer", "to": receiver, "sdp": f"{seq} {sdp}"})
        )
        arrived = await asyncio.wait_for(waiter, TIMEOUT_S)
        return arrived - began

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in self.sockets.values()), return_exceptions=True)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


async def measure(
    label: str, processes: int, redis_port: int | None, args: argparse.Namespace, folder: Path
) -> dict[str, Any]:
    url = None if redis_port is None else f"redis://127.0.0.1:{redis_port}/0"
    rng = random.Random(args.seed)
    sdp = "v=0 " + "a" * (SDP_BYTES - 4)
    async with (
        signaling(processes, url, folder) as servers,
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session,
    ):
        peers = Peers(session)
        await peers.register(servers[0].url, "warm-up")  # the first socket's one-off costs
        await asyncio.sleep(0.2)
        rss_before = [rss_kib(s.proc.pid) for s in servers]
        redis_before = 0 if redis_port is None else redis_used_memory(redis_port)
        homes = {f"p{n:05d}": servers[n % processes] for n in range(args.peers)}
        gate = asyncio.Semaphore(64)

        async def join(peer_id: str, server: Server) -> None:
            async with gate:
                await peers.register(server.url, peer_id)

        began = time.perf_counter()
        await asyncio.gather(*(join(p, s) for p, s in homes.items()))
        register_s = time.perf_counter() - began
        await asyncio.sleep(0.5)
        rss_after = [rss_kib(s.proc.pid) for s in servers]
        redis_after = 0 if redis_port is None else redis_used_memory(redis_port)
        ids = sorted(homes)

        def pair() -> tuple[str, str]:
            while True:
                a, b = rng.sample(ids, 2)
                if processes == 1 or homes[a] is not homes[b]:
                    return a, b

        for seq in range(args.warmup):
            await peers.offer(-1 - seq, *pair(), sdp)
        latencies = [await peers.offer(seq, *pair(), sdp) for seq in range(args.offers)]
        await peers.close()
    per_process = args.peers / processes
    grown = [
        (after - before) * 1024 / per_process
        for before, after in zip(rss_before, rss_after, strict=True)
    ]
    ms = [x * 1000 for x in latencies]
    return {
        "setup": label,
        "processes": processes,
        "peers": args.peers,
        "offers": args.offers,
        "p50_ms": round(percentile(ms, 0.50), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "mean_ms": round(statistics.fmean(ms), 3),
        "max_ms": round(max(ms), 3),
        "register_s": round(register_s, 2),
        "rss_bytes_per_peer": round(statistics.fmean(grown)),
        "redis_bytes_per_peer": None
        if redis_port is None
        else round((redis_after - redis_before) / args.peers),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    results: list[dict[str, Any]] = []
    missing: list[str] = []
    with tempfile.TemporaryDirectory(prefix="bench-signaling-") as tmp, redis_server() as port:
        folder = Path(tmp)
        results.append(await measure("memory, one process", 1, None, args, folder))
        if port is None:
            missing.append(
                "redis-server is not installed: no Redis figures (apt-get install redis-server)"
            )
        else:
            results.append(await measure("Redis, one process", 1, port, args, folder))
            results.append(await measure("Redis, two processes (across)", 2, port, args, folder))
    return {
        "results": results,
        "missing": missing,
        "python": sys.version.split()[0],
        "cpus": os.cpu_count(),
    }


def table(report: dict[str, Any]) -> str:
    head = (
        f"{'setup':32} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8} {'max ms':>8} "
        f"{'RSS/peer':>12} {'Redis/peer':>10} {'register':>9}"
    )
    lines = [head, "-" * len(head)]
    for r in report["results"]:
        redis = "-" if r["redis_bytes_per_peer"] is None else f"{r['redis_bytes_per_peer']} B"
        lines.append(
            f"{r['setup']:32} {r['p50_ms']:8.3f} {r['p99_ms']:8.3f} {r['mean_ms']:8.3f} "
            f"{r['max_ms']:8.2f} {r['rss_bytes_per_peer'] / 1024:8.1f} KiB {redis:>10} "
            f"{r['register_s']:8.2f}s"
        )
    lines += [f"missing: {m}" for m in report["missing"]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peers", type=int, default=1000, help="connected peers (default 1000)")
    parser.add_argument("--offers", type=int, default=2000, help="offers measured per setup")
    parser.add_argument("--warmup", type=int, default=100, help="offers sent before measuring")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random pairs")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args()
    report = asyncio.run(run(args))
    print(f"{args.peers} peers, {args.offers} offers of {SDP_BYTES} bytes, one in flight at a time")
    print(table(report))
    text = json.dumps(report)
    if args.json:
        args.json.write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
