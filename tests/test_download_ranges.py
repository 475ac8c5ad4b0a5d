"""Byte ranges on ``GET /download/{job_id}`` (RFC 9110 section 14) against a real storage
service, on both engines (SQLite + folder, PostgreSQL + S3 on moto's server): resume of
a cut download, suffix ranges, 416, If-Range, auto-delete only after a whole download in
one answer, and an attacker's Range refused exactly like a plain GET."""

from __future__ import annotations

import asyncio
import hashlib
import random
from dataclasses import dataclass
from typing import Any

import pytest_asyncio

from signaling.keys import Role
from tests.conftest import StartService
from tests.storage_service import KEY, Answer, StorageService, fingerprint_of

VICTIM = fingerprint_of("victim")
ATTACKER = fingerprint_of("attacker")
BIG = random.Random(13).randbytes(3 * (1 << 20) + 12_345)  # crosses 1 MiB reads
SMALL = bytes(range(256)) * 4


@dataclass
class Cast:
    """The service and everyone's keys."""

    service: StorageService
    worker: str
    victim: str
    attacker: str

    async def store(self, job_id: str, data: bytes, **headers: str) -> Answer:
        answer = await self.service.store_result(self.worker, VICTIM, job_id, data, **headers)
        assert answer.status in (200, 201), answer
        return answer

    async def get(
        self, path: str, *, key: str | None = None, token: str | None = None, **headers: str
    ) -> Answer:
        """``GET path`` with ``key`` or ``token`` and ``headers`` (``_`` for ``-``)."""
        sent = {name.replace("_", "-"): value for name, value in headers.items()}
        return await self.request("GET", path, key=key, token=token, headers=sent)

    async def request(self, method: str, path: str, **options: Any) -> Answer:
        """:meth:`StorageService.request`, with the answer's header names in lower case."""
        got = await self.service.request(method, path, **options)
        return Answer(got.status, got.body, {k.lower(): v for k, v in got.headers.items()})

    async def is_live(self, job_id: str) -> bool:
        await asyncio.sleep(0.1)  # an auto-delete happens after the answer
        got = await self.request("HEAD", f"/download/{job_id}", key=self.victim)
        assert got.status in (200, 410), got
        return got.status == 200


@pytest_asyncio.fixture
async def cast(start_storage_service: StartService) -> Cast:
    service = await start_storage_service()
    return Cast(
        service=service,
        worker=await service.make_key(Role.WORKER, "gpu-1"),
        victim=await service.make_key(Role.CLIENT, "victim", VICTIM),
        attacker=await service.make_key(Role.CLIENT, "attacker", ATTACKER),
    )


def etag_of(data: bytes) -> str:
    return f'"{hashlib.sha256(data).hexdigest()}"'


async def test_every_download_offers_ranges_and_a_strong_etag(cast: Cast) -> None:
    await cast.store("run7", SMALL)
    for method in ("HEAD", "GET"):
        got = await cast.request(method, "/download/run7?keep=true", key=cast.victim)
        assert got.status == 200
        assert got.headers["accept-ranges"] == "bytes"
        assert got.headers["etag"] == etag_of(SMALL)
        assert got.headers["content-length"] == str(len(SMALL))
        assert "content-range" not in got.headers
    # Range is for GET only: HEAD ignores it
    got = await cast.request(
        "HEAD", "/download/run7", key=cast.victim, headers={"Range": "bytes=0-9"}
    )
    assert (got.status, got.headers["content-length"]) == (200, str(len(SMALL)))


async def test_a_cut_download_resumes_with_range_and_the_sha256_matches(cast: Cast) -> None:
    token = (await cast.store("run7", BIG)).body["download_token"]
    headers = {"X-Download-Token": token}
    # the download is cut after a little more than 1.5 MiB
    cut_at = (3 << 19) + 7
    url = cast.service.url("/download/run7?keep=true")
    async with cast.service.session.get(url, headers=headers) as response:
        assert response.status == 200
        etag = response.headers["etag"]
        expected = response.headers["x-content-sha256"]
        head = await response.content.readexactly(cut_at)
        response.close()  # the connection drops mid-body
    # the resume asks for the rest, on condition that the content is the same
    got = await cast.get("/download/run7", token=token, Range=f"bytes={cut_at}-", If_Range=etag)
    assert got.status == 206
    assert got.headers["content-range"] == f"bytes {cut_at}-{len(BIG) - 1}/{len(BIG)}"
    assert got.headers["content-length"] == str(len(BIG) - cut_at)
    assert (got.headers["etag"], got.headers["x-content-sha256"]) == (etag, expected)
    assert hashlib.sha256(head + got.body).hexdigest() == expected
    # a range in the middle: exactly those bytes
    got = await cast.get("/download/run7", token=token, Range="bytes=1048570-2097160")
    assert (got.status, got.body) == (206, BIG[1048570:2097161])
    assert await cast.is_live("run7")  # ranged reads did not delete the owner's result


async def test_suffix_ranges_and_what_gets_the_whole_content(cast: Cast) -> None:
    await cast.store("run7", SMALL)
    path, size = "/download/run7?keep=true", len(SMALL)
    got = await cast.get(path, key=cast.victim, Range="bytes=-100")
    assert (got.status, got.body) == (206, SMALL[-100:])
    assert got.headers["content-range"] == f"bytes {size - 100}-{size - 1}/{size}"
    got = await cast.get(path, key=cast.victim, Range=f"bytes=-{size + 50}")
    assert (got.status, got.body) == (206, SMALL)
    assert got.headers["content-range"] == f"bytes 0-{size - 1}/{size}"
    got = await cast.get(path, key=cast.victim, Range="bytes=10-5000")  # clamped to the end
    assert (got.status, got.body) == (206, SMALL[10:])
    # several ranges, an invalid or unknown one: the whole content, 200 (documented)
    for header in ("bytes=0-1,5-6", "bytes=9-3", "items=0-5", "bytes=x-"):
        got = await cast.get(path, key=cast.victim, Range=header)
        assert (got.status, got.body) == (200, SMALL), header
        assert "content-range" not in got.headers


