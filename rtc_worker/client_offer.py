"""The client's offer: a peer connection and an open data channel to one worker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from aiortc import RTCPeerConnection, RTCSessionDescription
from loguru import logger

from protocol.signaling import ErrorFrame, Offer, RelayedAnswer
from rtc_worker.rtc import (
    NO_CHANNEL,
    FrameChannel,
    IcePolicy,
    describe_path,
    gather_offer,
    rtc_configuration,
)
from rtc_worker.signaling_client import SignalingClient

__all__ = ["open_channel"]


async def open_channel(
    signaling: SignalingClient,
    worker_id: str,
    ice_servers: list[str],
    policy: IcePolicy,
    *,
    timeout: float,
    trace: Callable[[str, str | bytes], None] | None,
) -> tuple[RTCPeerConnection, FrameChannel]:
    """Offer to ``worker_id`` through ``signaling``, wait for its answer and for the
    data channel ``jobs`` (ordered) to open.

    Args:
        ice_servers: our STUN/TURN URLs (signaling's TURN servers are used too, first).
        policy: ``all``, or ``relay`` (relay candidates only).
        timeout: longest wait for the answer and the open channel, seconds.
        trace: the channel's frame callback (``--trace``), or None.

    Raises:
        SignalingError: the server refused the offer (PEER_NOT_FOUND...).
        IceSetupError: relay-only without TURN server or relay candidate.
        TimeoutError: no answer or no open channel within ``timeout``.
    """
    pc = RTCPeerConnection(rtc_configuration(ice_servers, signaling.ice_servers, policy))
    try:
        channel = pc.createDataChannel("jobs", ordered=True)
        frames = FrameChannel(channel, trace=trace)
        opened = asyncio.Event()
        channel.on("open", opened.set)
        sdp = await gather_offer(pc, policy, timeout)
        await signaling.send(Offer(to=worker_id, sdp=sdp))
        try:
            async with asyncio.timeout(timeout):
                while True:
                    frame = await signaling.recv()
                    if isinstance(frame, ErrorFrame):
                        raise frame.to_exception()
                    if isinstance(frame, RelayedAnswer) and frame.from_ == worker_id:
                        break
                await pc.setRemoteDescription(RTCSessionDescription(frame.sdp, "answer"))
                await opened.wait()
        except TimeoutError:
            raise TimeoutError(NO_CHANNEL.format(worker_id, timeout)) from None
    except BaseException:
        await pc.close()
        raise
    logger.info("peer connection with {}: connected via {}", worker_id, describe_path(pc))
    return pc, frames
