"""tus at /files/ for browser clients (CORS for the operator's allowed origins), for
clients that cannot send PATCH (``X-HTTP-Method-Override``), and its body deadlines
taken from the settings: a real server on loopback, real SQLite and real files."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from signaling.config import SignalingSettings
from signaling.tus import TUS_KEY
from tests.conftest import StartService
from tests.test_tus import Tus

PAGE = "https://uploads.lab.example"
"""The operator's upload page, on another origin than the storage service."""
FOREIGN = "https://evil.example"
ALLOW_HEADERS = {
    "authorization",
    "x-api-key",
    "content-type",
    "tus-resumable",
    "upload-length",
    "upload-offset",
    "upload-metadata",
    "upload-checksum",
    "upload-defer-length",
    "upload-concat",
    "x-http-method-override",
    "x-requested-with",
}
CORS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
    "Access-Control-Expose-Headers",
    "Access-Control-Allow-Credentials",
    "Access-Control-Max-Age",
)


def listed(value: str) -> set[str]:
    return {part.strip().lower() for part in value.split(",") if part.strip()}


@pytest.fixture
async def service(start_storage_service: StartService) -> Tus:
    svc: Tus = await start_storage_service(
        Tus, allowed_origins=[PAGE + "/"], disk_reserve_bytes=0, tus_idle_timeout_s=0.5
    )
    return svc


async def preflight(service: Tus, path: str, origin: str, method: str = "PATCH") -> dict[str, str]:
    got = await service.request(
        "OPTIONS",
        path,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": method,
            "Access-Control-Request-Headers": "authorization,tus-resumable,upload-offset,"
            "content-type,x-http-method-override",
        },
    )
    assert got.status == 204
    return got.headers


async def test_preflight_from_an_allowed_origin_gets_the_cors_headers(service: Tus) -> None:
    url = await service.create(10)
    for path in ("/files/", url):
        headers = await preflight(service, path, PAGE)
        assert headers["Access-Control-Allow-Origin"] == PAGE
        assert headers["Vary"] == "Origin"
        assert listed(headers["Access-Control-Allow-Methods"]) == {
            "post",
            "head",
            "patch",
            "delete",
            "options",
        }
        assert listed(headers["Access-Control-Allow-Headers"]) == ALLOW_HEADERS
        assert int(headers["Access-Control-Max-Age"]) > 0
        assert "Access-Control-Allow-Credentials" not in headers
        assert headers["Tus-Version"] == "1.0.0"  # still the tus discovery answer


async def test_answers_to_an_allowed_origin_expose_the_tus_headers(service: Tus) -> None:
    origin = {"Origin": PAGE}
    created = await service.tus("POST", "/files/", **origin, **{"Upload-Length": "10"})
    assert created.status == 201
    assert created.headers["Access-Control-Allow-Origin"] == PAGE
    exposed = listed(created.headers["Access-Control-Expose-Headers"])
    assert {"location", "upload-expires"} <= exposed
    url = created.headers["Location"]
    patched = await service.patch(url, 0, b"x" * 4, **origin)
    assert patched.status == 204
    assert patched.headers["Upload-Offset"] == "4"
    assert patched.headers["Access-Control-Allow-Origin"] == PAGE
    exposed = listed(patched.headers["Access-Control-Expose-Headers"])
    assert {"upload-offset", "upload-length", "tus-resumable", "upload-download-token"} <= exposed
    head = await service.tus("HEAD", url, **origin)
    assert head.headers["Access-Control-Allow-Origin"] == PAGE
    refused = await service.patch(url, 0, b"y", **origin)  # an error too is readable
    assert (refused.status, refused.code) == (409, "OFFSET_MISMATCH")
    assert refused.headers["Access-Control-Allow-Origin"] == PAGE


async def test_a_foreign_origin_gets_no_cors_headers(service: Tus) -> None:
    """The attacker's page (not in --allowed-origin, or a sandboxed ``null`` one) asks
    for a preflight and sends requests: no answer allows its origin, so the browser
    keeps every answer (the offset, the Location) from the page, and the victim's upload
    is unchanged."""
    url = await service.create(10)
    assert (await service.patch(url, 0, b"v" * 4)).status == 204
    for origin in (FOREIGN, "null", "https://uploads.lab.example.evil.example", PAGE + ":8443"):
        headers = await preflight(service, url, origin)
        assert not [name for name in CORS if name in headers], (origin, headers)
        assert headers["Vary"] == "Origin"
        head = await service.tus("HEAD", url, Origin=origin)
        assert head.status == 200
        assert not [name for name in CORS if name in head.headers]
        created = await service.tus("POST", "/files/", key=None, Origin=origin)
        assert created.status == 401
        assert not [name for name in CORS if name in created.headers]
    assert await service.offset(url) == 4


