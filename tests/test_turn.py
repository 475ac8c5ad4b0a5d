"""TURN without a TURN server: the credentials (a known vector, coturn's formula), the
``ice_servers`` of the signaling frames, the settings of ``rtc-signaling``, worker and
client, and the peer connection's configuration under the relay policy."""

from __future__ import annotations

import base64
import hashlib
import hmac
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from aiortc import RTCPeerConnection
from aiortc.rtcconfiguration import RTCIceTransportPolicy
from pydantic import ValidationError

from protocol.signaling import (
    MAX_ICE_SERVERS,
    IceServer,
    Registered,
    RelayedOffer,
    SignalingErrorCode,
    dump_frame,
    parse_server_frame,
)
from rtc_worker.client_settings import ClientSettings
from rtc_worker.rtc import (
    NO_RELAY_CANDIDATE,
    NO_TURN_SERVER,
    IceSetupError,
    candidate_types,
    describe_path,
    ice_servers_expire_soon,
    require_relay_candidate,
    rtc_configuration,
    selected_candidate_types,
)
from rtc_worker.settings import WorkerSettings
from signaling.__main__ import settings_from_args
from signaling.config import SignalingSettings
from signaling.turn import TurnCredentials, turn_credential, turn_username

# The vector of PROTOCOL.md 5.4, computed independently with
# printf '1767312000:worker-1' | openssl dgst -sha1 -hmac north-pole -binary | base64
VECTOR = ("north-pole", "worker-1", 1767312000, "j2aAdRkGAFLuAXsktqx7LL+z530=")


def test_the_credential_matches_the_published_vector() -> None:
    secret, peer, expiry, credential = VECTOR
    username = turn_username(peer, expiry)
    assert username == "1767312000:worker-1"
    assert turn_credential(secret.encode(), username) == credential


def test_the_credential_is_coturns_formula_for_any_input() -> None:
    # coturn (use-auth-secret) derives the password as base64(HMAC-SHA1(secret, user))
    for secret, user in [("s", "0:a"), ("ünïcode", "99999999999:peer.id_-"), ("x" * 200, "1:b")]:
        mac = hmac.new(secret.encode(), user.encode(), hashlib.sha1).digest()
        assert turn_credential(secret.encode(), user) == base64.b64encode(mac).decode()


def test_credentials_are_bound_to_the_peer_and_expire_after_the_ttl() -> None:
    maker = TurnCredentials(["turn:127.0.0.1:3478"], "shh", 600, clock=lambda: 1000.7)
    server = maker.for_peer("worker-1")
    assert server.urls == ("turn:127.0.0.1:3478",)
    assert server.username == "1600:worker-1"
    assert server.credential == turn_credential(b"shh", "1600:worker-1")
    other = maker.for_peer("worker-2")
    assert other.credential != server.credential  # one peer's credential is not another's
    assert "shh" not in repr(maker) and server.credential not in repr(server)


@pytest.mark.parametrize(
    ("urls", "secret", "ttl"), [((), "s", 1.0), (("turn:h:1",), "", 1.0), (("turn:h:1",), "s", 0)]
)
def test_credentials_need_urls_a_secret_and_a_positive_ttl(
    urls: tuple[str, ...], secret: str, ttl: float
) -> None:
    with pytest.raises(ValueError):
        TurnCredentials(urls, secret, ttl)


# ------------------------------------------------------------------ frames


def ice(**overrides: Any) -> dict[str, Any]:
    return {
        "urls": ["turn:127.0.0.1:3478"],
        "username": "1:w",
        "credential": "c2VjcmV0",
        **overrides,
    }


def test_registered_and_offer_carry_ice_servers_and_round_trip() -> None:
    entry = IceServer.model_validate(ice())
    registered = Registered(peer_id="w", fingerprint=None, ice_servers=(entry,))
    offer = RelayedOffer(from_="c", fingerprint=None, to="w", sdp="v=0", ice_servers=(entry,))
    for frame in (registered, offer):
        text = dump_frame(frame)
        assert '"ice_servers":[{"urls":["turn:127.0.0.1:3478"],"username":"1:w"' in text
        assert parse_server_frame(text) == frame


