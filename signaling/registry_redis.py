"""The registry on Redis: any number of signaling processes act as one server.

Each process has a random 16-hex-digit id. What it keeps in Redis (key names in
:mod:`signaling.redis_store`):

* **Presence.** ``proc:{process}`` and ``peer:{peer_id}`` of each of its peers live for
  ``presence_ttl_s`` and are refreshed every third of it (one script for all its peers).
  A process that dies stops refreshing, so its peers vanish from every list within the
  TTL; the other processes' peers are not touched.
* **Registration.** ``peer:{peer_id}`` is set by one Lua script only when absent (or
  when the process holding it is gone): two processes registering one id at once have
  one winner, the other gets ``PEER_ID_TAKEN``. Its value is ``SID PROCESS JSON``; the
  registration id ``SID`` makes an unregister or a delivery touch only that socket's
  registration.
* **Relay.** A frame for a peer on any process goes through one Lua script that looks
  the peer up and appends the frame to its process's inbox stream (``XADD``);
  :mod:`signaling.relay_redis` reads it there and this module delivers it, building the
  relayed frame (``from``, ``fingerprint``, fresh ``ice_servers``) as the memory
  registry does. A receiver that left meanwhile makes its process send
  ``PEER_NOT_FOUND`` back to the sender's socket.

When Redis cannot be reached, calls raise :class:`~signaling.registry.RegistryUnavailable`
(the session answers ``SERVER_ERROR``) and the heartbeat and the inbox reader retry with
backoff; once Redis is back, the heartbeat registers this process's peers again (and
their bindings, should Redis have lost its data), closing any socket whose id another
peer took meanwhile.

Source: DESIGN.md ("Scale-out"); PROTOCOL.md section 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Generic, TypeVar

import redis.asyncio as aioredis
from loguru import logger

from protocol.signaling import (
    PeerInfo,
    Role,
    SignalingError,
    SignalingErrorCode,
    dump_frame,
)
from signaling.bindings_redis import prune_bindings
from signaling.bounds import LogLimiter
from signaling.outbox import SEND_TIMEOUT_S, Outbox
from signaling.redis_scripts import HEARTBEAT, REGISTER, RELAY, UNREGISTER
from signaling.redis_store import STORE_ERRORS, RedisKeys, connect, registration_info
from signaling.registry import (
    ClientRelay,
    IceServersFor,
    PeerEntry,
    PeerRegistry,
    RegistryUnavailable,
    SendText,
    peer_id_taken,
    peer_not_found,
    relayed_frame,
)
from signaling.relay_redis import (
    BLOCK_MS,
    INBOX_MAXLEN,
    InboxEntry,
    InboxReader,
    SeqFilter,
    error_entry,
    inbox_frame,
)
from signaling.relay_redis import cancel as cancel_task

__all__ = ["BEAT_BATCH", "DELIVERY_TIMEOUT_S", "DROP_TIMEOUT_S", "RedisRegistry"]

ConnT = TypeVar("ConnT")

DELIVERY_TIMEOUT_S = SEND_TIMEOUT_S
"""Longest wait to hand one relayed frame to a receiving socket, seconds (its own writer
task waits, never the inbox reader: :mod:`signaling.outbox`)."""

DROP_TIMEOUT_S = 2.0
"""Longest wait to send the error frame and close a socket being dropped, seconds."""

BEAT_BATCH = 500
"""Most peers refreshed by one heartbeat script."""

Drop = Callable[[ConnT, SignalingError], Coroutine[Any, Any, None]]
"""Send an error frame on a connection and close it."""


class RedisRegistry(Generic[ConnT]):
    """:class:`~signaling.registry.SignalingRegistry` shared through Redis.

    Args:
        url: the Redis URL (``redis_url``); unused when ``client`` is given.
        send: sends a text frame on a connection (``False`` when it is gone).
        drop: sends an error frame on a connection and closes it.
        ice_servers: the ``ice_servers`` of an offer for a receiving peer id.
        client_binding_ttl_s: the bindings store's ``client_ttl_s``, for the bindings
            set again when Redis lost its data while this process's peers stayed
            connected; max_bindings_per_key: its ``max_per_key``, likewise.
        prefix: the key prefix. presence_ttl_s: the presence lifetime, seconds.
        client, reader: redis-py clients (tests pass fakeredis); the reader serves only
            the blocking inbox reads.
    """

    def __init__(
        self,
        url: str | None,
        *,
        send: SendText[ConnT],
        drop: Drop[ConnT],
        ice_servers: IceServersFor,
        client_binding_ttl_s: float = 0.0,
        max_bindings_per_key: int = 1000,
        prefix: str = "rtc:",
        presence_ttl_s: float = 5.0,
        client: aioredis.Redis | None = None,
        reader: aioredis.Redis | None = None,
    ) -> None:
        if client is None or reader is None:
            if url is None:
                raise ValueError("a Redis URL or both clients are needed")
            client = client or connect(url)
            reader = reader or connect(url, blocking_s=BLOCK_MS / 1000)
        self.local: PeerRegistry[ConnT] = PeerRegistry()
        self.redis, self.reader = client, reader
        self.keys = RedisKeys(prefix)
        self.process = secrets.token_hex(8)
        self.ttl_ms = round(presence_ttl_s * 1000)
        self.interval_s = presence_ttl_s / 3
        self._send, self._drop, self._ice_servers = send, drop, ice_servers
        self.client_binding_ttl_ms = round(client_binding_ttl_s * 1000)
        self.max_bindings_per_key = max_bindings_per_key
        self._prune_cursor = 0
        self._values: dict[str, str] = {}  # peer id -> its registration value (local peers)
        self._outboxes: dict[str, Outbox[ConnT]] = {}  # peer id -> its socket's outbox
        self._seq = itertools.count(1)
        self._epoch = ""  # the epoch token seen last ("" before the first heartbeat)
        self._seen = SeqFilter()
        self._warnings = LogLimiter()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing: set[asyncio.Task[None]] = set()
        self._register = client.register_script(REGISTER)
        self._unregister = client.register_script(UNREGISTER)
        self._heartbeat = client.register_script(HEARTBEAT)
        self._relay = client.register_script(RELAY)
        self.inbox = InboxReader(
            reader, client, self.keys.inbox(self.process), self._deliver, self._failed
        )
        self._proc_value = json.dumps(
            {"host": socket.gethostname(), "pid": os.getpid(), "since": round(time.time())}
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Announce this process (or log why not: it retries), then heartbeat and read
        the inbox in background tasks."""
        try:
            await self.beat()
        except STORE_ERRORS as exc:
            self._failed(exc)
        self._tasks = [
            asyncio.create_task(self._beat_forever(), name="redis-heartbeat"),
            asyncio.create_task(self.inbox.run(), name="redis-inbox"),
        ]

    async def close(self) -> None:
        """Stop the tasks, remove this process's presence, peers and inbox (best effort:
        what remains expires), and close the clients."""
        for task in self._tasks:
            await cancel_task(task)
        for outbox in list(self._outboxes.values()):
            await outbox.close()
        self._outboxes.clear()
        keys = self.keys
        with contextlib.suppress(*STORE_ERRORS):
            async with asyncio.timeout(2):
                for peer_id, value in list(self._values.items()):
                    await self._unregister(
                        keys=[keys.peer(peer_id), keys.peers], args=[value[:16], peer_id]
                    )
                await self.redis.delete(keys.proc(self.process), keys.inbox(self.process))
        self._values.clear()
        for client in (self.reader, self.redis):
            with contextlib.suppress(*STORE_ERRORS):
                await client.aclose()

    # ------------------------------------------------------------------ registry

    async def add(
        self,
        peer_id: str,
        role: Role,
        metadata: dict[str, Any],
        conn: ConnT,
        fingerprint: str | None = None,
    ) -> PeerEntry[ConnT]:
        """See :meth:`~signaling.registry.SignalingRegistry.add` (one atomic script)."""
        if peer_id in self.local:
            raise peer_id_taken(peer_id)
        await self.ensure_epoch()
        info = {"role": role, "fp": fingerprint, "meta": metadata}
        value = f"{secrets.token_hex(8)} {self.process} {json.dumps(info, separators=(',', ':'))}"
        keys = self.keys
        taken = await self._call(
            self._register(
                keys=[
                    keys.peer(peer_id),
                    keys.peers,
                    keys.proc(self.process),
                    keys.epoch,
                    keys.restoring,
                ],
                args=[value, self.ttl_ms, peer_id, keys.proc(""), self._proc_value],
            )
        )
        if taken == 2:
            raise RegistryUnavailable("Redis lost its data; live peers are being restored")
        if taken:
            raise peer_id_taken(peer_id)
        if peer_id in self.local:  # a socket of this process won meanwhile
            await self._forget(peer_id, value)
            raise peer_id_taken(peer_id)
        entry = self.local.add(peer_id, role, metadata, conn, fingerprint)
        self._values[peer_id] = value
        self._outboxes[peer_id] = Outbox(
            conn,
            self._send,
            lambda: self._stalled(peer_id, conn),
            send_timeout_s=DELIVERY_TIMEOUT_S,
        )
        return entry

    async def remove(self, peer_id: str, conn: ConnT) -> bool:
        """See :meth:`~signaling.registry.SignalingRegistry.remove`."""
        if not self.local.remove(peer_id, conn):
            return False
        outbox = self._outboxes.pop(peer_id, None)
        if outbox is not None:
            await outbox.close()
        value = self._values.pop(peer_id, None)
        if value is not None:
            await self._forget(peer_id, value)
        return True

    async def find(self, peer_id: str) -> PeerInfo | None:
        """See :meth:`~signaling.registry.SignalingRegistry.find`."""
        value = await self._call(self.redis.get(self.keys.peer(peer_id)))
        return None if value is None else registration_info(peer_id, value)

    async def infos(self) -> tuple[PeerInfo, ...]:
        """See :meth:`~signaling.registry.SignalingRegistry.infos`; ids whose
        registration expired are dropped from the index on the way."""
        ids = sorted(await self._call(self.redis.smembers(self.keys.peers)))
        if not ids:
            return ()
        values = await self._call(self.redis.mget([self.keys.peer(i) for i in ids]))
        gone = [i for i, value in zip(ids, values, strict=True) if value is None]
        if gone:
            await self._call(self.redis.srem(self.keys.peers, *gone))
        return tuple(
            registration_info(i, value)
            for i, value in zip(ids, values, strict=True)
            if value is not None
        )

    async def relay(self, sender: str, fingerprint: str | None, frame: ClientRelay) -> None:
        """See :meth:`~signaling.registry.SignalingRegistry.relay`: returns once the frame
        is in the receiver's inbox (one script: look up, append)."""
        value = self._values.get(sender)
        if value is None:  # the sender's socket is closing
            raise peer_not_found(frame.to, frame.type, gone=True)
        fields = {
            "k": "f",
            "to": frame.to,
            "from": sender,
            "fp": fingerprint or "",
            "frame": frame.model_dump_json(),
            "rp": self.process,
            "rs": value[:16],
            "seq": str(next(self._seq)),
        }
        proc = await self._call(
            self._relay(
                keys=[self.keys.peer(frame.to)],
                args=[
                    self.keys.prefix,
                    INBOX_MAXLEN,
                    2 * self.ttl_ms,
                    *itertools.chain.from_iterable(fields.items()),
                ],
            )
        )
        if not proc:
            raise peer_not_found(frame.to, frame.type)

    async def ensure_epoch(self) -> None:
        """Heartbeat now if this process never saw the epoch (its first heartbeat failed),
        so that an empty Redis gets one at once. Raises RegistryUnavailable."""
        if not self._epoch:
            await self._call(self.beat())

    async def ping(self) -> None:
        """See :meth:`~signaling.registry.SignalingRegistry.ping` (Redis ``PING``)."""
        await self._call(self.redis.ping())

    # ------------------------------------------------------------------ heartbeat

    async def beat(self) -> None:
        """Refresh this process's presence and its peers' registrations; register again
        (with their bindings) those Redis lost; close the sockets whose id was taken or
        bound to another key meanwhile. One script per :data:`BEAT_BATCH` peers.

        Raises:
            redis.exceptions.RedisError, OSError, TimeoutError: Redis failed.
        """
        snapshot = dict(self._values)
        ids = list(snapshot)
        for start in range(0, max(len(ids), 1), BEAT_BATCH):  # one script even for none
            await self._beat_batch(ids[start : start + BEAT_BATCH], snapshot)

    async def _beat_batch(self, ids: list[str], snapshot: dict[str, str]) -> None:
        keys = self.keys
        per_peer = []
        for peer_id in ids:
            entry = self.local.get(peer_id)
            fingerprint = (entry.fingerprint or "") if entry else ""
            per_peer += [peer_id, snapshot[peer_id], fingerprint, entry.role if entry else ""]
        taken, restored, unbound, self._epoch = await self._heartbeat(
            keys=[
                *(keys.peer(i) for i in ids),
                keys.peers,
                keys.proc(self.process),
                keys.inbox(self.process),
                keys.bindings,
                keys.epoch,
                keys.restoring,
            ],
            args=[
                self.ttl_ms,
                2 * self.ttl_ms,
                self._proc_value,
                repr(time.time()),
                self.client_binding_ttl_ms,
                keys.prefix,
                self._epoch,
                secrets.token_hex(8),
                self.max_bindings_per_key,
                *per_peer,
            ],
        )
        # A peer that left (or registered anew) while the script was on its way is not
        # this beat's to restore or to close.
        changed = {i for i in ids if self._values.get(i) != snapshot[i]}
        for peer_id in set(restored) & changed:
            await self._forget(peer_id, snapshot[peer_id])
        if set(restored) - changed:
            logger.info("registered {} peer(s) again in Redis", len(set(restored) - changed))
        for peer_id in set(taken) - changed:
            logger.warning("{!r} was registered elsewhere while Redis was unreachable", peer_id)
            self._evict(peer_id, peer_id_taken(peer_id))
        for peer_id in set(unbound) - changed:
            logger.warning("{!r} was bound to another key while Redis was unreachable", peer_id)
            self._evict(
                peer_id,
                SignalingError(
                    SignalingErrorCode.PEER_ID_BOUND,
                    f"peer id {peer_id!r} is bound to another key",
                    "register",
                ),
            )

    async def _beat_forever(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                await self.beat()
                self._prune_cursor = await prune_bindings(self.redis, self.keys, self._prune_cursor)
            except STORE_ERRORS as exc:
                self._failed(exc)
            except Exception:  # a bug: the next beat may still keep the peers present
                logger.exception("the Redis heartbeat failed")

    def _evict(self, peer_id: str, error: SignalingError, *, forget: bool = False) -> None:
        """Forget a local peer (and, with ``forget``, its registration in Redis) and
        close its socket in the background (a close waits for the peer's reply; the
        heartbeat and the inbox reader must not)."""
        entry = self.local.get(peer_id)
        value = self._values.pop(peer_id, None)
        outbox = self._outboxes.pop(peer_id, None)
        if entry is not None and entry.conn is not None:
            self.local.remove(peer_id, entry.conn)
            task: asyncio.Task[None] = asyncio.create_task(
                self._close_socket(entry.conn, error, outbox, peer_id, value if forget else None)
            )
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close_socket(
        self,
        conn: ConnT,
        error: SignalingError,
        outbox: Outbox[ConnT] | None,
        peer_id: str,
        value: str | None,
    ) -> None:
        """Stop the socket's writer, send ``error`` and close it (at most
        :data:`DROP_TIMEOUT_S`), and remove the registration ``value`` if given."""
        if outbox is not None:
            await outbox.close()
        if value is not None:
            await self._forget(peer_id, value)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DROP_TIMEOUT_S):
                await self._drop(conn, error)

    def _stalled(self, peer_id: str, conn: ConnT) -> None:
        """A socket's outbox overflowed or a send missed its deadline: close it."""
        entry = self.local.get(peer_id)
        if entry is None or entry.conn is not conn:
            return
        logger.warning("{!r} does not read its relayed frames; closing its socket", peer_id)
        text = f"{peer_id!r} did not read its relayed frames in time; its socket is closed"
        self._evict(peer_id, SignalingError(SignalingErrorCode.SERVER_ERROR, text), forget=True)

    # ------------------------------------------------------------------ delivery

    async def _deliver(self, entry: InboxEntry) -> None:
        """Queue one inbox entry on its local socket's outbox, never waiting for the
        socket (see :mod:`signaling.relay_redis` and :mod:`signaling.outbox`).

        A frame for a socket that is gone, or whose outbox is full (that socket is then
        closed), is answered to its sender with ``PEER_NOT_FOUND``; a frame already
        handed to the outbox is not (see :mod:`signaling.outbox`)."""
        to, sid = entry.get("to", ""), entry.get("sid", "")
        target = self.local.get(to)
        mine = target is not None and self._values.get(to, "")[:16] == sid
        outbox = self._outboxes.get(to) if mine else None
        if entry.get("k") == "e":
            if outbox is not None:
                error = SignalingError(entry["code"], entry["msg"], entry.get("ref") or None)
                outbox.put(dump_frame(error.to_frame()))
            return
        if not self._seen.fresh(entry["rs"], int(entry["seq"])):
            return
        frame = inbox_frame(entry)
        if outbox is not None:
            relayed = relayed_frame(frame, entry["from"], entry["fp"] or None, self._ice_servers)
            if outbox.put(dump_frame(relayed), lambda: self._nack(entry, frame)):
                return
        await self._nack(entry, frame)

    async def _nack(self, entry: InboxEntry, frame: ClientRelay) -> None:
        """Tell the sender's socket that the receiver has gone (best effort)."""
        fields = error_entry(entry, peer_not_found(frame.to, frame.type, gone=True))
        inbox = self.keys.inbox(entry["rp"])
        try:
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.xadd(inbox, fields, maxlen=INBOX_MAXLEN, approximate=True)  # type: ignore[arg-type]
                pipe.pexpire(inbox, 2 * self.ttl_ms)
                await pipe.execute()
        except STORE_ERRORS as exc:
            self._failed(exc)

    # ------------------------------------------------------------------ internals

    async def _forget(self, peer_id: str, value: str) -> None:
        """Remove the registration ``value`` of ``peer_id`` (best effort: it expires)."""
        try:
            await self._unregister(
                keys=[self.keys.peer(peer_id), self.keys.peers], args=[value[:16], peer_id]
            )
        except STORE_ERRORS as exc:
            self._failed(exc)

    async def _call(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except STORE_ERRORS as exc:
            self._failed(exc)
            raise RegistryUnavailable(f"Redis: {type(exc).__name__}: {exc}") from None

    def _failed(self, exc: BaseException) -> None:
        held = self._warnings.allow("redis")
        if held is not None:
            more = f" ({held} more held back)" if held else ""
            logger.warning("Redis unavailable: {}: {}; retrying{}", type(exc).__name__, exc, more)
