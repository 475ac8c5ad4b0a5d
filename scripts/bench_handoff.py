#!/usr/bin/env python3
"""Benchmark of the shared-path handoff: SHARED_INPUT_PATH to PATH_VALIDATED latency
over the real data channel (not a test: it prints numbers).

A real ``rtc-worker serve`` process with a shared root, a signaling server process, and
a client process that opens one data channel, runs the channel handshake once
(``RTCClient.connect_raw``: the lowest public layer that sends a frame and returns the
reply, without running a job) and then sends ``--requests`` (200) SHARED_INPUT_PATH
frames per input size, waiting for each PATH_VALIDATED before the next; the sizes take
turns, request by request, so a drift of the machine's load touches them all alike.
The latency of one validation is from before the frame is sent to after its reply is
decoded, in the client process.

The inputs are sparse files (``os.truncate``) on the shared root, of ``--sizes`` MB
(MB = 10^6 bytes; default 1, 1000 and 10000): validation opens a file by descriptor and
must not read it, so its cost must not grow with the size. The bench checks that the
filesystem keeps them sparse; where it does not, sizes larger than ``--max-dense-mb``
(100) are skipped and the bench says why.

Goals, printed next to the figures (met / not met), never asserted: median < 10 ms at
every size;
median of the largest / median of the smallest <= 1.2x.

Usage::

    .venv/bin/python scripts/bench_handoff.py                # 1 MB, 1 GB, 10 GB x 200
    .venv/bin/python scripts/bench_handoff.py --quick        # the same sizes x 20
    .venv/bin/python scripts/bench_handoff.py --sizes 1,10000 --requests 500 --json h.json

Output: a table, then one JSON object of the figures on the last line (and in ``--json
FILE`` when given). Every process runs on uvloop when the ``uvloop`` extra is installed.
"""

from __future__ import annotations

import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import (
    MB,
    Goal,
    Worker,
    add_output_and_roles,
    bench_parser,
    child,
    emit,
    median,
    percentile,
    print_table,
    result_of,
    size_label,
    start_signaling,
    stop,
)

WORKER = "bench-handoff"


def input_name(size: int) -> str:
    """The shared root's input of ``size`` bytes."""
    return f"inputs/sparse-{size}.bin"


