"""The peers of ``bench_signaling.py``: the client processes that hold ``--count``
registered WebSockets each, send the paced offers and time the ones their peers receive.

Each runs as ``bench_signaling.py --role peers`` and speaks to its parent on stdin/stdout
(READY, GO, SENT, STOP), then prints one JSON line: the latencies (ms) and the seconds
its peers took to register.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import resource
import sys
import time
from typing import Any

SDP_BYTES = 1500  # about the size of a data-channel offer from aiortc
TIMEOUT_S = 30.0


def raise_open_files() -> int:
    """Raise this process's soft open-files limit to its hard limit; returns it."""
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def peer_id(number: int) -> str:
    """The peer id of peer ``number`` (``p00042``)."""
    return f"p{number:05d}"


# ----------------------------------------------------------------- the client processes


async def register(session: Any, url: str, name: str) -> Any:
    """One WebSocket registered as client ``name`` with a fresh key (challenge answered)."""
    from protocol.signaling import Challenge, Registered, dump_frame, parse_server_frame
    from protocol.signaling_proof import signed_register
    from rtc_worker.identity import Identity

    identity = Identity.generate()
    ws = await session.ws_connect(url, heartbeat=None, max_msg_size=0)
    challenge = parse_server_frame(await ws.receive_str(timeout=TIMEOUT_S))
    if not isinstance(challenge, Challenge):
        raise RuntimeError(f"expected a challenge, got {challenge}")
    frame = signed_register(
        challenge, peer_id=name, role="client", public_key=identity.public_key, sign=identity.sign
    )
    await ws.send_str(dump_frame(frame))
    reply = parse_server_frame(await ws.receive_str(timeout=TIMEOUT_S))
    if not isinstance(reply, Registered):
        raise RuntimeError(f"registration of {name} refused: {reply}")
    return ws


async def peers_role(args: argparse.Namespace) -> dict[str, Any]:
    """Register this process's peers, report READY; on GO send its offers (paced), report
    SENT; on STOP print the latencies (ms) of the offers its peers received."""
    import aiohttp

    raise_open_files()
    urls = args.urls.split(",")
    mine = range(args.first, args.first + args.count)
    rng = random.Random(args.seed * 1000 + args.first)
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def read(ws: Any) -> None:
        async for msg in ws:
            if msg.type is not aiohttp.WSMsgType.TEXT:
                continue
            now = time.monotonic_ns()
            frame = json.loads(msg.data)
            if frame.get("type") == "offer":
                seq, sent, _ = frame["sdp"].split(" ", 2)
                if int(seq) >= 0:
                    latencies.append((now - int(sent)) / 1e6)
            elif frame.get("type") == "error":
                print(f"error frame: {frame}", file=sys.stderr)

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        gate = asyncio.Semaphore(32)
        sockets: dict[int, Any] = {}

        async def join(number: int) -> None:
            async with gate:
                sockets[number] = await register(session, urls[number % len(urls)], peer_id(number))

        began = time.perf_counter()
        await asyncio.gather(*(join(n) for n in mine))
        register_s = time.perf_counter() - began
        readers = [asyncio.create_task(read(ws)) for ws in sockets.values()]
        print("READY", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # GO
        padding = "v=0 " + "a" * (SDP_BYTES - 40)
        interval = args.interval_ms / 1000
        next_at = time.monotonic()
        for seq in range(-args.warmup, args.offers):
            sender = rng.choice(mine)
            while True:
                receiver = rng.randrange(args.total)
                if receiver != sender and (
                    len(urls) == 1 or receiver % len(urls) != sender % len(urls)
                ):
                    break
            sdp = f"{seq} {time.monotonic_ns()} {padding}"
            await sockets[sender].send_str(
                json.dumps({"type": "offer", "to": peer_id(receiver), "sdp": sdp})
            )
            next_at += interval
            await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        print("SENT", flush=True)
        await loop.run_in_executor(None, sys.stdin.readline)  # STOP
        for task in readers:
            task.cancel()
        await asyncio.gather(*(ws.close() for ws in sockets.values()), return_exceptions=True)
    return {"latencies_ms": latencies, "register_s": register_s}
