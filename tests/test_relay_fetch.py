"""The worker's relay fetch (``rtc_worker.relay_fetch``) against the real storage service
on loopback (``rtc-signaling``'s app, SQLite, the folder) into a real partial file of a
real blob store: parts fetched and committed, every way a fetch ends (a chunk that does
not authenticate, a short object, a wrong token, a refused key, a service down, a halt,
a full disk), a cut body resumed at the last verified chunk, and background deletes.

The connection is left out: :class:`RelayFetch` is given the partial (what
``TransferIO.relay_partial`` gives it in a worker) and a list that collects its reports.
The end-to-end tests (``tests/test_e2e_relay.py``) run the whole road.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from protocol.errors import RelayEndCode, TransferErrorCode
from protocol.events import StoreFailed
from protocol.relay_events import (
    DeleteRelayObject,
    FetchRelayPart,
    RelayFailed,
    RelayFetched,
    RelayWritten,
)
from protocol.transfer_messages import FileMeta
from rtc_worker.metrics import WorkerMetrics
from rtc_worker.relay_fetch import RelayFetch, RelayRoad
from rtc_worker.relay_http import RelayHttp, RelayHttpError
from rtc_worker.settings import WorkerSettings
from rtc_worker.storage import BlobStore, PartialFile
from signaling.keys import Role
from tests.conftest import StartService
from tests.relay_helpers import Bend, PacedProxy, RawRelayPeer
from tests.storage_service import KEY, StorageService, fingerprint_of

CHUNK = 64 * 1024
NO_BEND = Bend()


@pytest.fixture
def storage_engines() -> tuple[str, str]:
    """The fetch is the same on every engine: SQLite and the folder only."""
    return ("sqlite", "folder")


def content(size: int, seed: int = 1) -> bytes:
    block = hashlib.sha256(str(seed).encode()).digest() * 2048  # 64 KiB
    return (block * (size // len(block) + 1))[:size]


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Bench:
    """One service, one sender with its own key, and fetches into a blob store."""

    def __init__(self, service: StorageService, tmp_path: Path, sender_key: str) -> None:
        self.service = service
        self.store = BlobStore(tmp_path / "worker-store")
        self.sender = RawRelayPeer(None, RelayHttp(service.url(""), sender_key), CHUNK)
        self.reports: list[object] = []
        self.https: list[RelayHttp] = [self.sender.http]
        self.partials: dict[int, PartialFile] = {}
        self.metrics = WorkerMetrics()

    def road(self, base_url: str | None = None, key: str = KEY, **values: Any) -> RelayRoad:
        http = RelayHttp(base_url or self.service.url(""), key, retries=2, backoff_s=0.05)
        self.https.append(http)
        values.setdefault("backoff_s", 0.05)
        return RelayRoad(http, counted=self.metrics.relay_bytes, **values)

    def open(self, data: bytes, serial: int = 1) -> PartialFile:
        partial = self.store.open_partial(f"p{serial}", len(data), "f.bin", sha256=sha(data))
        self.partials[serial] = partial
        return partial

    def fetcher(self, road: RelayRoad) -> RelayFetch:
        async def partial_of(serial: int) -> PartialFile | None:
            partial = self.partials.get(serial)
            return None if partial is None or partial.closed else partial

        return RelayFetch(road, partial_of, self.reports.append)

    async def fetch(
        self,
        fetcher: RelayFetch,
        data: bytes,
        offset: int,
        length: int,
        bend: Bend = NO_BEND,
        upload: bool = True,
    ) -> object:
        """Upload (unless ``upload`` is False: the last object again) and fetch a part;
        its last report."""
        if upload or not self.sender.objects:
            await self.sender.upload(data, offset, length, bend)
        part = self.sender.part_frame(data, offset, length, self.sender.objects[-1], bend)
        meta = FileMeta("f.bin", len(data), sha(data), 65536)
        start = self.partials[1].offset
        await fetcher.start(FetchRelayPart(1, part, meta, start))
        assert fetcher._task is not None
        await fetcher._task
        return self.reports[-1]

    @property
    def fetched(self) -> float:
        return self.metrics.registry.get_sample_value("rtc_worker_relay_road_bytes_total") or 0.0

    async def close(self) -> None:
        for http in self.https:
            await http.close()


@pytest_asyncio.fixture
async def bench(start_storage_service: StartService, tmp_path: Path) -> AsyncIterator[Bench]:
    service = await start_storage_service()
    key = await service.make_key(Role.CLIENT, "sender", fingerprint_of("sender"))
    state = Bench(service, tmp_path, key)
    try:
        yield state
    finally:
        await state.close()


async def test_parts_are_fetched_verified_and_committed(bench: Bench) -> None:
    data = content(44 * CHUNK + 1000)  # the last chunk is short
    partial = bench.open(data)
    fetcher = bench.fetcher(bench.road())
    bench.sender.secret = bench.sender.secret.generate()
    parts = ((0, 24 * CHUNK), (24 * CHUNK, 16 * CHUNK), (40 * CHUNK, 4 * CHUNK + 1000))
    for offset, length in parts:  # a part is flushed at its end: a batch needs 16 chunks
        assert await bench.fetch(fetcher, data, offset, length) == RelayFetched(1, offset + length)
    written = [r.on_disk for r in bench.reports if isinstance(r, RelayWritten)]
    assert written and all(on_disk % CHUNK == 0 for on_disk in written)  # batches of chunks
    assert partial.commit(sha(data), mime=False).sha256 == sha(data)
    assert bench.store.object_path(sha(data)).read_bytes() == data
    assert fetcher.plain == len(data)
    assert bench.fetched == fetcher.fetched == sum(o.size for o in bench.sender.objects)


@pytest.mark.parametrize(
    ("bend", "verified"),
    [(Bend(flip_chunk=5), 5), (Bend(swap_chunks=(2, 9)), 2), (Bend(other_key=True), 0)],
    ids=["tampered", "swapped", "wrong-key"],
)
async def test_only_authenticated_chunks_are_written(
    bench: Bench, bend: Bend, verified: int
) -> None:
    data = content(12 * CHUNK, seed=2)
    partial = bench.open(data)
    ended = await bench.fetch(bench.fetcher(bench.road()), data, 0, len(data), bend)
    assert isinstance(ended, RelayFailed)
    assert (ended.code, ended.on_disk) == (RelayEndCode.RELAY_CHUNK_INVALID, verified * CHUNK)
    assert "does not authenticate" in ended.detail
    assert (partial.offset, partial.on_disk) == (verified * CHUNK, verified * CHUNK)
    partial.close()
    key_file = bench.store.root / "partial" / "p1.part"
    assert key_file.read_bytes() == data[: verified * CHUNK]


async def test_an_object_shorter_than_its_part_is_an_invalid_chunk(bench: Bench) -> None:
    data = content(6 * CHUNK, seed=3)
    bench.open(data)
    await bench.sender.upload(data, 0, 4 * CHUNK)  # four chunks, named as six
    ended = await bench.fetch(bench.fetcher(bench.road()), data, 0, len(data), upload=False)
    assert isinstance(ended, RelayFailed)
    assert ended.code == RelayEndCode.RELAY_CHUNK_INVALID
    assert ended.on_disk == 0  # the range asked was refused before any byte


async def test_a_wrong_token_or_a_deleted_object_is_gone(bench: Bench) -> None:
    data = content(3 * CHUNK, seed=4)
    partial = bench.open(data)
    fetcher = bench.fetcher(bench.road())
    ended = await bench.fetch(fetcher, data, 0, len(data), Bend(token="not-the-token"))
    assert isinstance(ended, RelayFailed) and ended.code == RelayEndCode.RELAY_GONE
    relay_object = bench.sender.objects[-1]
    await bench.sender.http.delete(relay_object.upload_id, relay_object.token)
    ended = await bench.fetch(fetcher, data, 0, len(data), upload=False)
    assert isinstance(ended, RelayFailed) and ended.code == RelayEndCode.RELAY_GONE
    assert "RELAY_GONE" in ended.detail and relay_object.token not in ended.detail
    assert partial.on_disk == 0


async def test_a_refused_key_is_relay_refused(bench: Bench) -> None:
    data = content(2 * CHUNK, seed=5)
    bench.open(data)
    road = bench.road(key="rtck_0000000000000000_" + "A" * 43)
    ended = await bench.fetch(bench.fetcher(road), data, 0, len(data))
    assert isinstance(ended, RelayFailed) and ended.code == RelayEndCode.RELAY_REFUSED


async def test_a_service_that_stays_down_is_unreachable_after_the_retries(bench: Bench) -> None:
    data = content(2 * CHUNK, seed=6)
    bench.open(data)
    proxy = PacedProxy(bench.service.port)
    await proxy.start()
    await bench.sender.upload(data, 0, len(data))
    proxy.target_port = 1  # nothing listens there: every request is refused
    road = bench.road(proxy.http, retries=2)
    started = asyncio.get_running_loop().time()
    ended = await bench.fetch(bench.fetcher(road), data, 0, len(data), upload=False)
    await proxy.close()
    assert isinstance(ended, RelayFailed) and ended.code == RelayEndCode.RELAY_UNREACHABLE
    assert ended.on_disk == 0
    assert asyncio.get_running_loop().time() - started < 5


async def test_a_cut_body_resumes_at_the_last_verified_chunk(bench: Bench) -> None:
    data = content(48 * CHUNK, seed=7)  # 3 MiB
    partial = bench.open(data)
    proxy = PacedProxy(bench.service.port, rate=3e6)
    await proxy.start()
    fetcher = bench.fetcher(bench.road(proxy.http, retries=3))
    relay_object = await bench.sender.upload(data, 0, len(data))
    part = bench.sender.part_frame(data, 0, len(data), relay_object)
    meta = FileMeta("f.bin", len(data), sha(data), 65536)
    await fetcher.start(FetchRelayPart(1, part, meta, 0))
    async with asyncio.timeout(10):
        while proxy.downstream < relay_object.size // 2:
            await asyncio.sleep(0.01)
    proxy.cut()  # the connection drops in the middle of the body
    assert fetcher._task is not None
    await fetcher._task
    await proxy.close()
    assert bench.reports[-1] == RelayFetched(1, len(data))
    assert proxy.downstream > relay_object.size  # a second request was needed
    assert relay_object.size <= fetcher.fetched < 1.1 * relay_object.size  # one chunk again
    assert partial.commit(sha(data), mime=False).sha256 == sha(data)


async def test_a_halted_fetch_keeps_its_verified_chunks_on_disk(bench: Bench) -> None:
    data = content(48 * CHUNK, seed=8)
    partial = bench.open(data)
    proxy = PacedProxy(bench.service.port, rate=2e6)
    await proxy.start()
    fetcher = bench.fetcher(bench.road(proxy.http))
    relay_object = await bench.sender.upload(data, 0, len(data))
    part = bench.sender.part_frame(data, 0, len(data), relay_object)
    await fetcher.start(FetchRelayPart(1, part, FileMeta("f.bin", len(data), sha(data), 65536), 0))
    async with asyncio.timeout(10):
        while proxy.downstream < relay_object.size // 3:
            await asyncio.sleep(0.01)
    await fetcher.halt()
    await proxy.close()
    assert not fetcher.busy
    ended = bench.reports[-1]
    assert isinstance(ended, RelayFailed) and ended.code == RelayEndCode.STOPPED
    assert 0 < ended.on_disk < len(data) and ended.on_disk % CHUNK == 0
    assert (partial.offset, partial.on_disk) == (ended.on_disk, ended.on_disk)  # flushed
    await fetcher.halt()  # idle: nothing more
    assert bench.reports[-1] is ended


async def test_a_full_disk_ends_the_transfer_as_on_the_channel(bench: Bench) -> None:
    data = content(40 * CHUNK, seed=9)  # more than one 1 MiB batch
    partial = bench.open(data)
    partial.reserve_bytes = 1 << 62  # no disk has that much room left
    ended = await bench.fetch(bench.fetcher(bench.road()), data, 0, len(data))
    assert ended == StoreFailed(1, TransferErrorCode.DISK_FULL, "no space left on the receiver")


async def test_a_transfer_that_ended_meanwhile_is_not_fetched(bench: Bench) -> None:
    data = content(2 * CHUNK, seed=10)
    bench.open(data).close()  # e.g. a newer connection took it over
    road = bench.road()
    fetcher = bench.fetcher(road)
    await bench.sender.upload(data, 0, len(data))
    part = bench.sender.part_frame(data, 0, len(data), bench.sender.objects[-1])
    await fetcher.start(FetchRelayPart(1, part, FileMeta("f.bin", len(data), sha(data), 65536), 0))
    assert fetcher._task is not None
    await fetcher._task
    assert bench.reports == [] and bench.fetched == 0


async def test_deletes_remove_fetched_objects_in_the_background(bench: Bench) -> None:
    data = content(2 * CHUNK, seed=11)
    road = bench.road()
    relay_object = await bench.sender.upload(data, 0, len(data))
    road.delete(DeleteRelayObject(relay_object.upload_id, relay_object.token))
    assert "token" not in repr(DeleteRelayObject(relay_object.upload_id, relay_object.token))
    await road.close()
    with pytest.raises(RelayHttpError) as info:
        async for _ in bench.sender.http.fetch(relay_object.upload_id, relay_object.token, 0, 1):
            pass
    assert info.value.code == "RELAY_GONE"


def test_the_road_exists_only_with_the_workers_own_service_and_key(tmp_path: Path) -> None:
    base: dict[str, Any] = {"data_dir": tmp_path, "shared_root_candidates": []}
    metrics = WorkerMetrics()
    assert RelayRoad.for_worker(WorkerSettings(**base), metrics) is None
    url = {"storage_url": "http://127.0.0.1:9", "storage_api_key": "k"}
    assert RelayRoad.for_worker(WorkerSettings(**base, **url, relay_road=False), metrics) is None
    road = RelayRoad.for_worker(WorkerSettings(**base, **url, relay_fetch_retries=3), metrics)
    assert road is not None and road.retries == 3
    assert "k" not in repr(road.http).replace("api_key", "")
    with pytest.raises(ValueError):
        RelayRoad(road.http, retries=0)


async def test_a_fetch_halted_before_it_began_reports_stopped_at_its_start(bench: Bench) -> None:
    data = content(2 * CHUNK, seed=12)
    await bench.sender.upload(data, 0, len(data))
    part = bench.sender.part_frame(data, 0, len(data), bench.sender.objects[-1])
    held = asyncio.Event()

    async def busy_partial(serial: int) -> PartialFile | None:
        await held.wait()  # the transfer's lock is held elsewhere
        return None

    fetcher = RelayFetch(bench.road(), busy_partial, bench.reports.append)
    await fetcher.start(FetchRelayPart(1, part, FileMeta("f.bin", len(data), sha(data), 65536), 0))
    await asyncio.sleep(0.05)
    await fetcher.halt()
    assert bench.reports == [RelayFailed(1, 0, RelayEndCode.STOPPED, "the relay road was stopped")]
    assert bench.fetched == 0


async def test_a_partial_taken_over_mid_fetch_ends_the_fetch_without_a_report(
    bench: Bench,
) -> None:
    data = content(48 * CHUNK, seed=13)
    partial = bench.open(data)
    proxy = PacedProxy(bench.service.port, rate=2e6)
    await proxy.start()
    fetcher = bench.fetcher(bench.road(proxy.http))
    relay_object = await bench.sender.upload(data, 0, len(data))
    part = bench.sender.part_frame(data, 0, len(data), relay_object)
    await fetcher.start(FetchRelayPart(1, part, FileMeta("f.bin", len(data), sha(data), 65536), 0))
    async with asyncio.timeout(10):
        while proxy.downstream < relay_object.size // 3:
            await asyncio.sleep(0.01)
    await asyncio.to_thread(partial.close)  # a newer connection took the transfer over
    assert fetcher._task is not None
    async with asyncio.timeout(10):
        await fetcher._task
    await proxy.close()
    assert not [r for r in bench.reports if not isinstance(r, RelayWritten)]
    assert fetcher.fetched < relay_object.size  # it stopped there
