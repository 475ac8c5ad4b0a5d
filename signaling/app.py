"""The aiohttp signaling application: ``GET /health`` and the ``/ws`` WebSocket.

With a storage path in the settings, the same app also serves the fallback result
store (``/upload``, ``/download``, ``/delete``, ``/list``; see
:mod:`signaling.results_api`), the resumable uploads under ``/api/upload/`` and the
periodic cleanup (see :mod:`signaling.uploads_api`).

Every text frame is parsed by :func:`protocol.signaling.parse_client_frame`; this
module only performs what the parsed frame asks (register, list, relay) and turns
every :class:`~protocol.signaling.SignalingError` into an ``error`` frame. Apart
from authentication failures, an error never closes the socket.

Limits: a text frame larger than ``settings.max_frame_bytes`` (UTF-8 bytes) gets a
``FRAME_TOO_LARGE`` error. aiohttp itself refuses any message larger than
``settings.hard_frame_bytes`` (4x the soft limit, at least 1 MiB) and then closes
the socket with code 1009 (message too big).
"""

from __future__ import annotations

import asyncio
import hmac
import weakref
from importlib.metadata import version

from aiohttp import WSCloseCode, WSMsgType, web
from loguru import logger

from protocol.signaling import (
    Answer,
    Candidate,
    ListPeers,
    Offer,
    Peers,
    Register,
    Registered,
    RelayedAnswer,
    RelayedCandidate,
    RelayedOffer,
    SignalingError,
    SignalingErrorCode,
    dump_frame,
    parse_client_frame,
)
from signaling.config import SignalingSettings
from signaling.registry import PeerRegistry
from signaling.results_api import setup_storage
from signaling.uploads_api import setup_uploads

__all__ = [
    "REGISTRY_KEY",
    "SETTINGS_KEY",
    "SOCKETS_KEY",
    "WS_CLOSE_TIMEOUT_SECONDS",
    "create_app",
    "start_server",
]

WS_CLOSE_TIMEOUT_SECONDS = 5.0
"""How long closing a WebSocket waits for the peer's close reply, in seconds."""

PeerSocket = web.WebSocketResponse

REGISTRY_KEY: web.AppKey[PeerRegistry[PeerSocket]] = web.AppKey("registry", PeerRegistry)
"""The app's :class:`~signaling.registry.PeerRegistry`, keyed by peer id."""

SETTINGS_KEY: web.AppKey[SignalingSettings] = web.AppKey("settings", SignalingSettings)
"""The :class:`~signaling.config.SignalingSettings` the app was built with."""

SOCKETS_KEY: web.AppKey[weakref.WeakSet[PeerSocket]] = web.AppKey("sockets", weakref.WeakSet)
"""Every open WebSocket, registered or not; closed on shutdown."""


def create_app(settings: SignalingSettings | None = None) -> web.Application:
    """Build the signaling application.

    Args:
        settings: server settings; ``None`` reads them from the environment.

    Returns:
        An :class:`aiohttp.web.Application` serving ``GET /health`` and ``GET /ws``,
        plus the storage routes when storage is enabled. Its registry is
        ``app[REGISTRY_KEY]``.

    Raises:
        pydantic.ValidationError: when ``settings`` is ``None`` and the environment
            holds invalid values.
        OSError: the storage folder cannot be prepared.
        sqlite3.Error: the storage database cannot be opened or migrated.
    """
    app = web.Application()
    app[SETTINGS_KEY] = settings if settings is not None else SignalingSettings()
    if setup_storage(app, app[SETTINGS_KEY]):
        setup_uploads(app, app[SETTINGS_KEY])
    app[REGISTRY_KEY] = PeerRegistry()
    app[SOCKETS_KEY] = weakref.WeakSet()
    app.router.add_get("/health", _health)
    app.router.add_get("/ws", _websocket)
    app.on_shutdown.append(_close_sockets)
    return app


