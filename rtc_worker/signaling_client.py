"""WebSocket client of the signaling server, shared by the worker and the client.

One :class:`SignalingClient` is one registered WebSocket. Frames are parsed with
:mod:`protocol.signaling`; a reader task routes them: the server's challenge to the
registration, replies to a pending request (``registered``, ``peers``, an ``error``) to
that request, every other frame (offers, answers, candidates, unsolicited errors) to
:meth:`SignalingClient.recv` in arrival order.

Registration answers the challenge: with an :class:`~rtc_worker.identity.Identity` the
``register`` frame carries its public key and its signature over the challenge nonce
(:func:`protocol.signaling_proof.signed_register`); without one the peer registers as
an anonymous client (only where the server allows it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Any, TypeVar

import aiohttp
from loguru import logger
from pydantic import BaseModel

from protocol.signaling import (
    Challenge,
    ErrorFrame,
    IceServer,
    ListPeers,
    PeerInfo,
    Peers,
    Register,
    Registered,
    Role,
    ServerFrame,
    SignalingError,
    dump_frame,
    parse_server_frame,
)
from protocol.signaling_proof import signed_register
from rtc_worker.identity import Identity

__all__ = ["SignalingClient", "SignalingClosed"]

_Reply = TypeVar("_Reply", bound=BaseModel)


class SignalingClosed(ConnectionError):
    """The WebSocket to the signaling server closed."""


class SignalingClient:
    """A registered connection to the signaling server.

    Args:
        url: WebSocket URL, e.g. ``ws://127.0.0.1:8765/ws``.
        peer_id: the id to register (``[A-Za-z0-9._-]{1,64}``).
        role: ``"worker"`` or ``"client"``.
        token: the server's token, if it has one.
        metadata: a JSON object shown to other peers by ``list_peers``.
        timeout: seconds to wait for the connection and for each reply.
        identity: the key that proves this peer at registration; None registers an
            anonymous client (refused for a worker, and where the server admits none).

    Attributes:
        fingerprint: the fingerprint the server registered us with (None before
            registration, or anonymous).
        ice_servers: the TURN servers (with credentials bound to our peer id) of the
            ``registered`` frame; empty when the server hands out none.
        ice_servers_received_s: when they arrived (Unix seconds), None before.
    """

    def __init__(
        self,
        url: str,
        peer_id: str,
        role: Role,
        *,
        token: str | None = None,
        metadata: dict[str, Any] | None = None,
        timeout: float = 10.0,
        identity: Identity | None = None,
    ) -> None:
        self.url = url
        self.peer_id = peer_id
        self.role: Role = role
        self.token = token
        self.metadata = metadata or {}
        self.timeout = timeout
        self.identity = identity
        self.fingerprint: str | None = None
        self.ice_servers: tuple[IceServer, ...] = ()
        self.ice_servers_received_s: float | None = None
        self._challenge: asyncio.Future[Challenge] | None = None
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._inbox: asyncio.Queue[ServerFrame | None] = asyncio.Queue()
        self._pending: asyncio.Future[ServerFrame] | None = None
        self._request_lock = asyncio.Lock()
        self.closed = asyncio.Event()

    async def connect(self) -> None:
        """Open the WebSocket and register.

        Raises:
            SignalingError: the server refused the registration (UNAUTHORIZED,
                KEY_REQUIRED, BAD_SIGNATURE, PEER_ID_BOUND, PEER_ID_TAKEN,
                INVALID_FRAME...).
            OSError / aiohttp.ClientError / TimeoutError: the server is unreachable.
        """
        self._session = aiohttp.ClientSession()
        try:
            async with asyncio.timeout(self.timeout):  # bounds the handshake too
                self._ws = await self._session.ws_connect(
                    self.url,
                    heartbeat=20.0,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self.timeout),
                )
            self._challenge = asyncio.get_running_loop().create_future()
            self._reader = asyncio.create_task(self._read_loop(), name="signaling-reader")
            async with asyncio.timeout(self.timeout):
                challenge = await self._challenge
            reply = await self._request(self._register_frame(challenge), Registered)
            expected = None if self.identity is None else self.identity.fingerprint
            if reply.fingerprint != expected:
                raise SignalingError(
                    "UNEXPECTED_REPLY", f"registered as {reply.fingerprint}, not {expected}"
                )
            self.fingerprint = reply.fingerprint
            self.ice_servers = reply.ice_servers
            self.ice_servers_received_s = time.time()
            logger.info(
                "registered with signaling as {} ({}, {}, {} TURN server(s))",
                reply.peer_id,
                self.role,
                "anonymous" if expected is None else f"key {expected[:16]}",
                len(reply.ice_servers),
            )
        except BaseException:
            await self.close()
            raise

    def _register_frame(self, challenge: Challenge) -> Register:
        if self.identity is None:
            return Register(
                peer_id=self.peer_id, role=self.role, token=self.token, metadata=self.metadata
            )
        return signed_register(
            challenge,
            peer_id=self.peer_id,
            role=self.role,
            public_key=self.identity.public_key,
            sign=self.identity.sign,
            token=self.token,
            metadata=self.metadata,
        )

    async def _read_loop(self) -> None:
        assert self._ws is not None
        try:
            async for msg in self._ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    frame = parse_server_frame(msg.data)
                except SignalingError as exc:
                    logger.warning("ignoring invalid frame from signaling: {}", _where(exc))
                    continue
                if isinstance(frame, Challenge):
                    if self._challenge is not None and not self._challenge.done():
                        self._challenge.set_result(frame)
                    continue
                pending = self._pending
                if pending is not None and not pending.done() and _is_reply(frame):
                    pending.set_result(frame)
                else:
                    self._inbox.put_nowait(frame)
        finally:
            self.closed.set()
            if self._challenge is not None and not self._challenge.done():
                self._challenge.set_exception(SignalingClosed("signaling connection closed"))
            if self._pending is not None and not self._pending.done():
                self._pending.set_exception(SignalingClosed("signaling connection closed"))
            self._inbox.put_nowait(None)

    async def _request(self, frame: BaseModel, expect: type[_Reply]) -> _Reply:
        async with self._request_lock:
            self._pending = asyncio.get_running_loop().create_future()
            await self.send(frame)
            async with asyncio.timeout(self.timeout):
                reply = await self._pending
            self._pending = None
        if isinstance(reply, ErrorFrame):
            raise reply.to_exception()
        if not isinstance(reply, expect):
            raise SignalingError("UNEXPECTED_REPLY", f"expected {expect.__name__}, got {reply}")
        return reply

    async def send(self, frame: BaseModel) -> None:
        """Send one frame.

        Raises:
            SignalingClosed: the WebSocket is closed.
        """
        if self._ws is None or self._ws.closed:
            raise SignalingClosed("signaling connection closed")
        await self._ws.send_str(dump_frame(frame))

    async def list_peers(self) -> tuple[PeerInfo, ...]:
        """Every registered peer (``peer_id``, ``role``, ``fingerprint``, ``metadata``),
        sorted by id.

        Raises:
            SignalingError, SignalingClosed, TimeoutError.
        """
        return (await self._request(ListPeers(), Peers)).peers

    async def recv(self, timeout: float | None = None) -> ServerFrame:
        """The next frame that is not a reply to a request (offer, answer, candidate, error).

        Raises:
            SignalingClosed: the connection closed.
            TimeoutError: nothing arrived within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            frame = await self._inbox.get()
        if frame is None:
            self._inbox.put_nowait(None)
            raise SignalingClosed("signaling connection closed")
        return frame

    async def close(self) -> None:
        """Close the WebSocket and the HTTP session; safe to call twice."""
        # Stop the reader first: aiohttp's close() reads the peer's close frame itself.
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        self.closed.set()


def _is_reply(frame: ServerFrame) -> bool:
    return isinstance(frame, Registered | Peers | ErrorFrame)


def _where(error: SignalingError) -> str:
    """What a log may say about a frame the server sent that we refused: its code, its
    type and the invalid field's location, never the reason text, which can quote the
    frame's values (a credential of a malformed ``ice_servers``)."""
    location = error.message.partition(":")[0] if error.message.startswith("field '") else ""
    return " ".join(
        part for part in (str(error.code), error.ref_type or "", location[:120]) if part
    )
