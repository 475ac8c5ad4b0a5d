"""``ResultsServiceClient`` against a real storage service: uploads for an owner, the
download token, retries after a lost answer, refusals with their codes."""

from __future__ import annotations

import asyncio
import hashlib
import random
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import pytest

from rtc_worker.results_client import ResultsServiceClient, ResultsServiceError
from signaling.keys import Role
from tests.conftest import StartService
from tests.storage_service import StorageService, fingerprint_of

OWNER = fingerprint_of("owner")
ZIP = b"PK\x05\x06" + bytes(18) + b"results" * 100


async def client_of(service: StorageService, role: Role, principal: str | None = None) -> str:
    return await service.make_key(role, f"{role.value}-{principal or 'x'}"[:60], principal)


@pytest.fixture
def zip_file(tmp_path: Path) -> Path:
    path = tmp_path / "results.zip"
    path.write_bytes(ZIP)
    return path


async def test_upload_for_an_owner_then_download_with_the_token(
    start_storage_service: StartService, zip_file: Path, tmp_path: Path
) -> None:
    service = await start_storage_service()
    worker = ResultsServiceClient(service.url(""), await client_of(service, Role.WORKER))
    stored = await worker.upload(lambda: zip_file.open("rb"), "run7", owner=OWNER)
    assert (stored.job_id, stored.owner, stored.size) == ("run7", OWNER, len(ZIP))
    assert stored.sha256 == hashlib.sha256(ZIP).hexdigest()
    assert stored.download_token and "::" not in stored.download_token
    assert stored.expires_at.endswith("Z") and stored.attempts == 1
    # a retry after a lost answer: the same content again is accepted as stored
    again = await worker.upload(lambda: zip_file.open("rb"), "run7", owner=OWNER)
    assert again.sha256 == stored.sha256
    # other content under the same owner and job: refused unless replacing
    other = tmp_path / "other.zip"
    other.write_bytes(ZIP + b"x")
    with pytest.raises(ResultsServiceError) as info:
        await worker.upload(lambda: other.open("rb"), "run7", owner=OWNER)
    assert (info.value.status, info.value.code) == (409, "JOB_EXISTS")
    # the owner, with no key at all, downloads with the token
    owner = ResultsServiceClient(service.url(""), None)
    with pytest.raises(ResultsServiceError) as info:
        await owner.download("run7", tmp_path / "nokey", keep=True)
    assert (info.value.status, info.value.code) == (401, "UNAUTHORIZED")
    got = await owner.download(
        "run7", tmp_path / "dl", sha256=stored.sha256, token=stored.download_token
    )
    assert got.path.read_bytes() == ZIP
    await service.wait_status("run7", 410)  # the owner's download deleted it
    replaced = await worker.upload(lambda: other.open("rb"), "run7", owner=OWNER, replace=True)
    with pytest.raises(ResultsServiceError) as info:  # the old token: other content now
        await owner.download("run7", tmp_path / "old", token=stored.download_token)
    assert (info.value.status, info.value.code) == (410, "GONE")
    got = await owner.download("run7", tmp_path / "new", token=replaced.download_token)
    assert got.path.read_bytes() == ZIP + b"x"


async def test_client_key_download_and_bad_job_ids(
    start_storage_service: StartService, zip_file: Path, tmp_path: Path
) -> None:
    service = await start_storage_service()
    worker = ResultsServiceClient(service.url(""), await client_of(service, Role.WORKER))
    await worker.upload(lambda: zip_file.open("rb"), "run8", owner=OWNER)
    owner = ResultsServiceClient(service.url(""), await client_of(service, Role.CLIENT, OWNER))
    got = await owner.download("run8", tmp_path / "dl", keep=True)
    assert got.path.read_bytes() == ZIP
    stranger = ResultsServiceClient(
        service.url(""), await client_of(service, Role.CLIENT, fingerprint_of("stranger"))
    )
    with pytest.raises(ResultsServiceError) as info:
        await stranger.download("run8", tmp_path / "stolen")
    assert (info.value.status, info.value.code) == (404, "NOT_FOUND")
    assert not (tmp_path / "stolen" / "results-run8.zip").exists()
    for bad in (".", "..", "a/b"):
        with pytest.raises(ValueError):
            await owner.download(bad, tmp_path / "bad")


