"""A web page on another origin tries to use the signaling server through the visitor's
browser (cross-site WebSocket hijacking): any website can run
``new WebSocket("ws://127.0.0.1:PORT/ws")`` and, where no token is set, register and
list and call workers. The browser names the page's origin in ``Origin``, which the page
cannot change; the server refuses the upgrade (HTTP 403 ``ORIGIN_NOT_ALLOWED``) unless the
origin is its own or one the operator allowed, so the attacker gets no socket, no
challenge and no registration. Peers that send no ``Origin`` (rtc-worker, rtc-client) are
not affected.

Real server on loopback, real aiohttp client sending the header a browser would send.
"""

from __future__ import annotations

import base64
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio

from rtc_worker.identity import Identity
from signaling.origin import normalize_origin, same_origin
from tests.conftest import Signaling, start_signaling
from tests.signaling_helpers import open_socket, register_with_key

pytestmark = pytest.mark.live


@pytest_asyncio.fixture
async def server(tmp_path: object) -> AsyncIterator[Signaling]:
    """No token (a server on a laptop, the case the check matters most for); one
    allowed foreign origin."""
    server = await start_signaling(
        data_dir=str(tmp_path), allowed_origins=["https://lab.example.org"]
    )
    yield server
    await server.runner.cleanup()


def _upgrade_headers(origin: str | None) -> dict[str, str]:
    headers = {
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
    }
    if origin is not None:
        headers["Origin"] = origin
    return headers


async def _health(session: aiohttp.ClientSession, server: Signaling) -> dict[str, object]:
    async with session.get(f"http://127.0.0.1:{server.port}/health") as response:
        body: dict[str, object] = await response.json()
        return body


@pytest.mark.parametrize(
    "origin",
    [
        "http://evil.example",
        "https://evil.example",
        "http://127.0.0.1:1",  # a page served from another port of the same machine
        "http://localhost",
        "null",  # a sandboxed frame or a file: page
        "https://lab.example.org.evil.example",
        "not an origin",
    ],
)
async def test_a_page_on_another_origin_gets_no_websocket(server: Signaling, origin: str) -> None:
    async with aiohttp.ClientSession() as session:
        # The attacker's page opens the WebSocket: the browser adds its Origin.
        with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
            await session.ws_connect(server.url, headers={"Origin": origin})
        assert refused.value.status == 403
        # The refusal is an error frame with its code, and no socket was opened.
        async with session.get(server.url, headers=_upgrade_headers(origin)) as response:
            assert response.status == 403
            body = json.loads(await response.text())
        assert body["type"] == "error" and body["code"] == "ORIGIN_NOT_ALLOWED"
        assert (await _health(session, server))["peers"] == 0


async def test_the_attacker_cannot_register_while_the_worker_and_own_page_can(
    server: Signaling,
) -> None:
    worker = Identity.generate()
    async with aiohttp.ClientSession() as session:
        # The worker (no Origin, like rtc-worker) registers as before.
        ws, reply = await register_with_key(session, server.url, "worker-1", "worker", worker)
        assert reply["type"] == "registered", reply
        # The attacker's page cannot even get the challenge, let alone list the worker.
        with pytest.raises(aiohttp.WSServerHandshakeError):
            await session.ws_connect(server.url, headers={"Origin": "http://evil.example"})
        # The server's own page (same host and port as it was reached) and an allowed
        # origin get a socket and a challenge.
        for origin in (f"http://127.0.0.1:{server.port}", "https://lab.example.org"):
            page = await session.ws_connect(server.url, headers={"Origin": origin})
            first = json.loads((await page.receive(timeout=5)).data)
            assert first["type"] == "challenge"
            await page.close()
        # A peer without Origin also still gets its socket.
        plain, _ = await open_socket(session, server.url)
        await plain.close()
        health = await _health(session, server)
        assert health["workers"] == 1 and health["peers"] == 1
        await ws.close()


def test_origins_are_compared_in_normal_form() -> None:
    assert normalize_origin("HTTPS://Lab.Example.org:443/") == "https://lab.example.org"
    assert normalize_origin("http://a.example:8080") == "http://a.example:8080"
    for bad in ("lab.example.org", "ftp://a.example", "http://a.example/page", "null", ""):
        with pytest.raises(ValueError, match="not an origin"):
            normalize_origin(bad)
    assert same_origin("http://127.0.0.1:8765", "127.0.0.1:8765")
    assert not same_origin("http://127.0.0.1:8766", "127.0.0.1:8765")
    assert same_origin("https://sig.example.org", "sig.example.org")  # behind a TLS proxy
    assert not same_origin("https://sig.example.org:8443", "sig.example.org")
    assert not same_origin("http://evil.example:8765", "127.0.0.1:8765")


def test_allowed_origins_from_flags_and_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    from signaling.__main__ import settings_from_args

    argv = ["--allowed-origin", "https://A.example", "--allowed-origin", "http://b.example:81"]
    assert settings_from_args(argv).allowed_origins == ["https://a.example", "http://b.example:81"]
    monkeypatch.setenv("RTC_SIGNALING_ALLOWED_ORIGINS", "https://c.example, https://d.example")
    assert settings_from_args([]).allowed_origins == ["https://c.example", "https://d.example"]
    with pytest.raises(ValueError, match="not an origin"):
        settings_from_args(["--allowed-origin", "https://c.example/path"])


def test_in_chromium_a_page_on_another_port_cannot_open_the_websocket(
    browser_stack: Any, browser_netns: Any, browser_page: Any, tmp_path: Path
) -> None:
    """The attacker's steps in a real browser: a page served from another origin (another
    port of the same host) runs ``new WebSocket(...)`` to the signaling server. Chromium
    sends the page's Origin; the upgrade is refused and the socket never opens. The
    server's own page, in the same browser, still connects."""
    site = tmp_path / "evil"
    site.mkdir()
    (site / "index.html").write_text("<!doctype html><title>another site</title>")
    evil = browser_netns.start(
        "evil-site",
        [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(site), "0"],
        tmp_path / "evil.log",
    )
    try:
        port = evil.wait_for_line(r"port (\d+)")[1]
        open_socket = """(url) => new Promise((done) => {
          const ws = new WebSocket(url);
          ws.onopen = () => { ws.close(); done("open"); };
          ws.onerror = () => done("refused");
        })"""
        browser_page.goto(f"http://127.0.0.1:{port}/")
        assert browser_page.evaluate(open_socket, browser_stack.ws_url) == "refused"
        browser_page.goto(browser_stack.page_url)
        assert browser_page.evaluate(open_socket, browser_stack.ws_url) == "open"
    finally:
        evil.stop(5)
    assert "ORIGIN_NOT_ALLOWED" in browser_stack.signaling.log()
    assert f"http://127.0.0.1:{port}" in browser_stack.signaling.log()
