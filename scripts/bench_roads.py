"""The HTTP roads of ``bench_transfer.py``: the raw aiohttp stream-to-disk ceiling, the
relay road (client encrypts, tus upload, worker's ranged download, decrypt, verify),
and a byte-counting TCP proxy in front of the storage service that can cut it.

Every function named ``*_role`` runs in a child process started by
``bench_transfer.py --role NAME`` and prints one JSON line last.

The relay road is measured through the client's public API only:
``RTCClient(..., storage_url=URL, storage_api_key=KEY)``, ``RTCClient.plan_road(worker,
"relay")`` and ``WorkerConnection.send_file(path, road=plan)`` (the worker offers the
road when started with ``--storage-url`` and ``RTC_STORAGE_API_KEY``).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import MIB, REPO, Worker, child, free_port, result_of, rss_kib, stop

SCRIPT = Path(__file__).with_name("bench_transfer.py")  # the roles' entry point

ADMIN_KEY = "bench-transfer-admin-key-0123456789"  # a throwaway store's admin key


# ----------------------------------------------------------- raw stream-to-disk


async def raw_http_server_role(port: int, dest: Path) -> dict[str, Any]:
    """``POST /raw``: the body streamed into ``dest`` (1 MiB reads) and fsynced before
    the answer; serves until SIGTERM."""
    from aiohttp import web

    async def raw(request: web.Request) -> web.Response:
        with dest.open("wb") as stream:
            async for chunk in request.content.iter_chunked(MIB):
                stream.write(chunk)
            stream.flush()
            os.fsync(stream.fileno())
        return web.Response(text="ok")

    app = web.Application(client_max_size=0)
    app.router.add_post("/raw", raw)
    app.router.add_get("/health", lambda _: web.Response(text="ok"))  # type: ignore[arg-type, return-value]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    print("READY", flush=True)
    await stopped.wait()
    peak = rss_kib(os.getpid())
    await runner.cleanup()
    return {"peak_kib": peak}


async def raw_http_client_role(url: str, path: Path) -> dict[str, Any]:
    """One POST of ``path`` (read in 1 MiB slices); seconds from the first byte read to
    the answer."""
    import aiohttp

    async def slices() -> Any:
        with path.open("rb") as stream:
            while data := stream.read(MIB):
                yield data

    began = time.perf_counter()
    async with aiohttp.ClientSession() as session, session.post(url, data=slices()) as got:
        assert got.status == 200, await got.text()
    return {"seconds": time.perf_counter() - began, "peak_kib": rss_kib(os.getpid())}


def run_raw_http(path: Path) -> dict[str, Any]:
    """The ceiling: a raw aiohttp server process writes one POST of ``path`` into a file
    (fsync), sent by a client process over loopback."""
    folder = Path(tempfile.mkdtemp(prefix="bench-raw-http-"))
    port = free_port()
    server = child(SCRIPT, "raw-http-server", "--port", str(port), "--file", str(folder / "body"))
    try:
        assert server.stdout is not None
        server.stdout.readline()  # READY
        return result_of(
            child(
                SCRIPT,
                "raw-http-client",
                "--url",
                f"http://127.0.0.1:{port}/raw",
                "--file",
                str(path),
            )
        )
    finally:
        stop(server)
        shutil.rmtree(folder, ignore_errors=True)


# ----------------------------------------------------------- the storage service


class StorageProcess:
    """One ``rtc-signaling`` process with signaling and the storage service (folder
    backend, SQLite) on a free port. The admin key (a throwaway one) goes through the
    environment; :meth:`add_key` makes the worker's and the client's keys as an operator
    does (``rtc-signaling keys add``)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.env = {**os.environ, "RTC_SIGNALING_STORAGE_API_KEY": ADMIN_KEY}
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "signaling",
                "--port",
                str(self.port),
                "--log-level",
                "WARNING",
                "--storage-path",
                str(folder / "store"),
                "--data-dir",
                str(folder / "signaling"),
            ],
            cwd=REPO,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("listening on"):
            stop(self.proc)
            raise RuntimeError("rtc-signaling with a storage path did not start")
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"
        self.http_url = f"http://127.0.0.1:{self.port}"

    def add_key(self, role: str, name: str, principal: str | None = None) -> str:
        """A new API key of ``role`` (bound to ``principal``, a fingerprint, if given)."""
        argv = [
            sys.executable,
            "-m",
            "signaling",
            "keys",
            "add",
            "--role",
            role,
            "--name",
            name,
            "--storage-path",
            str(self.folder / "store"),
        ]
        if principal is not None:
            argv += ["--principal", principal]
        done = subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"rtc-signaling keys add failed: {done.stderr.strip()[-300:]}")
        return done.stdout.strip()

    def stop(self) -> None:
        stop(self.proc)


def client_fingerprint() -> str:
    """The fingerprint of the key the benchmark's clients use (``XDG_CONFIG_HOME``)."""
    from rtc_worker.identity import Identity, default_client_key_file

    return Identity.load_or_create(default_client_key_file()).fingerprint


# ----------------------------------------------------------- counting proxy