async def test_an_unsatisfiable_range_is_416(cast: Cast) -> None:
    await cast.store("run7", SMALL)
    for header in (f"bytes={len(SMALL)}-", "bytes=5000-6000", "bytes=-0"):
        got = await cast.get("/download/run7", key=cast.victim, Range=header)
        assert (got.status, got.code) == (416, "RANGE_NOT_SATISFIABLE"), header
        assert got.headers["content-range"] == f"bytes */{len(SMALL)}"
        assert got.headers["accept-ranges"] == "bytes"
    assert await cast.is_live("run7")


async def test_if_range_of_other_content_gets_the_whole_new_content(cast: Cast) -> None:
    old = (await cast.store("run7", SMALL)).body
    path = "/download/run7?keep=true"
    got = await cast.get(path, key=cast.victim, Range="bytes=0-9", If_Range=etag_of(SMALL))
    assert (got.status, got.body) == (206, SMALL[:10])
    for stale in (f"W/{etag_of(SMALL)}", etag_of(b"other"), "Sun, 06 Nov 1994 08:49:37 GMT"):
        got = await cast.get(path, key=cast.victim, Range="bytes=0-9", If_Range=stale)
        assert (got.status, got.body) == (200, SMALL), stale
    # the owner's result is replaced between a cut and its resume: the resume by the
    # old entity tag gets the whole new content, never a mix of the two
    new = SMALL[::-1] + b"second version"
    await cast.store("run7", new, X_Replace="true")
    got = await cast.get(path, key=cast.victim, Range="bytes=100-", If_Range=f'"{old["sha256"]}"')
    assert (got.status, got.body, got.headers["etag"]) == (200, new, etag_of(new))
    # ... and by the old token, the resume is told the result was replaced
    got = await cast.get(path, token=old["download_token"], Range="bytes=100-")
    assert (got.status, got.code) == (410, "GONE")


async def test_only_a_whole_download_in_one_answer_deletes(cast: Cast) -> None:
    size = len(SMALL)
    token = (await cast.store("run7", SMALL)).body["download_token"]
    # the owner's ranged reads, up to and including the last byte: the result stays
    for header in ("bytes=0-99", f"bytes=100-{size - 1}", "bytes=-1", f"bytes={size - 1}-"):
        got = await cast.get("/download/run7", token=token, Range=header)
        assert got.status == 206, header
        assert await cast.is_live("run7"), header
    records = (await cast.request("GET", "/list", key=cast.victim)).body["files"]
    assert [r["downloaded_at"] for r in records] == [None]  # nor counted as its download
    # one answer with every byte, even as a range: the owner's complete download
    got = await cast.get("/download/run7", token=token, Range="bytes=0-")
    assert (got.status, got.body) == (206, SMALL)
    assert not await cast.is_live("run7")
    # a plain GET as before
    token = (await cast.store("run8", SMALL)).body["download_token"]
    got = await cast.get("/download/run8", token=token)
    assert (got.status, got.body) == (200, SMALL)
    assert not await cast.is_live("run8")


async def test_an_attackers_range_is_refused_exactly_like_a_plain_get(cast: Cast) -> None:
    victim = (await cast.store("run7", SMALL)).body
    other = (await cast.store("run8", b"run 8")).body
    ranged = [
        {"Range": "bytes=0-9"},
        {"Range": "bytes=-5"},
        {"Range": "bytes=100000-"},  # would be 416 to the owner: no size leaks
        {"Range": "bytes=0-", "If-Range": etag_of(SMALL)},
    ]
    attempts: list[tuple[str, dict[str, str]]] = [
        ("/download/run7", {"X-API-Key": cast.attacker}),  # another client's job: 404
        (f"/download/run7?owner={VICTIM}", {"X-API-Key": cast.attacker}),
        ("/download/run7", {"X-API-Key": cast.worker}),  # a worker key: 403
        ("/download/run7", {"X-Download-Token": other["download_token"]}),  # another job: 403
        ("/download/run7", {"X-Download-Token": victim["download_token"][:-3]}),  # forged
        ("/download/run7", {}),  # no credential: 401
    ]
    for path, credentials in attempts:
        plain = await cast.request("GET", path, headers=credentials)
        assert plain.status in (401, 403, 404), (path, plain)
        for extra in ranged:
            got = await cast.request("GET", path, headers={**credentials, **extra})
            assert (got.status, got.code) == (plain.status, plain.code), (path, extra)
            for leak in ("content-range", "etag", "x-content-sha256", "accept-ranges"):
                assert leak not in got.headers, (path, extra, leak)
            assert SMALL[:5] not in got.body and SMALL[-5:] not in got.body
    # the victim's result is untouched and still there
    got = await cast.get("/download/run7?keep=true", key=cast.victim)
    assert (got.status, got.body) == (200, SMALL)
    got = await cast.get(f"/download/run7?keep=true&owner={VICTIM}", key=KEY)
    assert (got.status, got.body) == (200, SMALL)
