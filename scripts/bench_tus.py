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
  raw S3         (``--backend s3``) one POST /raw-s3: the body streamed into a multipart
                 upload of 8 MiB parts, no hashing, no record: the S3 baseline
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

With ``--backend s3`` the service keeps its blobs in an S3 bucket: moto's server in a
process of its own on loopback (``moto[server]``, the test extra; fake credentials),
or the store named by ``--s3-endpoint-url`` and ``--s3-bucket`` (credentials from the
standard ``AWS_*`` variables). The raw baseline still writes to the local disk.

Usage::

    .venv/bin/python scripts/bench_tus.py                 # 200 MB, 3 rounds
    .venv/bin/python scripts/bench_tus.py --size-mb 100 --rounds 5
    .venv/bin/python scripts/bench_tus.py --backend s3    # on moto's S3 server
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
    "raw S3": ("raw_s3", 0, False),
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
        if mode in ("raw_s3", "upload"):
            target, sent = url + "/raw-s3", {}
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


async def _raw_s3(request: Any) -> Any:
    """``POST /raw-s3``: the S3 baseline, the body streamed into a multipart upload
    (8 MiB parts, no hashing, no record) and completed."""
    from aiobotocore.session import get_session
    from aiohttp import web

    endpoint, bucket = request.app["raw_s3"]
    async with get_session().create_client("s3", endpoint_url=endpoint) as s3:
        key = "raw/bench"
        upload = (await s3.create_multipart_upload(Bucket=bucket, Key=key))["UploadId"]
        parts, buffer = [], bytearray()

        async def send() -> None:
            number = len(parts) + 1
            sent = await s3.upload_part(
                Bucket=bucket, Key=key, UploadId=upload, PartNumber=number, Body=bytes(buffer)
            )
            parts.append({"PartNumber": number, "ETag": sent["ETag"]})
            buffer.clear()

        async for chunk in request.content.iter_chunked(MIB):
            buffer += chunk
            if len(buffer) >= 8 * MIB:
                await send()
        if buffer or not parts:
            await send()
        await s3.complete_multipart_upload(
            Bucket=bucket, Key=key, UploadId=upload, MultipartUpload={"Parts": parts}
        )
    return web.Response(text="ok")


async def _moto(tmp: Path) -> tuple[asyncio.subprocess.Process, dict[str, Any]]:
    """moto's S3 server in its own process on a free loopback port, with a bucket."""
    import socket

    from aiobotocore.session import get_session

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    os.environ.update(
        AWS_ACCESS_KEY_ID="bench",
        AWS_SECRET_ACCESS_KEY="bench",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_EC2_METADATA_DISABLED="true",
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port),
        stdout=asyncio.subprocess.DEVNULL, stderr=(tmp / "moto.log").open("wb"),
    )  # fmt: skip
    endpoint = f"http://127.0.0.1:{port}"
    async with get_session().create_client("s3", endpoint_url=endpoint) as s3:
        for _ in range(100):
            try:
                await s3.create_bucket(Bucket="bench-tus")
                break
            except Exception:  # not listening yet
                await asyncio.sleep(0.1)
    return proc, {"storage_backend": "s3", "s3_endpoint_url": endpoint, "s3_bucket": "bench-tus"}


async def _bench(
    size_mb: int, rounds: int, modes: list[str], backend: dict[str, Any]
) -> dict[str, Any]:
    from aiohttp import web

    from signaling.app import create_app
    from signaling.config import SignalingSettings

    moto: asyncio.subprocess.Process | None = None
    with tempfile.TemporaryDirectory(prefix="bench-tus-") as tmp:
        if backend.get("storage_backend") == "s3" and not backend.get("s3_endpoint_url"):
            moto, backend = await _moto(Path(tmp))
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
            **backend,
        )
        app = create_app(settings)
        app["raw_path"] = root / "raw.bin"
        app["raw_s3"] = (backend.get("s3_endpoint_url"), backend.get("s3_bucket"))
        app.router.add_post("/raw", _raw)
        app.router.add_post("/raw-s3", _raw_s3)
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
            if moto is not None:
                moto.terminate()
                await moto.wait()
    raw = statistics.median(times["raw"]) if "raw" in times else None
    raw_s3 = statistics.median(times["raw S3"]) if "raw S3" in times else None
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
                "vs_raw_s3": None if raw_s3 is None else round(raw_s3 / median, 2),
                "vs_raw_same_requests": (
                    None if twin is None else round(statistics.median(times[twin]) / median, 2)
                ),
                "server_cpu_s": round(statistics.median(cpu[mode]), 3),
            }
        )
    kind = str(backend.get("storage_backend", "folder"))
    return {"size_mb": size_mb, "rounds": rounds, "backend": kind, "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=200, help="file size, MB (10^6 bytes)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--modes", help="comma-separated (default: all; raw S3 with s3 only)")
    parser.add_argument("--backend", choices=("folder", "s3"), default="folder")
    parser.add_argument("--s3-endpoint-url", help="an S3 store instead of moto's server")
    parser.add_argument("--s3-bucket", help="its bucket (it must exist)")
    parser.add_argument(
        "--client", nargs=3, metavar=("URL", "FILE", "MODE"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.client:
        client_main(*args.client)
        return
    default = [mode for mode in MODES if mode != "raw S3" or args.backend == "s3"]
    modes = [mode.strip() for mode in args.modes.split(",")] if args.modes else default
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown modes: {', '.join(sorted(unknown))}")
    backend: dict[str, Any] = {}
    if args.backend == "s3":
        backend = {"storage_backend": "s3"}
        if args.s3_endpoint_url:
            backend.update(s3_endpoint_url=args.s3_endpoint_url, s3_bucket=args.s3_bucket)
    result = asyncio.run(_bench(args.size_mb, args.rounds, modes, backend))
    print(
        f"tus upload vs raw aiohttp stream-to-disk: {result['size_mb']} MB, {result['rounds']} "
        f"rounds, {result['backend']} backend, loopback, separate client process"
    )
    print()
    print("| mode | median s | MB/s (median) | MB/s (best) | vs raw | vs raw, same requests "
          "| vs raw S3 | server CPU s |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        same = "" if row["vs_raw_same_requests"] is None else f"{row['vs_raw_same_requests']}x"
        s3 = "" if row["vs_raw_s3"] is None else f"{row['vs_raw_s3']}x"
        print(f"| {row['mode']} | {row['median_s']} | {row['mb_per_s']} | "
              f"{row['best_mb_per_s']} | {row['vs_raw']}x | {same} | {s3} | "
              f"{row['server_cpu_s']} |")  # fmt: skip
    print()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
