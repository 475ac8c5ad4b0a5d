"""Relayed frames through Redis: one stream per process inbox, read in order.

A sender's process appends each relayed frame to the inbox stream of the receiver's
process (``XADD``, inside the relay script of :mod:`signaling.registry_redis`); each
process reads its own inbox with ``XREAD BLOCK`` from the id it read last and delivers
the entries in stream order. Because one socket's frames are handled one after the other
and each ``XADD`` is awaited before the next, the frames of a sender to a receiver reach
the stream, and so the receiver, in the order they were sent. A stream keeps what pub/sub
would drop: an entry appended while the reader is between two reads, or reconnecting,
is read by the next ``XREAD``.

An entry is a flat string map (:class:`InboxEntry`): a frame (``k=f``: ``to``, ``sid``
the receiving registration, ``from``, ``fp`` the sender's proven key or empty, ``frame``
the JSON of the client's frame, ``rp``/``rs`` the sender's process and registration,
``seq`` the sender process's sequence number) or an error for a sender (``k=e``: ``to``,
``sid``, ``code``, ``msg``, ``ref``). A retried ``XADD`` can add an entry twice; the
reader drops any ``seq`` not above the last one seen from that sender
(:class:`SeqFilter`).

Source: Redis streams (XADD, XREAD, XTRIM MINID); issue research: pub/sub drops frames.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any

import redis.asyncio as aioredis
from loguru import logger
from tenacity import AsyncRetrying, retry_if_exception_type, wait_exponential_jitter

from protocol.signaling import Answer, Candidate, Offer, SignalingError
from signaling.redis_store import STORE_ERRORS

__all__ = [
    "INBOX_MAXLEN",
    "InboxEntry",
    "InboxReader",
    "SeqFilter",
    "error_entry",
    "inbox_frame",
    "stream_id",
]

InboxEntry = dict[str, str]
"""One inbox entry: field name to value (see the module)."""

INBOX_MAXLEN = 10_000
"""Approximate cap on an inbox stream's entries (``XADD MAXLEN ~``)."""

BLOCK_MS = 1000
"""Longest wait of one ``XREAD BLOCK``, milliseconds."""

BATCH = 100
"""Most entries read at once."""

TRIM_INTERVAL_S = 1.0
"""Delivered entries are trimmed from the inbox at most this often, seconds."""


_FRAMES: dict[str, type[Offer] | type[Answer] | type[Candidate]] = {
    "offer": Offer,
    "answer": Answer,
    "candidate": Candidate,
}


def inbox_frame(entry: InboxEntry) -> Offer | Answer | Candidate:
    """The client's frame carried by a frame entry (``k=f``).

    Raises:
        KeyError, pydantic.ValidationError: not a frame the relay script appended.
    """
    kind = _FRAMES[json.loads(entry["frame"])["type"]]
    return kind.model_validate_json(entry["frame"])


def error_entry(entry: InboxEntry, error: SignalingError) -> InboxEntry:
    """The error entry (``k=e``) for the sender of the frame entry ``entry``."""
    return {
        "k": "e",
        "to": entry["from"],
        "sid": entry["rs"],
        "code": str(error.code),
        "msg": error.message,
        "ref": str(error.ref_type or ""),
    }


def stream_id(text: str) -> tuple[int, int]:
    """A stream entry id ``"MS-SEQ"`` as a pair of integers, for comparing."""
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


class SeqFilter:
    """The last sequence number seen from each sender registration; at most ``size``
    senders are remembered (the oldest is forgotten first)."""

    def __init__(self, size: int = 65_536) -> None:
        self.size = size
        self._last: OrderedDict[str, int] = OrderedDict()

    def fresh(self, sender: str, seq: int) -> bool:
        """True the first time ``seq`` (above every earlier one) is seen from ``sender``."""
        last = self._last.get(sender)
        if last is not None and seq <= last:
            return False
        self._last[sender] = seq
        self._last.move_to_end(sender)
        if len(self._last) > self.size:
            self._last.popitem(last=False)
        return True


