"""``rtc_worker.relay_http.RelayHttp`` against the real storage service on loopback
(``rtc-signaling``'s app, SQLite, the folder): uploads and fetches, drops mid-PATCH and
mid-GET (a TCP proxy that cuts every connection, a server stopped and started again)
and their resumes, the error codes, and no secret in a log line or an error."""

from __future__ import annotations

import asyncio
import hashlib
import traceback
from collections.abc import AsyncIterator, Iterator

import pytest
from loguru import logger

from rtc_worker.relay_http import (
    FETCH_PIECE_BYTES,
    RELAY_GONE,
    RELAY_REFUSED,
    RELAY_SHORT,
    RELAY_UNREACHABLE,
    RelayHttp,
    RelayHttpError,
    RelayObject,
)
from signaling.keys import Role
from tests.conftest import StartService
from tests.storage_service import KEY, StorageService, fingerprint_of

MiB = 1 << 20


@pytest.fixture
def storage_engines() -> tuple[str, str]:
    """The client is the same on every engine: SQLite and the folder only."""
    return ("sqlite", "folder")


def content(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


class Proxy:
    """A TCP proxy to the service that can cut every connection through it at once."""

    def __init__(self, target: int) -> None:
        self.target = target
        self.port = 0
        self.cuts = 0
        self._pairs: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._server: asyncio.Server | None = None
        self._open = asyncio.Event()
        self._open.set()
        self.lose_next_answer = False

    def pause(self) -> None:
        """Hold new connections (accepted, not yet forwarded) until :meth:`resume`."""
        self._open.clear()

    def resume(self, target: int) -> None:
        """Forward the held connections, and new ones, to ``target``."""
        self.target = target
        self._open.set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def close(self) -> None:
        self.cut()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cut(self) -> None:
        """Abort every connection (both sides), as a dropped network does."""
        for down, up in list(self._pairs):
            down.transport.abort()
            up.transport.abort()
        self._pairs.clear()
        self.cuts += 1

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._open.wait()
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target)
        except OSError:
            writer.transport.abort()
            return
        pair = (writer, up_writer)
        self._pairs.add(pair)

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(MiB):
                    if source is up_reader and self.lose_next_answer:
                        self.lose_next_answer = False  # the answer is lost on the way
                        self.cut()
                        return
                    sink.write(data)
                    await sink.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                sink.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
        self._pairs.discard(pair)


@pytest.fixture
async def service(start_storage_service: StartService) -> StorageService:
    svc: StorageService = await start_storage_service(disk_reserve_bytes=0)
    return svc


@pytest.fixture
async def proxy(service: StorageService) -> AsyncIterator[Proxy]:
    relay_proxy = Proxy(service.port)
    await relay_proxy.start()
    yield relay_proxy
    await relay_proxy.close()


@pytest.fixture
def logs() -> Iterator[list[str]]:
    """Every log line (DEBUG and up) written meanwhile, with its exception if any."""
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="DEBUG")
    yield lines
    logger.remove(sink)


def pieces_of(data: bytes, calls: list[int], size: int = MiB) -> object:
    """A ``pieces(offset)`` over ``data`` that records each offset it is called with."""

    async def pieces(offset: int) -> AsyncIterator[bytes]:
        calls.append(offset)
        view = memoryview(data)
        for at in range(offset, len(data), size):
            yield bytes(view[at : at + size])

    return pieces


async def fetch_all(relay: RelayHttp, obj: RelayObject, start: int, end: int) -> bytes:
    return b"".join([piece async for piece in relay.fetch(obj.upload_id, obj.token, start, end)])


# ------------------------------------------------------------------ the road


