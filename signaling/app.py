"""The aiohttp signaling application: ``GET /health``, the ``/ws`` WebSocket and the
browser page at ``/``; ``GET /ready`` and ``GET /metrics`` (see :mod:`signaling.ops`).

With a storage path in the settings, the same app also serves the fallback result
store (``/upload``, ``/download``, ``/delete``, ``/list``; see
:mod:`signaling.results_api`), the resumable uploads under ``/api/upload/`` and the
periodic cleanup (see :mod:`signaling.uploads_api`).

On each WebSocket the server first sends a challenge (a fresh nonce); what the peer
sends is handled by a :class:`~signaling.peer_session.PeerSession` (registration with
proof of possession, peer-id bindings, relays). Apart from authentication failures, an
error never closes the socket.

The registry (:mod:`signaling.registry`) is in memory, or on Redis when
``settings.redis_url`` is set: then the bindings are in Redis too, and any number of
processes on one Redis act as one server (:mod:`signaling.registry_redis`).

Bounds (:mod:`signaling.bounds`): an upgrade over ``max_connections_per_address`` or
``max_connections`` (never above what the descriptor limit allows) is refused before it
happens (HTTP 429 or 503, ``TOO_MANY_CONNECTIONS``); a socket that has not registered
``register_timeout_s`` seconds after it opened gets ``REGISTRATION_TIMEOUT`` and is closed
with 1008; repeated refusals are logged once per interval.

Limits: a text frame larger than ``settings.max_frame_bytes`` (UTF-8 bytes) gets a
``FRAME_TOO_LARGE`` error. aiohttp itself refuses any message larger than
``settings.hard_frame_bytes`` (4x the soft limit, at least 1 MiB) and then closes
the socket with code 1009 (message too big).
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from importlib.metadata import version

from aiohttp import WSCloseCode, WSMsgType, web
from loguru import logger

from protocol.signaling import IceServer, SignalingError, SignalingErrorCode, dump_frame
from protocol.signaling_proof import new_challenge
from signaling.bindings import BindingStore, SqliteBindings
from signaling.bounds import ConnectionCaps, LogLimiter, usable_descriptors
from signaling.config import SignalingSettings
from signaling.ops import add_readiness_check, setup_ops
from signaling.origin import origin_refusal
from signaling.page_routes import setup_page
from signaling.peer_session import PeerSession, PeerSocket, send_error, send_text
from signaling.registry import MemoryRegistry, PeerRegistry, SignalingRegistry
from signaling.relay_routes import setup_relay
from signaling.results_api import setup_storage
from signaling.tus import setup_tus
from signaling.uploads_api import setup_uploads

__all__ = [
    "BINDINGS_KEY",
    "CAPS_KEY",
    "REGISTRY_KEY",
    "SETTINGS_KEY",
    "SIGNALING_REGISTRY_KEY",
    "SOCKETS_KEY",
    "WS_CLOSE_TIMEOUT_SECONDS",
    "create_app",
    "start_server",
]

WS_CLOSE_TIMEOUT_SECONDS = 5.0
"""How long closing a WebSocket waits for the peer's close reply, in seconds."""

REGISTRY_KEY: web.AppKey[PeerRegistry[PeerSocket]] = web.AppKey("registry", PeerRegistry)
"""The peers connected to this process (:class:`~signaling.registry.PeerRegistry`), keyed
by peer id."""

SIGNALING_REGISTRY_KEY: web.AppKey[SignalingRegistry[PeerSocket]] = web.AppKey("signaling_registry")
"""The app's :class:`~signaling.registry.SignalingRegistry` (memory or Redis)."""

SETTINGS_KEY: web.AppKey[SignalingSettings] = web.AppKey("settings", SignalingSettings)
"""The :class:`~signaling.config.SignalingSettings` the app was built with."""

SOCKETS_KEY: web.AppKey[weakref.WeakSet[PeerSocket]] = web.AppKey("sockets", weakref.WeakSet)
"""Every open WebSocket, registered or not; closed on shutdown."""

BINDINGS_KEY: web.AppKey[BindingStore] = web.AppKey("bindings")
"""The app's :class:`~signaling.bindings.BindingStore` (peer id -> key)."""

CAPS_KEY: web.AppKey[ConnectionCaps] = web.AppKey("caps", ConnectionCaps)
"""The app's :class:`~signaling.bounds.ConnectionCaps` (open sockets per address, total)."""

