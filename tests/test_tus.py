"""tus 1.0 at /files/: tuspy (unchanged) and raw HTTP against a real server on loopback,
real SQLite and real files; the finished upload compared with the chunk routes' result."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import pytest
from tusclient import client as tus_client
from tusclient.exceptions import TusUploadFailed
from tusclient.storage.filestorage import FileStorage

from rtc_worker.storage import format_timestamp
from signaling.keys import Role
from signaling.tus import TUS_KEY
from signaling.upload_offsets import TOUCH_EVERY_S
from tests.conftest import StartService
from tests.storage_service import KEY, Answer, StorageService, fingerprint_of

CHUNK = 64 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
OFFSET_TYPE = {"Content-Type": "application/offset+octet-stream"}
OWNER = fingerprint_of("owner")


def content(size: int, seed: int = 1) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"t" * (size % 32)


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def metadata(**pairs: str) -> str:
    return ",".join(f"{key} {b64(value)}" for key, value in pairs.items())


def digest(algorithm: str, data: bytes) -> str:
    return f"{algorithm} {base64.b64encode(hashlib.new(algorithm, data).digest()).decode()}"


class Tus(StorageService):
    """The storage service with the tus steps of these tests."""

    async def tus(self, method: str, path: str, key: str | None = KEY, **headers: str) -> Answer:
        data = headers.pop("data", None)
        return await self.request(method, path, key=key, headers={**TUS, **headers}, data=data)

    async def create(self, length: int, key: str = KEY, **headers: str) -> str:
        got = await self.tus("POST", "/files/", key, **{"Upload-Length": str(length), **headers})
        assert got.status == 201, got.body
        location = got.headers["Location"]
        assert location.startswith("/files/")
        return location

    async def patch(
        self, url: str, offset: int, data: Any, key: str = KEY, **headers: str
    ) -> Answer:
        return await self.tus(
            "PATCH", url, key, **{"Upload-Offset": str(offset), **OFFSET_TYPE, **headers}, data=data
        )

    async def offset(self, url: str, key: str = KEY) -> int:
        got = await self.tus("HEAD", url, key)
        assert got.status == 200, got.status
        return int(got.headers["Upload-Offset"])

    async def status(self, upload_id: str, key: str = KEY) -> dict[str, Any]:
        got = await self.request("GET", f"/api/upload/{upload_id}/status", key=key)
        assert got.status == 200, got.body
        return dict(got.body)

    def partial_bytes(self, upload_id: str) -> bytes | None:
        return self.partial_content(upload_id)

    def tuspy(self, key: str = KEY) -> tus_client.TusClient:
        return tus_client.TusClient(self.url("/files/"), headers={"Authorization": f"Bearer {key}"})


@pytest.fixture
async def service(start_storage_service: StartService) -> Tus:
    svc: Tus = await start_storage_service(
        Tus, storage_max_file_size=8 << 20, upload_chunk_size=CHUNK, disk_reserve_bytes=0
    )
    return svc


# ----------------------------------------------------------------- tuspy, unchanged


async def chunk_routes_upload(service: Tus, data: bytes, **fields: str) -> dict[str, Any]:
    """The same file through /api/upload/init, chunk, complete: its status."""
    body = {"file_name": "data.bin", "total_size": len(data), "content_type": "text/plain"}
    got = await service.request("POST", "/api/upload/init", key=KEY, body={**body, **fields})
    upload_id = got.body["upload_id"]
    for index in range(0, len(data), CHUNK):
        headers = {"X-Upload-Id": upload_id, "X-Chunk-Index": str(index // CHUNK)}
        sent = await service.request(
            "PUT", "/api/upload/chunk", key=KEY, headers=headers, data=data[index : index + CHUNK]
        )
        assert sent.status == 200, sent.body
    done = await service.request(
        "POST", "/api/upload/complete", key=KEY, body={"upload_id": upload_id}
    )
    assert done.status == 200, done.body
    return await service.status(upload_id)


async def test_tuspy_upload_interrupted_and_resumed_is_the_chunk_routes_record(
    service: Tus, tmp_path: Path
) -> None:
    data = content(1_000_000 + 123)
    source = tmp_path / "data.bin"
    source.write_bytes(data)
    urls = FileStorage(str(tmp_path / "urls.json"))
    meta = {"filename": "data.bin", "filetype": "text/plain", "user_id": "u1", "user_role": "lab"}

    def first_part() -> str:
        up = service.tuspy().uploader(
            file_path=str(source),
            chunk_size=CHUNK * 3,
            metadata=meta,
            store_url=True,
            url_storage=urls,
            upload_checksum=True,
        )
        up.upload(stop_at=CHUNK * 6)
        return str(up.url)

    url = await asyncio.to_thread(first_part)
    upload_id = url.rsplit("/", 1)[1]
    assert await service.offset(f"/files/{upload_id}") == CHUNK * 6
    assert (await service.status(upload_id))["status"] == "in_progress"

    def resume() -> int:  # a new uploader finds the URL in storage and HEADs its offset
        up = service.tuspy().uploader(
            file_path=str(source),
            chunk_size=CHUNK * 3,
            metadata=meta,
            store_url=True,
            url_storage=urls,
            upload_checksum=True,
        )
        start = int(up.offset)
        up.upload()
        assert up.url == url
        return start

    assert await asyncio.to_thread(resume) == CHUNK * 6
    tus = await service.status(upload_id)
    assert tus["status"] == "completed"
    assert tus["sha256"] == hashlib.sha256(data).hexdigest()
    assert service.partial_bytes(upload_id) is None

    chunked = await chunk_routes_upload(service, data, user_id="u1", user_role="lab")
    same = ("file_name", "total_size", "user_id", "user_role", "content_type", "status",
            "sha256", "mime_type", "owner", "chunk_size", "missing_chunks")  # fmt: skip
    assert {k: tus[k] for k in same} == {k: chunked[k] for k in same}
    assert tus["key"].endswith("/data.bin") and chunked["key"] == tus["key"][:-4] + "-1.bin"
    assert tus["key"].startswith("lab/u1/")
    assert len(service.blobs()) == 1  # one blob for both
    assert service.blob_bytes(tus["sha256"]) == data


async def test_tuspy_wrong_offset_gets_409_then_resumes(service: Tus, tmp_path: Path) -> None:
    data = content(CHUNK * 4, seed=2)
    source = tmp_path / "f.bin"
    source.write_bytes(data)

    def run() -> tuple[int, str]:
        up = service.tuspy().uploader(file_path=str(source), chunk_size=CHUNK)
        up.upload_chunk()
        up.offset = 0  # the client's idea of the offset is wrong
        with pytest.raises(TusUploadFailed) as refused:
            up.upload_chunk()
        up.offset = up.get_offset()  # HEAD tells the truth
        up.upload()
        return int(refused.value.status_code or 0), str(up.url)

    status, url = await asyncio.to_thread(run)
    assert status == 409
    upload_id = url.rsplit("/", 1)[1]
    record = await service.status(upload_id)
    assert record["sha256"] == hashlib.sha256(data).hexdigest()


async def test_raw_wrong_offset_changes_nothing(service: Tus) -> None:
    url = await service.create(300)
    assert (await service.patch(url, 0, b"a" * 100)).status == 204
    for wrong in (0, 50, 101, 300):
        got = await service.patch(url, wrong, b"b" * 100)
        assert (got.status, got.code) == (409, "OFFSET_MISMATCH")
    assert await service.offset(url) == 100
    assert service.partial_bytes(url.rsplit("/", 1)[1])[:100] == b"a" * 100  # type: ignore[index]


@pytest.mark.parametrize("algorithm", ["sha1", "sha256"])
async def test_bad_checksum_gets_460_and_nothing_is_kept(service: Tus, algorithm: str) -> None:
    url = await service.create(200)
    good = b"g" * 100
    assert (
        await service.patch(url, 0, good, **{"Upload-Checksum": digest(algorithm, good)})
    ).status == 204
    bad = await service.patch(
        url, 100, b"x" * 100, **{"Upload-Checksum": digest(algorithm, b"y" * 100)}
    )
    assert (bad.status, bad.code) == (460, "CHECKSUM_MISMATCH")
    assert await service.offset(url) == 100
    unknown = await service.patch(url, 100, b"x" * 100, **{"Upload-Checksum": "md5 AAAA"})
    assert (unknown.status, unknown.code) == (400, "INVALID_FIELD")
    assert await service.offset(url) == 100
    rest = b"r" * 100
    assert (
        await service.patch(url, 100, rest, **{"Upload-Checksum": digest(algorithm, rest)})
    ).status == 204
    record = await service.status(url.rsplit("/", 1)[1])
    assert record["sha256"] == hashlib.sha256(good + rest).hexdigest()


# ----------------------------------------------------------------- core and extensions


async def test_options_version_and_content_type(service: Tus) -> None:
    got = await service.request("OPTIONS", "/files/")
    assert got.status == 204
    assert got.headers["Tus-Version"] == "1.0.0"
    assert set(got.headers["Tus-Extension"].split(",")) == {
        "creation", "creation-with-upload", "termination", "checksum", "expiration"
    }  # fmt: skip
    assert got.headers["Tus-Checksum-Algorithm"] == "sha1,sha256"
    assert got.headers["Tus-Max-Size"] == str(8 << 20)
    no_version = await service.request("POST", "/files/", key=KEY, headers={"Upload-Length": "5"})
    assert (no_version.status, no_version.code) == (412, "TUS_VERSION_UNSUPPORTED")
    assert no_version.headers["Tus-Version"] == "1.0.0"
    old = await service.tus("POST", "/files/", **{"Tus-Resumable": "0.2.2", "Upload-Length": "5"})
    assert old.status == 412
    url = await service.create(10)
    wrong_type = await service.tus(
        "PATCH", url, **{"Upload-Offset": "0", "Content-Type": "text/plain"}, data=b"0123456789"
    )
    assert (wrong_type.status, wrong_type.code) == (415, "UNSUPPORTED_MEDIA_TYPE")
    assert wrong_type.headers["Tus-Resumable"] == "1.0.0"
    assert await service.offset(url) == 0
    too_long = await service.patch(url, 0, b"x" * 11)
    assert (too_long.status, too_long.code) == (413, "FILE_TOO_LARGE")
    for bad in ("-1", "1.5", "", "+3", "0x10", "99999999999999999999"):
        got = await service.tus("POST", "/files/", **{"Upload-Length": bad})
        assert got.status in (400, 413), bad
    big = await service.tus("POST", "/files/", **{"Upload-Length": str((8 << 20) + 1)})
    assert (big.status, big.code) == (413, "FILE_TOO_LARGE")


async def test_head_answers_offset_length_metadata_expiry(service: Tus) -> None:
    url = await service.create(
        40, **{"Upload-Metadata": metadata(filename="a b.txt", filetype="text/plain")}
    )
    await service.patch(url, 0, b"z" * 15)
    got = await service.tus("HEAD", url)
    assert got.headers["Upload-Offset"] == "15"
    assert got.headers["Upload-Length"] == "40"
    assert got.headers["Cache-Control"] == "no-store"
    pairs = dict(pair.split(" ") for pair in got.headers["Upload-Metadata"].split(","))
    assert base64.b64decode(pairs["filename"]).decode() == "a b.txt"
    expires = parsedate_to_datetime(got.headers["Upload-Expires"]).timestamp()
    assert abs(expires - (time.time() + 86400)) < 5


async def test_creation_with_upload(service: Tus) -> None:
    whole = await service.tus(
        "POST", "/files/", **{"Upload-Length": "10", **OFFSET_TYPE}, data=b"0123456789"
    )
    assert whole.status == 201
    assert whole.headers["Upload-Offset"] == "10"
    assert "Upload-Expires" not in whole.headers
    record = await service.status(whole.headers["Location"].rsplit("/", 1)[1])
    assert record["status"] == "completed"
    assert record["sha256"] == hashlib.sha256(b"0123456789").hexdigest()
    part = await service.tus(
        "POST", "/files/", **{"Upload-Length": "10", **OFFSET_TYPE}, data=b"0123"
    )
    assert part.headers["Upload-Offset"] == "4"
    assert "Upload-Expires" in part.headers
    assert (await service.patch(part.headers["Location"], 4, b"456789")).status == 204
    empty = await service.create(0)
    assert (await service.status(empty.rsplit("/", 1)[1]))["status"] == "completed"


async def test_metadata_maps_onto_the_upload(service: Tus) -> None:
    url = await service.create(
        4,
        **{
            "Upload-Metadata": metadata(filename="x.csv", filetype="text/csv", user_id="bob")
            + ",flag"
        },
    )
    await service.patch(url, 0, b"a,b\n")
    record = await service.status(url.rsplit("/", 1)[1])
    assert (record["file_name"], record["content_type"], record["user_id"]) == (
        "x.csv",
        "text/csv",
        "bob",
    )
    assert record["user_role"] == "admin"  # the caller's role by default
    plain = await service.create(1, **{"Upload-Metadata": ""})  # tuspy's empty header
    assert (await service.status(plain.rsplit("/", 1)[1]))["file_name"] == "upload"
    many = ",".join(f"k{index} YQ==" for index in range(33))
    for bad in ("filename a b", "filename !!!", "a YQ==,a YQ==", "filename Li4vZXRj", many):
        got = await service.tus("POST", "/files/", **{"Upload-Length": "1", "Upload-Metadata": bad})
        assert got.status == 400, bad


async def test_termination(service: Tus) -> None:
    url = await service.create(100)
    await service.patch(url, 0, b"q" * 30)
    upload_id = url.rsplit("/", 1)[1]
    assert service.partial_bytes(upload_id) is not None
    assert (await service.tus("DELETE", url)).status == 204
    assert service.partial_bytes(upload_id) is None
    for method in ("HEAD", "DELETE"):
        assert (await service.tus(method, url)).status == 410
    assert (await service.patch(url, 30, b"q")).status == 410
    assert (await service.status(upload_id))["status"] == "cancelled"


async def test_expired_upload_is_gone_and_cleaned(service: Tus) -> None:
    url = await service.create(100)
    patched = await service.patch(url, 0, b"e" * 10)
    expires = parsedate_to_datetime(patched.headers["Upload-Expires"]).timestamp()
    upload_id = url.rsplit("/", 1)[1]
    tus = service.runner.app[TUS_KEY]
    tus.now = lambda: expires + 1  # the clock passes Upload-Expires
    got = await service.tus("HEAD", url)
    assert got.status == 410 and "Upload-Offset" not in got.headers
    assert (await service.patch(url, 10, b"e")).status == 410
    assert service.partial_bytes(upload_id) is None
    assert (await service.status(upload_id))["status"] == "cancelled"


async def test_a_patch_soon_after_a_change_reports_the_expiry_it_keeps(service: Tus) -> None:
    """No database write per PATCH while the upload changed recently: the PATCH then
    answers the expiry of that change, which HEAD and the cleanup agree with."""
    url = await service.create(100)
    upload_id = url.rsplit("/", 1)[1]
    assert (await service.patch(url, 0, b"a" * 10)).status == 204
    now = datetime.now(UTC)
    first = await service.db.get_upload(upload_id)
    assert first is not None and first.status == "in_progress"
    created = first.created_at
    recent = format_timestamp(now - timedelta(seconds=TOUCH_EVERY_S / 2))
    await service.db.set_upload_times(upload_id, created, recent)
    kept = await service.patch(url, 10, b"b" * 10)
    record = await service.db.get_upload(upload_id)
    assert record is not None and record.updated_at == recent  # not written again
    head = await service.tus("HEAD", url)
    assert kept.headers["Upload-Expires"] == head.headers["Upload-Expires"]
    assert parsedate_to_datetime(kept.headers["Upload-Expires"]) == datetime.strptime(
        recent, "%Y-%m-%dT%H:%M:%SZ"
    ).replace(tzinfo=UTC) + timedelta(seconds=service.runner.app[TUS_KEY].manager.ttl_s)
    older = format_timestamp(now - timedelta(seconds=TOUCH_EVERY_S + 5))
    await service.db.set_upload_times(upload_id, created, older)
    moved = await service.patch(url, 20, b"c" * 10)
    record = await service.db.get_upload(upload_id)
    assert record is not None and record.updated_at >= format_timestamp(now)
    assert (
        moved.headers["Upload-Expires"]
        == (await service.tus("HEAD", url)).headers["Upload-Expires"]
    )
    assert await service.offset(url) == 30


async def test_a_record_read_around_another_request_is_read_again(service: Tus) -> None:
    """A PATCH reuses the record it read before taking the upload's lock only when no
    changing request held any upload meanwhile, nor this one when it began."""
    tus = service.runner.app[TUS_KEY]
    upload_id = "a" * 32
    before = tus.quiet_mark(upload_id)
    assert tus.still_quiet(before)
    async with tus.hold(upload_id):
        during = tus.quiet_mark(upload_id)
        assert tus.still_quiet(before)  # held, not yet released: the lock refuses (423)
    assert not tus.still_quiet(before) and not tus.still_quiet(during)
    after = tus.quiet_mark(upload_id)
    async with tus.hold("b" * 32):
        pass
    assert not tus.still_quiet(after)


# ----------------------------------------------------------------- results


async def test_result_upload_is_the_post_upload_record_and_downloads(
    service: Tus, tmp_path: Path
) -> None:
    worker = await service.make_key(Role.WORKER, "gpu-1")
    client = await service.make_key(Role.CLIENT, "owner", OWNER)
    data = content(300_000, seed=3)
    source = tmp_path / "r.zip"
    source.write_bytes(data)

    def run() -> None:
        up = service.tuspy(worker).uploader(
            file_path=str(source), chunk_size=100_000, metadata={"job_id": "job-7", "owner": OWNER}
        )
        up.upload()

    await asyncio.to_thread(run)
    got = await service.request("GET", "/download/job-7?keep=true", key=client)
    assert got.status == 200 and got.body == data
    (record,) = [r for r in await service.db.all_uploads() if r.result_job_id == "job-7"]
    assert (record.result_owner, record.status, record.user_id) == (OWNER, "completed", "tus")
    assert record.user_role == "worker"  # the uploader's labels stay its own
    posted = await service.store_result(worker, OWNER, "job-8", data)
    assert posted.status == 201
    listed = await service.request("GET", "/list", key=client)
    records = {r["job_id"]: r for r in listed.body["files"]}
    same = ("owner", "size", "sha256", "mime_type", "deleted")
    assert {k: records["job-7"][k] for k in same} == {k: records["job-8"][k] for k in same}
    assert len(service.blobs()) == 1
    again = await service.tus(
        "POST",
        "/files/",
        worker,
        **{"Upload-Length": "3", "Upload-Metadata": metadata(job_id="job-7", owner=OWNER)},
    )
    assert (again.status, again.code) == (409, "JOB_EXISTS")
    kept = await service.request("GET", "/download/job-7?keep=true", key=client)
    assert kept.body == data  # the owner's result is unchanged
    by_client = await service.tus(
        "POST",
        "/files/",
        client,
        **{"Upload-Length": "3", "Upload-Metadata": metadata(job_id="j", owner=OWNER)},
    )
    assert (by_client.status, by_client.code) == (403, "FORBIDDEN")
    no_owner = await service.tus(
        "POST", "/files/", worker, **{"Upload-Length": "3", "Upload-Metadata": metadata(job_id="j")}
    )
    assert (no_owner.status, no_owner.code) == (400, "MISSING_FIELD")


async def test_a_principal_as_user_role_is_a_plain_upload(service: Tus) -> None:
    """The attacker labels a plain upload with the victim's principal as ``user_role``
    and a job id as ``user_id``: it is stored as a plain upload (labels are labels), and
    no result appears for the victim."""
    attacker = await service.make_key(Role.WORKER, "gpu-2")
    victim = await service.make_key(Role.CLIENT, "owner", OWNER)
    url = await service.create(
        5, attacker, **{"Upload-Metadata": metadata(user_id="job-9", user_role=OWNER)}
    )
    assert (await service.patch(url, 0, b"fake!", attacker)).status == 204
    record = await service.status(url.rsplit("/", 1)[1], attacker)
    assert (record["status"], record["user_role"], record["user_id"]) == (
        "completed",
        OWNER,
        "job-9",
    )
    stored = await service.db.get_upload(record["upload_id"])
    assert stored is not None and (stored.result_owner, stored.result_job_id) == (None, None)
    assert (await service.request("GET", "/download/job-9", key=victim)).status == 404
    assert (await service.request("GET", "/list", key=victim)).body["files"] == []


# ----------------------------------------------------------------- bounds and attacks


async def test_another_principals_upload_is_not_found(service: Tus) -> None:
    """The attacker knows the victim's upload URL: HEAD, PATCH, DELETE get 404; the
    victim's bytes and offset are unchanged."""
    victim = await service.make_key(Role.CLIENT, "victim", fingerprint_of("victim"))
    attacker = await service.make_key(Role.CLIENT, "attacker", fingerprint_of("attacker"))
    url = await service.create(64, key=victim)
    await service.patch(url, 0, b"v" * 32, key=victim)
    upload_id = url.rsplit("/", 1)[1]
    for method in ("HEAD", "DELETE"):
        got = await service.tus(method, url, attacker)
        assert got.status == 404, method
        assert "Upload-Offset" not in got.headers
    patched = await service.patch(url, 32, b"X" * 32, key=attacker)
    assert (patched.status, patched.code) == (404, "UPLOAD_NOT_FOUND")
    anonymous = await service.patch(url, 32, b"X" * 32, key=None)
    assert (anonymous.status, anonymous.code) == (401, "UNAUTHORIZED")
    assert (await service.tus("HEAD", "/files/../../etc", attacker)).status == 404
    stalled = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield b"X" * 8
        await stalled.wait()

    held = asyncio.create_task(service.patch(url, 32, stalling(), key=attacker))
    await asyncio.sleep(0.1)  # the attacker's PATCH is open: the upload is not locked
    assert (await service.patch(url, 32, b"v" * 16, key=victim)).status == 204
    stalled.set()
    assert (await held).status == 404
    assert await service.offset(url, victim) == 48
    assert service.partial_bytes(upload_id)[:48] == b"v" * 48  # type: ignore[index]
    assert (await service.status(upload_id, victim))["status"] == "in_progress"