async def test_upload_fetch_delete(service: StorageService) -> None:
    relay = RelayHttp(service.url(""), KEY)
    try:
        assert await relay.reachable()
        data = content(5 * MiB + 123)
        calls: list[int] = []
        obj = await relay.upload(len(data), pieces_of(data, calls))  # type: ignore[arg-type]
        assert calls == [0]
        assert obj.size == len(data) and obj.sha256 == hashlib.sha256(data).hexdigest()
        assert obj.expires.endswith("Z")
        sizes = [len(p) async for p in relay.fetch(obj.upload_id, obj.token, 0, len(data))]
        assert sum(sizes) == len(data) and max(sizes) <= FETCH_PIECE_BYTES
        assert await fetch_all(relay, obj, 1000, 3 * MiB + 7) == data[1000 : 3 * MiB + 7]
        await relay.delete(obj.upload_id, obj.token)
        await relay.delete(obj.upload_id, obj.token)  # again: best effort, never raises
        with pytest.raises(RelayHttpError) as gone:
            await fetch_all(relay, obj, 0, 10)
        assert (gone.value.code, gone.value.status) == (RELAY_GONE, 404)
    finally:
        await relay.close()


async def test_reachable_only_with_a_valid_key_and_a_running_service(
    service: StorageService,
) -> None:
    for relay, expected in (
        (RelayHttp(service.url(""), KEY), True),
        (RelayHttp(service.url(""), "rtck_wrong_key"), False),
        (RelayHttp("http://127.0.0.1:9", KEY), False),  # nothing listens
    ):
        try:
            assert await relay.reachable() is expected
        finally:
            await relay.close()


async def test_upload_cut_mid_patch_resumes_from_the_services_offset(
    service: StorageService, proxy: Proxy
) -> None:
    data = content(12 * MiB, seed=2)
    calls: list[int] = []

    async def pieces(offset: int) -> AsyncIterator[bytes]:
        calls.append(offset)
        for at in range(offset, len(data), MiB):
            if len(calls) == 1 and at == 6 * MiB:
                proxy.cut()  # the network drops mid-body
                await asyncio.sleep(0.05)
            yield data[at : at + MiB]

    relay = RelayHttp(proxy.url, KEY, backoff_s=0.05)
    try:
        obj = await relay.upload(len(data), pieces)
    finally:
        await relay.close()
    assert len(calls) == 2 and calls[0] == 0 and 0 < calls[1] <= 6 * MiB, calls
    assert obj.sha256 == hashlib.sha256(data).hexdigest()
    got = await service.request(
        "GET", f"/relay/{obj.upload_id}", key=KEY, headers={"X-Relay-Token": obj.token}
    )
    assert got.body == data


async def test_an_answer_lost_after_the_last_byte_is_asked_again_not_sent_again(
    service: StorageService, proxy: Proxy
) -> None:
    data = content(3 * MiB, seed=8)
    calls: list[int] = []

    async def pieces(offset: int) -> AsyncIterator[bytes]:
        calls.append(offset)
        proxy.lose_next_answer = True  # the service completes it; its 204 never arrives
        for at in range(offset, len(data), MiB):
            yield data[at : at + MiB]

    relay = RelayHttp(proxy.url, KEY, backoff_s=0.05)
    try:
        obj = await relay.upload(len(data), pieces)
        assert await fetch_all(relay, obj, 0, len(data)) == data
    finally:
        await relay.close()
    assert calls == [0] and proxy.cuts == 1  # HEAD gave the object: no byte sent twice
    assert obj.sha256 == hashlib.sha256(data).hexdigest()


async def test_upload_survives_the_service_stopped_and_started_mid_patch(
    service: StorageService, proxy: Proxy
) -> None:
    data = content(8 * MiB, seed=3)
    calls: list[int] = []
    bounced: list[asyncio.Task[None]] = []

    async def bounce() -> None:
        await service.restart()  # the partial and its record survive
        proxy.resume(service.port)

    async def pieces(offset: int) -> AsyncIterator[bytes]:
        calls.append(offset)
        for at in range(offset, len(data), MiB):
            if len(calls) == 1 and at == 4 * MiB:
                proxy.pause()  # the client's next requests wait for the new server
                proxy.cut()
                bounced.append(asyncio.ensure_future(bounce()))
            yield data[at : at + MiB]

    relay = RelayHttp(proxy.url, KEY, backoff_s=0.05)
    try:
        obj = await relay.upload(len(data), pieces)
        assert await fetch_all(relay, obj, 0, len(data)) == data
    finally:
        await relay.close()
    await bounced[0]
    assert len(calls) == 2 and 0 < calls[1] <= 4 * MiB, calls