async def start_server(
    settings: SignalingSettings | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Serve :func:`create_app` on ``host:port`` and return the runner and bound port.

    ``port=0`` binds any free port; the returned port is the real one. Stop the
    server with ``await runner.cleanup()``.

    Raises:
        OSError: when the address cannot be bound (the runner is cleaned up first).
    """
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        addresses = runner.addresses
        if not addresses:
            raise OSError(f"no listening socket on {host}:{port}")
        bound_port = int(addresses[0][1])
    except BaseException:
        await runner.cleanup()
        raise
    return runner, bound_port


async def _health(request: web.Request) -> web.Response:
    """``GET /health``: ``{"status":"ok","peers":N,"workers":N,"clients":N,"version":V}``.

    When the result store is enabled the body also carries ``"storage": true``; the
    key is absent otherwise, so the body of a plain signaling server is unchanged.
    """
    registry = request.app[REGISTRY_KEY]
    body: dict[str, object] = {
        "status": "ok",
        "peers": registry.count(),
        "workers": registry.count("worker"),
        "clients": registry.count("client"),
        "version": version("rtc-worker"),
    }
    if request.app[SETTINGS_KEY].storage_enabled:
        body["storage"] = True
    return web.json_response(body)


async def _close_sockets(app: web.Application) -> None:
    """On shutdown, close every open WebSocket with 1001 (going away), concurrently."""
    open_sockets: weakref.WeakSet[PeerSocket] = app[SOCKETS_KEY]
    sockets = list(open_sockets)
    if sockets:
        await asyncio.gather(
            *(ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown") for ws in sockets),
            return_exceptions=True,
        )


async def _send(ws: PeerSocket, text: str) -> bool:
    """Send one text frame; return ``False`` when the socket is gone instead of raising."""
    if ws.closed:
        return False
    try:
        await ws.send_str(text)
    except (ConnectionError, RuntimeError) as exc:
        logger.debug("send failed: {}", exc)
        return False
    return True


async def _send_error(ws: PeerSocket, error: SignalingError) -> bool:
    return await _send(ws, dump_frame(error.to_frame()))


class _Session:
    """The state of one WebSocket: which peer id, if any, it registered."""

    def __init__(self, app: web.Application, ws: PeerSocket, remote: str | None) -> None:
        self.settings = app[SETTINGS_KEY]
        self.registry = app[REGISTRY_KEY]
        self.ws = ws
        self.remote = remote or "?"
        self.peer_id: str | None = None

    async def on_text(self, text: str) -> bool:
        """Handle one text frame; return ``False`` when the socket must close."""
        try:
            frame = parse_client_frame(text, self.settings.max_frame_bytes)
            if isinstance(frame, Register):
                return await self._register(frame)
            if self.peer_id is None:
                raise SignalingError(
                    SignalingErrorCode.NOT_REGISTERED,
                    "register before sending other frames",
                    frame.type,
                )
            if isinstance(frame, ListPeers):
                await _send(self.ws, dump_frame(Peers(peers=self.registry.infos())))
            else:
                await self._relay(self.peer_id, frame)
        except SignalingError as error:
            logger.debug("{} ({}): {} {}", self.peer_id, self.remote, error.code, error.message)
            await _send_error(self.ws, error)
        return True

    async def _register(self, frame: Register) -> bool:
        if self.peer_id is not None:
            raise SignalingError(
                SignalingErrorCode.ALREADY_REGISTERED,
                f"this socket is already registered as {self.peer_id!r}",
                frame.type,
            )
        expected = self.settings.token_value
        if expected is not None and not _token_matches(frame.token, expected):
            logger.warning(
                "refused registration of {!r} from {}: bad token", frame.peer_id, self.remote
            )
            await _send_error(
                self.ws,
                SignalingError(
                    SignalingErrorCode.UNAUTHORIZED, "missing or wrong token", frame.type
                ),
            )
            return False
        self.registry.add(frame.peer_id, frame.role, frame.metadata, self.ws)
        self.peer_id = frame.peer_id
        logger.info("registered {} {!r} from {}", frame.role, frame.peer_id, self.remote)
        await _send(self.ws, dump_frame(Registered(peer_id=frame.peer_id)))
        return True

    async def _relay(self, sender: str, frame: Offer | Answer | Candidate) -> None:
        target = self.registry.get(frame.to)
        if target is None or target.conn is None or target.conn.closed:
            raise SignalingError(
                SignalingErrorCode.PEER_NOT_FOUND, f"no registered peer {frame.to!r}", frame.type
            )
        relayed: RelayedOffer | RelayedAnswer | RelayedCandidate
        if isinstance(frame, Offer):
            relayed = RelayedOffer(from_=sender, to=frame.to, sdp=frame.sdp)
        elif isinstance(frame, Answer):
            relayed = RelayedAnswer(from_=sender, to=frame.to, sdp=frame.sdp)
        else:
            relayed = RelayedCandidate(from_=sender, to=frame.to, candidate=frame.candidate)
        if not await _send(target.conn, dump_frame(relayed)):
            raise SignalingError(
                SignalingErrorCode.PEER_NOT_FOUND, f"peer {frame.to!r} has disconnected", frame.type
            )
        logger.debug("relayed {} {!r} -> {!r}", frame.type, sender, frame.to)

    def close(self) -> None:
        """Forget this socket's registration, if the registry entry is still ours."""
        if self.peer_id is not None and self.registry.remove(self.peer_id, self.ws):
            logger.info("unregistered {!r}", self.peer_id)


def _token_matches(given: str | None, expected: str) -> bool:
    """Compare tokens in constant time (on UTF-8 bytes, so any text is allowed)."""
    if given is None:
        return False
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


async def _websocket(request: web.Request) -> web.WebSocketResponse:
    """``GET /ws``: one peer's signaling session (see :mod:`protocol.signaling`)."""
    settings = request.app[SETTINGS_KEY]
    ws = web.WebSocketResponse(
        heartbeat=settings.heartbeat_seconds,
        max_msg_size=settings.hard_frame_bytes,
        timeout=WS_CLOSE_TIMEOUT_SECONDS,
    )
    await ws.prepare(request)
    sockets = request.app[SOCKETS_KEY]
    sockets.add(ws)
    session = _Session(request.app, ws, request.remote)
    try:
        async for msg in ws:
            if msg.type is WSMsgType.TEXT:
                if not await session.on_text(msg.data):
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"unauthorized")
                    break
            elif msg.type is WSMsgType.BINARY:
                await _send_error(
                    ws,
                    SignalingError(
                        SignalingErrorCode.INVALID_FRAME,
                        "binary frames are not accepted; send JSON text",
                    ),
                )
            elif msg.type is WSMsgType.ERROR:
                logger.info("websocket of {!r} failed: {}", session.peer_id, ws.exception())
                break
    finally:
        session.close()
        sockets.discard(ws)
    return ws
