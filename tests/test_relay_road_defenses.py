"""The relay road's HTTP clients against storage services that misbehave: a redirect to
another host, a service that stops reading a PATCH or trickles a GET, one that is down,
one that sends more than the range asked; and the worker's fetch when its own code
fails. Each service is a real aiohttp server on loopback, written as the attacker (or
the broken service) would; the worker's side is the real RelayHttp, RelayFetch and
PartialFile."""

from __future__ import annotations

import asyncio
import hashlib
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web

from protocol.errors import RelayEndCode, TransferErrorCode
from protocol.events import StoreFailed
from protocol.relay_crypto import ChunkCipher, RelaySecret
from protocol.relay_events import FetchRelayPart, RelayFailed, RelayFetched
from protocol.relay_messages import RelayPart
from protocol.transfer_messages import FileMeta
from rtc_worker.metrics import WorkerMetrics
from rtc_worker.relay_fetch import RelayFetch, RelayRoad
from rtc_worker.relay_http import RELAY_REFUSED, RELAY_UNREACHABLE, RelayHttp, RelayHttpError
from rtc_worker.results_client import REDIRECT_REFUSED, ResultsServiceClient, ResultsServiceError
from rtc_worker.settings import WorkerSettings
from rtc_worker.storage import BlobStore, PartialFile

