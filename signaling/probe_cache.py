"""The answer of a probe reused for a short time, with one probe in flight.

``GET /ready`` needs no key and ``GET /metrics`` may be scraped often; each probe
(a database query, an S3 ``HeadBucket``, a Redis ``PING``, a file made in the storage
folder, the storage figures' table scans) costs the engines something. A
:class:`CachedProbe` runs its probe at most once per ``ttl_s`` seconds: callers within
that time get the last answer, and callers arriving while a probe runs await that same
probe instead of starting another (single flight). Failures are answers too (the probe
reports them in its value), so they are reused the same way and seen at most ``ttl_s``
seconds late.

Source: the "single flight" pattern (golang.org/x/sync/singleflight) with a time to
live, as HTTP caches keep a response for ``max-age`` (RFC 9111 section 4.2).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

__all__ = ["CachedProbe"]

T = TypeVar("T")


class CachedProbe(Generic[T]):
    """``await cached()``: the value of ``probe()``, run at most once per ``ttl_s``.

    Args:
        probe: a coroutine function taking no argument; it should report failures in
            its value (an exception reaches every caller awaiting that run and is not
            kept).
        ttl_s: how long an answer is reused, seconds (``0``: every call probes, but
            calls during a running probe still share it).
        clock: monotonic seconds (tests pass their own).

    Cancelling a caller does not cancel the probe others await (it is shielded).
    """

    def __init__(
        self,
        probe: Callable[[], Awaitable[T]],
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._probe = probe
        self.ttl_s = ttl_s
        self._clock = clock
        self._value: tuple[T] | None = None
        self._expires = 0.0
        self._pending: asyncio.Future[T] | None = None

    async def __call__(self) -> T:
        if self._value is not None and self._clock() < self._expires:
            return self._value[0]
        pending = self._pending
        if pending is None:
            pending = self._pending = asyncio.ensure_future(self._refresh())
            # a run whose callers all went away still has its outcome consumed
            pending.add_done_callback(lambda done: done.cancelled() or done.exception())
        return await asyncio.shield(pending)

    async def _refresh(self) -> T:
        try:
            value = await self._probe()
            self._value, self._expires = (value,), self._clock() + self.ttl_s
            return value
        finally:
            self._pending = None
