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
import contextlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_channel import (
    HIGH_WATER,
    LOW_WATER,
    project_sender,
    raw_receiver,
    raw_sender,
    run_project,
    run_raw,
    start_turn,
)
from bench_common import (
    MB,
    add_output_and_roles,
    bench_parser,
    emit,
    make_file,
    size_label,
    start_signaling,
    stop,
)
from bench_report import Runs, fmt_resume, print_report

ROADS = ("http", "raw", "channel", "turn", "relay")


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


def main() -> int:
    parser = bench_parser(__doc__, "5 and 20 MB, one round: a smoke run")
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
    add_output_and_roles(
        parser,
        url=str,
        storage_url=str,
        file=Path,
        size=int,
        port=int,
        target=int,
        worker=str,
        policy=(str, "all"),
    )
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

    goals = print_report(results, args, why)
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