_WARNINGS_KEY: web.AppKey[LogLimiter] = web.AppKey("warnings", LogLimiter)


def create_app(
    settings: SignalingSettings | None = None, *, bindings: BindingStore | None = None
) -> web.Application:
    """Build the signaling application.

    Args:
        settings: server settings; ``None`` reads them from the environment.
        bindings: where peer-id bindings are kept; ``None`` opens the SQLite file of
            ``settings.bindings_file``.

    Returns:
        An :class:`aiohttp.web.Application` serving ``GET /health``, ``GET /ws`` and
        the browser page at ``/`` (:mod:`signaling.page_routes`), plus the storage
        routes when storage is enabled. Its registry is ``app[REGISTRY_KEY]``.

    Raises:
        pydantic.ValidationError: when ``settings`` is ``None`` and the environment
            holds invalid values.
        OSError: the storage or the data folder cannot be prepared.
        sqlite3.Error: the storage or the bindings database cannot be opened or migrated.
    """
    app = web.Application()
    app[SETTINGS_KEY] = settings = settings if settings is not None else SignalingSettings()
    if setup_storage(app, settings):
        setup_uploads(app, settings)
        setup_tus(app, settings)
        setup_relay(app, settings)
    registry = _setup_registry(app, settings, bindings)
    total = min(settings.max_connections, usable_descriptors())
    if total < settings.max_connections:
        logger.warning(
            "at most {} WebSockets (not {}): the descriptor limit allows no more",
            total,
            settings.max_connections,
        )
    app[CAPS_KEY] = ConnectionCaps(per_address=settings.max_connections_per_address, total=total)
    app[_WARNINGS_KEY] = LogLimiter()
    app[REGISTRY_KEY] = registry.local
    app[SOCKETS_KEY] = weakref.WeakSet()
    app.router.add_get("/health", _health)
    app.router.add_get("/ws", _websocket)
    setup_page(app)
    setup_ops(app, settings, app[REGISTRY_KEY])  # GET /ready, GET /metrics
    app.on_shutdown.append(_close_sockets)
    return app


def _setup_registry(
    app: web.Application, settings: SignalingSettings, bindings: BindingStore | None
) -> SignalingRegistry[PeerSocket]:
    """Pick the registry and the bindings store (memory + SQLite, or Redis for both),
    started with the app and closed after its sockets."""
    turn = settings.turn_credentials

    def ice_servers(peer_id: str) -> tuple[IceServer, ...]:
        return () if turn is None else (turn.for_peer(peer_id),)

    registry: SignalingRegistry[PeerSocket]
    url = settings.redis_url_value
    if url is None:
        registry = MemoryRegistry(send_text, ice_servers)
        app[BINDINGS_KEY] = bindings or SqliteBindings(
            settings.bindings_file,
            max_per_key=settings.max_bindings_per_key,
            client_ttl_s=settings.client_binding_ttl_s,
        )
    else:
        from signaling.bindings_redis import RedisBindings
        from signaling.redis_store import shown_url
        from signaling.registry_redis import RedisRegistry

        redis_registry: RedisRegistry[PeerSocket] = RedisRegistry(
            url,
            send=send_text,
            drop=_drop,
            ice_servers=ice_servers,
            prefix=settings.redis_key_prefix,
            presence_ttl_s=settings.redis_presence_ttl_s,
            client_binding_ttl_s=settings.client_binding_ttl_s,
            max_bindings_per_key=settings.max_bindings_per_key,
        )
        store = bindings or RedisBindings(
            redis_registry.redis,
            prefix=settings.redis_key_prefix,
            max_per_key=settings.max_bindings_per_key,
            client_ttl_s=settings.client_binding_ttl_s,
            ready=redis_registry.ensure_epoch,
        )
        app[BINDINGS_KEY] = store
        registry = redis_registry
        add_readiness_check(app, "redis", redis_registry.redis.ping)  # GET /ready: PING
        logger.info("signaling on Redis {} (process {})", shown_url(url), redis_registry.process)

    async def start(_: web.Application) -> None:
        await registry.start()

    async def close(_: web.Application) -> None:
        await registry.close()

    app[SIGNALING_REGISTRY_KEY] = registry
    app.on_startup.append(start)
    app.on_cleanup.append(close)
    return registry


