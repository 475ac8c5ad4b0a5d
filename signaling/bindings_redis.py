"""Peer-id bindings in Redis: the :class:`~signaling.bindings.BindingStore` of several
signaling processes.

The same rules as :class:`~signaling.bindings.SqliteBindings`, shared by every process on
one Redis: the first key that registers a peer id owns it, on every process and after
any restart of any of them, until the operator releases it (``rtc-signaling bindings
release`` with the same ``--redis-url``); one key holds at most ``max_per_key`` ids
(binding one more releases its least recently registered one); a client's binding not
registered for ``client_ttl_s`` seconds expires (a Redis key TTL), a worker's never; a
key's ``bound`` set expires with its last client binding (never while it holds a
worker's), and each heartbeat of the registry removes up to :data:`PRUNE_BATCH` expired
ids from the ``bindings`` index (:func:`prune_bindings`).

Each claim is one Lua script, so two processes claiming one id at once have one winner.
The keys are ``{p}binding:{peer_id}`` (hash), ``{p}bindings`` (set) and
``{p}bound:{fingerprint}`` (sorted set by last_seen), see :mod:`signaling.redis_store`.
Redis must keep its data across its own restarts (``appendonly yes``) for bindings to
outlive it; when it lost them, claims are refused until the live processes have
restored theirs (the epoch, :mod:`signaling.redis_store`).

Source: DESIGN.md ("Identity first"); PROTOCOL.md section 5.3.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis

from signaling.bindings import Binding
from signaling.redis_store import RedisKeys
from signaling.registry import RegistryUnavailable

__all__ = ["PRUNE_BATCH", "RedisBindings", "prune_bindings"]

# KEYS: binding, bindings, bound(fp), epoch, restoring. ARGV: peer_id, fp, role, now,
# client_ttl_ms, max_per_key, binding key prefix. Returns the binding afterwards (fp,
# role, created, last_seen): another key's (nothing changed) or the caller's; false
# while Redis's data is being restored (see signaling.redis_store).
_CLAIM = """
if redis.call('EXISTS', KEYS[4]) == 0 or redis.call('EXISTS', KEYS[5]) == 1 then
  return false
end
local cur = redis.call('HMGET', KEYS[1], 'fingerprint', 'role', 'created_at', 'last_seen')
if cur[1] and cur[1] ~= ARGV[2] then return cur end
local created = cur[3] or ARGV[4]
redis.call('HSET', KEYS[1], 'fingerprint', ARGV[2], 'role', ARGV[3],
           'created_at', created, 'last_seen', ARGV[4])
if ARGV[3] == 'client' and tonumber(ARGV[5]) > 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[5])
else
  redis.call('PERSIST', KEYS[1])
end
redis.call('SADD', KEYS[2], ARGV[1])
local before = redis.call('PTTL', KEYS[3])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[1])
if ARGV[3] ~= 'client' or tonumber(ARGV[5]) <= 0 then
  redis.call('PERSIST', KEYS[3])
elseif before ~= -1 then
  redis.call('PEXPIRE', KEYS[3], ARGV[5])
end
local cap = tonumber(ARGV[6])
if not cur[1] and redis.call('ZCARD', KEYS[3]) > cap then
  for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    if redis.call('HGET', ARGV[7] .. id, 'fingerprint') ~= ARGV[2] then
      redis.call('ZREM', KEYS[3], id)
    end
  end
  local extra = redis.call('ZCARD', KEYS[3]) - cap
  if extra > 0 then
    for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, extra)) do
      if extra > 0 and id ~= ARGV[1] then
        redis.call('DEL', ARGV[7] .. id)
        redis.call('SREM', KEYS[2], id)
        redis.call('ZREM', KEYS[3], id)
        extra = extra - 1
      end
    end
  end
end
return {ARGV[2], ARGV[3], created, ARGV[4]}
"""

# KEYS: binding, bindings. ARGV: peer_id, bound-key prefix. Returns the removed binding.
_RELEASE = """
local cur = redis.call('HMGET', KEYS[1], 'fingerprint', 'role', 'created_at', 'last_seen')
redis.call('SREM', KEYS[2], ARGV[1])
if not cur[1] then return false end
redis.call('DEL', KEYS[1])
redis.call('ZREM', ARGV[2] .. cur[1], ARGV[1])
return cur
"""


# KEYS: bindings. ARGV: binding key prefix, then peer ids. Removes from the index the
# ids whose binding is gone (an expired client's); returns how many.
_PRUNE = """
local gone = 0
for i = 2, #ARGV do
  if redis.call('EXISTS', ARGV[1] .. ARGV[i]) == 0 then
    gone = gone + redis.call('SREM', KEYS[1], ARGV[i])
  end
