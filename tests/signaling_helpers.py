"""Raw-WebSocket helpers for tests of the signaling server: read the challenge, sign a
registration with a key, as a peer that speaks the JSON frames itself would."""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from protocol.identity import NONCE_BYTES, b64decode, b64encode, registration_payload
from rtc_worker.identity import Identity

WS = aiohttp.ClientWebSocketResponse
RECEIVE_TIMEOUT = 5.0


async def read_challenge(ws: WS, timeout: float = RECEIVE_TIMEOUT) -> bytes:
    """The raw nonce of the ``challenge`` frame the server sends first."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type is aiohttp.WSMsgType.TEXT, msg
    frame = json.loads(msg.data)
    assert frame["type"] == "challenge", frame
    return b64decode(frame["nonce"], NONCE_BYTES)


def signed_register(
    nonce: bytes, peer_id: str, role: str, identity: Identity, **extra: Any
) -> dict[str, Any]:
    """A ``register`` frame (as a dict) proving ``identity`` over ``nonce``."""
    payload = registration_payload(nonce, peer_id, role, identity.public_key)
    return {
        "type": "register",
        "peer_id": peer_id,
        "role": role,
        "public_key": b64encode(identity.public_key),
        "signature": b64encode(identity.sign(payload)),
        **extra,
    }


async def open_socket(session: aiohttp.ClientSession, url: str) -> tuple[WS, bytes]:
    """A new WebSocket to ``url`` and the nonce of its challenge."""
    ws = await session.ws_connect(url)
    return ws, await read_challenge(ws)


async def register_with_key(
    session: aiohttp.ClientSession,
    url: str,
    peer_id: str,
    role: str,
    identity: Identity,
    **extra: Any,
) -> tuple[WS, dict[str, Any]]:
    """Open a socket, register ``peer_id`` with ``identity``; the socket and the reply."""
    ws, nonce = await open_socket(session, url)
    await ws.send_json(signed_register(nonce, peer_id, role, identity, **extra))
    reply = await ws.receive_json(timeout=RECEIVE_TIMEOUT)
    return ws, reply
