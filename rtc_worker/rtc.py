"""The WebRTC side of a peer: its configuration, and the data channel's frame adapter.

aiortc runs an ``async`` event handler as a separate task, so frames could be
handled out of order. :class:`FrameChannel` therefore registers a plain function
for ``message`` that puts each frame into one bounded ``asyncio.Queue``; one task
consumes it with :meth:`FrameChannel.recv`, in arrival order. Sending is paced on the
channel's ``bufferedAmount`` (W3C names, as aiortc uses them) by :meth:`FrameChannel.drained`.
"""

from __future__ import annotations

import asyncio
import enum
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from aiortc import RTCConfiguration, RTCIceServer
from loguru import logger

from protocol import ErrorCode, ProtocolErrorFrame, encode

if TYPE_CHECKING:
    from aiortc import RTCDataChannel

__all__ = [
    "HIGH_WATER_BYTES",
    "LOW_WATER_BYTES",
    "ChannelClosed",
    "FrameChannel",
    "rtc_configuration",
]

#: Stop queueing frames while this many bytes wait in the channel's send buffer.
HIGH_WATER_BYTES = 1024 * 1024
#: ``bufferedAmountLowThreshold``: sending resumes when the buffer drains below it.
LOW_WATER_BYTES = 256 * 1024


def rtc_configuration(ice_servers: list[str]) -> RTCConfiguration:
    """An RTCConfiguration with exactly these ICE server URLs (none: host candidates only).

    With an empty list aiortc gathers host candidates only and never contacts a
    public STUN server, which is what loopback, LAN and offline runs need.
    """
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in ice_servers])


class _Sentinel(enum.Enum):
    CLOSED = enum.auto()


#: Queued after the last frame when the channel closes.
_CLOSED: Final = _Sentinel.CLOSED


class ChannelClosed(ConnectionError):
    """The data channel closed (or overflowed) while a frame was awaited."""


class FrameChannel:
    """Ordered inbox and typed send for one data channel.

    Args:
        channel: an aiortc data channel (open, or about to open).
        max_queued_frames / max_queued_bytes: bounds of the inbox (frames, and bytes
            counted as characters or bytes); a peer that floods past either gets
            ``PROTOCOL_ERROR::OVERLOADED`` and is disconnected (the queue never grows
            without limit).
        trace: optional callback ``(direction, frame)`` for every frame, direction
            ``"send"`` or ``"recv"`` (used by the CLI's ``--trace``).
    """

    def __init__(
        self,
        channel: RTCDataChannel,
        *,
        max_queued_frames: int = 4096,
        max_queued_bytes: int = 64 * 1024 * 1024,
        trace: Callable[[str, str | bytes], None] | None = None,
    ) -> None:
        self.channel = channel
        self._inbox: asyncio.Queue[str | bytes | _Sentinel] = asyncio.Queue(max_queued_frames + 1)
        self._max = max_queued_frames
        self._max_bytes = max_queued_bytes
        self._queued_bytes = 0
        self._trace = trace
        self.closed = asyncio.Event()
        self.overflowed = False
        channel.on("message", self._on_message)
        channel.on("close", self._on_close)
        if channel.readyState == "closed":
            self._on_close()

    def _on_message(self, frame: str | bytes) -> None:
        if self.closed.is_set():
            return
        if self._inbox.qsize() >= self._max or self._queued_bytes > self._max_bytes:
            logger.warning("data channel {}: inbox full, closing", self.channel.label)
            self.overflowed = True
            self.send_frame(
                encode(ProtocolErrorFrame(ErrorCode.OVERLOADED, "too many frames queued; closing"))
            )
            self._on_close()
            self.channel.close()
            return
        self._queued_bytes += len(frame)
        self._inbox.put_nowait(frame)

    def _on_close(self) -> None:
        if not self.closed.is_set():
            self.closed.set()
            self._inbox.put_nowait(_CLOSED)

    async def recv(self, timeout: float | None = None) -> str | bytes:
        """The next frame, in arrival order.

        Args:
            timeout: seconds to wait, or None to wait as long as the channel is open.

        Raises:
            ChannelClosed: the channel closed before a frame arrived.
            TimeoutError: no frame within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            frame = await self._inbox.get()
        if frame is _CLOSED:
            self._inbox.put_nowait(_CLOSED)  # every later recv() sees the close too
            raise ChannelClosed(f"data channel {self.channel.label!r} closed")
        self._queued_bytes -= len(frame)
        if self._trace is not None and isinstance(frame, str):
            self._trace("recv", frame)
        return frame

    def send_frame(self, frame: str | bytes) -> bool:
        """Send one raw frame; False (and nothing sent) when the channel is not open."""
        if self.channel.readyState != "open":
            return False
        if self._trace is not None and isinstance(frame, str):
            self._trace("send", frame)  # binary chunks are not traced: far too many
        self.channel.send(frame)
        return True

    async def drained(
        self, high_water: int = HIGH_WATER_BYTES, low_water: int = LOW_WATER_BYTES
    ) -> bool:
        """Wait while more than ``high_water`` bytes wait to be sent, until the buffer
        falls below ``low_water`` (the ``bufferedamountlow`` event, no polling).

        Returns:
            False when the channel closed meanwhile (stop sending), else True.
        """
        channel = self.channel
        if channel.bufferedAmount <= high_water:
            return not self.closed.is_set()
        channel.bufferedAmountLowThreshold = low_water
        low = asyncio.Event()
        channel.on("bufferedamountlow", low.set)
        try:
            while channel.bufferedAmount > high_water and not self.closed.is_set():
                low.clear()
                waiters = {
                    asyncio.ensure_future(low.wait()),
                    asyncio.ensure_future(self.closed.wait()),
                }
                _, pending = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
                for waiter in pending:
                    waiter.cancel()
        finally:
            channel.remove_listener("bufferedamountlow", low.set)
        return not self.closed.is_set()

    @property
    def is_open(self) -> bool:
        """True while the channel can send."""
        return self.channel.readyState == "open" and not self.closed.is_set()
