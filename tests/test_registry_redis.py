"""The registry on Redis, unit tests on fakeredis: two registries sharing one fake Redis
stand for two signaling processes (the end-to-end tests with real processes and a real
redis-server are in test_e2e_redis.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

import fakeredis
import pytest
import pytest_asyncio

from protocol.signaling import (
    Answer,
    Candidate,
    IceServer,
    Offer,
    SignalingError,
)
from signaling.bindings_redis import RedisBindings
from signaling.redis_store import RedisKeys, shown_url
from signaling.registry import RegistryUnavailable
from signaling.registry_redis import RedisRegistry
from signaling.relay_redis import SeqFilter, stream_id

FP_A, FP_B = "a" * 64, "b" * 64
ICE = IceServer(urls=("turn:turn.example.org:3478",), username="1:x", credential="c")


class Conn:
    """A peer's socket as the registry sees it: what was sent, whether it is open."""

    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []
        self.closed = False
        self.arrived = asyncio.Event()

    async def send(self, text: str) -> bool:
        if self.closed:
            return False
        self.sent.append(json.loads(text))
        self.arrived.set()
        return True

    async def next(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while not self.sent:
                self.arrived.clear()
                await self.arrived.wait()
        return self.sent.pop(0)


async def send(conn: Conn, text: str) -> bool:
    return await conn.send(text)


async def drop(conn: Conn, error: SignalingError) -> None:
    await conn.send(json.dumps(error.to_frame().model_dump(mode="json")))
    conn.closed = True


def ice(peer_id: str) -> tuple[IceServer, ...]:
    return (ICE.model_copy(update={"username": f"1:{peer_id}"}),)


MakeRegistry = Callable[..., RedisRegistry[Conn]]


@pytest_asyncio.fixture
async def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


@pytest_asyncio.fixture
async def make(server: fakeredis.FakeServer) -> AsyncIterator[MakeRegistry]:
    """Start registries (processes) on the shared fake Redis; all closed after the test."""
    made: list[RedisRegistry[Conn]] = []

    def new(ttl: float = 3.0, **extra: Any) -> RedisRegistry[Conn]:
        registry: RedisRegistry[Conn] = RedisRegistry(
            None,
            send=send,
            drop=drop,
            ice_servers=ice,
            presence_ttl_s=ttl,
            client=fakeredis.FakeAsyncRedis(server=server, decode_responses=True),
            reader=fakeredis.FakeAsyncRedis(server=server, decode_responses=True),
            **extra,
        )
        made.append(registry)
        return registry

    yield new
    for registry in made:
        await registry.close()


async def started(make: MakeRegistry, **extra: Any) -> RedisRegistry[Conn]:
    registry = make(**extra)
    await registry.start()
    return registry


async def test_a_peer_on_one_process_is_listed_and_found_on_the_other(make: MakeRegistry) -> None:
    a, b = await started(make), await started(make)
    await a.add("gpu-1", "worker", {"gpu": "A100"}, Conn(), FP_A)
    await b.add("alice", "client", {}, Conn(), None)
    for registry in (a, b):
        listed = await registry.infos()
        assert [(p.peer_id, p.role, p.fingerprint) for p in listed] == [
            ("alice", "client", None),
            ("gpu-1", "worker", FP_A),
        ]
        assert listed[1].metadata == {"gpu": "A100"}
    found = await b.find("gpu-1")
    assert found is not None and found.fingerprint == FP_A
    assert await b.find("nobody") is None
    assert "gpu-1" in a.local and "gpu-1" not in b.local


async def test_a_live_id_is_refused_on_every_process(make: MakeRegistry) -> None:
    a, b = await started(make), await started(make)
    await a.add("gpu-1", "worker", {}, Conn(), FP_A)
    for registry in (a, b):
        with pytest.raises(SignalingError) as refused:
            await registry.add("gpu-1", "worker", {}, Conn(), FP_A)
        assert refused.value.code == "PEER_ID_TAKEN"
    assert "gpu-1" not in b.local


async def test_concurrent_registrations_of_one_id_have_one_winner(make: MakeRegistry) -> None:
    a, b = await started(make), await started(make)

    async def attempt(registry: RedisRegistry[Conn]) -> bool:
        try:
            await registry.add("contested", "worker", {}, Conn(), FP_A)
        except SignalingError as error:
            assert error.code == "PEER_ID_TAKEN"
            return False
        return True

    results = await asyncio.gather(*(attempt(r) for r in [a, b] * 10))
    assert results.count(True) == 1
    assert len(a.local) + len(b.local) == 1


async def test_unregister_removes_only_its_own_registration(make: MakeRegistry) -> None:
    a, b = await started(make), await started(make)
    first, second = Conn(), Conn()
    await a.add("gpu-1", "worker", {}, first, FP_A)
    assert not await a.remove("gpu-1", second)  # not this socket's
    assert await a.remove("gpu-1", first)
    assert await b.infos() == ()
    await b.add("gpu-1", "worker", {}, second, FP_A)  # the id is free again, anywhere
    assert [p.peer_id for p in await a.infos()] == ["gpu-1"]


async def test_relayed_frames_carry_the_servers_from_fingerprint_and_ice_servers(
    make: MakeRegistry,
) -> None:
    a, b = await started(make), await started(make)
    worker, client = Conn(), Conn()
    await a.add("gpu-1", "worker", {}, worker, FP_A)
    await b.add("alice", "client", {}, client, FP_B)
    await b.relay("alice", FP_B, Offer(to="gpu-1", sdp="v=0 offer"))
    offer = await worker.next()
    assert offer == {
        "type": "offer",
        "from": "alice",
        "fingerprint": FP_B,
        "to": "gpu-1",
        "sdp": "v=0 offer",
        "ice_servers": [
            {"urls": ["turn:turn.example.org:3478"], "username": "1:gpu-1", "credential": "c"}
        ],
    }
    await a.relay("gpu-1", FP_A, Answer(to="alice", sdp="v=0 answer"))
    await a.relay("gpu-1", FP_A, Candidate(to="alice", candidate=None))
    assert await client.next() == {
        "type": "answer",
        "from": "gpu-1",
        "fingerprint": FP_A,
        "to": "alice",
        "sdp": "v=0 answer",
    }
    assert (await client.next())["candidate"] is None


async def test_order_is_kept_and_nothing_lost_between_a_pair(make: MakeRegistry) -> None:
    a, b = await started(make), await started(make)
    receiver = Conn()
    await a.add("sender", "client", {}, Conn(), FP_B)
    await b.add("receiver", "worker", {}, receiver, FP_A)
    count = 1500
    for i in range(count):
        await a.relay("sender", FP_B, Candidate(to="receiver", candidate={"n": i}))
    async with asyncio.timeout(20):
        while len(receiver.sent) < count:
            await asyncio.sleep(0.02)
    assert [frame["candidate"]["n"] for frame in receiver.sent] == list(range(count))


async def test_a_relay_to_nobody_is_peer_not_found(make: MakeRegistry) -> None:
    a = await started(make)
    await a.add("alice", "client", {}, Conn(), None)
    with pytest.raises(SignalingError) as refused:
        await a.relay("alice", None, Offer(to="ghost", sdp="x"))
    assert refused.value.code == "PEER_NOT_FOUND"


async def test_a_receiver_gone_while_the_frame_travels_is_reported_to_the_sender(
    make: MakeRegistry,
) -> None:
    a, b = await started(make), await started(make)
    sender, receiver = Conn(), Conn()
    await a.add("alice", "client", {}, sender, None)
    await b.add("gpu-1", "worker", {}, receiver, FP_A)
    receiver.closed = True  # the socket is gone; its registration not yet
    await a.relay("alice", None, Offer(to="gpu-1", sdp="x"))
    error = await sender.next()
    assert (error["type"], error["code"], error["ref_type"]) == ("error", "PEER_NOT_FOUND", "offer")


async def test_a_dead_process_takes_only_its_own_peers(make: MakeRegistry) -> None:
    a, b = await started(make, ttl=1.0), await started(make, ttl=1.0)
    await a.add("on-a", "worker", {}, Conn(), FP_A)
    survivor, partner = Conn(), Conn()
    await b.add("on-b", "worker", {}, survivor, FP_B)
    await b.add("partner", "client", {}, partner, None)
    for task in a._tasks:  # process A stops refreshing, as if killed
        task.cancel()
    async with asyncio.timeout(5):
        while [p.peer_id for p in await b.infos()] != ["on-b", "partner"]:
            await asyncio.sleep(0.1)
    await b.relay("partner", None, Offer(to="on-b", sdp="still here"))
    assert (await survivor.next())["sdp"] == "still here"
    await b.add("on-a", "worker", {}, Conn(), FP_A)  # the dead process's id is free
    a._values.clear()  # its close() must not touch what B now holds


async def test_a_retried_append_is_delivered_once(make: MakeRegistry) -> None:
    a, b = await started(make), await started(make)
    receiver = Conn()
    await a.add("sender", "client", {}, Conn(), None)
    await b.add("receiver", "worker", {}, receiver, FP_A)
    seq = iter([7, 7, 8])
    a._seq = seq  # type: ignore[assignment]
    for n in range(3):
        await a.relay("sender", None, Candidate(to="receiver", candidate=n))
    await asyncio.sleep(0.3)
    assert [frame["candidate"] for frame in receiver.sent] == [0, 2]


def test_seq_filter_remembers_a_bounded_number_of_senders() -> None:
    seen = SeqFilter(size=2)
    assert seen.fresh("s1", 1) and not seen.fresh("s1", 1) and seen.fresh("s1", 2)
    assert seen.fresh("s2", 1) and seen.fresh("s3", 1)  # s1 is forgotten
    assert seen.fresh("s1", 1)
    assert stream_id("5-3") > stream_id("4-9") and stream_id("7") == (7, 0)


async def test_when_redis_loses_its_data_live_peers_are_registered_and_bound_again(
    make: MakeRegistry, server: fakeredis.FakeServer
) -> None:
    a, b = await started(make), await started(make, client_binding_ttl_s=0.5)
    bindings = RedisBindings(fakeredis.FakeAsyncRedis(server=server, decode_responses=True))
    await bindings.claim("gpu-1", FP_A, "worker")
    await bindings.claim("app-1", FP_B, "client")
    worker, app, kiosk = Conn(), Conn(), Conn()
    await a.add("gpu-1", "worker", {}, worker, FP_A)
    await b.add("app-1", "client", {}, app, FP_B)
    await b.add("kiosk", "client", {}, kiosk, None)
    await a.redis.flushall()
    assert await b.infos() == ()
    await a.beat()
    await b.beat()
    assert [p.peer_id for p in await b.infos()] == ["app-1", "gpu-1", "kiosk"]
    assert [(x.peer_id, x.fingerprint) for x in await bindings.entries()] == [
        ("app-1", FP_B),
        ("gpu-1", FP_A),
    ]  # the anonymous kiosk's id stays unbound
    assert await a.redis.pttl(a.keys.binding("gpu-1")) == -1  # a worker's never expires
    assert 0 < await a.redis.pttl(a.keys.binding("app-1")) <= 500
    assert not (worker.closed or app.closed or kiosk.closed)


async def test_a_squatter_after_redis_lost_its_data_is_refused_until_the_peers_are_restored(
    make: MakeRegistry, server: fakeredis.FakeServer
) -> None:
    a, b = await started(make), await started(make)
    worker = Conn()
    bindings = RedisBindings(fakeredis.FakeAsyncRedis(server=server, decode_responses=True))
    await bindings.claim("gpu-1", FP_A, "worker")
    await a.add("gpu-1", "worker", {}, worker, FP_A)
    await a.redis.flushall()  # Redis restarted empty
    # The squatter, before any heartbeat: its claim and its registration are refused.
    with pytest.raises(RegistryUnavailable):
        await bindings.claim("gpu-1", FP_B, "worker")
    with pytest.raises(RegistryUnavailable):
        await b.add("gpu-1", "worker", {}, Conn(), FP_B)
    await b.beat()  # a process with no peers sets the epoch and the restoring window
    with pytest.raises(RegistryUnavailable):
        await bindings.claim("gpu-1", FP_B, "worker")
    with pytest.raises(RegistryUnavailable):
        await b.add("kiosk", "client", {}, Conn(), None)
    await a.beat()  # the live process restores its peer and its binding
    assert [(p.peer_id, p.fingerprint) for p in await b.infos()] == [("gpu-1", FP_A)]
    assert (await bindings.get("gpu-1")).fingerprint == FP_A  # type: ignore[union-attr]
    assert not worker.closed and "gpu-1" in a.local
    # After the window (one presence TTL) new sockets register again; the id stays taken.
    await a.redis.delete(a.keys.restoring)
    assert (await bindings.claim("gpu-1", FP_B, "worker")).fingerprint == FP_A
    with pytest.raises(SignalingError):
        await b.add("gpu-1", "worker", {}, Conn(), FP_B)
    await b.add("kiosk", "client", {}, Conn(), None)


async def test_an_id_bound_to_another_key_while_redis_was_away_closes_the_socket(
    make: MakeRegistry, server: fakeredis.FakeServer
) -> None:
    a = await started(make)
    worker = Conn()
    await a.add("gpu-1", "worker", {}, worker, FP_A)
    await a.redis.flushall()
    await a.redis.set(a.keys.epoch, "another")  # restored meanwhile by another process
    bindings = RedisBindings(fakeredis.FakeAsyncRedis(server=server, decode_responses=True))
    await bindings.claim("gpu-1", FP_B, "worker")  # claimed before this process refreshed
    await a.beat()
    error = await worker.next()
    assert error["code"] == "PEER_ID_BOUND" and worker.closed
    assert "gpu-1" not in a.local and await a.infos() == ()


async def test_an_id_taken_while_redis_was_unreachable_closes_the_stale_socket(
    make: MakeRegistry,
) -> None:
    a, b = await started(make), await started(make)
    stale, fresh = Conn(), Conn()
    await a.add("gpu-1", "worker", {}, stale, FP_A)
    await a.redis.delete(a.keys.peer("gpu-1"))  # expired while A could not refresh it
    await b.add("gpu-1", "worker", {}, fresh, FP_A)
    await a.beat()
    error = await stale.next()
    assert error["code"] == "PEER_ID_TAKEN" and stale.closed
    assert "gpu-1" not in a.local and not fresh.closed
    assert [p.peer_id for p in await b.infos()] == ["gpu-1"]


async def test_an_unreachable_redis_is_registry_unavailable_never_a_crash() -> None:
    from tests.conftest import free_port

    registry: RedisRegistry[Conn] = RedisRegistry(
        f"redis://127.0.0.1:{free_port()}/0", send=send, drop=drop, ice_servers=ice
    )
    await registry.start()  # logs and keeps retrying in the background
    try:
        with pytest.raises(RegistryUnavailable):
            await registry.add("gpu-1", "worker", {}, Conn(), FP_A)
        with pytest.raises(RegistryUnavailable):
            await registry.infos()
        with pytest.raises(RegistryUnavailable):
            await registry.ping()
        assert len(registry.local) == 0
        assert all(not task.done() for task in registry._tasks)
    finally:
        await registry.close()


def test_redis_urls_are_logged_without_their_password() -> None:
    assert shown_url("redis://:s3cret@db.example.org:6380/0") == "redis://***@db.example.org:6380/0"
    assert shown_url("redis://user:pw@h/1") == "redis://***@h/1"
    assert shown_url("unix:///run/redis.sock") == "unix:///run/redis.sock"
    assert RedisKeys("lab:").inbox("p1") == "lab:inbox:p1"


def test_redis_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    from pydantic import ValidationError

    from signaling.config import SignalingSettings

    monkeypatch.setenv("RTC_REDIS_URL", "redis://:pw@127.0.0.1:6379/0")
    monkeypatch.setenv("RTC_REDIS_PRESENCE_TTL_S", "2")
    settings = SignalingSettings()
    assert settings.redis_url_value == "redis://:pw@127.0.0.1:6379/0"
    assert "pw" not in repr(settings)
    assert settings.redis_presence_ttl_s == 2.0 and settings.redis_key_prefix == "rtc:"
    monkeypatch.setenv("RTC_REDIS_URL", "")
    assert SignalingSettings().redis_url is None
    with pytest.raises(ValidationError, match="must start with"):
        SignalingSettings(redis_url="http://127.0.0.1:6379")
    with pytest.raises(ValidationError):
        SignalingSettings(redis_key_prefix="a b")


async def test_a_heartbeat_never_revives_or_closes_a_registration_that_changed_meanwhile(
    make: MakeRegistry,
) -> None:
    a = await started(make)
    left, first, second = Conn(), Conn(), Conn()
    await a.add("gone", "client", {}, left, None)
    await a.add("again", "client", {}, first, None)
    before = dict(a._values)  # the heartbeat's view when it began
    await a.remove("gone", left)
    await a.remove("again", first)
    await a.add("again", "client", {}, second, None)  # a new socket, same id
    await a._beat_batch(["gone", "again"], before)
    assert [p.peer_id for p in await a.infos()] == ["again"]
    assert not second.closed and "again" in a.local


async def test_restored_bindings_keep_the_cap_per_key(
    make: MakeRegistry, server: fakeredis.FakeServer
) -> None:
    a = await started(make, max_bindings_per_key=1)
    bindings = RedisBindings(fakeredis.FakeAsyncRedis(server=server, decode_responses=True))
    for peer_id in ("gpu-1", "gpu-2", "gpu-3"):  # live peers of one key
        await a.add(peer_id, "worker", {}, Conn(), FP_A)
    await a.redis.flushall()
    await a.beat()
    assert await a.redis.zcard(a.keys.bound(FP_A)) == 1
    assert len(await bindings.entries()) == 1