def test_ice_servers_default_to_empty_and_old_frames_still_parse() -> None:
    assert '"ice_servers":[]' in dump_frame(Registered(peer_id="w", fingerprint=None))
    old = parse_server_frame('{"type":"registered","peer_id":"w","fingerprint":null}')
    assert isinstance(old, Registered) and old.ice_servers == ()
    offer = parse_server_frame('{"type":"offer","from":"c","fingerprint":null,"to":"w","sdp":""}')
    assert isinstance(offer, RelayedOffer) and offer.ice_servers == ()


@pytest.mark.parametrize(
    "bad",
    [
        [ice(urls=["http://turn.example:3478"])],  # not a STUN/TURN URL
        [ice(urls=[])],  # an entry without URL
        [ice(urls=["turn:" + "h" * 600])],  # too long
        [ice(username=None)],
        [ice()] * (MAX_ICE_SERVERS + 1),  # too many entries
        [ice(urls=["turn:h:1"] * (MAX_ICE_SERVERS + 1))],  # too many URLs
        {"urls": "turn:h:1"},  # not a list
    ],
)
def test_malformed_ice_servers_are_invalid_frames(bad: Any) -> None:
    import json

    text = json.dumps(
        {"type": "registered", "peer_id": "w", "fingerprint": None, "ice_servers": bad}
    )
    with pytest.raises(Exception) as caught:
        parse_server_frame(text)
    assert getattr(caught.value, "code", None) == SignalingErrorCode.INVALID_FRAME


# ------------------------------------------------------------------ settings


def test_signaling_turn_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("RTC_TURN_URLS", "turn:10.0.0.1:3478, turn:10.0.0.1:3478?transport=tcp")
    monkeypatch.setenv("RTC_TURN_SECRET", "from-env")
    monkeypatch.setenv("RTC_TURN_TTL_S", "3600")
    settings = SignalingSettings(data_dir=tmp_path)
    assert settings.turn_urls == ["turn:10.0.0.1:3478", "turn:10.0.0.1:3478?transport=tcp"]
    credentials = settings.turn_credentials
    assert credentials is not None and credentials.ttl_s == 3600
    entry = credentials.for_peer("p")
    assert entry.credential == turn_credential(b"from-env", entry.username)
    assert "from-env" not in repr(settings)


@pytest.fixture(autouse=True)
def _no_turn_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The caller's environment never leaks into these settings."""
    for name in ("RTC_TURN_URLS", "RTC_TURN_SECRET", "RTC_TURN_SECRET_FILE", "RTC_TURN_TTL_S"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("RTC_ICE_TRANSPORT_POLICY", raising=False)


def test_the_turn_secret_from_a_file_and_repeated_flags(tmp_path: Path) -> None:
    secret_file = tmp_path / "turn.secret"
    secret_file.write_text("file-secret\n")
    secret_file.chmod(0o600)
    cli = settings_from_args(
        [
            "--turn-url",
            "turn:a:3478",
            "--turn-url",
            "stun:a:3478",
            "--turn-secret-file",
            str(secret_file),
            "--data-dir",
            str(tmp_path),
        ]
    )
    assert cli.turn_urls == ["turn:a:3478", "stun:a:3478"]
    assert cli.turn_secret is not None and cli.turn_secret.get_secret_value() == "file-secret"
    assert SignalingSettings(data_dir=tmp_path).turn_credentials is None  # off by default


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"turn_urls": ["turn:a:3478"]}, "no TURN secret"),
        ({"turn_secret": "s3cr3t-value"}, "no TURN URL"),
        ({"turn_urls": ["http://a"], "turn_secret": "s3cr3t-value"}, "starts with one of"),
        ({"turn_urls": ["turn:a:1"], "turn_secret": "s3cr3t-value", "turn_ttl_s": 0}, "turn_ttl_s"),
    ],
)
def test_half_a_turn_configuration_is_a_clear_error(
    values: dict[str, Any], message: str, tmp_path: Path
) -> None:
    with pytest.raises(ValidationError) as caught:
        SignalingSettings(data_dir=tmp_path, **values)
    assert message in str(caught.value)
    assert "s3cr3t-value" not in str(caught.value)  # the secret is never quoted


