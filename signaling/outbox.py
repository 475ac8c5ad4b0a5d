"""A bounded outgoing queue and writer task per receiving socket.

The inbox reader of :mod:`signaling.registry_redis` serves every socket of a process,
so it must never wait for one of them: it only :meth:`Outbox.put` s a frame's text,
and each socket's own writer task sends it. A socket whose queue is full (more than
``max_frames`` frames or ``max_bytes`` bytes waiting) or whose one send does not finish
within ``send_timeout_s`` (its peer does not read, so the WebSocket waits for the
buffer to drain) is reported to ``on_stall`` once, and its writer stops: the registry
closes that socket. The other sockets' frames are not delayed by it.

What a sender learns: a frame refused because the queue is full is answered with
``PEER_NOT_FOUND`` (it was not delivered); a frame whose send failed because the socket
was already gone calls its ``on_lost`` (the registry answers ``PEER_NOT_FOUND`` too);
a frame whose send missed its deadline, and the frames still queued behind it when the
receiver is closed, are answered with nothing, since it may already sit in the
socket's buffer and reach the peer.

Source: DESIGN.md ("Scale-out"); the review's head-of-line blocking reproduction.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from loguru import logger

__all__ = ["OUTBOX_BYTES", "OUTBOX_FRAMES", "SEND_TIMEOUT_S", "Outbox"]

ConnT = TypeVar("ConnT")

OUTBOX_FRAMES = 256
"""Most frames waiting for one socket."""

OUTBOX_BYTES = 1_000_000
"""Most bytes (UTF-8 length of the waiting frames' text) waiting for one socket: 1 MB."""

SEND_TIMEOUT_S = 5.0
"""Longest wait for one frame to be handed to a socket, seconds."""

Lost = Callable[[], Awaitable[None]]
"""Called when the socket was gone before its frame could be sent."""


class Outbox(Generic[ConnT]):
    """The frames waiting for one socket, and the task that sends them in order.

    Args:
        conn: the socket. send: sends a text frame (``False`` when the socket is gone).
        on_stall: called once when the queue overflows or a send misses its deadline.
        max_frames, max_bytes, send_timeout_s: the caps above (frames, bytes, seconds).
    """

    def __init__(
        self,
        conn: ConnT,
        send: Callable[[ConnT, str], Awaitable[bool]],
        on_stall: Callable[[], None],
        *,
        max_frames: int = OUTBOX_FRAMES,
        max_bytes: int = OUTBOX_BYTES,
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        self.conn = conn
        self._send, self._on_stall = send, on_stall
        self.max_frames, self.max_bytes, self.send_timeout_s = max_frames, max_bytes, send_timeout_s
        self._queue: deque[tuple[str, Lost | None]] = deque()
        self._bytes = 0
        self._ready = asyncio.Event()
        self.stalled = False
        self._task = asyncio.create_task(self._run(), name="outbox")

    @property
    def waiting(self) -> int:
        """Frames queued and not yet handed to the socket."""
        return len(self._queue)

    def put(self, text: str, on_lost: Lost | None = None) -> bool:
        """Queue ``text`` for the socket without waiting; ``False`` when the outbox has
        stalled or this frame would exceed its caps (then it stalls: ``on_stall``)."""
        if self.stalled:
            return False
        size = len(text.encode())
        if len(self._queue) >= self.max_frames or self._bytes + size > self.max_bytes:
            self._stall()
            return False
        self._queue.append((text, on_lost))
        self._bytes += size
        self._ready.set()
        return True

    async def close(self) -> None:
        """Stop the writer; what is still queued is dropped."""
        self.stalled = True
        self._queue.clear()
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task

    def _stall(self) -> None:
        if not self.stalled:
            self.stalled = True
            self._queue.clear()
            self._bytes = 0
            self._on_stall()

    async def _run(self) -> None:
        while not self.stalled:
            if not self._queue:
                self._ready.clear()
                await self._ready.wait()
                continue
            text, on_lost = self._queue.popleft()
            self._bytes -= len(text.encode())
            try:
                async with asyncio.timeout(self.send_timeout_s):
                    sent = await self._send(self.conn, text)
            except TimeoutError:
                self._stall()
                return
            except Exception:  # a bug: keep sending the next frames
                logger.exception("sending a queued frame failed")
                continue
            if not sent and on_lost is not None:
                await on_lost()