# ------------------------------------------------------------------ resume with Range


class CuttingProxy:
    """A TCP proxy on loopback in front of the service that drops its first ``cuts``
    connections after ``cut_after`` bytes of the answer, running ``on_cut`` just before."""

    def __init__(
        self,
        upstream_port: int,
        cut_after: int,
        cuts: int = 1,
        on_cut: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.upstream_port, self.cut_after, self.cuts = upstream_port, cut_after, cuts
        self.on_cut = on_cut
        self.requests: list[bytes] = []
        self.server: asyncio.Server | None = None

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        cut = self.cuts > 0
        self.cuts -= 1
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)

        async def forward_requests() -> None:
            while data := await reader.read(65536):
                self.requests.append(data)
                up_writer.write(data)
                await up_writer.drain()

        upward = asyncio.create_task(forward_requests())
        sent = 0
        try:
            while data := await up_reader.read(65536):
                if cut and sent + len(data) >= self.cut_after:
                    writer.write(data[: self.cut_after - sent])
                    await writer.drain()
                    if self.on_cut is not None:  # before the client sees the cut
                        await self.on_cut()
                    break
                sent += len(data)
                writer.write(data)
                await writer.drain()
        finally:
            upward.cancel()
            up_writer.close()
            writer.close()


BIG_ZIP = b"PK\x05\x06" + random.Random(7).randbytes(3 * (1 << 20) + 999)


async def test_a_cut_download_resumes_with_range(
    start_storage_service: StartService, tmp_path: Path
) -> None:
    service = await start_storage_service()
    big = tmp_path / "big.zip"
    big.write_bytes(BIG_ZIP)
    worker = ResultsServiceClient(service.url(""), await client_of(service, Role.WORKER))
    stored = await worker.upload(lambda: big.open("rb"), "run9", owner=OWNER)
    async with CuttingProxy(service.port, cut_after=1_500_000, cuts=2) as url:
        owner = ResultsServiceClient(url, None, backoff_s=0.01)
        got = await owner.download("run9", tmp_path / "dl", token=stored.download_token, keep=True)
    assert (got.size, got.sha256, got.resumes) == (len(BIG_ZIP), stored.sha256, 2)
    assert got.path.read_bytes() == BIG_ZIP
    assert [p.name for p in (tmp_path / "dl").iterdir()] == ["results-run9.zip"]
    # a cut that is never resumed: nothing is left behind
    async with CuttingProxy(service.port, cut_after=1_500_000, cuts=9) as url:
        owner = ResultsServiceClient(url, None, retries=1, backoff_s=0.01)
        with pytest.raises(aiohttp.ClientPayloadError):
            await owner.download(
                "run9", tmp_path / "gave-up", token=stored.download_token, keep=True
            )
    assert list((tmp_path / "gave-up").iterdir()) == []


async def test_a_resume_after_the_result_was_replaced_starts_over(
    start_storage_service: StartService, tmp_path: Path
) -> None:
    service = await start_storage_service()
    big = tmp_path / "big.zip"
    big.write_bytes(BIG_ZIP)
    new = BIG_ZIP[::-1]
    worker = ResultsServiceClient(service.url(""), await client_of(service, Role.WORKER))
    await worker.upload(lambda: big.open("rb"), "run9", owner=OWNER)

    async def replace() -> None:
        big.write_bytes(new)
        await worker.upload(lambda: big.open("rb"), "run9", owner=OWNER, replace=True)

    key = await client_of(service, Role.CLIENT, OWNER)
    proxy = CuttingProxy(service.port, cut_after=1_500_000, on_cut=replace)
    async with proxy as url:
        got = await ResultsServiceClient(url, key, backoff_s=0.01).download(
            "run9", tmp_path / "dl", keep=True
        )
    assert b"If-Range: " in b"".join(proxy.requests)  # it did ask for the rest only...
    assert (got.resumes, got.sha256) == (1, hashlib.sha256(new).hexdigest())
    assert got.path.read_bytes() == new  # ... and got the whole new content, no mix
