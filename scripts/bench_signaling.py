#!/usr/bin/env python3
"""Benchmark of signaling with many connected peers: relay latency and memory per peer,
in memory and on Redis (not a test: it prints numbers).

Every server is a separate ``rtc-signaling`` process on this machine. The peers are
WebSockets held by ``--clients`` (4) client processes, so that the client side is not
the bottleneck; each peer has its own Ed25519 key and registers by answering the
server's challenge (``protocol.signaling_proof.signed_register``), as every worker and
client does. The server's per-address cap would refuse thousands of sockets from
127.0.0.1: the bench lifts it with ``--max-connections-per-address`` (and raises the
open-files limit of every process it starts). With ``--peers`` (5,000) registered:

  memory      one process, registry in memory: offers between random pairs;
  redis-1     one process on Redis (``redis-server`` started by the bench): the same;
  redis-2     two processes on Redis, the peers split between them, every pair across.

The client processes send ``--offers`` (2,000) offers of 1,500 bytes in all, each from
a random peer of its own to a random peer (of any process), paced at ``--rate`` offers
per second in all, after ``--warmup`` unmeasured ones. The latency of one offer is from
its sending to its reading, relayed, on the receiver's socket, both stamped with the
system-wide monotonic clock (``time.monotonic_ns``, the same clock in every process).
Memory per connected peer: the growth of each signaling process's resident set (VmRSS)
from before the peers registered (after one warm-up peer) to after, divided by its
peers; on Redis also Redis's ``used_memory`` growth per peer. Without ``redis-server``
the Redis setups say why they are missing.

Goal, printed next to the figures (met / not met), never asserted: relay p99 < 10 ms
with 5,000 peers.

Usage::

    .venv/bin/python scripts/bench_signaling.py                     # 5,000 peers, all setups
    .venv/bin/python scripts/bench_signaling.py --quick             # 400 peers, memory only
    .venv/bin/python scripts/bench_signaling.py --setups memory --json signaling.json

Prints a table, then the figures as one JSON object on the last line (also written to
``--json FILE``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from bench_common import (
    REPO,
    Goal,
    add_output_and_roles,
    bench_parser,
    emit,
    free_port,
    percentile,
    print_table,
    rss_kib,
)
from bench_signaling_peers import (
    SDP_BYTES,
    TIMEOUT_S,
    peers_role,
    raise_open_files,
    register,
)

SETUPS = {"memory": (1, False), "redis-1": (1, True), "redis-2": (2, True)}
LABELS = {
    "memory": "memory, one process",
    "redis-1": "Redis, one process",
    "redis-2": "Redis, two processes (across)",
}


# ----------------------------------------------------------------- servers


def redis_used_memory(port: int) -> int:
    """Redis ``INFO memory`` ``used_memory``, bytes."""
    import socket

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
    argv = [
        binary,
        "--port",
        str(port),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        str(folder),
        "--daemonize",
        "no",
        "--logfile",
        str(folder / "redis.log"),
        "--maxclients",
        "20000",
    ]
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
async def signaling(
    count: int, redis_url: str | None, folder: Path, peers: int
) -> AsyncIterator[list[Server]]:
    """``count`` signaling processes (on ``redis_url`` when given), stopped on exit;
    their per-address cap lifted for ``peers`` sockets from 127.0.0.1."""
    servers: list[Server] = []
    env = {**os.environ, "RTC_LOG_LEVEL": "ERROR", "RTC_REDIS_URL": redis_url or ""}
    env["RTC_REDIS_KEY_PREFIX"] = f"bench{random.randrange(10**9)}:"
    try:
        for index in range(count):
            port = free_port()
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "signaling",
                "--port",
                str(port),
                "--max-connections-per-address",
                str(peers + 100),
                "--max-connections",
                str(peers + 100),
                "--data-dir",
                str(folder / f"data-{index}"),
                cwd=REPO,
                env=env,
                stdout=asyncio.subprocess.PIPE,
            )
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


# ----------------------------------------------------------------- one setup


async def line_of(proc: asyncio.subprocess.Process, expected: str, timeout: float) -> None:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), timeout)
    if line.decode().strip() != expected:
        raise RuntimeError(f"a client process said {line!r}, not {expected}")


async def tell(procs: list[asyncio.subprocess.Process], word: str) -> None:
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write(word.encode() + b"\n")
        await proc.stdin.drain()


async def measure(
    setup: str, redis_port: int | None, args: argparse.Namespace, folder: Path
) -> dict[str, Any]:
    import aiohttp

    processes, _ = SETUPS[setup]
    url = None if redis_port is None else f"redis://127.0.0.1:{redis_port}/0"
    async with signaling(processes, url, folder / setup, args.peers) as servers:
        async with aiohttp.ClientSession() as session:  # the first socket's one-off costs
            for server in servers:
                await (await register(session, server.url, f"warm-up-{server.port}")).close()
        await asyncio.sleep(0.3)
        rss_before = [rss_kib(s.proc.pid, "VmRSS") for s in servers]
        redis_before = 0 if redis_port is None else redis_used_memory(redis_port)
        share, extra = divmod(args.peers, args.clients)
        per_client_offers = max(1, args.offers // args.clients)
        interval_ms = 1000 * args.clients / args.rate
        clients, first = [], 0
        for index in range(args.clients):
            count = share + (1 if index < extra else 0)
            clients.append(
                await asyncio.create_subprocess_exec(
                    sys.executable,
                    __file__,
                    "--role",
                    "peers",
                    "--urls",
                    ",".join(s.url for s in servers),
                    "--first",
                    str(first),
                    "--count",
                    str(count),
                    "--total",
                    str(args.peers),
                    "--offers",
                    str(per_client_offers),
                    "--warmup",
                    str(args.warmup // args.clients),
                    "--interval-ms",
                    str(interval_ms),
                    "--seed",
                    str(args.seed),
                    cwd=REPO,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                )
            )
            first += count
        try:
            began = time.perf_counter()
            await asyncio.gather(*(line_of(c, "READY", 600) for c in clients))
            register_s = time.perf_counter() - began
            await asyncio.sleep(0.5)
            rss_after = [rss_kib(s.proc.pid, "VmRSS") for s in servers]
            redis_after = 0 if redis_port is None else redis_used_memory(redis_port)
            await tell(clients, "GO")
            await asyncio.gather(*(line_of(c, "SENT", 600) for c in clients))
            await asyncio.sleep(TIMEOUT_S / 10)  # the last offers arrive
            await tell(clients, "STOP")
            outputs = [await c.communicate() for c in clients]
        finally:
            for proc in clients:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
    ms: list[float] = []
    for out, _ in outputs:
        ms += json.loads(out.decode().strip().splitlines()[-1])["latencies_ms"]
    per_process = args.peers / processes
    grown = [(b - a) * 1024 / per_process for a, b in zip(rss_before, rss_after, strict=True)]
    sent = per_client_offers * args.clients
    return {
        "setup": setup,
        "label": LABELS[setup],
        "processes": processes,
        "peers": args.peers,
        "client_processes": args.clients,
        "offers_sent": sent,
        "offers_received": len(ms),
        "p50_ms": round(percentile(ms, 0.50), 3),
        "p99_ms": round(percentile(ms, 0.99), 3),
        "mean_ms": round(statistics.fmean(ms), 3) if ms else None,
        "max_ms": round(max(ms), 3) if ms else None,
        "register_s": round(register_s, 2),
        "rss_bytes_per_peer": round(statistics.fmean(grown)),
        "redis_bytes_per_peer": None
        if redis_port is None
        else round((redis_after - redis_before) / args.peers),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    limit = raise_open_files()
    if limit < args.peers // max(1, args.clients) + 256:
        raise SystemExit(f"the open-files limit ({limit}) is too low for {args.peers} peers")
    results: list[dict[str, Any]] = []
    missing: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="bench-signaling-") as tmp, redis_server() as port:
        for setup in args.setups:
            if SETUPS[setup][1] and port is None:
                missing[setup] = "redis-server is not installed (apt-get install redis-server)"
                continue
            results.append(
                await measure(setup, port if SETUPS[setup][1] else None, args, Path(tmp))
            )
            print(f"{LABELS[setup]}: done", flush=True)
    return {"results": results, "missing": missing}


def main() -> int:
    parser = bench_parser(__doc__, "400 peers, 400 offers, memory only")
    parser.add_argument("--peers", type=int, help="connected peers (default 5000; quick 400)")
    parser.add_argument("--clients", type=int, default=4, help="client processes (default 4)")
    parser.add_argument("--offers", type=int, help="offers measured per setup (default 2000)")
    parser.add_argument("--warmup", type=int, default=100, help="offers sent before measuring")
    parser.add_argument("--rate", type=float, default=400, help="offers per second in all")
    parser.add_argument("--setups", help=f"comma-separated, of {','.join(SETUPS)} (default all)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the random pairs")
    add_output_and_roles(parser, urls=str, first=int, count=int, total=int, interval_ms=float)
    args = parser.parse_args()
    if args.role == "peers":
        args.offers = args.offers or 0
        print(json.dumps(asyncio.run(peers_role(args))), flush=True)
        return 0
    args.peers = args.peers or (400 if args.quick else 5000)
    args.offers = args.offers or (400 if args.quick else 2000)
    args.setups = (args.setups or ("memory" if args.quick else ",".join(SETUPS))).split(",")
    unknown = set(args.setups) - set(SETUPS)
    if unknown:
        parser.error(f"unknown setups: {', '.join(sorted(unknown))} (known: {', '.join(SETUPS)})")
    began = time.monotonic()
    report = asyncio.run(run(args))
    print()
    print(
        f"{args.peers} peers registered with keys from {args.clients} client processes, "
        f"{args.offers} offers of {SDP_BYTES} bytes at {args.rate:g}/s "
        f"({time.monotonic() - began:.0f} s in all)"
    )
    rows = [
        [
            r["label"],
            f"{r['p50_ms']:.3f}",
            f"{r['p99_ms']:.3f}",
            f"{r['max_ms']:.2f}",
            f"{r['rss_bytes_per_peer'] / 1024:.1f} KiB",
            "-" if r["redis_bytes_per_peer"] is None else f"{r['redis_bytes_per_peer']} B",
            f"{r['register_s']:.1f} s",
            f"{r['offers_received']}/{r['offers_sent']}",
        ]
        for r in report["results"]
    ]
    rows += [
        [LABELS[s], f"not available: {why}", "", "", "", "", "", ""]
        for s, why in report["missing"].items()
    ]
    print_table(
        [
            "setup",
            "p50 ms",
            "p99 ms",
            "max ms",
            "RSS per peer",
            "Redis per peer",
            "register",
            "offers",
        ],
        rows,
    )
    goals = [
        Goal(f"relay p99, {r['label']}, {r['peers']} peers", r["p99_ms"], "<", 10, " ms")
        for r in report["results"]
    ]
    emit(
        {**report, "peers": args.peers, "offers": args.offers, "rate": args.rate}, goals, args.json
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