CHUNK = 4096
KEY = "rtck_victimkey_" + "K" * 40
TOKEN = "victim-relay-token-" + "T" * 20
UPLOAD_ID = "ab" * 16
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Stub:
    """A real aiohttp server on loopback; every request's headers are kept."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.seen: list[tuple[str, str, dict[str, str]]] = []
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.seen.append((request.method, request.path, dict(request.headers)))
        return await self.handler(request)

    async def start(self) -> Stub:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False, shutdown_timeout=0.1)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


async def started(handler: Handler) -> Stub:
    return await Stub(handler).start()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sealed(data: bytes, secret: RelaySecret) -> bytes:
    """The relay object of a one-part file: every chunk sealed."""
    cipher = ChunkCipher(secret, sha(data), len(data), CHUNK)
    return b"".join(
        cipher.seal(i, data[i * CHUNK : (i + 1) * CHUNK]) for i in range(cipher.chunk_count)
    )


def one_part(data: bytes, secret: RelaySecret) -> FetchRelayPart:
    part = RelayPart(
        sha(data), 0, len(data), CHUNK, secret.key, secret.nonce_prefix, UPLOAD_ID, TOKEN
    )
    return FetchRelayPart(1, part, FileMeta("f.bin", len(data), sha(data), 65536), 0)


class Receiver:
    """A worker's receiving side: a blob store's partial and a RelayFetch into it."""

    def __init__(self, tmp_path: Path, data: bytes, road: RelayRoad) -> None:
        self.partial = BlobStore(tmp_path / "store").open_partial(
            "p1", len(data), "f.bin", sha256=sha(data)
        )
        self.reports: list[tuple[object, int]] = []  # (outcome, bytes on disk then)

        async def partial_of(serial: int) -> PartialFile | None:
            return None if self.partial.closed else self.partial

        def report(outcome: object) -> None:
            self.reports.append((outcome, self.partial.on_disk))

        self.fetcher = RelayFetch(road, partial_of, report)

    async def run(self, action: FetchRelayPart, limit_s: float = 10.0) -> object:
        await self.fetcher.start(action)
        assert self.fetcher._task is not None
        async with asyncio.timeout(limit_s):
            await self.fetcher._task
        return self.reports[-1][0]


def road_of(url: str, **http: Any) -> RelayRoad:
    http.setdefault("timeout_s", 1.0)
    return RelayRoad(RelayHttp(url, KEY, **http), retries=2, backoff_s=0.01)


# ------------------------------------------------------------ 1. redirects


async def test_a_redirect_to_another_host_never_carries_the_key_or_the_token(
    tmp_path: Path,
) -> None:
    # The attacker's host records whatever reaches it.
    async def record(request: web.Request) -> web.StreamResponse:
        return web.Response(status=200)

    attacker = await started(record)

    # The storage service (or whoever answers at its URL) redirects every request there.
    async def redirect(request: web.Request) -> web.StreamResponse:
        raise web.HTTPTemporaryRedirect(attacker.url + request.path_qs)

    storage = await started(redirect)
    relay = RelayHttp(storage.url, KEY, timeout_s=2.0, retries=1)
    try:
        with pytest.raises(RelayHttpError) as fetched:
            async for _ in relay.fetch(UPLOAD_ID, TOKEN, 0, 100):
                pass
        assert fetched.value.code == RELAY_REFUSED and fetched.value.status == 307
        with pytest.raises(RelayHttpError) as uploaded:
            await relay.upload(10, lambda _o: _pieces(b"x" * 10))
        assert uploaded.value.code == RELAY_REFUSED and uploaded.value.status == 307
        assert not await relay.reachable()
        await relay.delete(UPLOAD_ID, TOKEN)  # best effort: never raises

        results = ResultsServiceClient(storage.url, KEY, retries=0, timeout_s=5.0)
        zip_path = tmp_path / "r.zip"
        zip_path.write_bytes(b"PK\x05\x06" + b"\0" * 18)
        with pytest.raises(ResultsServiceError) as up:
            await results.upload(lambda: zip_path.open("rb"), "job", owner="o")
        assert up.value.code == REDIRECT_REFUSED and up.value.status == 307
        with pytest.raises(ResultsServiceError) as down:
            await results.download("job", tmp_path / "out", token=TOKEN)
        assert down.value.code == REDIRECT_REFUSED
    finally:
        await relay.close()
        await storage.close()
        await attacker.close()
    # The attacker got nothing: no request at all, so neither the key nor the token.
    assert attacker.seen == []
    assert len(storage.seen) >= 6


async def _pieces(data: bytes) -> AsyncIterator[bytes]:
    yield data


# ------------------------------------------------------------ 2. stalled services


async def test_a_service_that_stops_reading_the_patch_body_ends_the_upload(
    tmp_path: Path,
) -> None:
    stalled = asyncio.Event()

    async def tus(request: web.Request) -> web.StreamResponse:
        if request.method == "POST":
            return web.Response(status=201, headers={"Location": f"/files/{UPLOAD_ID}"})
        if request.method == "PATCH":
            stalled.set()
            await asyncio.Event().wait()  # takes the request, never reads its body
        return web.Response(status=204)

    service = await started(tus)
    length = 64 << 20  # far more than the socket buffers hold
    relay = RelayHttp(service.url, KEY, timeout_s=0.5, retries=1, min_rate_bytes_s=200e6)
    block = b"\0" * (1 << 20)

    async def pieces(offset: int) -> AsyncIterator[bytes]:
        for _ in range(offset, length, len(block)):
            yield block

    started_at = asyncio.get_running_loop().time()
    try:
        with pytest.raises(RelayHttpError) as failed:
            async with asyncio.timeout(10):  # without a deadline: blocked for ever
                await relay.upload(length, pieces)
    finally:
        await relay.close()
        await service.close()
    assert stalled.is_set()
    assert failed.value.code == RELAY_UNREACHABLE
    assert asyncio.get_running_loop().time() - started_at < 5


def trickling(body: bytes, *, burst: int, pause_s: float) -> Handler:
    """A GET handler that answers the range asked of ``body`` with a correct 206 and
    sends it ``burst`` bytes every ``pause_s`` seconds (never long enough silent for a
    read timeout)."""

    async def handle(request: web.Request) -> web.StreamResponse:
        low, high = map(int, request.headers["Range"].removeprefix("bytes=").split("-"))
        response = web.StreamResponse(
            status=206,
            headers={
                "Content-Range": f"bytes {low}-{high}/{len(body)}",
                "Content-Length": str(high - low + 1),
            },
        )
        await response.prepare(request)
        for at in range(low, high + 1, burst):
            await response.write(body[at : min(at + burst, high + 1)])
            await asyncio.sleep(pause_s)
        return response

    return handle


async def test_a_trickled_get_ends_with_relay_unreachable() -> None:
    service = await started(trickling(b"z" * 1000, burst=1, pause_s=0.1))
    relay = RelayHttp(service.url, KEY, timeout_s=0.5, retries=1, min_rate_bytes_s=10_000)
    started_at = asyncio.get_running_loop().time()
    got = 0
    try:
        with pytest.raises(RelayHttpError) as failed:
            async with asyncio.timeout(10):  # 1000 bytes at 10 B/s: 100 s without a deadline
                async for piece in relay.fetch(UPLOAD_ID, TOKEN, 0, 1000):
                    got += len(piece)
    finally:
        await relay.close()
        await service.close()
    assert failed.value.code == RELAY_UNREACHABLE
    assert got < 1000
    assert asyncio.get_running_loop().time() - started_at < 3


async def test_a_fetch_fed_one_chunk_per_request_gives_up_after_the_retries(
    tmp_path: Path,
) -> None:
    # The service sends a whole chunk every 0.25 s, just under the read timeout (0.3 s):
    # every request brings new chunks, at 16 KB/s, far below the minimum rate (1 MB/s).
    data = secrets.token_bytes(64 * CHUNK)
    secret = RelaySecret.generate()
    body = sealed(data, secret)
    service = await started(trickling(body, burst=CHUNK + 16, pause_s=0.25))
    road = road_of(service.url, timeout_s=0.3, min_rate_bytes_s=1e6)
    receiver = Receiver(tmp_path, data, road)
    started_at = asyncio.get_running_loop().time()
    try:
        ended = await receiver.run(one_part(data, secret), limit_s=10)
    finally:
        await road.close()
        await service.close()
    assert isinstance(ended, RelayFailed) and ended.code == RelayEndCode.RELAY_UNREACHABLE
    assert ended.on_disk < len(data)
    assert asyncio.get_running_loop().time() - started_at < 3
    assert len(service.seen) == road.retries


# ------------------------------------------------------------ 3. retries not nested


async def test_a_worker_fetch_from_a_service_that_is_down_makes_exactly_its_retries(
    tmp_path: Path,
) -> None:
    async def down(request: web.Request) -> web.StreamResponse:
        return web.Response(status=503)

    service = await started(down)
    settings = WorkerSettings(
        data_dir=tmp_path / "data",
        shared_root_candidates=[],
        storage_url=service.url,
        storage_api_key=KEY,
        relay_fetch_retries=3,
        relay_fetch_timeout_s=1.0,
    )
    road = RelayRoad.for_worker(settings, WorkerMetrics())
    assert road is not None
    road.backoff_s = 0.01
    data = secrets.token_bytes(2 * CHUNK)
    receiver = Receiver(tmp_path, data, road)
    try:
        ended = await receiver.run(one_part(data, RelaySecret.generate()))
    finally:
        await road.close()
        await service.close()
    assert isinstance(ended, RelayFailed) and ended.code == RelayEndCode.RELAY_UNREACHABLE
    assert [method for method, _path, _headers in service.seen] == ["GET"] * 3


# ------------------------------------------------------------ 4. unexpected errors


async def test_an_unexpected_error_in_the_fetch_ends_the_transfer_with_a_code(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = secrets.token_bytes(2 * 256 * CHUNK)  # 2 MiB: a batch is taken
    secret = RelaySecret.generate()
    body = sealed(data, secret)
    service = await started(trickling(body, burst=1 << 20, pause_s=0))
    road = road_of(service.url)
    receiver = Receiver(tmp_path, data, road)

    def broken() -> None:
        raise RuntimeError("a batch is already in flight")

    monkeypatch.setattr(receiver.partial, "take_batch", broken)
    try:
        ended = await receiver.run(one_part(data, secret))
    finally:
        await road.close()
        await service.close()
    assert isinstance(ended, StoreFailed) and ended.code == TransferErrorCode.CANCELLED
    assert "RuntimeError" in ended.detail and TOKEN not in ended.detail


# ------------------------------------------------------------ 5. bytes past the range


async def test_bytes_past_the_range_asked_never_reach_the_file(tmp_path: Path) -> None:
    data = secrets.token_bytes(8 * CHUNK)
    secret = RelaySecret.generate()
    body = sealed(data, secret)

    async def too_much(request: web.Request) -> web.StreamResponse:
        # A correct Content-Range, then more bytes than it names.
        extra = b"\xff" * (3 * CHUNK)
        return web.Response(
            status=206,
            body=body + extra,
            headers={"Content-Range": f"bytes 0-{len(body) - 1}/{len(body)}"},
        )

    service = await started(too_much)
    road = road_of(service.url)
    receiver = Receiver(tmp_path, data, road)
    relay = RelayHttp(service.url, KEY, retries=1)
    try:
        ended = await receiver.run(one_part(data, secret))
        got = b""
        with pytest.raises(RelayHttpError) as failed:
            async for piece in relay.fetch(UPLOAD_ID, TOKEN, 0, len(body)):
                got += piece
    finally:
        await relay.close()
        await road.close()
        await service.close()
    assert ended == RelayFetched(1, len(data))
    assert receiver.partial.commit(sha(data), mime=False).sha256 == sha(data)
    assert got == body and failed.value.code == RELAY_UNREACHABLE


# ------------------------------------------------------------ 6. reported means on disk


async def test_relay_fetched_reports_only_bytes_on_disk(tmp_path: Path) -> None:
    data = secrets.token_bytes(100 * CHUNK)  # 400 KiB: less than a write batch
    secret = RelaySecret.generate()
    service = await started(trickling(sealed(data, secret), burst=1 << 20, pause_s=0))
    road = road_of(service.url)
    receiver = Receiver(tmp_path, data, road)
    try:
        ended = await receiver.run(one_part(data, secret))
    finally:
        await road.close()
        await service.close()
    assert ended == RelayFetched(1, len(data))
    assert receiver.reports[-1][1] == len(data)  # on disk when it was reported


# ------------------------------------------------------------ naming


def test_the_relay_road_counter_is_not_named_like_turn_traffic() -> None:
    metrics = WorkerMetrics()
    metrics.relay_bytes(5)
    assert metrics.registry.get_sample_value("rtc_worker_relay_road_bytes_total") == 5
    assert metrics.registry.get_sample_value("rtc_worker_relay_bytes_total") is None
