"""One peer's WebSocket at the signaling server: its challenge, its registration, its relays.

Every text frame is parsed by :func:`protocol.signaling.parse_client_frame`; a
:class:`PeerSession` only performs what the parsed frame asks (register, list, relay) and
turns every :class:`~protocol.signaling.SignalingError` into an ``error`` frame.

Registration, in order: the token (``UNAUTHORIZED``, then the socket is closed); the
proof of the key over this socket's challenge nonce (:func:`protocol.signaling_proof.
verify_register`: ``KEY_REQUIRED``; ``BAD_SIGNATURE``, then the socket is closed); the
binding of the peer id (``PEER_ID_BOUND``: bound to another key, or to any key for an
anonymous client); the live registry (``PEER_ID_TAKEN``). A key's first registration of
a free id binds the id to it (:mod:`signaling.bindings`). Every ``peers`` entry and every
relayed frame carries the sender's fingerprint as the server knows it, never as the sender
says.

With TURN configured (:mod:`signaling.turn`), the ``registered`` frame and every relayed
``offer`` carry ``ice_servers`` with a fresh credential bound to the receiving peer's id:
the registering peer's, the answerer's (so a worker registered for days still answers with
a valid one). Credentials are never logged.

The registry is a :class:`~signaling.registry.SignalingRegistry`: in memory, or on Redis
shared by several processes; when Redis cannot be reached, the frame gets
``SERVER_ERROR`` and the socket stays open.

Source: PROTOCOL.md section 5.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable
from typing import TypeVar

from aiohttp import web
from loguru import logger

from protocol.signaling import (
    IceServer,
    ListPeers,
    Peers,
    Register,
    Registered,
    SignalingError,
    SignalingErrorCode,
    dump_frame,
    parse_client_frame,
)
from protocol.signaling_proof import verify_register
from signaling import metrics
from signaling.bindings import BindingStore
from signaling.bounds import LogLimiter
from signaling.config import SignalingSettings
from signaling.registry import RegistryUnavailable, SignalingRegistry

__all__ = ["PeerSession", "PeerSocket", "send_text"]

PeerSocket = web.WebSocketResponse

_CODE = SignalingErrorCode

T = TypeVar("T")


async def send_text(ws: PeerSocket, text: str) -> bool:
    """Send one text frame; return ``False`` when the socket is gone instead of raising."""
    if ws.closed:
        return False
    try:
        await ws.send_str(text)
    except (ConnectionError, RuntimeError) as exc:
        logger.debug("send failed: {}", exc)
        return False
    return True


async def send_error(ws: PeerSocket, error: SignalingError) -> bool:
    """Send ``error`` as an ``error`` frame (see :func:`send_text`)."""
    metrics.error_frame(error.code)
    return await send_text(ws, dump_frame(error.to_frame()))


class PeerSession:
    """The state of one WebSocket: its challenge nonce and what, if anything, it registered.

    Args:
        settings, registry, bindings: the server's.
        ws: the socket. remote: the peer's address, for logs.
        nonce: the raw nonce of the challenge sent on this socket.
        warnings: the server's limiter of repeated warnings.

    Attributes:
        peer_id: the registered id, or None before registration.
        fingerprint: the proven key's fingerprint; None before registration or anonymous.
    """

    def __init__(
        self,
        *,
        settings: SignalingSettings,
        registry: SignalingRegistry[PeerSocket],
        bindings: BindingStore,
        ws: PeerSocket,
        remote: str,
        nonce: bytes,
        warnings: LogLimiter,
    ) -> None:
        self.settings = settings
        self.registry = registry
        self.bindings = bindings
        self.ws = ws
        self.remote = remote
        self.nonce = nonce
        self.warnings = warnings
        self.peer_id: str | None = None
        self.fingerprint: str | None = None
        self.turn = settings.turn_credentials

    def ice_servers(self, peer_id: str) -> tuple[IceServer, ...]:
        """The ``ice_servers`` of a frame for ``peer_id``: a fresh TURN credential bound
        to that id, or none when no TURN server is configured."""
        return () if self.turn is None else (self.turn.for_peer(peer_id),)

    async def on_text(self, text: str) -> bool:
        """Handle one text frame; return ``False`` when the socket must close."""
        started = metrics.now()
        try:
            frame = parse_client_frame(text, self.settings.max_frame_bytes)
            if isinstance(frame, Register):
                return await self._register(frame)
            if self.peer_id is None:
                raise SignalingError(
                    _CODE.NOT_REGISTERED, "register before sending other frames", frame.type
                )
            if isinstance(frame, ListPeers):
                peers = await self._shared(self.registry.infos(), frame.type)
                await send_text(self.ws, dump_frame(Peers(peers=peers)))
            else:
                await self._shared(
                    self.registry.relay(self.peer_id, self.fingerprint, frame), frame.type
                )
                metrics.relayed(frame.type, started)
                logger.debug("relayed {} {!r} -> {!r}", frame.type, self.peer_id, frame.to)
        except SignalingError as error:
            logger.debug("{} ({}): {} {}", self.peer_id, self.remote, error.code, error.message)
            await send_error(self.ws, error)
        return True

    async def _shared(self, call: Awaitable[T], ref_type: str) -> T:
        """Await a registry call; a failure of its store becomes ``SERVER_ERROR``."""
        try:
            return await call
        except RegistryUnavailable as exc:
            self._warn("registry", "signaling registry unavailable: {}", exc)
            raise SignalingError(
                _CODE.SERVER_ERROR,
                "the signaling registry is unavailable; try again later",
                ref_type,
            ) from None

    def _warn(self, kind: str, text: str, *args: object) -> None:
        held = self.warnings.allow(kind)
        if held is not None:
            suffix = f" ({held} more held back)" if held else ""
            logger.warning(text + suffix, *args)

    async def _refuse_and_close(self, error: SignalingError) -> bool:
        await send_error(self.ws, error)
        return False

    async def _register(self, frame: Register) -> bool:
        if self.peer_id is not None:
            raise SignalingError(
                _CODE.ALREADY_REGISTERED,
                f"this socket is already registered as {self.peer_id!r}",
                frame.type,
            )
        expected = self.settings.token_value
        if expected is not None and not _token_matches(frame.token, expected):
            self._warn("token", "refused {!r} from {}: bad token", *_who(self, frame))
            return await self._refuse_and_close(
                SignalingError(_CODE.UNAUTHORIZED, "missing or wrong token", frame.type)
            )
        try:
            fingerprint = verify_register(
                frame, self.nonce, allow_anonymous_clients=self.settings.allow_anonymous_clients
            )
        except SignalingError as error:
            if error.code != _CODE.BAD_SIGNATURE:
                raise
            self._warn("signature", "refused {!r} from {}: bad signature", *_who(self, frame))
            return await self._refuse_and_close(error)
        await self._check_binding(frame, fingerprint)
        await self._shared(
            self.registry.add(frame.peer_id, frame.role, frame.metadata, self.ws, fingerprint),
            frame.type,
        )
        self.peer_id, self.fingerprint = frame.peer_id, fingerprint
        logger.info(
            "registered {} {!r} ({}) from {}",
            frame.role,
            frame.peer_id,
            fingerprint[:16] if fingerprint else "anonymous",
            self.remote,
        )
        await send_text(
            self.ws,
            dump_frame(
                Registered(
                    peer_id=frame.peer_id,
                    fingerprint=fingerprint,
                    ice_servers=self.ice_servers(frame.peer_id),
                )
            ),
        )
        return True

    async def _check_binding(self, frame: Register, fingerprint: str | None) -> None:
        """Bind the id to the key (first come), or refuse; nothing changes on a refusal."""
        live = await self._shared(self.registry.find(frame.peer_id), frame.type)
        if live is not None and live.fingerprint is None:
            raise SignalingError(
                _CODE.PEER_ID_TAKEN, f"peer id {frame.peer_id!r} is already in use", frame.type
            )
        try:
            if fingerprint is None:
                binding = await self.bindings.get(frame.peer_id)
            else:
                binding = await self.bindings.claim(frame.peer_id, fingerprint, frame.role)
        except Exception as exc:  # the store is down: refuse, change nothing
            self._warn("store", "bindings store failed for {!r}: {}", frame.peer_id, exc)
            raise SignalingError(
                _CODE.SERVER_ERROR, "the bindings store is unavailable; try again later", frame.type
            ) from None
        if binding is not None and binding.fingerprint != fingerprint:
            self._warn(
                "bound",
                "refused {!r} from {}: the id is bound to another key",
                *_who(self, frame),
            )
            whose = "a key" if fingerprint is None else "another key"
            raise SignalingError(
                _CODE.PEER_ID_BOUND,
                f"peer id {frame.peer_id!r} is bound to {whose}; choose another id, or ask the "
                "operator to release it",
                frame.type,
            )

    async def close(self) -> None:
        """Forget this socket's registration, if the registry entry is still ours."""
        if self.peer_id is not None and await self.registry.remove(self.peer_id, self.ws):
            logger.info("unregistered {!r}", self.peer_id)


def _who(session: PeerSession, frame: Register) -> tuple[str, str]:
    return frame.peer_id, session.remote


def _token_matches(given: str | None, expected: str) -> bool:
    """Compare tokens in constant time (on UTF-8 bytes, so any text is allowed)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))