end
return gone
"""

PRUNE_BATCH = 100
"""Most members of the ``bindings`` index looked at by one :func:`prune_bindings`."""


async def prune_bindings(redis: aioredis.Redis, keys: RedisKeys, cursor: int) -> int:
    """Look at up to about :data:`PRUNE_BATCH` members of the ``bindings`` index from
    ``cursor`` (``SSCAN``) and remove those whose binding has expired (one script, so a
    claim in between is kept); returns the cursor of the next pass (0: from the start).

    Raises:
        redis.exceptions.RedisError, OSError, TimeoutError: Redis failed.
    """
    cursor, ids = await redis.sscan(keys.bindings, cursor, count=PRUNE_BATCH)
    if ids:
        await redis.eval(_PRUNE, 1, keys.bindings, keys.binding(""), *ids)
    return int(cursor)


class RedisBindings:
    """:class:`~signaling.bindings.BindingStore` in Redis.

    Args:
        redis: a redis-py asyncio client with ``decode_responses=True``.
        prefix: the key prefix (``redis_key_prefix``).
        max_per_key: most peer ids one key holds (at least 1).
        client_ttl_s: a client binding not registered for this long is released,
            seconds; 0 never releases one.
        clock: seconds since the epoch (the ``created_at``/``last_seen`` stamps).
        ready: awaited before each claim (the registry's
            :meth:`~signaling.registry_redis.RedisRegistry.ensure_epoch`).

    Every method raises redis-py's ``RedisError`` (or ``OSError``, ``TimeoutError``)
    when Redis cannot be reached; nothing changes then.
    """

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "rtc:",
        max_per_key: int = 1000,
        client_ttl_s: float = 0.0,
        clock: Callable[[], float] | None = None,
        ready: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        if max_per_key < 1:
            raise ValueError("max_per_key is at least 1")
        self.redis = redis
        self.keys = RedisKeys(prefix)
        self.max_per_key = max_per_key
        self.client_ttl_s = client_ttl_s
        self._clock = clock or time.time
        self._ready = ready
        self._claim = redis.register_script(_CLAIM)
        self._release = redis.register_script(_RELEASE)

    async def claim(self, peer_id: str, fingerprint: str, role: str) -> Binding:
        """See :meth:`~signaling.bindings.BindingStore.claim` (one atomic script).

        Raises:
            RegistryUnavailable: Redis lost its data and the live processes have not
                restored their peers yet (no epoch, or ``restoring``): try again.
        """
        if self._ready is not None:
            await self._ready()
        keys = self.keys
        row = await self._claim(
            keys=[
                keys.binding(peer_id),
                keys.bindings,
                keys.bound(fingerprint),
                keys.epoch,
                keys.restoring,
            ],
            args=[
                peer_id,
                fingerprint,
                role,
                repr(self._clock()),
                round(self.client_ttl_s * 1000),
                self.max_per_key,
                keys.binding(""),
            ],
        )
        if row is None:
            raise RegistryUnavailable("Redis lost its data; live peers are being restored")
        return _binding(peer_id, row)

    async def get(self, peer_id: str) -> Binding | None:
        """See :meth:`~signaling.bindings.BindingStore.get` (an expired client binding
        is gone)."""
        row: Any = await self.redis.hmget(
            self.keys.binding(peer_id), ["fingerprint", "role", "created_at", "last_seen"]
        )
        return None if row[0] is None else _binding(peer_id, row)

    async def entries(self) -> list[Binding]:
        """See :meth:`~signaling.bindings.BindingStore.entries`; ids whose binding has
        expired are dropped from the index on the way."""
        members: Any = await self.redis.smembers(self.keys.bindings)
        ids: list[str] = sorted(members)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for peer_id in ids:
                pipe.hmget(
                    self.keys.binding(peer_id), "fingerprint", "role", "created_at", "last_seen"
                )
            rows = await pipe.execute()
        found = [_binding(i, row) for i, row in zip(ids, rows, strict=True) if row[0] is not None]
        gone = [i for i, row in zip(ids, rows, strict=True) if row[0] is None]
        if gone:
            await self.redis.srem(self.keys.bindings, *gone)
        return found

    async def release(self, peer_id: str) -> Binding | None:
        """See :meth:`~signaling.bindings.BindingStore.release`."""
        keys = self.keys
        row = await self._release(
            keys=[keys.binding(peer_id), keys.bindings], args=[peer_id, keys.bound("")]
        )
        return None if not row else _binding(peer_id, row)


def _binding(peer_id: str, row: Any) -> Binding:
    fingerprint, role, created_at, last_seen = row
    return Binding(
        peer_id=peer_id,
        fingerprint=str(fingerprint),
        role=str(role),
        created_at=float(created_at or 0),
        last_seen=float(last_seen or 0),
    )