async def _drop(ws: PeerSocket, error: SignalingError) -> None:
    """Send ``error`` (waiting at most 1 s: a peer that does not read never takes it)
    and close the socket (its registration is gone); a caller that cancels the close
    makes aiohttp drop the connection."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(1.0):
            await send_error(ws, error)
    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=error.code.encode()[:100])


async def start_server(
    settings: SignalingSettings | None = None, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, int]:
    """Serve :func:`create_app` on ``host:port`` and return the runner and bound port.

    ``port=0`` binds any free port; the returned port is the real one. Stop the
    server with ``await runner.cleanup()``. An HTTP connection idle for
    ``register_timeout_s`` seconds (before its first request, or between two) is closed.

    Raises:
        OSError: when the address cannot be bound (the runner is cleaned up first).
    """
    app = create_app(settings)
    # A connection idle before its first request (or between requests) is closed after
    # the registration deadline: a TCP connection that never asks for anything is not
    # held for aiohttp's default hour.
    deadline = app[SETTINGS_KEY].register_timeout_s
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=deadline)
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


async def _websocket(request: web.Request) -> web.StreamResponse:
    """``GET /ws``: one peer's signaling session (see :mod:`protocol.signaling`).

    Refused before the upgrade when its ``Origin`` is foreign (HTTP 403,
    :mod:`signaling.origin`) or a connection cap is reached (HTTP 429 or 503).
    """
    app = request.app
    settings, caps = app[SETTINGS_KEY], app[CAPS_KEY]
    remote = request.remote or "?"
    foreign = origin_refusal(request, settings.allowed_origins)
    if foreign is not None:
        held = app[_WARNINGS_KEY].allow("origin")
        if held is not None:
            logger.warning(
                "refused a WebSocket from {} with Origin {!r} (ORIGIN_NOT_ALLOWED){}",
                remote,
                request.headers.get("Origin", "")[:100],
                f"; {held} more refusals held back" if held else "",
            )
        return foreign
    refused = caps.acquire(remote)
    if refused is not None:
        held = app[_WARNINGS_KEY].allow("cap")
        if held is not None:
            logger.warning(
                "refused a WebSocket from {} with {} ({} open){}",
                remote,
                refused.status,
                caps.open,
                f"; {held} more refusals held back" if held else "",
            )
        return refused
    try:
        return await _serve_socket(request, settings, remote)
    finally:
        caps.release(remote)


async def _serve_socket(
    request: web.Request, settings: SignalingSettings, remote: str
) -> web.WebSocketResponse:
    ws = web.WebSocketResponse(
        heartbeat=settings.heartbeat_seconds,
        max_msg_size=settings.hard_frame_bytes,
        timeout=WS_CLOSE_TIMEOUT_SECONDS,
    )
    await ws.prepare(request)
    sockets = request.app[SOCKETS_KEY]
    sockets.add(ws)
    challenge, nonce = new_challenge()
    session = PeerSession(
        settings=settings,
        registry=request.app[SIGNALING_REGISTRY_KEY],
        bindings=request.app[BINDINGS_KEY],
        ws=ws,
        remote=remote,
        nonce=nonce,
        warnings=request.app[_WARNINGS_KEY],
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + settings.register_timeout_s
    try:
        await send_text(ws, dump_frame(challenge))
        while True:
            timeout = None if session.peer_id else max(deadline - loop.time(), 0.001)
            try:
                msg = await ws.receive(timeout=timeout)
            except TimeoutError:
                logger.debug("closing an unregistered socket from {}", remote)
                await send_error(
                    ws,
                    SignalingError(
                        SignalingErrorCode.REGISTRATION_TIMEOUT,
                        f"not registered within {settings.register_timeout_s:g} s",
                    ),
                )
                await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"registration timeout")
                break
            if msg.type is WSMsgType.TEXT:
                if not await session.on_text(msg.data):
                    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=b"unauthorized")
                    break
            elif msg.type is WSMsgType.BINARY:
                await send_error(
                    ws,
                    SignalingError(
                        SignalingErrorCode.INVALID_FRAME,
                        "binary frames are not accepted; send JSON text",
                    ),
                )
            elif msg.type is WSMsgType.ERROR:
                logger.info("websocket of {!r} failed: {}", session.peer_id, ws.exception())
                break
            elif msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
    finally:
        await session.close()
        sockets.discard(ws)
    return ws