async def test_quotas_apply(start_storage_service: StartService) -> None:
    service: Tus = await start_storage_service(
        Tus, upload_quota_count=2, upload_quota_bytes=1000, disk_reserve_bytes=0
    )
    client = await service.make_key(Role.CLIENT, "c", fingerprint_of("c"))
    await service.create(600, key=client)
    over_bytes = await service.tus("POST", "/files/", client, **{"Upload-Length": "401"})
    assert (over_bytes.status, over_bytes.code) == (413, "QUOTA_EXCEEDED")
    await service.create(400, key=client)
    over_count = await service.tus("POST", "/files/", client, **{"Upload-Length": "1"})
    assert (over_count.status, over_count.code) == (413, "QUOTA_EXCEEDED")
    if service.bucket is None:  # the disk reserve is the folder backend's
        reserve = await start_storage_service(Tus, disk_reserve_bytes=1 << 62)
        full = await reserve.tus("POST", "/files/", **{"Upload-Length": "10"})
        assert (full.status, full.code) == (507, "DISK_FULL")


async def test_concurrent_patch_is_locked_and_slow_body_ends(service: Tus) -> None:
    """A second PATCH while one streams gets 423; a body that stalls ends with 408 and
    what arrived is kept."""
    tus = service.runner.app[TUS_KEY]
    tus.read_timeout_s = 1.0
    url = await service.create(1000)
    release = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield b"s" * 100
        await release.wait()

    first = asyncio.create_task(service.patch(url, 0, stalling()))
    for _ in range(100):
        await asyncio.sleep(0.01)
        if url.rsplit("/", 1)[1] in tus._busy:
            break
    second = await service.patch(url, 0, b"t" * 10)
    assert (second.status, second.code) == (423, "UPLOAD_LOCKED")
    deleted = await service.tus("DELETE", url)
    assert deleted.status == 423
    got = await first
    release.set()
    assert (got.status, got.code) == (408, "REQUEST_TIMEOUT")
    assert await service.offset(url) == 100
    assert (await service.patch(url, 100, b"u" * 900)).status == 204


