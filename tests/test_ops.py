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


CACHE_S = 0.5
"""The ``ready_cache_s`` of the tests that make an engine fail: its failure must show
within this time (plus one check's timeout)."""


async def ready_within(
    http: aiohttp.ClientSession, url: str, status: int, seconds: float
) -> tuple[int, Any]:
    """``GET url`` until it answers ``status``; fails when that takes over ``seconds``."""
    started = asyncio.get_running_loop().time()
    while True:
        got, body = await get_json(http, url)
        if got == status:
            return got, body
        assert asyncio.get_running_loop().time() - started < seconds, (got, body)
        await asyncio.sleep(0.05)


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
        settings = service_settings(
            tmp_path / "store", database_url=server.url(), ready_cache_s=CACHE_S
        )
        runner, base = await serve(settings)
        try:
            status, body = await get_json(http, base + "/ready")
            assert (status, body) == (
                200,
                {"status": "ready", "checks": {"blob_store": "ok", "database": "ok"}},
            )
            engine.__exit__(None, None, None)  # the database server goes away
            stopped = True
            status, body = await ready_within(http, base + "/ready", 503, CACHE_S + 2.5)
            assert body["status"] == "unavailable"
            assert body["unreachable"] == ["database"]
            assert body["checks"]["blob_store"] == "ok"
            assert body["checks"]["database"].startswith(("unreachable (", "no answer within"))
            shown = json.dumps(body)
            assert "postgres" not in shown and "127.0.0.1" not in shown  # no URL, user, host
            status, health = await get_json(http, base + "/health")
            assert (status, health["status"]) == (200, "ok")  # alive, only not ready
            # the scrape still answers; the figures it cannot read are NaN, not stale
            await asyncio.sleep(CACHE_S)
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
            ready_cache_s=CACHE_S,
        )
        runner, base = await serve(settings)
        try:
            status, body = await get_json(http, base + "/ready")
            assert status == 200, body
            remount = ["mount", "-o", "remount,ro", str(volume)]
            subprocess.run(remount, check=True, capture_output=True)
            status, body = await ready_within(http, base + "/ready", 503, CACHE_S + 2.5)
            assert body["unreachable"] == ["blob_store"]
            assert body["checks"] == {
                "blob_store": "unreachable (OSError)",
                "database": "ok",
            }
            remount = ["mount", "-o", "remount,rw", str(volume)]
            subprocess.run(remount, check=True, capture_output=True)
            status, body = await ready_within(http, base + "/ready", 200, CACHE_S + 2.5)
            assert not [p for p in (volume / "store").iterdir() if p.name.startswith(".ready")]
        finally:
            await runner.cleanup()


async def test_ready_names_redis_when_it_stops_and_recovers_when_it_is_back(
    http: aiohttp.ClientSession,
) -> None:
    from tests.engine_redis import RedisServer, require_redis_server

    redis = RedisServer(require_redis_server()).start()
    try:
        settings = SignalingSettings(
            host="127.0.0.1", port=0, redis_url=redis.url, ready_cache_s=CACHE_S
        )
        runner, base = await serve(settings)
        try:
            assert await get_json(http, base + "/ready") == (
                200,
                {"status": "ready", "checks": {"redis": "ok"}},
            )
            redis.stop()
            status, body = await ready_within(http, base + "/ready", 503, CACHE_S + 2.5)
            assert body["unreachable"] == ["redis"]
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
    runner, base = await serve(service_settings(tmp_path / "store", ready_cache_s=0))
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


async def start_app(app: aiohttp.web.Application) -> tuple[aiohttp.web.AppRunner, str]:
    runner = aiohttp.web.AppRunner(app)
    await runner.setup()
    site = aiohttp.web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}"


