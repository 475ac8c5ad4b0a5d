"""The data-channel roads of ``bench_transfer.py``: the child roles that send and
receive over aiortc (a raw flow-controlled loop, and the project's ``RTCClient``), and
the runs that start them, with the worker, as processes.

Sizes in bytes (MB = 10^6 bytes), times in seconds, memory in KiB. Each role runs as
``bench_transfer.py --role NAME`` and prints one JSON line last; ``profile_channel.py``
imports ``project_sender`` (the same sending code as row (b)).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_common import Worker, child, result_of, rss_kib, start_signaling, stop

SCRIPT = Path(__file__).with_name("bench_transfer.py")  # the roles' entry point
#: flow control of the raw loop: pause above HIGH_WATER bytes buffered, resume below LOW_WATER
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024


def loop_name() -> str:
    """The running event loop's module: ``asyncio`` or ``uvloop``."""
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
                size = path.stat().st_size  # noqa: ASYNC240  (before any transfer)
                first = conn

                async def cut() -> None:
                    # polls the byte counter to cut the transfer at an exact point
                    while first.io.bytes_sent < size * cut_at:  # noqa: ASYNC110
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


# ------------------------------------------------------------------ runs


def run_raw(url: str, path: Path, size: int, chunk: int, name: str) -> dict[str, Any]:
    """Row (a): a ``raw-recv`` and a ``raw-send`` process, ``chunk`` bytes a message;
    the sender's figures with the receiver's peak RSS (KiB) and loop."""
    receiver = child(SCRIPT, "raw-recv", "--url", url, "--size", str(size), "--worker", name)
    assert receiver.stdout is not None
    receiver.stdout.readline()  # READY
    sender = child(
        SCRIPT,
        "raw-send",
        "--url",
        url,
        "--file",
        str(path),
        "--chunk-size",
        str(chunk),
        "--worker",
        name,
    )
    sent = result_of(sender)
    got = result_of(receiver)
    return {**sent, "receiver_peak_kib": got["peak_kib"], "receiver_loop": got["loop"]}


def run_project(
    url: str, path: Path, name: str, cut_at: float = 0.0, policy: str = "all"
) -> dict[str, Any]:
    """Rows (b), (c), (e): a real worker and a ``send`` process (``cut_at``: the resume
    run; ``policy="relay"``: TURN only); the sender's figures with the worker's RSS (KiB)."""
    worker = Worker(url, name, policy)
    try:
        sender = child(
            SCRIPT,
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
