"""The peer-id bindings in Redis (signaling.bindings_redis) follow the same rules as the
SQLite store (test_bindings.py), on fakeredis; two clients on one fake server stand for
two signaling processes. The operator's command against a real Redis is in
test_e2e_redis.py."""

from __future__ import annotations

import asyncio

import fakeredis
import pytest

from signaling.bindings import BindingStore
from signaling.bindings_redis import RedisBindings, prune_bindings
from signaling.registry import RegistryUnavailable

A, B, C = "a" * 64, "b" * 64, "c" * 64


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store(server: fakeredis.FakeServer, **options: object) -> RedisBindings:
    prefix = str(options.get("prefix", "rtc:"))
    fakeredis.FakeRedis(server=server).set(f"{prefix}epoch", "e")  # as a heartbeat does
    client = fakeredis.FakeAsyncRedis(server=server, decode_responses=True)
    return RedisBindings(client, **options)  # type: ignore[arg-type]


@pytest.fixture
def server() -> fakeredis.FakeServer:
    return fakeredis.FakeServer()


async def test_the_first_key_wins_and_another_key_changes_nothing(
    server: fakeredis.FakeServer,
) -> None:
    clock = Clock()
    bindings = store(server, clock=clock)
    first = await bindings.claim("gpu-1", A, "worker")
    assert (first.peer_id, first.fingerprint, first.role) == ("gpu-1", A, "worker")
    clock.now += 5
    refused = await store(server, clock=clock).claim("gpu-1", B, "worker")  # another process
    assert refused == first  # the owner's binding, untouched
    assert await bindings.get("gpu-1") == first
    clock.now += 5
    again = await bindings.claim("gpu-1", A, "client")
    assert (again.fingerprint, again.role, again.created_at) == (A, "client", first.created_at)
    assert again.last_seen == clock.now


async def test_release_frees_the_id_for_the_next_key(server: fakeredis.FakeServer) -> None:
    bindings: BindingStore = store(server)
    await bindings.claim("gpu-1", A, "worker")
    released = await bindings.release("gpu-1")
    assert released is not None and released.fingerprint == A
    assert await bindings.release("gpu-1") is None
    assert await bindings.get("gpu-1") is None
    assert (await bindings.claim("gpu-1", B, "worker")).fingerprint == B
    assert [b.peer_id for b in await bindings.entries()] == ["gpu-1"]


async def test_one_key_holds_at_most_its_cap_the_oldest_goes(
    server: fakeredis.FakeServer,
) -> None:
    clock = Clock()
    bindings = store(server, max_per_key=3, clock=clock)
    await bindings.claim("other", B, "worker")
    for number in range(5):
        clock.now += 1
        await bindings.claim(f"client-{number}", A, "client")
    held = sorted(b.peer_id for b in await bindings.entries() if b.fingerprint == A)
    assert held == ["client-2", "client-3", "client-4"]
    assert await bindings.get("other") is not None  # another key's binding is never touched
    clock.now += 1
    await bindings.claim("client-2", A, "client")  # seen again: now the newest
    clock.now += 1
    await bindings.claim("client-5", A, "client")
    held = sorted(b.peer_id for b in await bindings.entries() if b.fingerprint == A)
    assert held == ["client-2", "client-4", "client-5"]
    with pytest.raises(ValueError):
        store(server, max_per_key=0)


async def test_a_released_or_expired_id_does_not_count_against_the_cap(
    server: fakeredis.FakeServer,
) -> None:
    clock = Clock()
    bindings = store(server, max_per_key=2, client_ttl_s=0.2, clock=clock)
    await bindings.claim("gpu-1", A, "worker")  # the oldest, and it never expires
    clock.now += 1
    await bindings.claim("app-1", A, "client")
    await asyncio.sleep(0.3)  # app-1 expires
    clock.now += 1
    await bindings.claim("app-2", A, "client")
    assert sorted(b.peer_id for b in await bindings.entries()) == ["app-2", "gpu-1"]