async def test_fetch_cut_midway_raises_and_resumes_by_range(
    service: StorageService, proxy: Proxy
) -> None:
    data = content(16 * MiB, seed=4)
    direct = RelayHttp(service.url(""), KEY)
    relay = RelayHttp(proxy.url, KEY, backoff_s=0.05)
    try:
        obj = await direct.upload(len(data), pieces_of(data, []))  # type: ignore[arg-type]
        received = bytearray()
        with pytest.raises(RelayHttpError) as cut:
            async for piece in relay.fetch(obj.upload_id, obj.token, 0, len(data)):
                received += piece
                if len(received) >= 2 * MiB and proxy.cuts == 0:
                    proxy.cut()
        assert cut.value.code == RELAY_UNREACHABLE
        assert 2 * MiB <= len(received) < len(data)
        received += await fetch_all(relay, obj, len(received), len(data))  # the resume
        assert bytes(received) == data
    finally:
        await direct.close()
        await relay.close()


async def test_fetch_while_the_service_is_down_then_back(
    service: StorageService, proxy: Proxy
) -> None:
    data = content(MiB, seed=5)
    relay = RelayHttp(proxy.url, KEY, retries=2, backoff_s=0.01)
    try:
        obj = await relay.upload(len(data), pieces_of(data, []))  # type: ignore[arg-type]
        await service.runner.cleanup()  # stopped
        with pytest.raises(RelayHttpError) as down:
            await fetch_all(relay, obj, 0, len(data))
        assert (down.value.code, down.value.status) == (RELAY_UNREACHABLE, None)
        await service.restart()
        proxy.target = service.port
        assert await fetch_all(relay, obj, 0, len(data)) == data
    finally:
        await relay.close()


# ------------------------------------------------------------------ errors


async def test_refusals_are_coded(service: StorageService) -> None:
    data = content(100_000, seed=6)
    relay = RelayHttp(service.url(""), KEY, retries=2, backoff_s=0.01)
    stranger = RelayHttp(service.url(""), "rtck_0000000000000000_" + "x" * 43)
    try:
        obj = await relay.upload(len(data), pieces_of(data, []))  # type: ignore[arg-type]
        cases = {
            "a token of nothing": (relay, obj._replace(token="A" * 130), 0, 10),
            "another id": (relay, obj._replace(upload_id="f" * 32), 0, 10),
            "an unknown key": (stranger, obj, 0, 10),
            "past the end": (relay, obj, 0, len(data) + 1),
            "starting past the end": (relay, obj, len(data), len(data) + 5),
        }
        found = {}
        for name, (client, target, start, end) in cases.items():
            with pytest.raises(RelayHttpError) as refused:
                await fetch_all(client, target, start, end)
            found[name] = (refused.value.code, refused.value.status)
        assert found == {
            "a token of nothing": (RELAY_GONE, 404),
            "another id": (RELAY_GONE, 404),
            "an unknown key": (RELAY_REFUSED, 401),
            "past the end": (RELAY_SHORT, 206),
            "starting past the end": (RELAY_SHORT, 416),
        }
        with pytest.raises(RelayHttpError) as no_key:
            await stranger.upload(len(data), pieces_of(data, []))  # type: ignore[arg-type]
        assert (no_key.value.code, no_key.value.status) == (RELAY_REFUSED, 401)
        with pytest.raises(ValueError):
            await fetch_all(relay, obj, 10, 10)
        with pytest.raises(ValueError):
            await relay.upload(0, pieces_of(b"", []))  # type: ignore[arg-type]
    finally:
        await relay.close()
        await stranger.close()