async def proxy_role(listen: int, target: int, cut_after: int, outage_s: float) -> dict[str, Any]:
    """Forward 127.0.0.1:``listen`` to 127.0.0.1:``target``, counting the bytes sent
    towards the target (the client's uploads). With ``cut_after`` > 0: once that many
    have passed, every open connection is reset and new ones are refused for
    ``outage_s`` seconds (the storage service unreachable), once. Serves until SIGTERM."""
    state: dict[str, Any] = {"up": 0, "down": 0, "cut_at": None, "refusing_until": 0.0}
    writers: set[asyncio.StreamWriter] = set()

    def cut() -> None:
        state["cut_at"] = state["up"]
        state["refusing_until"] = time.monotonic() + outage_s
        for writer in list(writers):
            with contextlib.suppress(Exception):
                writer.transport.abort()

    async def pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, key: str) -> None:
        with contextlib.suppress(Exception):
            while data := await reader.read(256 * 1024):
                state[key] += len(data)
                writer.write(data)
                await writer.drain()
                if (
                    key == "up"
                    and cut_after
                    and state["cut_at"] is None
                    and state["up"] >= cut_after
                ):
                    cut()
        with contextlib.suppress(Exception):
            writer.close()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if time.monotonic() < state["refusing_until"]:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", target)
        writers.update((writer, up_writer))
        try:  # cancelled at shutdown: the connection just ends
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(pump(reader, up_writer, "up"), pump(up_reader, writer, "down"))
        finally:
            writers.difference_update((writer, up_writer))

    server = await asyncio.start_server(serve, "127.0.0.1", listen)
    stopped = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stopped.set)
    print("READY", flush=True)
    await stopped.wait()
    server.close()
    return {"up_bytes": state["up"], "down_bytes": state["down"], "cut_at": state["cut_at"]}


# ----------------------------------------------------------- the relay road


async def relay_sender_role(url: str, storage_url: str, path: Path, worker: str) -> dict[str, Any]:
    """Send ``path`` to ``worker`` on the relay road, forced (``plan_road(worker,
    "relay")``: no fallback hides a failure of the road); seconds from the call
    (hashing, encryption, tus upload, the worker's ranged download, decryption and
    verification) to the worker's FILE_RECEIVED."""
    from rtc_worker.client import RTCClient

    cache = Path(tempfile.mkdtemp(prefix="bench-relay-client-"))
    key = os.environ["RTC_STORAGE_API_KEY"]  # the environment, never a flag
    try:
        async with RTCClient(
            url, connect_timeout=30, cache_dir=cache, storage_url=storage_url, storage_api_key=key
        ) as client:
            await client.wait_for_worker(worker, 30)
            conn = await client.connect(worker)
            idle_kib = rss_kib(os.getpid(), "VmRSS")
            began = time.perf_counter()
            plan = await client.plan_road(worker, "relay")
            result = await conn.send_file(path, road=plan)
            wall = time.perf_counter() - began
            return {
                "status": result.outcome.status,
                "wall_s": wall,
                "seconds": result.seconds,
                "channel_bytes": conn.io.bytes_sent,
                "bytes_relayed": getattr(result, "bytes_relayed", None),
                "road": str(getattr(result, "road", "relay")),
                "roads": [str(change) for change in getattr(result, "roads", ())],
                "idle_kib": idle_kib,
                "peak_kib": rss_kib(os.getpid()),
            }
    finally:
        shutil.rmtree(cache, ignore_errors=True)


def run_relay(
    path: Path, name: str, folder: Path, cut_at: float = 0.0, outage_s: float = 1.0
) -> dict[str, Any]:
    """The relay road end to end with real processes: a storage service (with
    signaling), a worker offering the relay road, a client sending ``path`` on it.
    With ``cut_at``: the client reaches the storage service through the counting proxy,
    which cuts it once that fraction of the file went up (see :func:`proxy_role`);
    bytes sent = uploaded through the proxy + sent on the data channel."""
    service = StorageProcess(folder / f"service-{name}")
    proxy = None
    try:
        storage_url = service.http_url
        if cut_at:
            listen = free_port()
            cut_after = int(path.stat().st_size * cut_at)
            proxy = child(
                SCRIPT,
                "proxy",
                "--port",
                str(listen),
                "--target",
                str(service.port),
                "--size",
                str(cut_after),
                "--outage-s",
                str(outage_s),
            )
            assert proxy.stdout is not None
            proxy.stdout.readline()  # READY
            storage_url = f"http://127.0.0.1:{listen}"
        worker_key = service.add_key("worker", f"{name}-worker")
        client_key = service.add_key("client", f"{name}-client", client_fingerprint())
        worker = Worker(service.ws_url, name, storage_url=service.http_url, storage_key=worker_key)
        try:
            sender = child(
                SCRIPT,
                "relay-send",
                "--url",
                service.ws_url,
                "--storage-url",
                storage_url,
                "--file",
                str(path),
                "--worker",
                name,
                env={"RTC_STORAGE_API_KEY": client_key},
            )
            sent = result_of(sender)
            out = {
                **sent,
                "worker_idle_kib": worker.idle_kib,
                "worker_peak_kib": worker.peak_kib(),
                "service_peak_kib": rss_kib(service.proc.pid),
            }
        finally:
            worker.stop()
        if proxy is not None:
            proxy.send_signal(signal.SIGTERM)
            counted = result_of(proxy)
            out.update(counted, total_sent=counted["up_bytes"] + out["channel_bytes"])
        return out
    finally:
        if proxy is not None:
            stop(proxy)
        service.stop()