async def test_idle_client_bindings_expire_and_workers_never(
    server: fakeredis.FakeServer,
) -> None:
    bindings = store(server, client_ttl_s=0.3)
    await bindings.claim("app-1", A, "client")
    await bindings.claim("gpu-1", B, "worker")
    await asyncio.sleep(0.15)
    await bindings.claim("app-1", A, "client")  # seen again: its lifetime starts over
    await asyncio.sleep(0.2)
    assert await bindings.get("app-1") is not None
    await asyncio.sleep(0.2)
    assert await bindings.get("app-1") is None
    assert (await bindings.claim("app-1", C, "client")).fingerprint == C
    assert await bindings.get("gpu-1") is not None
    assert [b.peer_id for b in await bindings.entries()] == ["app-1", "gpu-1"]


async def test_concurrent_claims_from_many_processes_have_one_winner(
    server: fakeredis.FakeServer,
) -> None:
    keys = [f"{n:064x}" for n in range(8)]
    claims = [store(server).claim("gpu-1", key, "worker") for key in keys]
    winners = {binding.fingerprint for binding in await asyncio.gather(*claims)}
    assert len(winners) == 1
    bound = await store(server).get("gpu-1")
    assert bound is not None and bound.fingerprint in winners


async def test_a_claim_is_refused_while_redis_has_no_epoch(
    server: fakeredis.FakeServer,
) -> None:
    bindings = store(server)
    await bindings.redis.delete("rtc:epoch")  # Redis lost its data; no heartbeat yet
    with pytest.raises(RegistryUnavailable):
        await bindings.claim("gpu-1", A, "worker")
    await bindings.redis.set("rtc:epoch", "e")
    await bindings.redis.set("rtc:restoring", "1")  # the live processes are restoring
    with pytest.raises(RegistryUnavailable):
        await bindings.claim("gpu-1", A, "worker")
    assert await bindings.get("gpu-1") is None and await bindings.entries() == []


async def test_a_prefix_keeps_two_deployments_apart(server: fakeredis.FakeServer) -> None:
    await store(server, prefix="lab-a:").claim("gpu-1", A, "worker")
    assert (await store(server, prefix="lab-b:").claim("gpu-1", B, "worker")).fingerprint == B
    assert (await store(server, prefix="lab-a:").get("gpu-1")).fingerprint == A  # type: ignore[union-attr]


def test_the_bindings_command_says_when_redis_cannot_be_reached(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from signaling.__main__ import main as signaling_main
    from tests.conftest import free_port

    url = f"redis://:s3cret@127.0.0.1:{free_port()}/0"
    assert signaling_main(["bindings", "list", "--redis-url", url]) == 1
    err = capsys.readouterr().err
    assert "cannot use redis://***@127.0.0.1:" in err and "s3cret" not in err
    assert signaling_main(["bindings", "release", "gpu-1", "--redis-url", url]) == 1


async def test_bound_sets_expire_with_client_bindings_and_the_index_is_pruned(
    server: fakeredis.FakeServer,
) -> None:
    bindings = store(server, client_ttl_s=0.2)
    redis, keys = bindings.redis, bindings.keys
    await bindings.claim("app-1", A, "client")
    assert 0 < await redis.pttl(keys.bound(A)) <= 200  # a client's key set expires
    await bindings.claim("gpu-1", B, "worker")
    await bindings.claim("app-2", B, "client")
    assert await redis.pttl(keys.bound(B)) == -1  # never while it holds a worker's id
    await asyncio.sleep(0.3)
    assert not await redis.exists(keys.bound(A))
    assert await redis.smembers(keys.bindings) == {"app-1", "app-2", "gpu-1"}
    cursor = 0
    while True:  # the heartbeat's passes, PRUNE_BATCH ids each
        cursor = await prune_bindings(redis, keys, cursor)
        if cursor == 0:
            break
    assert await redis.smembers(keys.bindings) == {"gpu-1"}
