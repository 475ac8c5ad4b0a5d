"""The WebRTC side of a peer: its configuration, its ICE path, and the data channel's
frame adapter.

:func:`rtc_configuration` joins the TURN servers handed out by signaling (with their
time-limited credentials) and the peer's own ``--ice-server`` URLs, under the W3C
``iceTransportPolicy`` (``"relay"``: only relay candidates are gathered, so every byte goes
through the TURN server). :func:`selected_candidate_types` tells which candidate pair ICE
nominated, e.g. ``("relay", "relay")``.

aiortc runs an ``async`` event handler as a separate task, so frames could be
handled out of order. :class:`FrameChannel` therefore registers a plain function
for ``message`` that puts each frame into one bounded ``asyncio.Queue``; one task
consumes it with :meth:`FrameChannel.recv`, in arrival order. Sending is paced on the
channel's ``bufferedAmount`` (W3C names, as aiortc uses them) by :meth:`FrameChannel.drained`,
in chunks no larger than the remote's ``max-message-size`` allows
(:meth:`FrameChannel.sending_limits`, :func:`chunk_bytes_for`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Final

from aiortc import RTCConfiguration, RTCIceServer
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from loguru import logger

from protocol import ErrorCode, Limits, ProtocolErrorFrame, encode
from protocol.signaling import IceServer
from rtc_worker.errors import ClientError
from rtc_worker.settings_fields import IcePolicy

if TYPE_CHECKING:
    from aiortc import RTCDataChannel, RTCPeerConnection

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "HIGH_WATER_BYTES",
    "LOW_WATER_BYTES",
    "NO_CHANNEL",
    "NO_RELAY_CANDIDATE",
    "NO_TURN_SERVER",
    "ChannelClosed",
    "FrameChannel",
    "IcePolicy",
    "IceSetupError",
    "candidate_types",
    "chunk_bytes_for",
    "describe_path",
    "gather_offer",
    "ice_servers_expire_soon",
    "remote_max_message_size",
    "require_relay_candidate",
    "rtc_configuration",
    "selected_candidate_types",
]

#: Stop queueing frames while this many bytes wait in the channel's send buffer.
HIGH_WATER_BYTES = 1024 * 1024
#: ``bufferedAmountLowThreshold``: sending resumes when the buffer drains below it.
LOW_WATER_BYTES = 256 * 1024
#: The remote's ``max-message-size`` when its SDP has no ``a=max-message-size`` line,
#: bytes (RFC 8841 section 6: "the default value is 64K").
DEFAULT_MAX_MESSAGE_BYTES = 65536


NO_TURN_SERVER = "NO_TURN_SERVER"
"""Code of :class:`IceSetupError`: relay-only, and no TURN server is known at all."""

NO_RELAY_CANDIDATE = "NO_RELAY_CANDIDATE"
"""Code of :class:`IceSetupError`: relay-only, and the TURN server gave no relay candidate
(it refused the credential, wrong secret or expired, or it cannot be reached)."""

NO_CHANNEL = (
    "worker {} did not answer, or no ICE path opened, within {:g} s (a relay-only worker "
    "without a TURN server refuses every offer: NO_TURN_SERVER in its log)"
)
"""The message of the client's TimeoutError when the offer gets no answer or the data
channel does not open (``str.format`` with the worker's id and the timeout, seconds)."""

_DECIMAL = re.compile(r"[0-9]{1,12}")
"""An expiry in a TURN REST username: ASCII digits only (``str.isdigit`` also accepts
``"²"``, which ``int`` refuses)."""

_CANDIDATE_TYPE = re.compile(r"^a=candidate:.* typ (\w+)", re.MULTILINE)


class IceSetupError(ClientError):
    """A peer connection cannot be set up as configured.

    Attributes:
        code: :data:`NO_TURN_SERVER` or :data:`NO_RELAY_CANDIDATE`.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


def rtc_configuration(
    urls: Sequence[str],
    ice_servers: Sequence[IceServer] = (),
    policy: IcePolicy = "all",
) -> RTCConfiguration:
    """The RTCConfiguration of one peer connection.

    Args:
        urls: the peer's own STUN/TURN URLs (``--ice-server``), without credentials.
        ice_servers: the TURN servers signaling handed to this peer, with credentials
            (:class:`~protocol.signaling.IceServer`); they come first, because aiortc uses
            only the first TURN URL (and the first STUN URL) it is given.
        policy: ``"all"``, or ``"relay"`` to gather relay candidates only (W3C
            ``RTCConfiguration.iceTransportPolicy``).

    With no URL at all aiortc gathers host candidates only and never contacts a public
    STUN server, which is what loopback, LAN and offline runs need.

    Raises:
        IceSetupError: ``NO_TURN_SERVER`` when ``policy`` is ``"relay"`` and no
            ``turn:``/``turns:`` URL is known.
    """
    servers = [
        RTCIceServer(urls=list(server.urls), username=server.username, credential=server.credential)
        for server in ice_servers
    ]
    servers += [RTCIceServer(urls=url) for url in urls]
    if policy == "relay":
        turn_urls = [url for server in servers for url in _url_list(server.urls)]
        if not any(url.startswith(("turn:", "turns:")) for url in turn_urls):
            raise IceSetupError(
                NO_TURN_SERVER,
                "the ICE transport policy is relay but no TURN server is known: configure "
                "TURN on the signaling server (--turn-url, --turn-secret-file) or give a "
                "turn: URL",
            )
    return RTCConfiguration(
        iceServers=servers,
        iceTransportPolicy=(
            RTCIceTransportPolicy.RELAY if policy == "relay" else RTCIceTransportPolicy.ALL
        ),
    )


def _url_list(urls: str | list[str]) -> list[str]:
    return [urls] if isinstance(urls, str) else list(urls)


def ice_servers_expire_soon(
    ice_servers: Sequence[IceServer],
    now_s: float,
    margin_s: float = 60.0,
    received_s: float | None = None,
) -> bool:
    """True when a TURN REST credential among ``ice_servers`` expires within the margin
    of ``now_s`` (Unix seconds): its username is ``"{expiry}:{peer_id}"``, ``expiry`` in
    ASCII digits. A username of another form never counts as expiring.

    The margin is ``margin_s`` seconds, but at most half the credential's lifetime when
    ``received_s`` (when the credentials arrived, Unix seconds) is given: with a short TTL
    a peer does not register again before every connection.
    """
    for server in ice_servers:
        expiry_text, sep, _ = server.username.partition(":")
        if not sep or _DECIMAL.fullmatch(expiry_text) is None:
            continue
        expiry = int(expiry_text)
        margin = margin_s
        if received_s is not None:
            margin = min(margin_s, max(expiry - received_s, 0) / 2)
        if expiry <= now_s + margin:
            return True
    return False


def candidate_types(sdp: str) -> list[str]:
    """The type of each ``a=candidate`` line of ``sdp`` (``host``, ``srflx``, ``prflx``,
    ``relay``), in order (RFC 8839 section 5.1)."""
    return _CANDIDATE_TYPE.findall(sdp)


def require_relay_candidate(sdp: str) -> None:
    """Check that a relay-only peer gathered a relay candidate.

    aiortc raises nothing when the TURN server refuses the allocation: it simply
    gathers no candidate, and ICE would wait forever. This turns that into an error.

    Raises:
        IceSetupError: ``NO_RELAY_CANDIDATE`` when ``sdp`` has no ``typ relay`` candidate.
    """
    if "relay" not in candidate_types(sdp):
        raise IceSetupError(
            NO_RELAY_CANDIDATE,
            "no relay candidate was gathered: the TURN server refused the credential "
            "(wrong shared secret, or expired) or cannot be reached",
        )


async def gather_offer(pc: RTCPeerConnection, policy: IcePolicy, timeout_s: float) -> str:
    """Create ``pc``'s offer and gather its candidates (TURN allocation included) within
    ``timeout_s`` seconds; returns the offer's SDP with every candidate.

    Raises:
        IceSetupError: ``NO_RELAY_CANDIDATE`` when ``policy`` is ``"relay"`` and the TURN
            server gave no relay candidate (:func:`require_relay_candidate`) or did not
            answer within ``timeout_s`` (an unreachable server that drops packets).
        TimeoutError: gathering took longer than ``timeout_s`` under ``"all"``.
    """
    try:
        async with asyncio.timeout(timeout_s):
            await pc.setLocalDescription(await pc.createOffer())
    except TimeoutError:
        if policy != "relay":
            raise
        raise IceSetupError(
            NO_RELAY_CANDIDATE, f"the TURN server did not answer within {timeout_s:g} s"
        ) from None
    sdp = str(pc.localDescription.sdp)
    if policy == "relay":
        require_relay_candidate(sdp)
    return sdp


def selected_candidate_types(pc: RTCPeerConnection) -> tuple[str, str] | None:
    """The ``(local, remote)`` candidate types of the pair ICE nominated for the data
    channel, e.g. ``("relay", "relay")``; ``None`` before ICE has nominated one, or when
    aiortc's internals are not as expected (read through aioice's private
    ``Connection._nominated``, aiortc 1.16 / aioice 0.13).
    """
    try:
        connection = pc.sctp.transport.transport.iceGatherer._connection  # type: ignore[union-attr]
        pair = connection._nominated.get(1)
        if pair is None:
            return None
        return str(pair.local_candidate.type), str(pair.remote_candidate.type)
    except (AttributeError, KeyError, TypeError):
        return None


def describe_path(pc: RTCPeerConnection) -> str:
    """A short text for logs: ``"relay"`` when both ends of the nominated pair are relay
    candidates, else ``"host<->srflx"``-like, or ``"unknown"``."""
    types = selected_candidate_types(pc)
    if types is None:
        return "unknown"
    return "relay" if types == ("relay", "relay") else f"{types[0]}<->{types[1]}"


def remote_max_message_size(channel: RTCDataChannel) -> int | None:
    """The largest message the remote end of ``channel`` takes, bytes, as its SDP's
    ``a=max-message-size`` announced it (RFC 8841 section 6; :data:`DEFAULT_MAX_MESSAGE_BYTES`
    when the line is absent; ``0``: any size). ``None`` when it cannot be read.

    aiortc 1.16 keeps it in ``RTCSctpTransport._remote_max_message_size`` (private; set from
    the remote description when the SCTP transport starts, i.e. before the channel opens)
    and refuses to send a larger message (ValueError).
    """
    value = getattr(getattr(channel, "transport", None), "_remote_max_message_size", None)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def chunk_bytes_for(limits: Limits, max_message_size: int | None) -> int:
    """The chunk size to send with on a channel whose remote takes messages of up to
    ``max_message_size`` bytes (``0``: any size; ``None``: unknown, taken as RFC 8841's
    default of 64 KiB): ``limits.chunk_bytes``, never above ``limits.max_binary_frame_bytes``
    nor the remote's ``max-message-size``, and at least 1 byte.

    Larger is not cheaper with aiortc: measured here (100 MB, two processes, uvloop) an
    aiortc receiver spends 24.0 ms of CPU per MB with 64 KiB chunks, 26.3 with 128 KiB and
    30.6 with 256 KiB, because its SCTP reassembly (``InboundStream.pop_messages``)
    rescans every fragment of the message in progress for each packet that arrives.
    So the remote's ``max-message-size`` is a ceiling, not a target; ``chunk_bytes``
    (64 KiB by default) is the preferred size.
    """
    size = min(limits.chunk_bytes, limits.max_binary_frame_bytes)
    ceiling = DEFAULT_MAX_MESSAGE_BYTES if max_message_size is None else max_message_size
    if ceiling > 0:
        size = min(size, ceiling)
    return max(1, size)


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
        self._low = asyncio.Event()  # set by bufferedamountlow, and by the close
        channel.on("message", self._on_message)
        channel.on("close", self._on_close)
        channel.on("bufferedamountlow", self._low.set)
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
            self._low.set()  # a sender waiting in drained() stops
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
        falls below ``low_water`` (the ``bufferedamountlow`` event, no polling; one
        listener for the channel's life, no task per wait).

        Returns:
            False when the channel closed meanwhile (stop sending), else True.
        """
        channel, closed = self.channel, self.closed
        if channel.bufferedAmount <= high_water:
            return not closed.is_set()
        channel.bufferedAmountLowThreshold = low_water
        low = self._low
        while channel.bufferedAmount > high_water and not closed.is_set():
            low.clear()  # no await since the check: the next crossing sets it
            await low.wait()
        return not closed.is_set()

    def sending_limits(self, limits: Limits) -> Limits:
        """``limits`` with the chunk size this channel's remote allows
        (:func:`chunk_bytes_for` of :func:`remote_max_message_size`): give them to the
        channel's :class:`~protocol.connection.Connection`, whose FILE_META announces
        that ``chunk_size`` and whose sender streams chunks of it."""
        chunk = chunk_bytes_for(limits, remote_max_message_size(self.channel))
        return (
            limits
            if chunk == limits.chunk_bytes
            else dataclasses.replace(limits, chunk_bytes=chunk)
        )

    @property
    def is_open(self) -> bool:
        """True while the channel can send."""
        return self.channel.readyState == "open" and not self.closed.is_set()
