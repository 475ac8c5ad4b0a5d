"""The channel handshake's I/O: what each side puts into its :class:`AuthConfig`, and a
client's handshake over a raw channel.

The decisions are :mod:`protocol.handshake`'s; this module reads the DTLS fingerprints
from the peer connection's SDP (each side's own view: that is what makes a certificate
swapped by signaling visible) and moves frames.

Source: PROTOCOL.md section 2.5; RFC 8122 (the SDP ``fingerprint`` attribute).
"""

from __future__ import annotations

import asyncio

from aiortc import RTCPeerConnection

from protocol import Message, RemoteProtocolError, decode, encode
from protocol.handshake import AuthConfig, Authenticated, AuthFailed, Handshake, Signer
from protocol.identity import sdp_dtls_fingerprint
from rtc_worker.errors import HandshakeError, worker_protocol_error
from rtc_worker.rtc import ChannelClosed, FrameChannel

__all__ = ["authenticate_channel", "channel_auth_config", "handshake_error"]


def channel_auth_config(
    pc: RTCPeerConnection,
    identity: Signer | None,
    *,
    offerer: bool,
    pinned: str | None = None,
    allow_anonymous: bool = False,
    authorized: frozenset[str] | None = None,
) -> AuthConfig:
    """The handshake configuration of one side of ``pc`` (after offer and answer).

    Args:
        pc: the peer connection, with both descriptions set.
        identity: our key (None: an anonymous client).
        offerer: True for the client (its local description is the offer).
        pinned / allow_anonymous / authorized: see :class:`AuthConfig`.

    Raises:
        ValueError: a description is missing or declares no single sha-256 fingerprint.
    """
    local, remote = pc.localDescription, pc.remoteDescription
    if local is None or remote is None:
        raise ValueError("the offer and the answer must both be set")
    offer, answer = (local, remote) if offerer else (remote, local)
    return AuthConfig(
        identity,
        offer_dtls=sdp_dtls_fingerprint(offer.sdp),
        answer_dtls=sdp_dtls_fingerprint(answer.sdp),
        allow_anonymous=allow_anonymous,
        authorized=authorized,
        pinned=pinned,
    )


def handshake_error(failed: AuthFailed) -> HandshakeError:
    """The client exception of a failed handshake (a :class:`HandshakeError` subclass
    per code; the base class for a code of a worker without the handshake)."""
    error = worker_protocol_error(failed.code, failed.detail)
    if isinstance(error, HandshakeError):
        return error
    return HandshakeError(failed.code, f"the worker refused the handshake: {failed.detail}")


async def authenticate_channel(
    channel: FrameChannel, config: AuthConfig, timeout: float
) -> Authenticated:
    """Run the client's handshake on a channel no Connection drives (raw connections).

    Returns:
        The worker's identity (fingerprint and key).

    Raises:
        HandshakeError: a subclass per failure (WorkerKeyChanged, AuthFailed...).
        ChannelClosed: the channel closed. TimeoutError: no answer within ``timeout``.
    """
    handshake = Handshake(worker=False, config=config)
    outputs: list[object] = handshake.start()
    async with asyncio.timeout(timeout):
        while True:
            for output in outputs:
                if isinstance(output, AuthFailed):
                    raise handshake_error(output)
                if isinstance(output, Authenticated):
                    return output
                if isinstance(output, Message) and not channel.send_frame(encode(output)):
                    raise ChannelClosed("data channel is not open")
            try:
                outputs = handshake.receive(decode(await channel.recv()))
            except RemoteProtocolError as exc:
                raise HandshakeError(exc.code, f"the worker's handshake frame: {exc}") from None