async def test_tus_discovery_without_an_origin_is_unchanged(service: Tus) -> None:
    got = await service.request("OPTIONS", "/files/")
    assert got.status == 204
    assert got.headers["Tus-Extension"].split(",")[0] == "creation"
    assert "Access-Control-Allow-Origin" not in got.headers


async def test_method_override_patch_delete_head(service: Tus) -> None:
    url = await service.create(10)
    patched = await service.tus(
        "POST",
        url,
        **{
            "X-HTTP-Method-Override": "PATCH",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        data=b"a" * 6,
    )
    assert patched.status == 204, patched.body
    assert patched.headers["Upload-Offset"] == "6"
    wrong = await service.tus(
        "POST",
        url,
        **{
            "X-HTTP-Method-Override": "patch",
            "Upload-Offset": "0",
            "Content-Type": "application/offset+octet-stream",
        },
        data=b"b",
    )
    assert (wrong.status, wrong.code) == (409, "OFFSET_MISMATCH")
    head = await service.tus("POST", url, **{"X-HTTP-Method-Override": "HEAD"})
    assert (head.status, head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (
        200,
        "6",
        "10",
    )
    deleted = await service.tus("POST", url, **{"X-HTTP-Method-Override": "DELETE"})
    assert deleted.status == 204
    assert (await service.tus("HEAD", url)).status == 410


async def test_a_bad_method_override_is_refused(service: Tus) -> None:
    """An override naming a method the upload has no route for (GET, PUT, OPTIONS, a
    made-up one), none at all, or one on /files/: refused with a code, the upload
    unchanged; another principal's upload stays 404 through the override."""
    url = await service.create(10)
    assert (await service.patch(url, 0, b"v" * 3)).status == 204
    for method in ("GET", "PUT", "OPTIONS", "POST", "TRACE", "PATCH, DELETE", ""):
        got = await service.tus("POST", url, **{"X-HTTP-Method-Override": method}, data=b"x")
        assert (got.status, got.code) == (400, "METHOD_OVERRIDE_INVALID"), method
    none = await service.tus("POST", url, data=b"x")
    assert (none.status, none.code) == (405, "METHOD_NOT_ALLOWED")
    on_root = await service.tus(
        "POST", "/files/", **{"X-HTTP-Method-Override": "DELETE", "Upload-Length": "1"}
    )
    assert (on_root.status, on_root.code) == (400, "METHOD_OVERRIDE_INVALID")
    old = await service.tus("POST", url, **{"X-HTTP-Method-Override": "GET"})
    assert old.status == 400
    assert await service.offset(url) == 3


async def test_deadlines_come_from_the_settings(service: Tus) -> None:
    """``tus_idle_timeout_s`` (0.5 s here) ends a stalled PATCH body with 408 and frees
    the upload; the bytes that arrived are kept."""
    tus = service.runner.app[TUS_KEY]
    assert (tus.read_timeout_s, tus.patch_deadline_s) == (0.5, 3600.0)
    url = await service.create(1000)
    release = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield b"s" * 100
        await release.wait()

    started = time.monotonic()
    got = await service.patch(url, 0, stalling())
    release.set()
    assert (got.status, got.code) == (408, "REQUEST_TIMEOUT")
    assert time.monotonic() - started < 5
    assert await service.offset(url) == 100


def test_deadline_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RTC_SIGNALING_TUS_IDLE_TIMEOUT_S", "7.5")
    monkeypatch.setenv("RTC_SIGNALING_TUS_PATCH_DEADLINE_S", "120")
    settings = SignalingSettings()
    assert (settings.tus_idle_timeout_s, settings.tus_patch_deadline_s) == (7.5, 120.0)
    with pytest.raises(ValueError, match="greater than 0"):
        SignalingSettings(tus_idle_timeout_s=0)
