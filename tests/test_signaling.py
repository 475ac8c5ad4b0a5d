"""Signaling: frame codec units, a real server on loopback, and the CLI as a subprocess."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import WSMsgType, web

from protocol.signaling import (
    DEFAULT_MAX_FRAME_BYTES,
    MAX_METADATA_BYTES,
    Answer,
    Candidate,
    ErrorFrame,
    ListPeers,
    Offer,
    PeerInfo,
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
    parse_server_frame,
)
from rtc_worker.identity import Identity
from signaling.__main__ import help_text, settings_from_args
from signaling.app import REGISTRY_KEY, start_server
from signaling.config import SignalingSettings
from signaling.registry import PeerRegistry
from tests.signaling_helpers import read_challenge, signed_register

TOKEN = "s3cret-token"
FP = "ab" * 32
SMALL_LIMIT = 16384
RECEIVE_TIMEOUT = 5.0
REPO_ROOT = Path(__file__).resolve().parents[1]

WS = aiohttp.ClientWebSocketResponse
Connect = Callable[[], Awaitable[WS]]


# --------------------------------------------------------------------------- codec units


def expect_error(
    text: str, code: SignalingErrorCode, max_bytes: int = DEFAULT_MAX_FRAME_BYTES
) -> str:
    """Parse ``text`` expecting a SignalingError with ``code``; return its message."""
    with pytest.raises(SignalingError) as info:
        parse_client_frame(text, max_bytes)
    assert info.value.code == code
    return info.value.message


@pytest.mark.parametrize(
    "frame",
    [
        Register(peer_id="w-1", role="worker", token="t", metadata={"gpu": "a100", "n": [1, None]}),
        Register(peer_id="c.2_X", role="client"),
        Register(peer_id="k", role="worker", public_key="A" * 43 + "=", signature="B" * 86 + "=="),
        ListPeers(),
        Offer(to="w-1", sdp="v=0\r\no=- 1 2 IN IP4 0.0.0.0\r\n"),
        Answer(to="c.2_X", sdp="v=0\r\n"),
        Candidate(to="w-1", candidate={"candidate": "candidate:1 1 udp 1 1.2.3.4 5 typ host"}),
        Candidate(to="w-1", candidate=None),
    ],
)
def test_client_frames_round_trip(frame: Any) -> None:
    text = dump_frame(frame)
    assert parse_client_frame(text) == frame
    assert json.loads(text)["type"] == frame.type


@pytest.mark.parametrize(
    "frame",
    [
        Registered(peer_id="w-1", fingerprint=FP),
        Registered(peer_id="c-1", fingerprint=None),
        Peers(
            peers=(
                PeerInfo(peer_id="a", role="client", fingerprint=None),
                PeerInfo(peer_id="b", role="worker", fingerprint=FP),
            )
        ),
        RelayedOffer(from_="a", fingerprint=FP, to="b", sdp="v=0\r\n"),
        RelayedAnswer(from_="b", fingerprint=None, to="a", sdp="v=0\r\n"),
        RelayedCandidate(from_="a", fingerprint=FP, to="b", candidate=None),
        RelayedCandidate(
            from_="a", fingerprint=FP, to="b", candidate={"sdpMid": "0", "sdpMLineIndex": 0}
        ),
        ErrorFrame(
            code=SignalingErrorCode.PEER_NOT_FOUND, message="no such peer", ref_type="offer"
        ),
        ErrorFrame(code="SOME_FUTURE_CODE", message="m"),
    ],
)
def test_server_frames_round_trip(frame: Any) -> None:
    text = dump_frame(frame)
    assert parse_server_frame(text) == frame


def test_dump_frame_uses_from_alias_and_keeps_null_candidate() -> None:
    obj = json.loads(
        dump_frame(RelayedCandidate(from_="a", fingerprint=None, to="b", candidate=None))
    )
    assert obj == {
        "type": "candidate",
        "from": "a",
        "fingerprint": None,
        "to": "b",
        "candidate": None,
    }
    error = json.loads(dump_frame(ErrorFrame(code="X", message="m")))
    assert error == {"type": "error", "code": "X", "message": "m"}  # ref_type left out
    register = json.loads(dump_frame(Register(peer_id="a", role="client")))
    assert "token" not in register and "public_key" not in register
    assert "signature" not in register
    assert register["metadata"] == {}


def test_parse_client_frame_ignores_spoofed_from() -> None:
    frame = parse_client_frame('{"type":"offer","to":"b","sdp":"x","from":"mallory"}')
    assert frame == Offer(to="b", sdp="x")
    assert "from" not in dump_frame(frame)


def test_parse_client_frame_errors() -> None:
    assert "invalid JSON" in expect_error("{not json", SignalingErrorCode.INVALID_JSON)
    expect_error('{"type":"list_peers","x":NaN}', SignalingErrorCode.INVALID_JSON)
    expect_error('{"type":"offer","to":"b","sdp":"\\ud800"}', SignalingErrorCode.INVALID_JSON)
    expect_error("[" * 100_000, SignalingErrorCode.INVALID_JSON)
    assert "JSON object" in expect_error("[1, 2]", SignalingErrorCode.INVALID_FRAME)
    assert "JSON object" in expect_error('"register"', SignalingErrorCode.INVALID_FRAME)
    assert "'type'" in expect_error("{}", SignalingErrorCode.INVALID_FRAME)
    assert "'type'" in expect_error('{"type": 3}', SignalingErrorCode.INVALID_FRAME)
    assert "'sdp'" in expect_error('{"type":"offer","to":"b"}', SignalingErrorCode.INVALID_FRAME)
    assert "'sdp'" in expect_error(
        '{"type":"answer","to":"b","sdp":5}', SignalingErrorCode.INVALID_FRAME
    )
    assert "'candidate'" in expect_error(
        '{"type":"candidate","to":"b"}', SignalingErrorCode.INVALID_FRAME
    )
    assert "'to'" in expect_error(
        '{"type":"offer","to":"a b","sdp":""}', SignalingErrorCode.INVALID_FRAME
    )
    assert "'role'" in expect_error(
        '{"type":"register","peer_id":"a","role":"boss"}', SignalingErrorCode.INVALID_FRAME
    )
    assert "'metadata'" in expect_error(
        '{"type":"register","peer_id":"a","role":"client","metadata":[1]}',
        SignalingErrorCode.INVALID_FRAME,
    )
    with pytest.raises(SignalingError) as info:
        parse_client_frame('{"type":"subscribe"}')
    assert (info.value.code, info.value.ref_type) == (SignalingErrorCode.UNKNOWN_TYPE, "subscribe")
    # server frame types are not client frame types
    expect_error('{"type":"registered","peer_id":"a"}', SignalingErrorCode.UNKNOWN_TYPE)


@pytest.mark.parametrize("peer_id", ["", "a" * 65, "a b", "a/b", "é", "a\n", 5, None])
def test_invalid_peer_ids(peer_id: object) -> None:
    text = json.dumps({"type": "register", "peer_id": peer_id, "role": "worker"})
    assert "'peer_id'" in expect_error(text, SignalingErrorCode.INVALID_FRAME)


def test_peer_id_edges_accepted() -> None:
    for peer_id in ["a", "A" * 64, "a.b_c-D9", "..", "-"]:
        text = json.dumps({"type": "register", "peer_id": peer_id, "role": "client"})
        assert parse_client_frame(text) == Register(peer_id=peer_id, role="client")


def test_metadata_bounds() -> None:
    base = {"type": "register", "peer_id": "a", "role": "worker"}
    ok = parse_client_frame(json.dumps({**base, "metadata": None}))
    assert isinstance(ok, Register) and ok.metadata == {}
    fits = {"k": "x" * (MAX_METADATA_BYTES - 10)}  # {"k":"..."} is 8 bytes of overhead
    assert isinstance(parse_client_frame(json.dumps({**base, "metadata": fits})), Register)
    too_big = {"k": "x" * MAX_METADATA_BYTES}
    assert "metadata" in expect_error(
        json.dumps({**base, "metadata": too_big}), SignalingErrorCode.INVALID_FRAME
    )


def test_frame_size_limit_counts_utf8_bytes() -> None:
    sdp = "é" * 600  # 600 characters, 1200 bytes
    text = json.dumps({"type": "offer", "to": "b", "sdp": sdp}, ensure_ascii=False)
    assert len(text) < 1024 < len(text.encode())
    assert "1024" in expect_error(text, SignalingErrorCode.FRAME_TOO_LARGE, max_bytes=1024)
    assert parse_client_frame(text, max_bytes=2048) == Offer(to="b", sdp=sdp)
    # size is checked before JSON, so garbage that is too big is FRAME_TOO_LARGE
    expect_error("x" * 2000, SignalingErrorCode.FRAME_TOO_LARGE, max_bytes=1024)


def test_parse_server_frame_errors() -> None:
    for text, code in [
        ("nope", SignalingErrorCode.INVALID_JSON),
        ("[]", SignalingErrorCode.INVALID_FRAME),
        ('{"type":"register","peer_id":"a","role":"worker"}', SignalingErrorCode.UNKNOWN_TYPE),
        ('{"type":"offer","to":"b","sdp":"x"}', SignalingErrorCode.INVALID_FRAME),  # no "from"
        ('{"type":"error","message":"m"}', SignalingErrorCode.INVALID_FRAME),
        ('{"type":"peers","peers":[{"peer_id":"a"}]}', SignalingErrorCode.INVALID_FRAME),
    ]:
        with pytest.raises(SignalingError) as info:
            parse_server_frame(text)
        assert info.value.code == code, text
    error = parse_server_frame('{"type":"error","code":"PEER_NOT_FOUND","message":"m"}')
    assert isinstance(error, ErrorFrame)
    exc = error.to_exception()
    assert (exc.code, exc.message, exc.ref_type) == ("PEER_NOT_FOUND", "m", None)


def test_registry_remove_only_own_connection() -> None:
    registry: PeerRegistry[object] = PeerRegistry()
    first, second = object(), object()
    registry.add("a", "worker", {}, first)
    with pytest.raises(SignalingError) as info:
        registry.add("a", "client", {}, second)
    assert info.value.code == SignalingErrorCode.PEER_ID_TAKEN
    assert registry.remove("a", second) is False
    assert "a" in registry
    assert registry.remove("a", first) is True
    assert len(registry) == 0


# --------------------------------------------------------------------------- CLI units


def test_cli_help_names_env_vars() -> None:
    text = help_text()
    for name in [
        "RTC_SIGNALING_HOST",
        "RTC_SIGNALING_PORT",
        "RTC_SIGNALING_TOKEN",
        "RTC_SIGNALING_MAX_FRAME_BYTES",
        "RTC_LOG_LEVEL",
    ]:
        assert name in text


def test_cli_flags_override_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTC_SIGNALING_HOST", "0.0.0.0")
    monkeypatch.setenv("RTC_SIGNALING_PORT", "1111")
    monkeypatch.setenv("RTC_SIGNALING_TOKEN", "from-env")
    monkeypatch.setenv("RTC_SIGNALING_MAX_FRAME_BYTES", "5000")
    monkeypatch.setenv("RTC_LOG_LEVEL", "debug")
    env_only = settings_from_args([])
    assert (env_only.host, env_only.port, env_only.token_value) == ("0.0.0.0", 1111, "from-env")
    assert (env_only.max_frame_bytes, env_only.log_level) == (5000, "DEBUG")
    flags = settings_from_args(["--port", "2222", "--token", "from-flag", "--log-level", "error"])
    assert (flags.host, flags.port, flags.token_value) == ("0.0.0.0", 2222, "from-flag")
    assert flags.log_level == "ERROR"
    assert flags.hard_frame_bytes >= 1024 * 1024


def test_settings_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("RTC_"):
            monkeypatch.delenv(name)
    settings = SignalingSettings()
    assert (settings.host, settings.port, settings.token) == ("127.0.0.1", 8765, None)
    assert settings.max_frame_bytes == DEFAULT_MAX_FRAME_BYTES
    assert settings.hard_frame_bytes == 4 * DEFAULT_MAX_FRAME_BYTES
    assert settings.log_level == "INFO"
    assert SignalingSettings(token="").token is None


# --------------------------------------------------------------------------- live server


def make_settings(token: str | None = None) -> SignalingSettings:
    """Settings that do not depend on the environment (the bindings go to the test's home)."""
    return SignalingSettings(
        host="127.0.0.1",
        port=0,
        token=token,
        max_frame_bytes=SMALL_LIMIT,
        heartbeat_seconds=20.0,
        log_level="INFO",
    )


class Server:
    """A running server plus a client session to talk to it.

    Each peer id gets its own key (the same one every time it registers); each socket's
    challenge nonce is read when it connects.
    """

    def __init__(self, runner: web.AppRunner, port: int, session: aiohttp.ClientSession) -> None:
        self.runner = runner
        self.port = port
        self.session = session
        self.keys: dict[str, Identity] = {}
        self.nonces: dict[WS, bytes] = {}

    @property
    def registry(self) -> PeerRegistry[Any]:
        return self.runner.app[REGISTRY_KEY]

    async def connect(self) -> WS:
        """A socket whose challenge was read (its nonce is in ``nonces``)."""
        ws = await self.session.ws_connect(f"http://127.0.0.1:{self.port}/ws")
        self.nonces[ws] = await read_challenge(ws)
        return ws

    def key(self, peer_id: str) -> Identity:
        return self.keys.setdefault(peer_id, Identity.generate())

    def fingerprint(self, peer_id: str) -> str:
        return self.key(peer_id).fingerprint

    def register_frame(self, ws: WS, peer_id: str, role: str, **extra: Any) -> dict[str, Any]:
        """A register frame for ``ws``, signed with the key of ``peer_id``."""
        return signed_register(self.nonces[ws], peer_id, role, self.key(peer_id), **extra)

    async def health(self) -> dict[str, Any]:
        async with self.session.get(f"http://127.0.0.1:{self.port}/health") as response:
            assert response.status == 200
            return await response.json()


async def make_server(token: str | None) -> AsyncIterator[Server]:
    runner, port = await start_server(make_settings(token))
    try:
        async with aiohttp.ClientSession() as session:
            yield Server(runner, port, session)
    finally:
        await runner.cleanup()


@pytest_asyncio.fixture
async def server() -> AsyncIterator[Server]:
    async for value in make_server(None):
        yield value


@pytest_asyncio.fixture
async def token_server() -> AsyncIterator[Server]:
    async for value in make_server(TOKEN):
        yield value


async def recv(ws: WS) -> dict[str, Any]:
    msg = await ws.receive(timeout=RECEIVE_TIMEOUT)
    assert msg.type is WSMsgType.TEXT, msg
    return json.loads(msg.data)


async def send(ws: WS, obj: Any) -> None:
    await ws.send_str(json.dumps(obj))


def registered(server: Server, peer_id: str) -> dict[str, Any]:
    return {
        "type": "registered",
        "peer_id": peer_id,
        "fingerprint": server.fingerprint(peer_id),
        "ice_servers": [],
    }


async def register(server: Server, peer_id: str, role: str = "worker", **extra: Any) -> WS:
    ws = await server.connect()
    await send(ws, server.register_frame(ws, peer_id, role, **extra))
    assert await recv(ws) == registered(server, peer_id)
    return ws


async def expect_server_error(ws: WS, code: SignalingErrorCode, ref_type: str | None = None) -> str:
    reply = await recv(ws)
    assert reply["type"] == "error", reply
    assert reply["code"] == code, reply
    assert isinstance(reply["message"], str) and reply["message"]
    if ref_type is not None:
        assert reply["ref_type"] == ref_type, reply
    return reply["message"]


async def assert_usable(ws: WS, expected_ids: list[str]) -> None:
    """A list_peers round trip still works on ``ws``."""
    await send(ws, {"type": "list_peers"})
    reply = await recv(ws)
    assert reply["type"] == "peers"
    assert [peer["peer_id"] for peer in reply["peers"]] == expected_ids


async def wait_until(predicate: Callable[[], bool], timeout: float = RECEIVE_TIMEOUT) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


async def test_health(server: Server) -> None:
    assert await server.health() == {
        "status": "ok",
        "peers": 0,
        "workers": 0,
        "clients": 0,
        "version": "0.1.0",
    }
    w = await register(server, "w1", "worker")
    c = await register(server, "c1", "client")
    c2 = await register(server, "c2", "client")
    health = await server.health()
    assert (health["peers"], health["workers"], health["clients"]) == (3, 1, 2)
    for ws in (w, c, c2):
        await ws.close()


async def test_register_and_list_peers(server: Server) -> None:
    w = await register(server, "worker-b", "worker", metadata={"gpu": "a100", "slots": 2})
    c = await register(server, "client-a", "client")
    await send(c, {"type": "list_peers"})
    assert await recv(c) == {
        "type": "peers",
        "peers": [
            {
                "peer_id": "client-a",
                "role": "client",
                "fingerprint": server.fingerprint("client-a"),
                "metadata": {},
            },
            {
                "peer_id": "worker-b",
                "role": "worker",
                "fingerprint": server.fingerprint("worker-b"),
                "metadata": {"gpu": "a100", "slots": 2},
            },
        ],
    }
    await w.close()
    await c.close()


@pytest.mark.parametrize("token", [None, "wrong", ""])
async def test_bad_token_is_unauthorized_and_closed(
    token_server: Server, token: str | None
) -> None:
    ws = await token_server.connect()
    frame: dict[str, Any] = token_server.register_frame(ws, "w1", "worker")
    if token is not None:
        frame["token"] = token
    await send(ws, frame)
    await expect_server_error(ws, SignalingErrorCode.UNAUTHORIZED, "register")
    msg = await ws.receive(timeout=RECEIVE_TIMEOUT)
    assert msg.type is WSMsgType.CLOSE
    assert ws.closed
    assert ws.close_code == aiohttp.WSCloseCode.POLICY_VIOLATION
    assert "w1" not in token_server.registry
    assert (await token_server.health())["peers"] == 0


async def test_correct_token_registers(token_server: Server) -> None:
    ws = await register(token_server, "w1", "worker", token=TOKEN)
    await assert_usable(ws, ["w1"])
    await ws.close()


async def test_peer_id_taken_keeps_socket_open(server: Server) -> None:
    first = await register(server, "dup")
    second = await server.connect()
    await send(second, server.register_frame(second, "dup", "client"))  # the same key, live
    await expect_server_error(second, SignalingErrorCode.PEER_ID_TAKEN, "register")
    await send(second, server.register_frame(second, "dup-2", "client"))
    assert await recv(second) == registered(server, "dup-2")
    await assert_usable(second, ["dup", "dup-2"])
    # the first registration is untouched
    assert server.registry.get("dup").role == "worker"  # type: ignore[union-attr]
    await first.close()
    await second.close()


async def test_already_registered(server: Server) -> None:
    ws = await register(server, "once")
    await send(ws, server.register_frame(ws, "twice", "worker"))
    await expect_server_error(ws, SignalingErrorCode.ALREADY_REGISTERED, "register")
    await assert_usable(ws, ["once"])
    await ws.close()


async def test_invalid_peer_id_and_oversized_metadata(server: Server) -> None:
    ws = await server.connect()
    await send(ws, {**server.register_frame(ws, "ok", "worker"), "peer_id": "no spaces"})
    assert "peer_id" in await expect_server_error(ws, SignalingErrorCode.INVALID_FRAME, "register")
    big = {"blob": "x" * (MAX_METADATA_BYTES + 1)}
    await send(ws, server.register_frame(ws, "ok", "worker", metadata=big))
    assert "metadata" in await expect_server_error(ws, SignalingErrorCode.INVALID_FRAME, "register")
    assert len(server.registry) == 0
    await send(ws, server.register_frame(ws, "ok", "worker"))
    assert await recv(ws) == registered(server, "ok")
    await ws.close()


@pytest.mark.parametrize("kind", ["offer", "answer", "candidate"])
async def test_relay_sets_from(server: Server, kind: str) -> None:
    alice = await register(server, "alice", "client")
    bob = await register(server, "bob", "worker")
    payload: dict[str, Any] = (
        {"candidate": {"candidate": "candidate:1 1 udp 2 10.0.0.1 5000 typ host", "sdpMid": "0"}}
        if kind == "candidate"
        else {"sdp": f"v=0\r\n{kind}\r\n"}
    )
    spoofed = {"from": "mallory", "fingerprint": server.fingerprint("mallory")}
    await send(alice, {"type": kind, "to": "bob", **spoofed, **payload})
    alices = server.fingerprint("alice")
    assert await recv(bob) == {
        "type": kind,
        "from": "alice",
        "fingerprint": alices,
        "to": "bob",
        **payload,
        **({"ice_servers": []} if kind == "offer" else {}),  # no TURN configured
    }
    # and the way back, without any "from" from the sender
    await send(bob, {"type": kind, "to": "alice", **payload})
    bobs = server.fingerprint("bob")
    assert await recv(alice) == {
        "type": kind,
        "from": "bob",
        "fingerprint": bobs,
        "to": "alice",
        **payload,
        **({"ice_servers": []} if kind == "offer" else {}),
    }
    await alice.close()
    await bob.close()


async def test_relay_null_candidate(server: Server) -> None:
    alice = await register(server, "alice", "client")
    bob = await register(server, "bob", "worker")
    await send(alice, {"type": "candidate", "to": "bob", "candidate": None})
    assert await recv(bob) == {
        "type": "candidate",
        "from": "alice",
        "fingerprint": server.fingerprint("alice"),
        "to": "bob",
        "candidate": None,
    }
    await alice.close()
    await bob.close()


async def test_peer_not_found(server: Server) -> None:
    ws = await register(server, "alone")
    await send(ws, {"type": "offer", "to": "ghost", "sdp": "v=0"})
    assert "ghost" in await expect_server_error(ws, SignalingErrorCode.PEER_NOT_FOUND, "offer")
    await assert_usable(ws, ["alone"])
    await ws.close()


async def test_malformed_frames_keep_socket_usable(server: Server) -> None:
    ws = await register(server, "p1")
    await ws.send_str("{this is not json")
    await expect_server_error(ws, SignalingErrorCode.INVALID_JSON)
    await assert_usable(ws, ["p1"])

    await send(ws, {"type": "teleport", "to": "p1"})
    await expect_server_error(ws, SignalingErrorCode.UNKNOWN_TYPE, "teleport")
    await assert_usable(ws, ["p1"])

    await send(ws, {"type": "offer", "to": "p1"})
    assert "sdp" in await expect_server_error(ws, SignalingErrorCode.INVALID_FRAME, "offer")
    await assert_usable(ws, ["p1"])

    await send(ws, ["offer"])
    assert "object" in await expect_server_error(ws, SignalingErrorCode.INVALID_FRAME)
    await assert_usable(ws, ["p1"])

    await send(ws, {"sdp": "x"})
    assert "type" in await expect_server_error(ws, SignalingErrorCode.INVALID_FRAME)
    await assert_usable(ws, ["p1"])

    await ws.send_bytes(b'{"type":"list_peers"}')
    assert "binary" in await expect_server_error(ws, SignalingErrorCode.INVALID_FRAME)
    await assert_usable(ws, ["p1"])

    await send(ws, {"type": "list_peers", "pad": "x" * SMALL_LIMIT})
    assert str(SMALL_LIMIT) in await expect_server_error(ws, SignalingErrorCode.FRAME_TOO_LARGE)
    await assert_usable(ws, ["p1"])
    assert server.registry.get("p1") is not None
    await ws.close()


async def test_not_registered(server: Server) -> None:
    ws = await server.connect()
    for frame in [
        {"type": "list_peers"},
        {"type": "offer", "to": "x", "sdp": "v=0"},
        {"type": "candidate", "to": "x", "candidate": None},
    ]:
        await send(ws, frame)
        await expect_server_error(ws, SignalingErrorCode.NOT_REGISTERED, frame["type"])
    await send(ws, server.register_frame(ws, "late", "client"))
    assert await recv(ws) == registered(server, "late")
    await assert_usable(ws, ["late"])
    await ws.close()


async def test_beyond_hard_limit_closes_with_1009(server: Server) -> None:
    ws = await server.connect()
    await ws.send_str("x" * (make_settings().hard_frame_bytes + 1))
    msg = await ws.receive(timeout=RECEIVE_TIMEOUT)
    assert msg.type is WSMsgType.CLOSE
    assert ws.close_code == aiohttp.WSCloseCode.MESSAGE_TOO_BIG


async def test_disconnect_unregisters_and_id_can_be_reused(server: Server) -> None:
    observer = await register(server, "observer", "client")
    worker = await register(server, "gpu-1", "worker")
    await assert_usable(observer, ["gpu-1", "observer"])
    await worker.close()
    await wait_until(lambda: "gpu-1" not in server.registry)
    await assert_usable(observer, ["observer"])
    health = await server.health()
    assert (health["peers"], health["workers"], health["clients"]) == (1, 0, 1)

    await send(observer, {"type": "offer", "to": "gpu-1", "sdp": "v=0"})
    await expect_server_error(observer, SignalingErrorCode.PEER_NOT_FOUND, "offer")

    again = await register(server, "gpu-1", "worker")
    await assert_usable(observer, ["gpu-1", "observer"])
    await again.close()
    await observer.close()


async def test_abrupt_disconnect_unregisters(server: Server) -> None:
    # the peer goes away with its whole session, without calling ws.close()
    other = aiohttp.ClientSession()
    ws = await other.ws_connect(f"http://127.0.0.1:{server.port}/ws")
    server.nonces[ws] = await read_challenge(ws)
    await send(ws, server.register_frame(ws, "vanishing", "worker"))
    assert await recv(ws) == registered(server, "vanishing")
    await other.close()
    await wait_until(lambda: "vanishing" not in server.registry)
    assert (await server.health())["peers"] == 0


async def test_heartbeat_drops_silent_peer() -> None:
    settings = make_settings().model_copy(update={"heartbeat_seconds": 0.2})
    runner, port = await start_server(settings)
    try:
        async with aiohttp.ClientSession() as session:
            # autoping=False: this client never answers the server's pings
            ws = await session.ws_connect(f"http://127.0.0.1:{port}/ws", autoping=False)
            key = Identity.generate()
            await send(ws, signed_register(await read_challenge(ws), "silent", "worker", key))
            assert (await recv(ws))["type"] == "registered"
            registry = runner.app[REGISTRY_KEY]
            await wait_until(lambda: "silent" not in registry, timeout=3)
            await ws.close()
    finally:
        await runner.cleanup()


async def test_shutdown_closes_open_sockets() -> None:
    runner, port = await start_server(make_settings())
    async with aiohttp.ClientSession() as session:
        ws = await session.ws_connect(f"http://127.0.0.1:{port}/ws")
        key = Identity.generate()
        await send(ws, signed_register(await read_challenge(ws), "p", "worker", key))
        assert (await recv(ws))["type"] == "registered"
        reader = asyncio.ensure_future(ws.receive())
        await asyncio.wait_for(runner.cleanup(), timeout=5)
        msg = await asyncio.wait_for(reader, timeout=RECEIVE_TIMEOUT)
        assert msg.type is WSMsgType.CLOSE
        assert ws.close_code == aiohttp.WSCloseCode.GOING_AWAY


# --------------------------------------------------------------------------- subprocess


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_cli_subprocess_honours_env_token() -> None:
    port = free_port()
    env = {name: value for name, value in os.environ.items() if not name.startswith("RTC_")}
    env["RTC_SIGNALING_TOKEN"] = TOKEN
    env["RTC_LOG_LEVEL"] = "WARNING"
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "signaling",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        cwd=REPO_ROOT,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with aiohttp.ClientSession() as session:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 15
            health: dict[str, Any] | None = None
            while health is None:
                assert proc.returncode is None, "server exited early"
                assert loop.time() < deadline, "server did not become healthy in 15 s"
                try:
                    async with session.get(f"http://127.0.0.1:{port}/health") as response:
                        if response.status == 200:
                            health = await response.json()
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
            assert health["status"] == "ok"

            url = f"http://127.0.0.1:{port}/ws"
            key = Identity.generate()
            async with session.ws_connect(url) as ws:
                await send(ws, signed_register(await read_challenge(ws), "w1", "worker", key))
                await expect_server_error(ws, SignalingErrorCode.UNAUTHORIZED, "register")
                assert (await ws.receive(timeout=RECEIVE_TIMEOUT)).type is WSMsgType.CLOSE
            async with session.ws_connect(url) as ws:
                frame = signed_register(await read_challenge(ws), "w1", "worker", key, token=TOKEN)
                await send(ws, frame)
                assert await recv(ws) == {
                    "type": "registered",
                    "peer_id": "w1",
                    "fingerprint": key.fingerprint,
                    "ice_servers": [],
                }
        proc.terminate()
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout=10)
        assert proc.returncode == 0
        assert stdout.decode().strip() == f"listening on ws://127.0.0.1:{port}/ws"
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
