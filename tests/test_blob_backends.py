"""The blob-backend contract (:mod:`signaling.blobs`), run against both backends: the
local folder and an S3 bucket on moto's server (real HTTP on loopback).

Content-addressed blobs (dedupe), partial uploads in order and by ranges, resume after
the backend object is made again (a restart), Range reads, a sha256 mismatch storing
nothing, and the cleanup of untouched partials (S3: aborted multipart uploads).
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from rtc_worker.storage import HashMismatchError
from signaling.blobs import BlobBackend, BlobNotFoundError, BlobStoreError
from signaling.blobs_local import FolderBlobs
from signaling.blobs_s3 import S3Blobs
from tests.engine_s3 import S3Bucket

MiB = 1024**2
TTL_S = 3600.0


def make_backend(kind: str, place: Any) -> BlobBackend:
    """A new backend object on the same folder or bucket (as after a restart)."""
    if kind == "folder":
        return FolderBlobs(place, partial_ttl_s=TTL_S)
    return S3Blobs(
        place.name, place.endpoint, partial_ttl_s=TTL_S, max_file_size=1 << 30, sweep_grace_s=0
    )


@pytest.fixture(params=["folder", "s3"])
def place(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Any]:
    """Where the backend keeps its bytes: a folder, or a bucket of the test."""
    if request.param == "folder":
        return "folder", tmp_path / "store"
    return "s3", request.getfixturevalue("s3_bucket")


@pytest.fixture
async def backend(place: tuple[str, Any]) -> AsyncIterator[BlobBackend]:
    """An open backend of the test."""
    store = make_backend(*place)
    await store.open()
    try:
        yield store
    finally:
        await store.close()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def chunks_of(data: bytes, size: int = 256 * 1024) -> AsyncIterator[bytes]:
    for at in range(0, len(data), size):
        yield data[at : at + size]


async def read_all(
    store: BlobBackend, digest: str, start: int = 0, end: int | None = None
) -> bytes:
    reader = await store.open_reader(digest, start, end)
    try:
        return b"".join([chunk async for chunk in reader.chunks()])
    finally:
        await reader.close()


async def store_anonymous(store: BlobBackend, data: bytes, expected: str | None = None) -> str:
    upload = await store.new_anonymous("upload")
    try:
        async for chunk in chunks_of(data, MiB):
            await upload.append(chunk)
        meta = await upload.commit(expected)
        assert await upload.commit() == meta and upload.closed  # again: the same answer
    finally:
        await upload.discard()  # a no-op once committed
    return meta.sha256


async def test_content_in_order_is_stored_under_its_sha256(backend: BlobBackend) -> None:
    data = os.urandom(3000)
    digest = await store_anonymous(backend, data)
    assert digest == sha(data)
    assert await backend.has(digest) and await backend.size(digest) == len(data)
    assert await read_all(backend, digest) == data
    assert backend.location(digest).endswith(digest)
    assert await backend.hashes() == [digest]
    assert await backend.upload_keys() == []  # nothing left behind


async def test_content_larger_than_a_part_streams_in_parts(backend: BlobBackend) -> None:
    data = os.urandom(11 * MiB + 123)  # S3: two 5 MiB parts and a last one
    digest = await store_anonymous(backend, data, sha(data))
    assert await read_all(backend, digest) == data
    assert await backend.upload_keys() == []


async def test_the_same_content_twice_stores_nothing_new(backend: BlobBackend) -> None:
    data = os.urandom(6 * MiB)
    first = await store_anonymous(backend, data)
    second = await store_anonymous(backend, data)
    assert first == second and await backend.hashes() == [first]
    assert await backend.upload_keys() == []
    keyed = await backend.open_upload("0123456789abcdef0123456789abcdef", len(data), "again")
    assert await keyed.write_range(0, chunks_of(data)) == len(data)
    assert (await keyed.commit()).sha256 == first
    assert await backend.hashes() == [first] and await backend.upload_keys() == []


async def test_a_sha256_mismatch_stores_nothing(backend: BlobBackend) -> None:
    data = os.urandom(6 * MiB)
    with pytest.raises(HashMismatchError):
        await store_anonymous(backend, data, "0" * 64)
    keyed = await backend.open_upload("a" * 32, len(data), "wrong")
    await keyed.write_range(0, chunks_of(data))
    with pytest.raises(HashMismatchError) as caught:
        await keyed.commit("f" * 64)
    assert caught.value.actual == sha(data)
    assert await backend.hashes() == []
    assert await backend.upload_keys() == []
    assert await backend.upload_ranges("a" * 32) == []


async def test_range_reads(backend: BlobBackend) -> None:
    data = os.urandom(3 * MiB + 17)
    digest = await store_anonymous(backend, data)
    reader = await backend.open_reader(digest, 100, 2 * MiB)
    assert (reader.size, reader.start, reader.end) == (len(data), 100, 2 * MiB)
    await reader.close()
    assert await read_all(backend, digest, 100, 2 * MiB) == data[100 : 2 * MiB]
    assert await read_all(backend, digest, len(data) - 10) == data[-10:]
    assert await read_all(backend, digest, 5, 5) == b""
    with pytest.raises(ValueError):
        await backend.open_reader(digest, 10, len(data) + 1)
    with pytest.raises(BlobNotFoundError):
        await backend.open_reader("e" * 64)
    assert await backend.remove(digest) and not await backend.remove(digest)
    with pytest.raises(BlobNotFoundError):
        await backend.open_reader(digest)


async def test_ranges_in_any_order(backend: BlobBackend) -> None:
    chunk = 1 * MiB
    data = os.urandom(7 * chunk + 5)
    key = "b" * 32
    upload = await backend.open_upload(key, len(data), "any order", align=chunk)
    order = [7, 3, 0, 6, 1, 5, 2, 4]
    for index in order[:-1]:
        part = data[index * chunk : (index + 1) * chunk]
        assert await upload.write_range(index * chunk, chunks_of(part)) == len(part)
    with pytest.raises(ValueError):  # chunk 4 is missing
        await upload.verify()
    assert (4 * chunk, 5 * chunk) not in await upload.ranges()
    await upload.write_range(4 * chunk, chunks_of(data[4 * chunk : 5 * chunk]))
    assert await upload.ranges() == [(0, len(data))]
    meta = await upload.commit(sha(data))
    assert meta.size == len(data) and meta.sha256 == sha(data)
    assert await read_all(backend, meta.sha256) == data
    assert await backend.upload_keys() == []


async def test_resume_after_the_backend_is_made_again(place: tuple[str, Any]) -> None:
    data = os.urandom(12 * MiB + 9)
    key = "c" * 32
    first = make_backend(*place)
    await first.open()
    upload = await first.open_upload(key, len(data), "resumed")
    cut = 7 * MiB + 3  # S3: part 1 (5 MiB) and a piece of 2 MiB + 3 bytes
    assert await upload.write_range(0, chunks_of(data[:cut])) == cut
    await upload.close()
    await first.close()

    again = make_backend(*place)
    await again.open()
    try:
        assert await again.upload_keys() == [key]
        assert await again.upload_ranges(key) == [(0, cut)]
        resumed = await again.open_upload(key, len(data), "resumed")
        assert resumed.offset == cut
        await resumed.write_range(cut, chunks_of(data[cut:]))
        meta = await resumed.commit(sha(data))
        assert meta.sha256 == sha(data)
        assert await read_all(again, meta.sha256) == data
        assert await again.upload_keys() == []
    finally:
        await again.close()


async def test_writes_past_the_size_are_refused(backend: BlobBackend) -> None:
    upload = await backend.open_upload("d" * 32, 10, "small")
    with pytest.raises(ValueError):
        await upload.write_range(5, chunks_of(b"123456"))
    with pytest.raises(ValueError):
        await upload.write_range(-1, chunks_of(b"1"))
    await upload.write_range(0, chunks_of(b"0123456789"))
    assert (await upload.commit()).sha256 == sha(b"0123456789")


async def test_chunks_larger_than_the_largest_aligned_part(
    backend: BlobBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signaling.blobs_s3_calls as s3_calls

    monkeypatch.setattr(s3_calls, "MAX_ALIGNED_PART_BYTES", 6 * MiB)  # parts of 5 MiB
    chunk = 7 * MiB
    data = os.urandom(15 * MiB)
    upload = await backend.open_upload("6" * 32, len(data), "big chunks", align=chunk)
    for at in (7 * MiB, 0, 14 * MiB):  # chunks span parts, in any order
        await upload.write_range(at, chunks_of(data[at : at + chunk]))
    assert await upload.ranges() == [(0, len(data))]
    assert (await upload.commit(sha(data))).sha256 == sha(data)
    assert await read_all(backend, sha(data)) == data
    await backend.ping()


async def test_an_empty_content(backend: BlobBackend) -> None:
    upload = await backend.open_upload("e" * 32, 0, "empty")
    assert (await upload.commit()).sha256 == sha(b"")
    assert await read_all(backend, sha(b"")) == b""


async def test_discard_and_cleanup_remove_partials(backend: BlobBackend) -> None:
    upload = await backend.open_upload("f" * 32, 6 * MiB, "dropped")
    await upload.write_range(0, chunks_of(os.urandom(6 * MiB - 1)))
    await upload.discard()
    assert await backend.upload_keys() == []
    kept = await backend.open_upload("1" * 32, 6 * MiB, "expires")
    await kept.write_range(0, chunks_of(os.urandom(5 * MiB + 1)))
    await kept.close()
    assert await backend.cleanup(time.time()) == 0  # touched just now
    assert await backend.upload_keys() == ["1" * 32]
    assert await backend.cleanup(time.time() + TTL_S + 60) == 1
    assert await backend.upload_keys() == []


async def test_s3_partial_is_a_multipart_upload(s3_bucket: S3Bucket) -> None:
    store = make_backend("s3", s3_bucket)
    await store.open()
    try:
        data = os.urandom(6 * MiB)
        upload = await store.open_upload("2" * 32, len(data), "parts")
        await upload.write_range(0, chunks_of(data[: 5 * MiB + 1]))
        async with s3_bucket.client() as s3:
            uploads = (await s3.list_multipart_uploads(Bucket=s3_bucket.name))["Uploads"]
            assert [item["Key"] for item in uploads] == [f"partial/{'2' * 32}/data"]
            parts = await s3.list_parts(
                Bucket=s3_bucket.name, Key=uploads[0]["Key"], UploadId=uploads[0]["UploadId"]
            )
            assert [(p["PartNumber"], p["Size"]) for p in parts["Parts"]] == [(1, 5 * MiB)]
        with pytest.raises(ValueError):  # bytes inside a part already sent
            await upload.write_range(MiB, chunks_of(b"x"))
        await upload.write_range(5 * MiB + 1, chunks_of(data[5 * MiB + 1 :]))
        meta = await upload.commit()
        async with s3_bucket.client() as s3:
            listed = await s3.list_objects_v2(Bucket=s3_bucket.name)
            assert [item["Key"] for item in listed["Contents"]] == [f"blobs/{meta.sha256}"]
            assert "Uploads" not in await s3.list_multipart_uploads(Bucket=s3_bucket.name)
    finally:
        await store.close()


async def test_s3_two_instances_starting_one_upload_at_once_agree(s3_bucket: S3Bucket) -> None:
    """Two instances get the first chunks of a new upload at the same moment: both
    start a multipart upload, both adopt the earlier one, and no part is lost."""
    import asyncio

    stores = [make_backend("s3", s3_bucket) for _ in range(2)]
    for store in stores:
        await store.open()
    try:
        chunk = 5 * MiB
        data = os.urandom(3 * chunk)
        key = "7" * 32
        uploads = [await store.open_upload(key, len(data), "both", align=chunk) for store in stores]
        await asyncio.gather(
            *(
                uploads[index % 2].write_range(
                    index * chunk, chunks_of(data[index * chunk :][:chunk])
                )
                for index in range(3)
            )
        )
        async with s3_bucket.client() as s3:
            listed = await s3.list_multipart_uploads(Bucket=s3_bucket.name)
            assert len(listed["Uploads"]) == 1  # the later one was aborted by its maker
        again = await stores[1].open_upload(key, len(data), "both", align=chunk)
        assert await again.ranges() == [(0, len(data))]
        assert (await again.commit(sha(data))).sha256 == sha(data)
        assert await read_all(stores[0], sha(data)) == data
    finally:
        for store in stores:
            await store.close()


async def test_s3_copies_large_content_part_by_part(
    s3_bucket: S3Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    import signaling.blobs_s3_calls as calls

    monkeypatch.setattr(calls, "COPY_LIMIT_BYTES", 6 * MiB)
    monkeypatch.setattr(calls, "COPY_PART_BYTES", 5 * MiB)
    store = make_backend("s3", s3_bucket)
    await store.open()
    try:
        data = os.urandom(11 * MiB)
        digest = await store_anonymous(store, data)
        assert await read_all(store, digest) == data
    finally:
        await store.close()


async def test_s3_a_missing_bucket_is_refused(s3_bucket: S3Bucket) -> None:
    store = S3Blobs("no-such-bucket-here", s3_bucket.endpoint, partial_ttl_s=1, max_file_size=1)
    with pytest.raises(BlobStoreError) as caught:
        await store.open()
    assert caught.value.code == "NoSuchBucket"
    assert "testing-secret-key" not in repr(caught.value)


async def failing_after(data: bytes) -> AsyncIterator[bytes]:
    yield data
    raise ConnectionResetError("the client went away")


async def test_a_cut_write_records_nothing_of_its_last_part(backend: BlobBackend) -> None:
    upload = await backend.open_upload("3" * 32, 4 * MiB, "cut", align=MiB)
    await upload.write_range(0, chunks_of(b"a" * MiB))
    with pytest.raises(ConnectionResetError):
        await upload.write_range(MiB, failing_after(b"b" * 1000))
    assert await upload.ranges() == [(0, MiB)]
    assert await backend.upload_ranges("3" * 32) == [(0, MiB)]


async def test_an_atomic_write_records_nothing_when_cut(backend: BlobBackend) -> None:
    upload = await backend.open_upload("8" * 32, 12 * MiB, "atomic", align=1)
    await upload.write_range(0, chunks_of(b"a" * 100))
    with pytest.raises(ConnectionResetError):  # whole parts' worth arrived, then a cut
        await upload.write_range(100, failing_after(b"b" * (11 * MiB)), atomic=True)
    assert await upload.ranges() == [(0, 100)]
    rest = os.urandom(12 * MiB - 100)
    assert await upload.write_range(100, chunks_of(rest), atomic=True) == len(rest)
    assert await upload.ranges() == [(0, 12 * MiB)]
    assert (await upload.commit()).sha256 == sha(b"a" * 100 + rest)
    assert await backend.upload_keys() == []  # no staged object left behind


async def test_disjoint_ranges_written_at_once(backend: BlobBackend) -> None:
    import asyncio

    chunk = 512 * 1024
    data = os.urandom(12 * chunk + 1)
    upload = await backend.open_upload("4" * 32, len(data), "parallel", align=chunk)
    starts = list(range(0, len(data), chunk))
    await asyncio.gather(
        *(upload.write_range(at, chunks_of(data[at : at + chunk], 64 * 1024)) for at in starts)
    )
    assert (await upload.commit(sha(data))).size == len(data)
    assert await read_all(backend, sha(data)) == data


async def test_s3_a_blob_is_always_named_by_the_sha256_of_its_bytes(
    s3_bucket: S3Bucket,
) -> None:
    """The attacker sends one content for a chunk through instance A, overwrites it
    with other bytes through instance B, and completes on A, hoping A publishes B's
    bytes under the sha256 of what A saw (a poisoned dedupe target for a victim)."""
    first, second = make_backend("s3", s3_bucket), make_backend("s3", s3_bucket)
    await first.open()
    await second.open()
    try:
        key = "5" * 32
        chunk = 1 * MiB
        honest = os.urandom(6 * chunk)  # the chunks of the first 5 MiB are pieces
        on_a = await first.open_upload(key, len(honest), "poison", align=chunk)
        for at in range(0, len(honest), chunk):  # chunk by chunk, as the chunk routes do
            await on_a.write_range(at, chunks_of(honest[at : at + chunk]))
        swapped = os.urandom(chunk)
        on_b = await second.open_upload(key, len(honest), "poison", align=chunk)
        await on_b.write_range(0, chunks_of(swapped))
        meta = await on_a.commit()
        stored = swapped + honest[chunk:]
        assert meta.sha256 == sha(stored) != sha(honest)
        async with s3_bucket.client() as s3:
            listed = await s3.list_objects_v2(Bucket=s3_bucket.name, Prefix="blobs/")
            for item in listed["Contents"]:
                body = await s3.get_object(Bucket=s3_bucket.name, Key=item["Key"])
                async with body["Body"] as stream:
                    content = await stream.read()
                assert item["Key"] == f"blobs/{sha(content)}"
    finally:
        await first.close()
        await second.close()
