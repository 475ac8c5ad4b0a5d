"""GET /ready and GET /metrics of a real signaling server with its storage service on
loopback: real WebSocket peers, real HTTP, a real SQLite file or PostgreSQL server, a
real (tmpfs) folder."""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from prometheus_client.parser import text_string_to_metric_families

from rtc_worker.identity import Identity
from signaling.app import create_app, start_server
from signaling.config import SignalingSettings
from signaling.ops import add_readiness_check
from tests.conftest import tiny_tmpfs
from tests.signaling_helpers import RECEIVE_TIMEOUT, open_socket, register_with_key
from tests.storage_service import KEY, service_settings

pytestmark = pytest.mark.asyncio


@pytest_asyncio.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def get_json(http: aiohttp.ClientSession, url: str) -> tuple[int, Any]:
    async with http.get(url) as response:
        return response.status, await response.json()


async def scrape(http: aiohttp.ClientSession, url: str, **headers: str) -> dict[str, float]:
    """``GET url`` parsed as the Prometheus text format: ``{'name{label=value,...}': value}``."""
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        assert response.headers["Content-Type"].startswith("text/plain; version=")
        body = await response.text()
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


async def serve(settings: SignalingSettings) -> tuple[aiohttp.web.AppRunner, str]:
    runner, port = await start_server(settings)
    return runner, f"http://127.0.0.1:{port}"