class InboxReader:
    """Reads one process's inbox stream and hands each entry to ``deliver``, in order.

    Args:
        reader: a client used only by this reader (its read timeout exceeds the block).
        redis: the command client (trims delivered entries).
        inbox: the stream key.
        deliver: called once per entry, in stream order, awaited before the next; it
            must not wait for a socket (it queues: :mod:`signaling.outbox`).
        on_error: called with each Redis failure (for a rate-limited log).

    A Redis failure never ends :meth:`run`: it waits with exponential backoff and
    jitter (tenacity, 50 ms to 2 s) and reads again from the last delivered id; when the
    stream is gone (Redis restarted without its data), it reads the new one from its
    start.
    """

    def __init__(
        self,
        reader: aioredis.Redis,
        redis: aioredis.Redis,
        inbox: str,
        deliver: Callable[[InboxEntry], Awaitable[None]],
        on_error: Callable[[BaseException], None],
    ) -> None:
        self.reader = reader
        self.redis = redis
        self.inbox = inbox
        self.deliver = deliver
        self.on_error = on_error
        self.last = "0-0"
        self._trimmed_at = 0.0
        self._broken = False

    async def run(self) -> None:
        """Read and deliver until cancelled; a failure is logged and retried, never
        the end of the inbox."""
        while True:
            retrying = AsyncRetrying(
                retry=retry_if_exception_type(STORE_ERRORS),
                wait=wait_exponential_jitter(multiplier=0.05, max=2.0),
                before_sleep=lambda state: self._failed(state.outcome),
                reraise=True,
            )
            try:
                async for attempt in retrying:
                    with attempt:
                        await self.read_once()
            except Exception:  # a bug: keep the inbox alive, slowly
                logger.exception("the inbox reader failed; reading again in 1 s")
                self._broken = True
                await asyncio.sleep(1.0)

    def _failed(self, outcome: object) -> None:
        self._broken = True
        exc = getattr(outcome, "exception", lambda: None)()
        if isinstance(exc, BaseException):
            self.on_error(exc)

    async def read_once(self) -> int:
        """One ``XREAD`` (blocking up to :data:`BLOCK_MS`) and the delivery of what it
        returned; returns how many entries were delivered.

        Raises:
            redis.exceptions.RedisError, OSError, TimeoutError: Redis failed.
        """
        if self._broken:
            await self._resync()
        reply: Any = await self.reader.xread({self.inbox: self.last}, count=BATCH, block=BLOCK_MS)
        delivered = 0
        for _stream, entries in reply or ():
            for entry_id, fields in entries:
                self.last = entry_id
                delivered += 1
                try:
                    await self.deliver(fields)
                except Exception:  # a bug in one delivery must not stop the inbox
                    logger.exception("delivery of inbox entry {} failed", entry_id)
        now = time.monotonic()
        if delivered and now - self._trimmed_at >= TRIM_INTERVAL_S:
            self._trimmed_at = now
            await self.redis.xtrim(self.inbox, minid=self.last, approximate=False)
        return delivered

    async def _resync(self) -> None:
        """After a failure: when the stream no longer holds the last id read (Redis
        restarted without its data), start over from the new stream's beginning."""
        top: Any = await self.redis.xrevrange(self.inbox, count=1)
        if not top or stream_id(top[0][0]) < stream_id(self.last):
            if self.last != "0-0":
                logger.warning("the inbox stream was lost (Redis restarted?); reading it anew")
            self.last = "0-0"
        self._broken = False


async def cancel(task: asyncio.Task[None] | None, timeout_s: float = 2.0) -> None:
    """Cancel ``task`` and wait for it to end, at most ``timeout_s`` seconds (a client
    stuck in a blocking read is closed after this anyway)."""
    if task is None or task.done():
        return
    task.cancel()
    await asyncio.wait([task], timeout=timeout_s)
