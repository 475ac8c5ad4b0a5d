#!/usr/bin/env python3
"""Benchmark of tus uploads against a raw aiohttp stream-to-disk (not a test: it prints
numbers).

One storage service (the real app of ``rtc-signaling``, folder backend, SQLite) runs in
this process with one extra route, ``POST /raw?offset=N``: the baseline, a handler that
streams the body into a file at ``N`` (``iter_chunked(1 MiB)``, ``write``) and fsyncs it
before it answers, as tus makes each PATCH durable before it answers (the same fsync
policy). Each upload is made by a separate client process on this machine, which reads
the file in 1 MiB slices and times from its first request to its last answer:

  raw            one POST /raw of the whole file (one fsync)
  raw 8 MiB      POST /raw of 8 MiB each, one fsync each: the baseline of tus 8 MiB
  raw 32 MiB     the same with 32 MiB
  POST /upload   the service's existing one-request upload (sha256 on the way, fsync,
                 content-addressed blob, the record): for reference
  tus 8 MiB      POST /files/, then PATCHes of 8 MiB (each fsynced and recorded); the
                 last one verifies the sha256 and publishes the blob (content-addressed)
  tus 32 MiB     the same with 32 MiB PATCHes
  tus 1 PATCH    the same with one PATCH of the whole file
  tus 8 MiB+sha1 8 MiB PATCHes with ``Upload-Checksum: sha1`` (what tuspy sends)
  tuspy 8 MiB    the tuspy client itself (requests; reads each chunk into memory)

Modes alternate round by round; the table gives the median of the rounds, the ratio to
the raw median of the same run ("vs raw") and to the raw mode with the same requests
("vs raw, same requests"), and the CPU seconds the server process spent (all threads).

Usage::

    .venv/bin/python scripts/bench_tus.py                 # 200 MB, 3 rounds
    .venv/bin/python scripts/bench_tus.py --size-mb 100 --rounds 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

MB = 1_000_000
MIB = 1 << 20
KEY = "bench-tus-key"
TUS = {"Tus-Resumable": "1.0.0", "X-API-Key": KEY}
MODES: dict[str, tuple[str, int, bool]] = {
    "raw": ("raw", 0, False),
    "raw 8 MiB": ("raw", 8 * MIB, False),
    "raw 32 MiB": ("raw", 32 * MIB, False),
    "POST /upload": ("upload", 0, False),
    "tus 8 MiB": ("tus", 8 * MIB, False),
    "tus 32 MiB": ("tus", 32 * MIB, False),
    "tus 1 PATCH": ("tus", 0, False),
    "tus 8 MiB+sha1": ("tus", 8 * MIB, True),
    "tuspy 8 MiB": ("tuspy", 8 * MIB, False),
}


# ----------------------------------------------------------------- the client process


async def _slices(path: Path, start: int, end: int) -> AsyncIterator[bytes]:
    with path.open("rb") as stream:
        stream.seek(start)
        while start < end:
            data = stream.read(min(MIB, end - start))
            start += len(data)
            yield data


async def _client(url: str, path: Path, size: int, mode: str, chunk: int, checksum: bool) -> float:
    import aiohttp

    began = time.perf_counter()
    async with aiohttp.ClientSession() as session:
        if mode == "raw":
            offset, step = 0, chunk or size
            while offset < size:
                end = min(offset + step, size)
                target = f"{url}/raw?offset={offset}"
                async with session.post(target, data=_slices(path, offset, end)) as got:
                    assert got.status == 200, await got.text()
                offset = end
            return time.perf_counter() - began
        if mode == "upload":
            target = url + "/upload"
            sent = {"X-API-Key": KEY, "X-Job-Id": "bench", "X-Replace": "true"}
            async with session.post(target, headers=sent, data=_slices(path, 0, size)) as got:
                assert got.status in (200, 201), await got.text()
            return time.perf_counter() - began
        headers = {**TUS, "Upload-Length": str(size)}
        async with session.post(url + "/files/", headers=headers) as got:
            assert got.status == 201, await got.text()
            location = url + got.headers["Location"]
        offset, step = 0, chunk or size
        while offset < size:
            end = min(offset + step, size)
            sent = {
                **TUS,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
            }
            body: Any = _slices(path, offset, end)
            if checksum:
                with path.open("rb") as stream:
                    stream.seek(offset)
                    body = stream.read(end - offset)
                sent["Upload-Checksum"] = "sha1 " + base64.b64encode(
                    hashlib.sha1(body).digest()
                ).decode("ascii")
            async with session.patch(location, headers=sent, data=body) as got:
                assert got.status == 204, await got.text()
                offset = int(got.headers["Upload-Offset"])
    return time.perf_counter() - began


def _tuspy(url: str, path: Path, chunk: int) -> float:
    from tusclient import client

    began = time.perf_counter()
    uploader = client.TusClient(url + "/files/", headers={"X-API-Key": KEY}).uploader(
        file_path=str(path), chunk_size=chunk
    )
    uploader.upload()
    return time.perf_counter() - began


def client_main(url: str, file: str, label: str) -> None:
    """The client process: one upload, one JSON line with its time in seconds."""
    mode, chunk, checksum = MODES[label]
    path = Path(file)
    if mode == "tuspy":
        elapsed = _tuspy(url, path, chunk)
    else:
        elapsed = asyncio.run(_client(url, path, path.stat().st_size, mode, chunk, checksum))
    print(json.dumps({"mode": label, "seconds": elapsed}), flush=True)


# ----------------------------------------------------------------- the server


async def _raw(request: Any) -> Any:
    """``POST /raw?offset=N``: the baseline, the body streamed into a file at ``N`` (a
    new file at 0) and fsynced."""
    from aiohttp import web

    target: Path = request.app["raw_path"]
    offset = int(request.query.get("offset", "0"))
    with target.open("r+b" if offset else "wb") as stream:
        stream.seek(offset)
        async for chunk in request.content.iter_chunked(MIB):
            stream.write(chunk)
        stream.flush()
        os.fsync(stream.fileno())
    return web.Response(text="ok")


async def _bench(size_mb: int, rounds: int, modes: list[str]) -> dict[str, Any]:
    from aiohttp import web

    from signaling.app import create_app
    from signaling.config import SignalingSettings

    with tempfile.TemporaryDirectory(prefix="bench-tus-") as tmp:
        root = Path(tmp)
        source = root / "source.bin"
        with source.open("wb") as stream:
            block = os.urandom(MIB)
            for index in range(-(-size_mb * MB // MIB)):
                stream.write(block[: min(MIB, size_mb * MB - index * MIB)])
        settings = SignalingSettings(
            host="127.0.0.1",
            port=0,
            storage_path=root / "store",
            storage_api_key=KEY,
            storage_max_file_size=2 * size_mb * MB,
            upload_quota_bytes=1 << 50,
            disk_reserve_bytes=0,
        )
        app = create_app(settings)
        app["raw_path"] = root / "raw.bin"
        app.router.add_post("/raw", _raw)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        times: dict[str, list[float]] = {mode: [] for mode in modes}
        cpu: dict[str, list[float]] = {mode: [] for mode in modes}
        try:
            for _ in range(rounds):
                for mode in modes:
                    used = time.process_time()
                    proc = await asyncio.create_subprocess_exec(
                        sys.executable, __file__, "--client", url, str(source), mode,
                        stdout=asyncio.subprocess.PIPE,
                    )  # fmt: skip
                    out, _ = await proc.communicate()
                    if proc.returncode != 0:
                        raise RuntimeError(f"the {mode} client failed")
                    cpu[mode].append(time.process_time() - used)
                    times[mode].append(json.loads(out.decode().strip().splitlines()[-1])["seconds"])
        finally:
            await runner.cleanup()
    raw = statistics.median(times["raw"]) if "raw" in times else None
    raw_twin = {MODES[mode][1]: mode for mode in times if MODES[mode][0] == "raw"}
    rows = []
    for mode, seconds in times.items():
        median = statistics.median(seconds)
        twin = raw_twin.get(MODES[mode][1]) if MODES[mode][0] in ("raw", "tus") else None
        rows.append(
            {
                "mode": mode,
                "median_s": round(median, 3),
                "mb_per_s": round(size_mb / median, 1),
                "best_mb_per_s": round(size_mb / min(seconds), 1),
                "vs_raw": None if raw is None else round(raw / median, 2),
                "vs_raw_same_requests": (
                    None if twin is None else round(statistics.median(times[twin]) / median, 2)
                ),
                "server_cpu_s": round(statistics.median(cpu[mode]), 3),
            }
        )
    return {"size_mb": size_mb, "rounds": rounds, "backend": "folder", "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="file size, MB (10^6 bytes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated")
    parser.add_argument(
        "--client", nargs=3, metavar=("URL", "FILE", "MODE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.client:
        client_main(*args.client)
        return
    modes = [mode.strip() for mode in args.modes.split(",")]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    result = asyncio.run(_bench(args.size_mb, args.rounds, modes))
    print(
        f"tus upload vs raw aiohttp stream-to-disk: {result['size_mb']} MB, {result['rounds']} "
        "rounds, folder backend, loopback, separate client process"
    )
    print()
    print("| mode | median s | MB/s (median) | MB/s (best) | vs raw | vs raw, same requests "
          "| server CPU s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        same = "" if row["vs_raw_same_requests"] is None else f"{row['vs_raw_same_requests']}x"
        print(f"| {row['mode']} | {row['median_s']} | {row['mb_per_s']} | "
              f"{row['best_mb_per_s']} | {row['vs_raw']}x | {same} | "
              f"{row['server_cpu_s']} |")  # fmt: skip
    print()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