async def test_an_upload_past_the_quota_is_refused_with_its_code(
    start_storage_service: StartService,
) -> None:
    service = await start_storage_service(disk_reserve_bytes=0, upload_quota_bytes=MiB)
    key = await service.make_key(Role.CLIENT, "c", fingerprint_of("c"))
    relay = RelayHttp(service.url(""), key)
    try:
        with pytest.raises(RelayHttpError) as refused:
            await relay.upload(2 * MiB, pieces_of(content(2 * MiB), []))  # type: ignore[arg-type]
    finally:
        await relay.close()
    assert (refused.value.code, refused.value.status) == (RELAY_REFUSED, 413)
    assert refused.value.service_code == "QUOTA_EXCEEDED"


async def test_the_callers_pieces_are_checked_and_their_errors_kept(
    service: StorageService,
) -> None:
    relay = RelayHttp(service.url(""), KEY, backoff_s=0.01)
    calls: list[int] = []

    class DiskGone(Exception):
        pass

    async def failing(offset: int) -> AsyncIterator[bytes]:
        calls.append(offset)
        yield b"x" * 1000
        raise DiskGone("the source file vanished")

    try:
        with pytest.raises(ValueError, match="yielded 1000 bytes"):
            await relay.upload(2000, pieces_of(b"x" * 1000, []))  # type: ignore[arg-type]
        with pytest.raises(ValueError, match="more than"):
            await relay.upload(500, pieces_of(b"x" * 1000, []))  # type: ignore[arg-type]
        with pytest.raises(DiskGone):
            await relay.upload(2000, failing)
        assert calls == [0]  # the caller's own failure is not retried
    finally:
        await relay.close()
    # each upload given up was terminated at once: it holds no quota until it expires
    assert {record.status for record in await service.db.all_uploads()} == {"cancelled"}


# ------------------------------------------------------------------ secrets


async def test_no_key_or_token_in_logs_errors_or_reprs(
    service: StorageService, proxy: Proxy, logs: list[str]
) -> None:
    key = await service.make_key(Role.WORKER, "w")
    data = content(3 * MiB, seed=7)
    relay = RelayHttp(proxy.url, key, retries=2, backoff_s=0.01)
    texts: list[str] = [repr(relay)]
    try:
        calls: list[int] = []

        async def pieces(offset: int) -> AsyncIterator[bytes]:
            calls.append(offset)
            for at in range(offset, len(data), MiB):
                if len(calls) == 1 and at == MiB:
                    proxy.cut()
                    await asyncio.sleep(0.05)
                yield data[at : at + MiB]

        obj = await relay.upload(len(data), pieces)
        texts.append(repr(obj))
        texts.append(str(obj.__repr__()))
        failures: list[BaseException] = []
        for start, end, token in ((0, 10, "A" * 130), (0, len(data) + 1, obj.token)):
            try:
                await fetch_all(relay, obj._replace(token=token), start, end)
            except RelayHttpError as exc:
                failures.append(exc)
        try:
            async for _ in relay.fetch(obj.upload_id, obj.token, 0, len(data)):
                proxy.cut()
        except RelayHttpError as exc:
            failures.append(exc)
        proxy.target = 9  # nothing listens: the retries run out
        try:
            await fetch_all(relay, obj, 0, 10)
        except RelayHttpError as exc:
            failures.append(exc)
        await relay.delete(obj.upload_id, obj.token)  # fails: logged, never raised
        assert len(failures) == 4
        for exc in failures:
            texts += [str(exc), repr(exc), "".join(traceback.format_exception(exc))]
    finally:
        await relay.close()
    everything = "\n".join(texts + logs)
    assert obj.upload_id in everything  # the lines name the object...
    assert key not in everything and key.rsplit("_", 1)[1] not in everything
    assert obj.token not in everything  # ...never the secrets
    assert obj.token[:40] not in everything