def make_sparse(path: Path, size: int) -> bool:
    """A file of ``size`` bytes (zeros) made by ``os.truncate``; True when the
    filesystem keeps it sparse (fewer blocks allocated than its size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb"):
        pass
    os.truncate(path, size)
    return path.stat().st_blocks * 512 < size


async def client_role(url: str, names: list[str], requests: int, warmup: int) -> dict[str, Any]:
    """Authenticate once, then validate each of ``names`` in turn ``requests`` times
    (after ``warmup`` untimed rounds); latencies in milliseconds per name."""
    from protocol import PathValidated, SharedInputPath
    from rtc_worker.client import RTCClient

    cache = Path(tempfile.mkdtemp(prefix="bench-handoff-client-"))
    latencies: dict[str, list[float]] = {name: [] for name in names}
    try:
        async with RTCClient(url, connect_timeout=30, cache_dir=cache) as client:
            await client.wait_for_worker(WORKER, 30)
            conn = await client.connect_raw(WORKER, authenticate=True)
            for number in range(warmup + requests):
                for name in names:
                    began = time.perf_counter()
                    conn.send(SharedInputPath(name))
                    reply = await conn.recv(30)
                    elapsed = (time.perf_counter() - began) * 1000
                    if not isinstance(reply, PathValidated):
                        raise RuntimeError(f"{name}: the worker answered {reply}")
                    if number >= warmup:
                        latencies[name].append(elapsed)
            await conn.close()
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return {"latencies_ms": latencies}


def main() -> int:
    parser = bench_parser(__doc__, "20 requests per size: a smoke run")
    parser.add_argument(
        "--sizes",
        default="1,1000,10000",
        help="input sizes, MB, comma-separated (default 1,1000,10000)",
    )
    parser.add_argument("--requests", type=int, help="validations per size (default 200; quick 20)")
    parser.add_argument("--warmup", type=int, default=10, help="untimed rounds first (default 10)")
    parser.add_argument(
        "--max-dense-mb",
        type=float,
        default=100,
        help="largest input made where files cannot be sparse",
    )
    add_output_and_roles(parser, url=str, names=str)
    args = parser.parse_args()
    requests = args.requests or (20 if args.quick else 200)
    if args.role == "client":
        import json

        from loguru import logger

        from rtc_worker.cli import run_async

        logger.remove()

        async def role() -> int:
            out = await client_role(args.url, args.names.split(","), requests, args.warmup)
            print(json.dumps(out), flush=True)
            return 0

        return run_async(role())

    sizes = [int(float(text) * MB) for text in args.sizes.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="bench-handoff-"))
    os.environ["XDG_CONFIG_HOME"] = str(tmp / "config")  # a throwaway client key
    os.environ["RTC_SIGNALING_DATA_DIR"] = str(tmp / "signaling")
    shared = tmp / "shared"
    measured: list[int] = []
    skipped: dict[int, str] = {}
    sparse_ok = True
    for size in sizes:
        if not make_sparse(shared / input_name(size), size) and size > 0:
            sparse_ok = False
            if size > args.max_dense_mb * MB:
                (shared / input_name(size)).unlink()
                skipped[size] = "this filesystem does not keep files sparse"
                continue
        measured.append(size)
    where = shared.resolve()
    print(f"shared root {where}: sparse files {'kept' if sparse_ok else 'NOT supported'}")
    url, server = start_signaling({})
    worker = None
    try:
        worker = Worker(url, WORKER, shared_root=shared)
        names = [input_name(size) for size in measured]
        got = result_of(
            child(
                Path(__file__),
                "client",
                "--url",
                url,
                "--names",
                ",".join(names),
                "--requests",
                str(requests),
                "--warmup",
                str(args.warmup),
            )
        )
        worker_peak_kib = worker.peak_kib()
    finally:
        if worker is not None:
            worker.stop()
        stop(server)
        shutil.rmtree(tmp, ignore_errors=True)

    rows, results = [], []
    for size in sizes:
        label = f"{size_label(size)}"
        if size in skipped:
            rows.append([label, f"not available: {skipped[size]}", "", "", ""])
            continue
        ms = got["latencies_ms"][input_name(size)]
        figures = {
            "size": size,
            "requests": len(ms),
            "median_ms": round(median(ms), 3),
            "p99_ms": round(percentile(ms, 0.99), 3),
            "mean_ms": round(statistics.fmean(ms), 3),
            "max_ms": round(max(ms), 3),
        }
        results.append(figures)
        rows.append(
            [
                label,
                f"{figures['median_ms']:.3f}",
                f"{figures['p99_ms']:.3f}",
                f"{figures['max_ms']:.2f}",
                str(len(ms)),
            ]
        )
    print()
    print(f"SHARED_INPUT_PATH -> PATH_VALIDATED over the data channel, {requests} per size")
    print_table(["input (sparse)", "median ms", "p99 ms", "max ms", "requests"], rows)
    goals = []
    if results:
        goals += [
            Goal(f"median, {size_label(r['size'])}", r["median_ms"], "<", 10, " ms")
            for r in results
        ]
        largest = max(results, key=lambda r: r["size"])
        if len(results) > 1:
            smallest = min(results, key=lambda r: r["size"])
            ratio = largest["median_ms"] / smallest["median_ms"] if smallest["median_ms"] else None
            goals.append(
                Goal(
                    f"median {size_label(largest['size'])} / {size_label(smallest['size'])}",
                    ratio,
                    "<=",
                    1.2,
                    "x",
                )
            )
    report = {
        "results": results,
        "skipped": {str(k): v for k, v in skipped.items()},
        "sparse_files": sparse_ok,
        "worker_peak_kib": worker_peak_kib,
    }
    emit(report, goals, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