async def test_ready_names_the_database_when_postgresql_stops(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    from tests.engine_postgres import PostgresUnavailable, postgres_server

    try:
        engine = postgres_server()
        server = engine.__enter__()
    except PostgresUnavailable as exc:
        pytest.skip(f"PostgreSQL unavailable: {exc}")
    stopped = False
    try:
        settings = service_settings(tmp_path / "store", database_url=server.url())
        runner, base = await serve(settings)
        try:
            status, body = await get_json(http, base + "/ready")
            assert (status, body) == (
                200,
                {"status": "ready", "checks": {"blob_store": "ok", "database": "ok"}},
            )
            engine.__exit__(None, None, None)  # the database server goes away
            stopped = True
            status, body = await get_json(http, base + "/ready")
            assert status == 503
            assert body["status"] == "unavailable"
            assert body["unreachable"] == ["database"]
            assert body["checks"]["blob_store"] == "ok"
            assert body["checks"]["database"].startswith(("unreachable (", "no answer within"))
            shown = json.dumps(body)
            assert "postgres" not in shown and "127.0.0.1" not in shown  # no URL, user, host
            status, health = await get_json(http, base + "/health")
            assert (status, health["status"]) == (200, "ok")  # alive, only not ready
            # the scrape still answers; the figures it cannot read are NaN, not stale
            samples = await scrape(http, base + "/metrics")
            assert math.isnan(samples["rtc_uploads_in_progress"])
            assert math.isnan(samples["rtc_stored_bytes"])
        finally:
            await runner.cleanup()
    finally:
        if not stopped:
            engine.__exit__(None, None, None)


async def test_ready_names_the_blob_store_when_its_folder_turns_read_only(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    with tiny_tmpfs(tmp_path / "volume", size="4m") as volume:
        settings = service_settings(
            volume / "store",
            database_path=tmp_path / "storage.db",
            disk_reserve_bytes=0,
            database_reserve_bytes=0,
        )
        runner, base = await serve(settings)
        try:
            status, body = await get_json(http, base + "/ready")
            assert status == 200, body
            remount = ["mount", "-o", "remount,ro", str(volume)]
            subprocess.run(remount, check=True, capture_output=True)
            status, body = await get_json(http, base + "/ready")
            assert status == 503
            assert body["unreachable"] == ["blob_store"]
            assert body["checks"] == {
                "blob_store": "unreachable (OSError)",
                "database": "ok",
            }
            remount = ["mount", "-o", "remount,rw", str(volume)]
            subprocess.run(remount, check=True, capture_output=True)
            status, body = await get_json(http, base + "/ready")
            assert status == 200, body
            assert not [p for p in (volume / "store").iterdir() if p.name.startswith(".ready")]
        finally:
            await runner.cleanup()


async def test_ready_names_redis_when_it_stops_and_recovers_when_it_is_back(
    http: aiohttp.ClientSession,
) -> None:
    from tests.engine_redis import RedisServer, require_redis_server

    redis = RedisServer(require_redis_server()).start()
    try:
        settings = SignalingSettings(host="127.0.0.1", port=0, redis_url=redis.url)
        runner, base = await serve(settings)
        try:
            assert await get_json(http, base + "/ready") == (
                200,
                {"status": "ready", "checks": {"redis": "ok"}},
            )
            redis.stop()
            status, body = await get_json(http, base + "/ready")
            assert (status, body["unreachable"]) == (503, ["redis"])
            assert body["checks"]["redis"].startswith(("unreachable (", "no answer within"))
            assert str(redis.port) not in json.dumps(body)
            redis.start()
            for _ in range(50):  # the client reconnects on a later command
                status, body = await get_json(http, base + "/ready")
                if status == 200:
                    break
                await asyncio.sleep(0.1)
            assert (status, body["checks"]) == (200, {"redis": "ok"})
        finally:
            await runner.cleanup()
    finally:
        redis.close()


async def test_ready_without_storage_checks_nothing_and_runs_registered_checks(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    settings = SignalingSettings(host="127.0.0.1", port=0, ready_timeout_s=0.2)
    app = create_app(settings)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        assert await get_json(http, base + "/ready") == (200, {"status": "ready", "checks": {}})
    finally:
        await runner.cleanup()

    # each part registers its own check: one that hangs and one that says no
    app = create_app(settings)

    async def hangs() -> None:
        await asyncio.sleep(30)

    async def says_no() -> bool:
        return False

    add_readiness_check(app, "redis", hangs)
    add_readiness_check(app, "blob_store", says_no)
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        started = asyncio.get_running_loop().time()
        status, body = await get_json(http, base + "/ready")
        assert asyncio.get_running_loop().time() - started < 5
        assert status == 503
        assert body == {
            "status": "unavailable",
            "unreachable": ["blob_store", "redis"],
            "checks": {"blob_store": "not ready", "redis": "no answer within 0.2 s"},
        }
    finally:
        await runner.cleanup()


async def test_metrics_show_peers_relays_uploads_stored_bytes_and_errors(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    runner, base = await serve(service_settings(tmp_path / "store"))
    url = base.replace("http", "ws") + "/ws"
    try:
        before = await scrape(http, base + "/metrics")
        assert before["rtc_connected_peers{role=worker}"] == 0
        assert before["rtc_uploads_in_progress"] == 0
        assert before["rtc_stored_bytes"] == 0

        worker, reply = await register_with_key(http, url, "gpu-1", "worker", Identity.generate())
        assert reply["type"] == "registered"
        client, reply = await register_with_key(http, url, "me", "client", Identity.generate())
        assert reply["type"] == "registered"
        await client.send_json({"type": "offer", "to": "gpu-1", "sdp": "v=0\r\n"})
        relayed = await worker.receive_json(timeout=RECEIVE_TIMEOUT)
        assert (relayed["type"], relayed["from"]) == ("offer", "me")
        await worker.send_json({"type": "answer", "to": "me", "sdp": "v=0\r\n"})
        assert (await client.receive_json(timeout=RECEIVE_TIMEOUT))["type"] == "answer"
        # an offer to nobody: an error frame with its code
        await client.send_json({"type": "offer", "to": "nobody", "sdp": "v=0\r\n"})
        error = await client.receive_json(timeout=RECEIVE_TIMEOUT)
        assert (error["type"], error["code"]) == ("error", "PEER_NOT_FOUND")
        # a socket that sends garbage before registering
        stranger, _ = await open_socket(http, url)
        await stranger.send_str("not json")
        error = await stranger.receive_json(timeout=RECEIVE_TIMEOUT)
        assert error["code"] == "INVALID_JSON"

        # storage: one result stored, one resumable upload begun, one refusal
        data = b"result bytes " * 100
        headers = {"X-API-Key": KEY, "X-Job-Id": "job-1"}
        async with http.post(base + "/upload", data=data, headers=headers) as response:
            assert response.status == 201, await response.text()
        again = {**headers, "X-Job-Id": "job-2"}  # the same content: stored once
        async with http.post(base + "/upload", data=data, headers=again) as response:
            assert response.status == 201, await response.text()
        init = {
            "file_name": "big.bin",
            "total_size": 10_000,
            "user_id": "u1",
            "user_role": "client",
            "content_type": "application/octet-stream",
        }
        async with http.post(
            base + "/api/upload/init", json=init, headers={"X-API-Key": KEY}
        ) as response:
            assert response.status == 201, await response.text()
        async with http.get(base + "/download/job-1") as response:  # no key
            assert response.status == 401

        samples = await scrape(http, base + "/metrics")
        assert samples["rtc_connected_peers{role=worker}"] == 1
        assert samples["rtc_connected_peers{role=client}"] == 1
        assert samples["rtc_relayed_frames_total{type=offer}"] == 1
        assert samples["rtc_relayed_frames_total{type=answer}"] == 1
        assert samples["rtc_relay_latency_seconds_count{type=offer}"] == 1
        assert 0 < samples["rtc_relay_latency_seconds_sum{type=offer}"] < 1
        assert samples["rtc_errors_total{code=PEER_NOT_FOUND,source=signaling}"] == 1
        assert samples["rtc_errors_total{code=INVALID_JSON,source=signaling}"] == 1
        assert samples["rtc_errors_total{code=UNAUTHORIZED,source=storage}"] == 1
        assert samples["rtc_uploads_in_progress"] == 1
        assert samples["rtc_stored_bytes"] == len(data)
        assert hashlib.sha256(data).hexdigest() not in json.dumps(samples)

        await worker.close()
        await asyncio.sleep(0.1)
        for _ in range(50):
            samples = await scrape(http, base + "/metrics")
            if samples["rtc_connected_peers{role=worker}"] == 0:
                break
            await asyncio.sleep(0.05)
        assert samples["rtc_connected_peers{role=worker}"] == 0
        for ws in (client, stranger):
            await ws.close()
    finally:
        await runner.cleanup()


async def test_outsider_without_the_metrics_token_gets_401_and_no_figures(
    http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    token = "metrics-secret-1"
    runner, base = await serve(SignalingSettings(host="127.0.0.1", port=0, metrics_token=token))
    try:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": token}):
            async with http.get(base + "/metrics", headers=headers) as response:
                body = await response.text()
                assert response.status == 401
                assert response.headers["WWW-Authenticate"] == 'Bearer realm="metrics"'
                assert "rtc_" not in body
        samples = await scrape(http, base + "/metrics", Authorization=f"Bearer {token}")
        assert samples["rtc_connected_peers{role=worker}"] == 0
        # the probes stay open to the orchestrator
        assert (await get_json(http, base + "/ready"))[0] == 200
        assert (await get_json(http, base + "/health"))[0] == 200
    finally:
        await runner.cleanup()


async def test_two_apps_in_one_process_keep_their_own_series(tmp_path: Path) -> None:
    first = create_app(SignalingSettings())
    second = create_app(SignalingSettings())
    from signaling.metrics import METRICS_KEY

    assert first[METRICS_KEY].registry is not second[METRICS_KEY].registry