def test_worker_and_client_take_the_ice_transport_policy(monkeypatch: pytest.MonkeyPatch) -> None:
    assert WorkerSettings().ice_transport_policy == "all"
    assert ClientSettings().ice_transport_policy == "all"
    monkeypatch.setenv("RTC_ICE_TRANSPORT_POLICY", "relay")
    assert WorkerSettings().ice_transport_policy == "relay"
    assert ClientSettings().ice_transport_policy == "relay"
    monkeypatch.setenv("RTC_ICE_TRANSPORT_POLICY", "nohost")
    with pytest.raises(ValidationError):
        WorkerSettings()


# ------------------------------------------------------------------ peer configuration


def test_server_given_turn_comes_first_then_the_peers_own_urls() -> None:
    entry = IceServer.model_validate(ice())
    config = rtc_configuration(["stun:stun.example:3478"], (entry,), "relay")
    assert config.iceTransportPolicy == RTCIceTransportPolicy.RELAY
    assert config.iceServers is not None
    first, second = config.iceServers
    assert (first.urls, first.username, first.credential) == (
        ["turn:127.0.0.1:3478"],
        "1:w",
        "c2VjcmV0",
    )
    assert second.urls == "stun:stun.example:3478" and second.username is None
    assert rtc_configuration([]).iceTransportPolicy == RTCIceTransportPolicy.ALL


@pytest.mark.parametrize("urls", [[], ["stun:stun.example:3478"]])
def test_relay_without_any_turn_server_is_an_error_with_a_code(urls: list[str]) -> None:
    with pytest.raises(IceSetupError) as caught:
        rtc_configuration(urls, (), "relay")
    assert caught.value.code == NO_TURN_SERVER
    # a peer's own turn: URL is enough to try
    assert rtc_configuration(["turn:10.0.0.1:3478"], (), "relay").iceServers


SDP = (
    "v=0\r\na=candidate:1 1 udp 100 127.0.0.1 5000 typ host\r\n"
    "a=candidate:2 1 udp 10 127.0.0.1 6000 typ relay raddr 0.0.0.0 rport 9\r\n"
)


def test_candidate_types_and_the_relay_check() -> None:
    assert candidate_types(SDP) == ["host", "relay"]
    require_relay_candidate(SDP)
    with pytest.raises(IceSetupError) as caught:
        require_relay_candidate("v=0\r\na=candidate:1 1 udp 100 127.0.0.1 5000 typ host\r\n")
    assert caught.value.code == NO_RELAY_CANDIDATE
    assert NO_RELAY_CANDIDATE in str(caught.value)


async def test_the_selected_pair_is_none_before_ice_and_when_internals_change() -> None:
    pc = RTCPeerConnection()
    try:
        assert selected_candidate_types(pc) is None
        assert describe_path(pc) == "unknown"
    finally:
        await pc.close()
    pair = SimpleNamespace(
        local_candidate=SimpleNamespace(type="relay"),
        remote_candidate=SimpleNamespace(type="srflx"),
    )
    fake: Any = SimpleNamespace(
        sctp=SimpleNamespace(
            transport=SimpleNamespace(
                transport=SimpleNamespace(
                    iceGatherer=SimpleNamespace(_connection=SimpleNamespace(_nominated={1: pair}))
                )
            )
        )
    )
    assert selected_candidate_types(fake) == ("relay", "srflx")
    assert describe_path(fake) == "relay<->srflx"
    pair.remote_candidate.type = "relay"
    assert describe_path(fake) == "relay"
    fake.sctp.transport.transport.iceGatherer._connection._nominated = {}
    assert selected_candidate_types(fake) is None
    fake.sctp.transport.transport.iceGatherer = None  # aiortc renamed something
    assert selected_candidate_types(fake) is None


def test_a_credential_close_to_its_expiry_is_noticed() -> None:
    def entry(username: str) -> IceServer:
        return IceServer(urls=("turn:h:1",), username=username, credential="c")

    assert not ice_servers_expire_soon([], 1000)
    assert not ice_servers_expire_soon([entry("1100:p")], 1000, margin_s=60)
    assert ice_servers_expire_soon([entry("1100:p")], 1000, margin_s=100)
    assert ice_servers_expire_soon([entry("1100:p"), entry("999:p")], 1000)
    assert not ice_servers_expire_soon([entry("static-user"), entry("x:p")], 1000)
    # Not ASCII digits: "²".isdigit() is True but int("²") raises; never counts.
    for odd in ("²:p", "١٠:p", "+5:p", " 5:p", "1e3:p", ""):
        assert not ice_servers_expire_soon([entry(odd)], 10**9), odd


