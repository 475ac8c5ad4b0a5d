"""Attacks on signaling on a real ``redis-server`` (tests/engine_redis.py), written as
the attacker's steps, at the registry level: two :class:`RedisRegistry` objects on one
Redis stand for two signaling processes.

* a receiver that never reads, flooded by an accomplice, does not delay the relayed
  frames of the other peers of its process (no head-of-line blocking): its socket is
  closed and the flood answered with ``PEER_NOT_FOUND``;
* Redis restarted empty: a squatter registering a live worker's id before the worker's
  process restored it is refused with ``SERVER_ERROR`` and the worker keeps its id.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import pytest_asyncio

from protocol.signaling import Candidate, IceServer, Offer, SignalingError
from signaling.redis_store import connect
from signaling.registry_redis import RedisRegistry
from tests.engine_redis import redis_engine, redis_url

__all__ = ["redis_engine", "redis_url"]  # fixtures used here

pytestmark = pytest.mark.live

FP_A, FP_M, FP_S, FP_W = "a" * 64, "d" * 64, "f" * 64, "e" * 64


class Conn:
    """A socket as the registry sees it; a ``stuck`` one never takes a frame (its peer
    does not read, so the WebSocket waits for its buffer to drain, forever)."""

    def __init__(self, stuck: bool = False) -> None:
        self.stuck = stuck
        self.got: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.dropped: SignalingError | None = None

    async def send(self, text: str) -> bool:
        if self.stuck:
            await asyncio.Event().wait()
        await self.got.put(json.loads(text))
        return True


async def send(conn: Conn, text: str) -> bool:
    return await conn.send(text)


async def drop(conn: Conn, error: SignalingError) -> None:
    conn.dropped = error
    await conn.send(json.dumps(error.to_frame().model_dump(mode="json")))


def ice(peer_id: str) -> tuple[IceServer, ...]:
    return ()


MakeRegistry = Callable[..., RedisRegistry[Conn]]


@pytest_asyncio.fixture
async def make(redis_url: str) -> AsyncIterator[MakeRegistry]:
    made: list[RedisRegistry[Conn]] = []

    def new(ttl: float = 3.0) -> RedisRegistry[Conn]:
        registry: RedisRegistry[Conn] = RedisRegistry(
            None,
            send=send,
            drop=drop,
            ice_servers=ice,
            presence_ttl_s=ttl,
            client=connect(redis_url),
            reader=connect(redis_url, blocking_s=1.0),
        )
        made.append(registry)
        return registry

    yield new
    for registry in made:
        await registry.close()


async def test_a_receiver_that_never_reads_does_not_delay_the_other_peers(
    make: MakeRegistry,
) -> None:
    a, b = make(), make()
    await a.start()
    await b.start()
    sink, gpu, mallory, alice = Conn(stuck=True), Conn(), Conn(), Conn()
    await b.add("sink", "client", {}, sink, FP_S)  # the attacker's receiver: never reads
    await b.add("gpu-1", "worker", {}, gpu, FP_W)  # the victim, on the same process
    await a.add("mallory", "client", {}, mallory, FP_M)
    await a.add("alice", "client", {}, alice, FP_A)

    async def flood() -> int:
        sent = 0
        for i in range(2_000):
            try:
                await a.relay("mallory", FP_M, Candidate(to="sink", candidate={"n": i}))
            except SignalingError:
                break  # the sink is gone: PEER_NOT_FOUND at once
            sent += 1
        return sent

    flooding = asyncio.create_task(flood())
    latencies = []
    for i in range(5):
        t0 = time.monotonic()
        await a.relay("alice", FP_A, Offer(to="gpu-1", sdp=f"v=0 {i}"))
        async with asyncio.timeout(5):
            got = await gpu.got.get()
        latencies.append(time.monotonic() - t0)
        assert got["type"] == "offer" and got["from"] == "alice"
    sent = await flooding
    assert max(latencies) < 1.0, latencies
    # The sink was closed for not reading; the flood got PEER_NOT_FOUND, never a stall.
    async with asyncio.timeout(5):
        while sink.dropped is None:
            await asyncio.sleep(0.05)
    assert "sink" not in b.local and sent < 2_000
    assert await a.find("sink") is None
    async with asyncio.timeout(5):
        error = await mallory.got.get()
    assert error["type"] == "error" and error["code"] == "PEER_NOT_FOUND"