async def test_cut_connection_keeps_what_arrived(service: Tus) -> None:
    url = await service.create(1 << 20)
    _reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
    head = (
        f"PATCH {url} HTTP/1.1\r\nHost: x\r\nX-API-Key: {KEY}\r\nTus-Resumable: 1.0.0\r\n"
        f"Upload-Offset: 0\r\nContent-Type: application/offset+octet-stream\r\n"
        f"Content-Length: {1 << 20}\r\n\r\n"
    )
    writer.write(head.encode() + b"c" * 300_000)
    await writer.drain()
    await asyncio.sleep(0.2)
    writer.close()
    busy = service.runner.app[TUS_KEY]._busy
    for _ in range(100):  # the server notices the cut, keeps the bytes, ends the PATCH
        if await service.offset(url) == 300_000 and not busy:
            break
        await asyncio.sleep(0.02)
    assert await service.offset(url) == 300_000
    assert (await service.patch(url, 300_000, os.urandom((1 << 20) - 300_000))).status == 204


async def test_patches_after_the_partial_was_closed_between_them(service: Tus) -> None:
    """The partial kept open between PATCHes is closed after ``linger_s``; the next
    PATCH reopens it and the completion hashes what it did not see."""
    service.runner.app[TUS_KEY].linger_s = 0.05
    data = content(3 * CHUNK, seed=4)
    url = await service.create(len(data))
    for start in range(0, len(data), CHUNK):
        assert (await service.patch(url, start, data[start : start + CHUNK])).status == 204
        await asyncio.sleep(0.15)
    record = await service.status(url.rsplit("/", 1)[1])
    assert record["sha256"] == hashlib.sha256(data).hexdigest()


async def test_a_body_past_the_length_keeps_nothing(service: Tus) -> None:
    """A chunked body (no Content-Length) that runs past Upload-Length: 413, and the
    bytes before the overflow are not recorded either."""
    url = await service.create(CHUNK * 3)

    async def too_long() -> AsyncIterator[bytes]:
        for _ in range(8):
            yield b"o" * (CHUNK // 2)

    got = await service.patch(url, 0, too_long())
    assert (got.status, got.code) == (413, "FILE_TOO_LARGE")
    assert await service.offset(url) == 0