def test_a_short_lived_credential_is_not_renewed_before_every_connection() -> None:
    def entry(username: str) -> IceServer:
        return IceServer(urls=("turn:h:1",), username=username, credential="c")

    # A 20 s credential received at 1000: the margin is 10 s (half its life), not 60 s,
    # so it is still used at 1005 and renewed from 1010 on.
    short = [entry("1020:p")]
    assert not ice_servers_expire_soon(short, 1005, received_s=1000)
    assert ice_servers_expire_soon(short, 1010, received_s=1000)
    assert ice_servers_expire_soon(short, 1005)  # without received_s: the 60 s margin
    # A 1 h credential keeps the 60 s margin.
    hour = [entry("4600:p")]
    assert not ice_servers_expire_soon(hour, 4539, received_s=1000)
    assert ice_servers_expire_soon(hour, 4540, received_s=1000)
    # Received after its expiry (clock skew): expired, whatever the margin.
    assert ice_servers_expire_soon([entry("900:p")], 1000, received_s=1000)


def test_the_default_turn_ttl_is_one_hour() -> None:
    from signaling.config import DEFAULT_TURN_TTL_S, SignalingSettings

    assert DEFAULT_TURN_TTL_S == 3600
    settings = SignalingSettings(turn_urls=["turn:a:1"], turn_secret="s3cr3t-value")
    assert settings.turn_ttl_s == 3600


def test_the_turn_secret_as_a_flag_warns_like_the_token(capsys: pytest.CaptureFixture[str]) -> None:
    """``--turn-secret VALUE`` is accepted (as ``--token`` is) but warns that the process
    list shows it, naming the environment and the file instead, never the value."""
    from signaling.__main__ import settings_from_args

    cli = settings_from_args(["--turn-url", "turn:a:1", "--turn-secret", "s3cr3t-on-argv"])
    assert cli.turn_secret is not None
    err = capsys.readouterr().err
    assert "warning: --turn-secret puts a secret on the command line" in err
    assert "RTC_TURN_SECRET or --turn-secret-file" in err
    assert "s3cr3t-on-argv" not in err


async def test_a_malformed_server_frame_is_logged_without_its_values() -> None:
    """A server (or whoever sits in its place) sends an offer whose ice_servers entry is
    invalid and carries a credential: the client ignores the frame and logs its code,
    type and the invalid field's location, never the values or the validator's text."""
    import asyncio
    import base64
    import io
    import json
    import os

    from aiohttp import web
    from loguru import logger

    from rtc_worker.signaling_client import SignalingClient

    secret = "CRED-" + os.urandom(8).hex()
    bad = {"type": "offer", "from": "w", "fingerprint": None, "to": "c", "sdp": "v=0",
           "ice_servers": [{"urls": [secret], "username": "u", "credential": secret}]}  # fmt: skip
    sent = asyncio.Event()

    async def handler(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        nonce = base64.b64encode(os.urandom(32)).decode()
        await ws.send_str(json.dumps({"type": "challenge", "nonce": nonce}))
        await ws.receive()  # register
        await ws.send_str(json.dumps(
            {"type": "registered", "peer_id": "c", "fingerprint": None, "ice_servers": []}
        ))  # fmt: skip
        await ws.send_str(json.dumps(bad))
        sent.set()
        await ws.receive()
        return ws

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    lines = io.StringIO()
    sink = logger.add(lines, level="DEBUG")
    client = SignalingClient(f"ws://127.0.0.1:{port}/ws", "c", "client")
    try:
        await client.connect()
        await asyncio.wait_for(sent.wait(), 5)
        with pytest.raises(TimeoutError):  # the frame was dropped, not delivered
            await client.recv(timeout=0.5)
    finally:
        await client.close()
        logger.remove(sink)
        await runner.cleanup()
    text = lines.getvalue()
    assert "ignoring invalid frame from signaling: INVALID_FRAME offer field 'ice_servers" in text
    assert secret not in text
    assert "starts with one of" not in text  # the validator's own text stays out too
