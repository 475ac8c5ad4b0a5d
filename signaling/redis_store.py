"""The Redis connection and key names of signaling on Redis (``--redis-url``).

Every key starts with one prefix (``redis_key_prefix``, ``rtc:`` by default); the
processes that share a Redis and a prefix act as one signaling server:

=============================  ======  ====================================================
key                            type    what
=============================  ======  ====================================================
``{p}proc:{process}``          string  a live process (JSON: host, pid, since); TTL =
                                       presence TTL, refreshed 3 times per TTL
``{p}peer:{peer_id}``          string  a live registration: ``SID PROCESS JSON`` (16 hex,
                                       16 hex, role/fingerprint/metadata); same TTL, set
                                       only if absent (or its process is gone)
``{p}peers``                   set     index of registered peer ids (members whose key
                                       has expired are dropped when listed)
``{p}inbox:{process}``         stream  relayed frames for the peers of one process, read
                                       with XREAD from the last id; TTL = 2 x presence
``{p}binding:{peer_id}``       hash    the key that owns a peer id (fingerprint, role,
                                       created_at, last_seen); a client's expires
``{p}bindings``                set     index of bound peer ids
``{p}bound:{fingerprint}``     zset    the peer ids one key holds, by last_seen
``{p}epoch``                   string  a random token, set by the first heartbeat on an
                                       empty Redis; registrations and binding claims are
                                       refused while it is missing
``{p}restoring``               string  set for one presence TTL when a process finds the
                                       epoch changed or gone (Redis lost its data): until
                                       it expires, only heartbeats register (restore)
=============================  ======  ====================================================

Redis restarted empty: the live processes must register their peers again before any new
socket may take their ids. A process that had seen an epoch and finds it gone or another
one sets ``{p}restoring``; a process that never saw one (a fresh start) only sets the
epoch. New registrations and binding claims get ``SERVER_ERROR`` (try again) meanwhile.

Only standalone Redis (or a Sentinel-managed primary) is supported: the scripts touch
keys they compute, which Redis Cluster forbids.

Source: redis-py's asyncio client (``redis.asyncio``); Redis commands SET NX PX, XADD,
XREAD, XTRIM MINID (Redis >= 6.2), EVALSHA.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

from protocol.signaling import PeerInfo

__all__ = [
    "COMMAND_TIMEOUT_S",
    "STORE_ERRORS",
    "RedisKeys",
    "connect",
    "shown_url",
]

COMMAND_TIMEOUT_S = 5.0
"""Longest wait for one Redis reply (or a free pooled connection), seconds."""

CONNECT_TIMEOUT_S = 2.0
"""Longest wait for a TCP connection to Redis, seconds."""

MAX_CONNECTIONS = 64
"""Most connections of one process's command pool (a request waits for a free one)."""

STORE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, asyncio.TimeoutError)
"""What a failing or unreachable Redis raises through redis-py."""


def connect(url: str, *, blocking_s: float = 0.0) -> aioredis.Redis:
    """A redis-py asyncio client for ``url`` (``redis://``, ``rediss://``, ``unix://``).

    Replies are ``str`` (``decode_responses``); a command fails after
    :data:`COMMAND_TIMEOUT_S` and is retried once at once on a broken connection (a
    pooled connection that a restarted Redis closed). ``blocking_s``: the longest
    blocking command this client sends (XREAD BLOCK), added to its read timeout.

    Raises:
        ValueError: the URL cannot be parsed. No connection is made here.
    """
    pool = BlockingConnectionPool.from_url(
        url,
        decode_responses=True,
        max_connections=MAX_CONNECTIONS,
        timeout=COMMAND_TIMEOUT_S,
        socket_connect_timeout=CONNECT_TIMEOUT_S,
        socket_timeout=COMMAND_TIMEOUT_S + blocking_s,
        retry=Retry(NoBackoff(), 1),
        client_name="rtc-signaling",
    )
    return aioredis.Redis(connection_pool=pool)


def shown_url(url: str) -> str:
    """``url`` as it may be logged: any user name and password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None and parts.username is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"***@{host}"))


@dataclass(frozen=True, slots=True)
class RedisKeys:
    """The key names under one prefix (see the module's table)."""

    prefix: str = "rtc:"

    def proc(self, process: str) -> str:
        """The presence key of a process."""
        return f"{self.prefix}proc:{process}"

    def peer(self, peer_id: str) -> str:
        """The registration key of a peer id."""
        return f"{self.prefix}peer:{peer_id}"

    @property
    def peers(self) -> str:
        """The set of registered peer ids."""
        return f"{self.prefix}peers"

    def inbox(self, process: str) -> str:
        """The stream of frames relayed to the peers of a process."""
        return f"{self.prefix}inbox:{process}"

    def binding(self, peer_id: str) -> str:
        """The binding of a peer id to a key."""
        return f"{self.prefix}binding:{peer_id}"

    @property
    def bindings(self) -> str:
        """The set of bound peer ids."""
        return f"{self.prefix}bindings"

    def bound(self, fingerprint: str) -> str:
        """The peer ids bound to one key, scored by last_seen."""
        return f"{self.prefix}bound:{fingerprint}"

    @property
    def epoch(self) -> str:
        """The token of this Redis's data (gone when Redis lost its data)."""
        return f"{self.prefix}epoch"

    @property
    def restoring(self) -> str:
        """Present while the live processes restore their peers after a data loss."""
        return f"{self.prefix}restoring"


def registration_info(peer_id: str, value: str) -> PeerInfo:
    """The public view of a registration value ``SID PROCESS JSON``
    (:mod:`signaling.redis_scripts`)."""
    data = json.loads(value[34:])
    return PeerInfo(
        peer_id=peer_id, role=data["role"], fingerprint=data["fp"], metadata=data["meta"]
    )