async def test_a_flood_of_ready_requests_makes_one_probe_per_engine(
    http: aiohttp.ClientSession, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An outsider sends 50 ``/ready`` and 50 ``/metrics`` requests at once (no key
    needed): the database, the blob store and a registered check are probed once
    each, the storage figures queried once, and every answer is complete."""
    import signaling.metrics
    from signaling.ops import CHECKS_KEY

    app = create_app(service_settings(tmp_path / "store"))  # ready_cache_s: 2 s default
    probes: dict[str, int] = {}

    def counted(name: str, check: Any) -> Any:
        async def probe() -> object:
            probes[name] = probes.get(name, 0) + 1
            await asyncio.sleep(0.05)  # slow enough for requests to overlap it
            return await check()

        return probe

    checks = app[CHECKS_KEY]
    for name, check in list(checks.items()):
        checks[name] = counted(name, check)

    async def also_redis() -> None:  # one more engine's check, as app.py registers it
        return None

    add_readiness_check(app, "redis", counted("redis", also_redis))
    queries = 0
    real_read = signaling.metrics._read_storage

    async def read_storage(*args: Any, **kwargs: Any) -> tuple[float, float]:
        nonlocal queries
        queries += 1
        return await real_read(*args, **kwargs)

    monkeypatch.setattr(signaling.metrics, "_read_storage", read_storage)
    runner, base = await start_app(app)
    try:
        answers = await asyncio.gather(*(get_json(http, base + "/ready") for _ in range(50)))
        assert probes == {"blob_store": 1, "database": 1, "redis": 1}
        expected = {
            "status": "ready",
            "checks": {"blob_store": "ok", "database": "ok", "redis": "ok"},
        }
        assert all(answer == (200, expected) for answer in answers), answers
        scrapes = await asyncio.gather(*(scrape(http, base + "/metrics") for _ in range(50)))
        assert queries == 1
        assert all(samples["rtc_stored_bytes"] == 0 for samples in scrapes)
        assert not [p for p in (tmp_path / "store").iterdir() if p.name.startswith(".ready")]
    finally:
        await runner.cleanup()


async def test_a_failure_is_reported_within_the_cache_time(
    http: aiohttp.ClientSession,
) -> None:
    """The answer is reused for ``ready_cache_s`` only: a check that starts failing
    shows as 503 within that time, not later."""
    app = create_app(SignalingSettings(host="127.0.0.1", port=0, ready_cache_s=CACHE_S))
    healthy = True
    probes = 0

    async def engine() -> bool:
        nonlocal probes
        probes += 1
        return healthy

    add_readiness_check(app, "database", engine)
    runner, base = await start_app(app)
    try:
        assert (await get_json(http, base + "/ready"))[0] == 200
        healthy = False  # the engine goes away
        failed_at = asyncio.get_running_loop().time()
        assert (await get_json(http, base + "/ready"))[0] == 200  # within the cache time
        _, body = await ready_within(http, base + "/ready", 503, CACHE_S + 0.5)
        assert asyncio.get_running_loop().time() - failed_at >= CACHE_S * 0.5
        assert body["checks"] == {"database": "not ready"}
        assert probes == 2  # the polls in between reused the answers
    finally:
        await runner.cleanup()


async def test_callers_during_a_running_probe_share_it_and_a_cancelled_one_leaves_it() -> None:
    """Single flight without a cache (``ttl_s=0``): callers arriving while a probe runs
    await it; a caller that goes away (a client hanging up) does not cancel it."""
    from signaling.probe_cache import CachedProbe

    release = asyncio.Event()
    runs = 0

    async def probe() -> str:
        nonlocal runs
        runs += 1
        await release.wait()
        return f"answer {runs}"

    cached = CachedProbe(probe, 0.0)
    callers = [asyncio.create_task(cached()) for _ in range(20)]
    await asyncio.sleep(0.01)
    callers[0].cancel()
    release.set()
    answers = await asyncio.gather(*callers[1:])
    assert runs == 1 and set(answers) == {"answer 1"}
    assert await cached() == "answer 2"  # no cache: the next call probes again
