"""``rtc-worker demo``: the main job end to end on this machine.

Starts the signaling server, a worker and a client as three separate processes on
loopback, with a temporary shared root. It builds a real training package (a ZIP
of CSV, JSON, PNG, WAV, binary weights and text files), puts it on the shared
root, submits it, and prints every protocol step, the JOB_COMPLETE line, the
metrics and where the manifest is. Only relative paths cross the data channel.
Then a client without shared storage sends the package over the data channel, sends it
again (the worker holds it: no byte moves), and sends another package by the road it
picks: the relay road, encrypted chunks through the storage service beside signaling.
With ``--serve`` the signaling server and the worker stay up afterwards, so a person can
open the browser page (served by the signaling server at ``/``) and run jobs from it.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import random
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
import wave
import zipfile
import zlib
from pathlib import Path

__all__ = ["build_training_package", "run_demo"]

WORKER_ID = "demo-worker"


def _png(width: int, height: int, seed: int) -> bytes:
    """A real RGB PNG (gradient and noise), built with zlib: no imaging library needed."""
    rng = random.Random(seed)
    rows = bytearray()
    for y in range(height):
        rows.append(0)  # filter type: none
        for x in range(width):
            rows += bytes(((x * 255) // width, (y * 255) // height, rng.randrange(256)))

    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return struct.pack(">I", len(data)) + body + struct.pack(">I", zlib.crc32(body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(bytes(rows), 6))
        + chunk(b"IEND", b"")
    )


def _wav(seconds: float, rate: int = 16_000) -> bytes:
    """A mono 16-bit WAV of a 440 Hz tone."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        frames = (
            struct.pack("<h", int(12_000 * math.sin(2 * math.pi * 440 * i / rate)))
            for i in range(int(seconds * rate))
        )
        out.writeframes(b"".join(frames))
    return buffer.getvalue()


def build_training_package(path: Path, size_mb: float = 8.0, seed: int = 7) -> dict[str, int]:
    """Write a training-package ZIP of about ``size_mb`` MB (10^6 bytes) at ``path``.

    Returns:
        Each member's name and uncompressed size in bytes.
    """
    rng = random.Random(seed)
    weights = int(size_mb * 1_000_000 * 0.6)
    rows = max(1000, int(size_mb * 1_000_000 * 0.35 / 40))
    csv = io.StringIO()
    csv.write("sample_id,feature_a,feature_b,feature_c,label\n")
    for i in range(rows):
        csv.write(
            f"{i},{rng.random():.6f},{rng.gauss(0, 1):.6f},{rng.randrange(1000)},"
            f"{rng.choice('ABC')}\n"
        )
    members: dict[str, bytes] = {
        "README.md": b"# Demo training package\n\nSynthetic data for the rtc-worker demo.\n",
        "config/train.json": json.dumps(
            {"epochs": 3, "batch_size": 64, "lr": 3e-4, "labels": ["A", "B", "C"]}, indent=2
        ).encode(),
        "data/train.csv": csv.getvalue().encode(),
        "data/labels.json": json.dumps({str(i): rng.choice("ABC") for i in range(500)}).encode(),
        "images/sample_0.png": _png(128, 96, seed),
        "images/sample_1.png": _png(96, 128, seed + 1),
        "audio/tone.wav": _wav(1.0),
        "weights/init.bin": rng.randbytes(weights),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return {name: len(data) for name, data in members.items()}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_health(url: str, deadline: float, proc: subprocess.Popen[bytes]) -> None:
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"signaling server exited with code {proc.returncode}")
        with contextlib.suppress(OSError), urllib.request.urlopen(url, timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.1)
    raise TimeoutError(f"signaling server not healthy at {url}")


