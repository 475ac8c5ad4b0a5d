"""A data channel to a worker without a protocol connection, for tests and fuzzing."""

from __future__ import annotations

from aiortc import RTCPeerConnection

from protocol import Message, RemoteProtocolError, decode, encode
from rtc_worker.errors import MalformedReply
from rtc_worker.rtc import ChannelClosed, FrameChannel

__all__ = ["RawWorkerConnection"]


class RawWorkerConnection:
    """A data channel to a worker without a Connection: frames go out as given and every
    frame received is returned decoded (transfer frames included). For tests and fuzzing.
    """

    def __init__(self, pc: RTCPeerConnection, channel: FrameChannel, worker_id: str) -> None:
        self.pc, self.channel, self.worker_id = pc, channel, worker_id

    def send(self, frame: str | bytes | Message) -> None:
        """Send a raw frame or a message.

        Raises:
            ChannelClosed: the data channel is not open.
        """
        raw = frame if isinstance(frame, str | bytes) else encode(frame)
        if not self.channel.send_frame(raw):
            raise ChannelClosed("data channel is not open")

    async def recv(self, timeout: float | None = None) -> Message:
        """The worker's next frame, decoded.

        Raises:
            ChannelClosed, TimeoutError, MalformedReply (a frame that does not decode).
        """
        frame = await self.channel.recv(timeout)
        try:
            return decode(frame)
        except RemoteProtocolError as exc:
            raise MalformedReply(exc.code, f"worker sent an invalid frame: {exc}") from None

    async def close(self) -> None:
        """Close the data channel and the peer connection."""
        await self.pc.close()
