"""Attacks on the blob store behind the storage service, as the attacker's steps, on
both engine sets (SQLite with the folder, PostgreSQL with an S3 bucket on moto):

* poisoning the content-addressed store: the attacker sends one content for a chunk
  through one instance and other bytes for it through another, then completes on the
  first, hoping a blob gets named after bytes it does not hold, so that a victim's
  later upload of that content is "deduplicated" onto the attacker's bytes;
* the object store's credentials reaching a log or an answer when the store fails.

Real servers on loopback, real HTTP, a real database and a real S3 endpoint.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from typing import Any

import pytest
from loguru import logger

from signaling.app import start_server
from signaling.keys import Role
from tests.conftest import StartService
from tests.engine_s3 import FAKE_CREDENTIALS, S3Bucket
from tests.storage_service import Answer, StorageService, fingerprint_of, service_settings

MiB = 1024 * 1024
VICTIM = fingerprint_of("victim")
ATTACKER = fingerprint_of("attacker")


async def put_chunk(
    service: StorageService, key: str, upload_id: str, index: int, data: bytes
) -> Answer:
    headers = {"X-Upload-Id": upload_id, "X-Chunk-Index": str(index)}
    return await service.request("PUT", "/api/upload/chunk", key=key, headers=headers, data=data)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def test_a_blob_is_never_named_after_bytes_it_does_not_hold(
    start_storage_service: StartService,
) -> None:
    first, second = await asyncio.gather(
        start_storage_service(upload_chunk_size=MiB), start_storage_service(upload_chunk_size=MiB)
    )
    attacker = await first.make_key(Role.CLIENT, "attacker", ATTACKER)
    worker = await first.make_key(Role.WORKER, "gpu-1")
    victim = await first.make_key(Role.CLIENT, "victim", VICTIM)
    wanted = os.urandom(6 * MiB)  # content the attacker knows a victim will store
    body = {"file_name": "w.bin", "total_size": len(wanted), "user_id": "u", "user_role": "r"}
    started = await first.request("POST", "/api/upload/init", key=attacker, body=body)
    upload_id = started.body["upload_id"]
    for index in range(6):  # every chunk of the wanted content, through the first instance
        part = wanted[index * MiB : (index + 1) * MiB]
        assert (await put_chunk(first, attacker, upload_id, index, part)).status == 200
    garbage = b"\x00" * MiB  # then chunk 0 again, other bytes, through the second
    assert (await put_chunk(second, attacker, upload_id, 0, garbage)).status == 200
    claimed = {"upload_id": upload_id, "sha256": sha(wanted)}
    done = await first.request("POST", "/api/upload/complete", key=attacker, body=claimed)
    assert (done.status, done.code) == (400, "SHA256_MISMATCH")  # the bytes held, hashed
    assert sha(wanted) not in first.blob_names()
    for blob in first.blobs():  # and whatever is stored is named after its own bytes
        assert blob.name == sha(blob.read_bytes())
    # the victim's worker stores the wanted content: the victim gets exactly it back
    stored = await second.store_result(worker, VICTIM, "run1", wanted)
    assert (stored.status, stored.body["sha256"]) == (201, sha(wanted))
    got = await first.request("GET", "/download/run1?keep=true", key=victim)
    assert (got.status, got.body) == (200, wanted)
    assert first.blob_bytes(sha(wanted)) == wanted


def _capture() -> tuple[list[str], int]:
    lines: list[str] = []
    return lines, logger.add(lines.append, level="DEBUG", format="{message}")


async def test_the_object_store_credentials_never_reach_a_log_or_an_answer(
    start_storage_service: StartService,
    storage_engines: tuple[str, str],
    request: pytest.FixtureRequest,
    tmp_path: Any,
) -> None:
    if storage_engines[1] != "s3":
        pytest.skip("the folder backend has no credentials")
    secret = FAKE_CREDENTIALS["AWS_SECRET_ACCESS_KEY"]
    key_id = FAKE_CREDENTIALS["AWS_ACCESS_KEY_ID"]
    lines, sink = _capture()
    try:
        service = await start_storage_service()
        worker = await service.make_key(Role.WORKER, "gpu-1")
        assert (await service.store_result(worker, VICTIM, "ok", b"fine")).status == 201
        bucket = service.bucket
        assert bucket is not None
        # the attacker (or an outage) makes the store fail: the bucket disappears
        client = bucket.sync_client()
        for name in bucket.object_keys():
            client.delete_object(Bucket=bucket.name, Key=name)
        client.delete_bucket(Bucket=bucket.name)
        try:
            failed = await service.store_result(worker, VICTIM, "lost", b"x" * 1000)
            assert (failed.status, failed.code) == (500, "STORAGE_ERROR")
            assert secret not in str(failed.body) and key_id not in str(failed.body)
            ready = await service.request("GET", "/ready")  # the probe sees it too
            assert (ready.status, ready.body["unreachable"]) == (503, ["blob_store"])
            assert secret not in str(ready.body) and key_id not in str(ready.body)
            # a server started on a missing bucket refuses to start, and says why
            missing = {**service.overrides, "s3_bucket": "rtc-no-such-bucket"}
            with pytest.raises(OSError) as refused:
                await start_server(service_settings(tmp_path / "other", **missing))
            assert "NoSuchBucket" in str(refused.value)
            text = "\n".join([*lines, repr(refused.value), str(refused.value)])
            assert secret not in text and key_id not in text
        finally:
            client.create_bucket(Bucket=bucket.name)  # for the fixture's teardown
    finally:
        logger.remove(sink)
    assert any("storage failure" in line for line in lines), lines


async def test_partial_keys_cannot_leave_their_prefix(s3_bucket: S3Bucket) -> None:
    """Keys of partials and blobs come from validated upload ids and digests only."""
    from signaling.blobs_s3 import S3Blobs

    store = S3Blobs(s3_bucket.name, s3_bucket.endpoint, partial_ttl_s=60, max_file_size=MiB)
    await store.open()
    try:
        for bad in ("../blobs/x", "a/b", "", ".hidden", "x" * 200):
            with pytest.raises(ValueError):
                await store.open_upload(bad, 10, "n")
            with pytest.raises(ValueError):
                await store.remove_upload(bad)
        for digest in ("../" + "a" * 61, "A" * 64, "a" * 63):
            with pytest.raises(ValueError):
                await store.open_reader(digest)
            with pytest.raises(ValueError):
                await store.remove(digest)
        assert s3_bucket.object_keys() == []
    finally:
        await store.close()


async def test_a_large_patch_with_a_wrong_checksum_leaves_nothing_held(
    start_storage_service: StartService,
) -> None:
    """The attacker sends a tus PATCH of several parts' worth whose ``Upload-Checksum``
    does not match, hoping the parts already sent stay held (the offset moves on over
    bytes nobody vouched for): 460, and the offset is where it was."""
    from tests.test_tus import Tus, digest

    service: Tus = await start_storage_service(Tus, upload_chunk_size=5 * MiB)
    url = await service.create(12 * MiB)
    first = await service.patch(url, 0, b"a" * 1000)
    assert first.status == 204
    body = os.urandom(11 * MiB)
    wrong = digest("sha256", body[:-1] + b"x")
    refused = await service.patch(url, 1000, body, **{"Upload-Checksum": wrong})
    assert refused.status == 460
    assert await service.offset(url) == 1000
    upload_id = url.rsplit("/", 1)[1]
    assert await service.held(upload_id) == [[0, 1000]]
    assert not any("/staging/" in name for name in service.partials(upload_id))