def _step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def _serve_page(port: int, token: str, shared: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    """Keep the stack up for the browser page until Ctrl-C (or a process exits)."""

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM stops it like Ctrl-C; installed before the address is printed, so whoever
    # reads the address may stop it at once.
    signal.signal(signal.SIGTERM, stop)
    _step("the browser page (Ctrl-C stops the demo)")
    print(f"  open      http://127.0.0.1:{port}/")
    print(f"  token     {token}   (this run's only; the page keeps it for the tab)")
    print(f"  worker    {WORKER_ID}, shared root {shared}")
    print("  try       input inputs/train_package.zip, output outputs/from-the-page,")
    print("            or drop any file to send it over the data channel", flush=True)
    try:
        while all(proc.poll() is None for proc in procs):
            time.sleep(0.5)
    except KeyboardInterrupt:
        # Ctrl-C reaches the whole process group: stop quietly, ignoring a second one.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nstopping", flush=True)
        return
    dead = next(proc for proc in procs if proc.poll() is not None)
    raise RuntimeError(f"{dead.args!r} exited with code {dead.returncode}")


def run_demo(
    *, keep: bool = False, size_mb: float = 8.0, timeout: float = 60.0, serve: bool = False
) -> int:
    """Run the demo; 0 on success, 1 with the reason on stderr otherwise.

    Args:
        keep: keep the temporary folder (shared root, logs) afterwards.
        size_mb: approximate size of the training package, MB (10^6 bytes).
        timeout: give up on the jobs after this long, seconds.
        serve: afterwards keep the signaling server and worker running for the browser
            page until Ctrl-C.
    """
    started = time.monotonic()
    deadline = started + timeout
    tmp = Path(tempfile.mkdtemp(prefix="rtc-demo-"))
    shared, logs = tmp / "shared", tmp / "logs"
    logs.mkdir(parents=True)
    procs: list[subprocess.Popen[bytes]] = []
    # A token for this run only, given to every process through the environment, and
    # the storage service's key of this run (a deployment gives the worker and each
    # client a key of its own: rtc-signaling keys add).
    token = secrets.token_urlsafe(18)
    storage_key = secrets.token_urlsafe(18)
    env = {
        **os.environ,
        "RTC_SIGNALING_TOKEN": token,
        "PYTHONUNBUFFERED": "1",
        # the demo's keys and bindings live and die with its temporary folder
        "RTC_SIGNALING_DATA_DIR": str(tmp / "signaling"),
        "RTC_WORKER_KEY_FILE": str(tmp / "worker" / "identity.key"),
        "RTC_CLIENT_KEY_FILE": str(tmp / "client" / "identity.key"),
        # the storage service beside signaling, for the relay road of job 4
        "RTC_SIGNALING_STORAGE_PATH": str(tmp / "storage"),
        "RTC_SIGNALING_STORAGE_API_KEY": storage_key,
        "RTC_STORAGE_API_KEY": storage_key,
    }
    env.pop("SHARED_STORAGE_ROOT", None)
    env.pop("RTC_SIGNALING_TOKEN_FILE", None)
    ok = False
    try:
        _step("building a training package on the shared root")
        package = shared / "inputs" / "train_package.zip"
        members = build_training_package(package, size_mb=size_mb)
        for name, size in members.items():
            print(f"  {name:<22} {size:>10,} bytes")
        print(f"  -> {package} ({package.stat().st_size / 1e6:.2f} MB)")

        port = _free_port()
        url = f"ws://127.0.0.1:{port}/ws"
        storage_url = f"http://127.0.0.1:{port}"
        _step(f"starting the signaling server on 127.0.0.1:{port}")
        signaling_log = (logs / "signaling.log").open("wb")
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "signaling", "--host", "127.0.0.1", "--port", str(port)],
                stdout=signaling_log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )
        _wait_health(f"http://127.0.0.1:{port}/health", deadline, procs[0])
        print("  /health answered 200")

        _step(f"starting worker {WORKER_ID!r} with shared root {shared}")
        worker_log = (logs / "worker.log").open("wb")
        procs.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "rtc_worker",
                    "serve",
                    "--signaling-url",
                    url,
                    "--peer-id",
                    WORKER_ID,
                    "--shared-root",
                    str(shared),
                    "--storage-url",
                    storage_url,
                    "--log-level",
                    "INFO",
                ],
                stdout=worker_log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        )

        def client(*args: str, trace: bool = True) -> subprocess.CompletedProcess[str]:
            argv = [
                sys.executable,
                "-c",
                "import sys; from rtc_worker.cli import client_main; sys.exit(client_main())",
                "submit",
                "--signaling-url",
                url,
                "--worker",
                WORKER_ID,
                "--wait",
                "20",
                "--no-progress",
                "--storage-url",
                storage_url,
                *args,
                *(["--trace"] if trace else []),
            ]
            done = subprocess.run(
                argv,
                env={**env, "RTC_CLIENT_CACHE_DIR": str(tmp / "client" / "cache")},
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
                stdout=subprocess.PIPE,
                text=True,
            )
            print(done.stdout, end="", flush=True)
            if done.returncode != 0:
                raise RuntimeError(f"client exited with code {done.returncode}")
            return done

        _step("job 1: shared storage (frames on the data channel below)")
        client(
            "--input",
            "inputs/train_package.zip",
            "--output",
            "outputs/demo-run",
            "--job-id",
            "demo-001",
        )
        manifest = shared / "outputs" / "demo-run" / "manifest.json"
        data = json.loads(manifest.read_text())
        print(f"  manifest: {manifest}")
        for entry in data["files"]:
            print(f"    {entry['path']:<22} {entry['size']:>10,} bytes  {entry['mime_type']}")
        expected = set(members)
        got = {entry["path"] for entry in data["files"]}
        if got != expected:
            raise RuntimeError(f"manifest lists {sorted(got)}, expected {sorted(expected)}")

        local = tmp / "client" / "train_package.zip"
        local.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(package, local)
        downloads = tmp / "client" / "downloads"
        transfers = []
        other = tmp / "client" / "train_package_2.zip"
        build_training_package(other, size_mb=size_mb, seed=8)
        for number, job_id, road, source, what in (
            (2, "demo-002", "channel", local, "a client without shared storage sends the package"),
            (3, "demo-003", "channel", local, "the same package again: held, 0 bytes sent"),
            (4, "demo-004", "auto", other, "another package, by the road the client picks: relay"),
        ):
            _step(f"job {number}: {what}")
            done = client(
                "--file",
                str(source),
                "--download",
                str(downloads),
                "--job-id",
                job_id,
                "--road",
                road,
                trace=number == 2,
            )
            line = next(x for x in done.stdout.splitlines() if x.startswith("input "))
            transfers.append((number, line))
            results = downloads / job_id / "manifest.json"
            if {e["path"] for e in json.loads(results.read_text())["files"]} != expected:
                raise RuntimeError(f"job {number}: downloaded manifest does not match")

        _step("result")
        print(f"  job 1: shared storage, manifest at {manifest}: 0 file bytes on the channel")
        for number, line in transfers:
            print(f"  job {number}: {line}")
        print(f"  downloaded results: {downloads}")
        print(
            f"\ndemo finished in {time.monotonic() - started:.1f} s: job 1 ran in place on "
            "shared storage; jobs 2 and 3 went over the data channel, verified by sha256 "
            "and deduplicated by content; job 4 took the relay road (encrypted chunks "
            "through the storage service)."
        )
        if serve:
            _serve_page(port, token, shared, procs)
        ok = True
        return 0
    except (RuntimeError, TimeoutError, OSError, ValueError, subprocess.TimeoutExpired) as exc:
        print(f"\ndemo FAILED: {exc}", file=sys.stderr)
        for log in sorted(logs.glob("*.log")):
            print(f"--- last lines of {log.name}:", file=sys.stderr)
            for line in log.read_text(errors="replace").splitlines()[-15:]:
                print(f"    {line}", file=sys.stderr)
        return 1
    finally:
        for proc in reversed(procs):
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if keep or not ok:
            print(f"\nfiles and logs kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
