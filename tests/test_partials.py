"""Partial files: resume, full disks, the single-buffer batch path, writes by ranges.

Everything runs on real files (``tmp_path``, or a size-limited tmpfs for full disks).
"""

from __future__ import annotations

import errno
import gc
import json
import os
import tempfile
import tracemalloc
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc_worker.storage import (
    WRITE_BATCH_BYTES,
    BlobStore,
    DiskFullError,
    HashMismatchError,
    PartialFile,
)
from rtc_worker.storage.side_hash import BESIDE_MIN_BYTES
from tests.conftest import tiny_tmpfs
from tests.storage_helpers import (
    KIB,
    MIB,
    blob,
    chunks,
    committed,
    part_path,
    partial_files,
    sha,
)

# -- resume ------------------------------------------------------------------------------


def test_resume_after_disconnect(blob_store: BlobStore) -> None:
    content = blob(2 * MIB + 333, seed=10)
    digest = sha(content)
    cut = int(len(content) * 0.4)
    assert blob_store.partial_size(digest, len(content)) == 0
    part = blob_store.open_partial(digest, len(content), "big.bin")
    for chunk in chunks(content[:cut]):
        part.write(chunk)
    part.close()  # the connection dropped
    part.close()  # idempotent
    assert blob_store.partial_size(digest, len(content)) == cut
    assert blob_store.total_partial_bytes() == cut
    assert part_path(blob_store, part).read_bytes() == content[:cut]

    with blob_store.open_partial(digest, len(content), "big.bin") as resumed:
        assert resumed.offset == cut
        assert resumed.hexdigest() == sha(content[:cut])
        for chunk in chunks(content[cut:]):
            resumed.write(chunk)
        assert resumed.hexdigest() == digest
        assert committed(blob_store, resumed) == content


def test_resume_after_restart_with_a_new_store(tmp_path: Path) -> None:
    content = blob(500 * KIB, seed=11)
    digest = sha(content)
    first = BlobStore(tmp_path / "store")
    with first.open_partial(digest, len(content), "r.bin") as part:
        part.write(content[:123_457])
    created = json.loads((first.root / "partial" / f"{digest}.json").read_text())["created_at"]

    restarted = BlobStore(tmp_path / "store")
    assert restarted.partial_size(digest, len(content)) == 123_457
    with restarted.open_partial(digest, len(content), "r.bin") as part:
        sidecar = json.loads((restarted.root / "partial" / f"{digest}.json").read_text())
        assert sidecar["created_at"] == created
        assert part.offset == 123_457
        part.write(content[123_457:])
        path = restarted.object_path(part.commit().sha256)
    assert path.read_bytes() == content
    assert sha(path.read_bytes()) == digest


def test_disk_holds_a_prefix_while_writing(blob_store: BlobStore) -> None:
    content = blob(3 * MIB + 5, seed=12)
    digest = sha(content)
    with blob_store.open_partial(digest, len(content), "p.bin") as part:
        for chunk in chunks(content, 100_000):
            part.write(chunk)
            on_disk = part_path(blob_store, part).read_bytes()
            assert on_disk == content[: len(on_disk)]
            assert part.offset - len(on_disk) < WRITE_BATCH_BYTES
        part.flush()
        assert part_path(blob_store, part).read_bytes() == content
        part.commit()


def test_abandoned_file_leaves_a_prefix(blob_store: BlobStore) -> None:
    """A file dropped without close (a crash) releases its lock and leaves a prefix."""
    content = blob(WRITE_BATCH_BYTES + 300 * KIB, seed=13)
    digest = sha(content)
    part: PartialFile | None = blob_store.open_partial(digest, len(content), "q.bin")
    assert part is not None
    for chunk in chunks(content):
        part.write(chunk)
    del part
    gc.collect()
    held = blob_store.partial_size(digest, len(content))
    assert 0 < held < len(content)  # the buffered tail was lost, the rest is kept
    with blob_store.open_partial(digest, len(content), "q.bin") as resumed:
        assert resumed.offset == held
        resumed.write(content[held:])
        assert committed(blob_store, resumed) == content


def test_partial_longer_than_size_is_discarded(blob_store: BlobStore) -> None:
    content = blob(1000, seed=14)
    digest = sha(content)
    with blob_store.open_partial(digest, len(content), "s.bin") as part:
        part.write(content)
    assert blob_store.partial_size(digest, len(content)) == 1000
    assert blob_store.partial_size(digest, 999) == 0
    assert partial_files(blob_store) == []


def test_partial_with_a_different_recorded_size_is_discarded(blob_store: BlobStore) -> None:
    content = blob(1000, seed=15)
    digest = sha(content)
    with blob_store.open_partial(digest, 5000, "t.bin") as part:
        part.write(content)
    assert blob_store.partial_size(digest, 5000) == 1000
    assert blob_store.partial_size(digest, 4000) == 0
    assert partial_files(blob_store) == []


def test_open_restarts_an_inconsistent_partial(blob_store: BlobStore) -> None:
    content = blob(1000, seed=16)
    digest = sha(content)
    with blob_store.open_partial(digest, 2000, "u.bin") as part:
        part.write(blob(1500, seed=99))
    with blob_store.open_partial(digest, len(content), "u.bin") as part:
        assert part.offset == 0
        sidecar = json.loads((blob_store.root / "partial" / f"{digest}.json").read_text())
        assert sidecar["size"] == len(content)
        part.write(content)
        assert committed(blob_store, part) == content


def test_sidecar_keeps_any_name(blob_store: BlobStore) -> None:
    digest = sha(b"n")
    name = "résumé \ud800 \u202e.txt"
    with blob_store.open_partial(digest, 1, name) as part:
        part.write(b"n")
        sidecar = json.loads((blob_store.root / "partial" / f"{digest}.json").read_text())
        assert sidecar["name"] == name
        assert committed(blob_store, part) == b"n"


def test_unreadable_sidecar_is_inconsistent(blob_store: BlobStore) -> None:
    digest = sha(b"abc")
    with blob_store.open_partial(digest, 3, "v.bin") as part:
        part.write(b"ab")
    (blob_store.root / "partial" / f"{digest}.json").write_text("{not json")
    assert blob_store.partial_size(digest, 3) == 0
    assert partial_files(blob_store) == []


def test_partial_size_without_a_partial(blob_store: BlobStore) -> None:
    assert blob_store.partial_size("cd" * 32, 100) == 0
    assert partial_files(blob_store) == []


# -- full disk ---------------------------------------------------------------------------


def _fill(mountpoint: Path, leave: int) -> Path:
    """Write a filler file so that about ``leave`` bytes stay free."""
    vfs = os.statvfs(mountpoint)
    free = vfs.f_bavail * vfs.f_frsize
    filler = mountpoint / "filler"
    filler.write_bytes(b"\0" * max(free - leave, 0))
    return filler


def test_disk_full_while_writing_keeps_a_prefix_and_resumes(tmp_path: Path) -> None:
    content = blob(2 * MIB + 12_345, seed=20)
    digest = sha(content)
    with tiny_tmpfs(tmp_path / "mnt", size="4m") as mnt, ExitStack() as stack:
        store = BlobStore(mnt / "store")
        # closed by the context manager even if an assertion fails, so the unmount works
        part = stack.enter_context(store.open_partial(digest, len(content), "big.bin"))
        filler = _fill(mnt, leave=300 * KIB)
        with pytest.raises(DiskFullError) as info:
            for chunk in chunks(content):
                part.write(chunk)
        assert info.value.errno in (errno.ENOSPC, errno.EDQUOT)
        assert info.value.filename == "big.bin"
        held = part.offset
        assert 0 < held < len(content)
        on_disk = part_path(store, part).read_bytes()
        assert len(on_disk) == held
        assert on_disk == content[:held]
        with pytest.raises(ValueError):
            part.write(b"x")
        with pytest.raises(ValueError):
            part.commit()
        part.close()
        with pytest.raises(ValueError):
            part.hexdigest()  # it covered bytes that never reached the disk
        assert store.partial_size(digest, len(content)) == held

        filler.unlink()
        with store.open_partial(digest, len(content), "big.bin") as resumed:
            assert resumed.offset == held
            for piece in chunks(content[held:]):
                resumed.write(piece)
            path = store.object_path(resumed.commit().sha256)
        assert sha(path.read_bytes()) == digest
        assert store.has(digest)


def test_disk_full_on_close_keeps_a_prefix(tmp_path: Path) -> None:
    content = blob(600 * KIB, seed=21)
    digest = sha(content)
    with tiny_tmpfs(tmp_path / "mnt", size="2m") as mnt, ExitStack() as stack:
        store = BlobStore(mnt / "store")
        part = stack.enter_context(store.open_partial(digest, len(content), "mid.bin"))
        part.write(content[: 100 * KIB])
        part.flush()
        filler = _fill(mnt, leave=200 * KIB)
        part.write(content[100 * KIB :])  # buffered: the disk is only touched on close
        with pytest.raises(DiskFullError):
            part.close()
        assert part.closed
        on_disk = part_path(store, part).read_bytes()
        assert 100 * KIB <= len(on_disk) < len(content)
        assert on_disk == content[: len(on_disk)]
        assert store.partial_size(digest, len(content)) == len(on_disk)

        filler.unlink()
        with store.open_partial(digest, len(content), "mid.bin") as resumed:
            resumed.write(content[resumed.offset :])
            assert committed(store, resumed) == content


def test_context_manager_keeps_the_partial_on_error(blob_store: BlobStore) -> None:
    content = blob(5000, seed=22)
    digest = sha(content)
    with (
        pytest.raises(RuntimeError, match="channel closed"),
        blob_store.open_partial(digest, len(content), "k.bin") as part,
    ):
        part.write(content[:2500])
        raise RuntimeError("channel closed")
    assert part.closed
    assert blob_store.partial_size(digest, len(content)) == 2500


# -- property ----------------------------------------------------------------------------


@settings(max_examples=50, deadline=None)
@given(
    size=st.integers(0, 3 * MIB),
    seed=st.integers(0, 2**32 - 1),
    chunk_sizes=st.lists(st.integers(1, 1_500_000), min_size=1, max_size=8),
    disconnects=st.lists(st.sampled_from(["close", "abandon", "restart"]), max_size=4),
    disconnect_points=st.lists(st.floats(0, 1), max_size=4),
)
def test_random_chunks_and_disconnects(
    size: int,
    seed: int,
    chunk_sizes: list[int],
    disconnects: list[str],
    disconnect_points: list[float],
) -> None:
    content = blob(size, seed)
    digest = sha(content)
    stops = sorted(int(point * size) for point in disconnect_points)
    plan = list(zip(stops, disconnects, strict=False))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "store"
        store = BlobStore(root)
        part: PartialFile | None = store.open_partial(digest, size, "prop.bin")
        assert part is not None
        position = 0
        turn = 0
        while True:
            # write up to the next disconnect point (or the end) in the chosen chunk sizes
            stop = plan[0][0] if plan else size
            while position < stop:
                step = min(chunk_sizes[turn % len(chunk_sizes)], stop - position)
                part.write(content[position : position + step])
                position += step
                turn += 1
            if not plan:
                break
            _, how = plan.pop(0)
            if how == "abandon":
                del part
                gc.collect()
            else:
                part.close()
            if how == "restart":
                store = BlobStore(root)
            held = store.partial_size(digest, size)
            on_disk = (root / "partial" / f"{digest}.part").read_bytes()
            assert len(on_disk) == held
            assert on_disk == content[:held]
            if how != "abandon":
                assert held == position
            part = store.open_partial(digest, size, "prop.bin")
            assert part.offset == held
            assert part.hexdigest() == sha(content[:held])
            position = held
        assert part.hexdigest() == digest
        path = store.object_path(part.commit().sha256)
        assert path.read_bytes() == content
        assert store.has(digest)
        assert list((root / "partial").iterdir()) == []


# -- the single-buffer batch path (the channel receiver's hot path) ----------------------


def test_append_buffers_without_writing_until_a_batch_is_full(blob_store: BlobStore) -> None:
    content = blob(3 * WRITE_BATCH_BYTES + 5000, seed=30)
    digest = sha(content)
    part = blob_store.open_partial(digest, len(content), "hot.bin")
    path = part_path(blob_store, part)
    pieces = list(chunks(content))
    full_at = [i for i, piece in enumerate(pieces) if part.append(piece)]
    # every append before the first "full" left the file untouched (no system call)
    assert full_at == list(range(15, len(pieces)))
    assert path.stat().st_size == 0 and part.on_disk == 0
    assert part.offset == len(content)
    batch = part.take_batch()
    assert batch is not None and batch.offset == 0 and len(batch.data) == len(content)
    with pytest.raises(RuntimeError):  # one batch in flight at most
        part.take_batch()
    part.write_batch(batch)
    assert part.take_batch() is None  # the buffer was detached whole
    assert part.on_disk == len(content) == path.stat().st_size
    assert committed(blob_store, part) == content


def test_the_loop_keeps_appending_while_one_batch_is_written(blob_store: BlobStore) -> None:
    """The receiver's pattern: the loop appends into the one buffer while a writer
    thread writes the detached batch; never two batches in flight."""
    content = blob(8 * WRITE_BATCH_BYTES + 777, seed=31)
    digest = sha(content)
    part = blob_store.open_partial(digest, len(content), "pipe.bin")
    writer = ThreadPoolExecutor(max_workers=1)
    in_flight: Future[None] | None = None
    progress = []
    for piece in chunks(content):
        if part.append(piece):
            if in_flight is not None:
                in_flight.result()
            batch = part.take_batch()
            assert batch is not None
            with pytest.raises(RuntimeError):  # at most one batch in flight
                part.take_batch()
            in_flight = writer.submit(part.write_batch, batch)
            progress.append(part.on_disk)
    assert in_flight is not None
    in_flight.result()
    writer.shutdown()
    assert progress == sorted(progress) and progress[-1] < len(content)
    assert part.on_disk + (part.offset - part.on_disk) == len(content)
    meta = part.commit()
    assert meta.sha256 == digest and blob_store.object_path(digest).read_bytes() == content


def test_a_batch_out_of_order_is_refused(blob_store: BlobStore) -> None:
    part = blob_store.open_partial(sha(b"x" * 10), 10, "o.bin")
    part.append(b"x" * 10)
    batch = part.take_batch()
    assert batch is not None
    with pytest.raises(ValueError, match="expected 0"):
        part.write_batch(type(batch)(5, batch.data))
    part.write_batch(batch)
    assert committed(blob_store, part) == b"x" * 10


def test_after_a_failed_batch_append_asks_to_settle_and_buffers_nothing(tmp_path: Path) -> None:
    content = blob(2 * MIB, seed=32)
    with tiny_tmpfs(tmp_path / "mnt", size="2m") as mnt, ExitStack() as stack:
        store = BlobStore(mnt / "store")
        part = stack.enter_context(store.open_partial(sha(content), len(content), "f.bin"))
        _fill(mnt, leave=200 * KIB)
        for piece in chunks(content[:WRITE_BATCH_BYTES]):
            part.append(piece)
        batch = part.take_batch()
        assert batch is not None
        with pytest.raises(DiskFullError):
            part.write_batch(batch)
        kept = part.on_disk
        assert part.append(b"more") is True
        assert part.take_batch() is None
        assert part.offset == kept
        assert part_path(store, part).read_bytes() == content[:kept]


# -- by ranges (resumable uploads) --------------------------------------------------------

CHUNK = 256 * KIB


def _write_chunk(part: PartialFile, content: bytes, index: int) -> None:
    start = index * CHUNK
    piece = content[start : start + CHUNK]
    for offset in range(0, len(piece), 64 * KIB):
        part.write_at(start + offset, piece[offset : offset + 64 * KIB])
    part.mark_present(start, start + len(piece))


def test_write_at_out_of_order_survives_a_restart_and_commits(tmp_path: Path) -> None:
    content = blob(4 * CHUNK + 1234, seed=40)  # five chunks, the last one short
    digest = sha(content)
    first = BlobStore(tmp_path / "store")
    part = first.open_partial("u" * 32, len(content), "up.bin", by_ranges=True)
    for index in (3, 0, 4):
        _write_chunk(part, content, index)
    part.write_at(CHUNK, content[CHUNK : CHUNK + 10])  # written, never recorded
    del part  # the server dies
    gc.collect()

    restarted = BlobStore(tmp_path / "store")
    held = restarted.partial_ranges("u" * 32)
    assert held == [(0, CHUNK), (3 * CHUNK, len(content))]
    part = restarted.open_partial("u" * 32, len(content), "up.bin", by_ranges=True)
    assert part.ranges == held and part.on_disk == CHUNK + CHUNK + 1234
    with pytest.raises(ValueError, match="holds"):
        part.commit()  # chunks 1 and 2 are missing: it stays open
    for index in (2, 1):
        _write_chunk(part, content, index)
    meta = part.commit(digest)
    assert (meta.sha256, meta.size) == (digest, len(content))
    assert restarted.object_path(digest).read_bytes() == content
    assert partial_files(restarted) == []


def test_a_chunk_sent_again_replaces_the_bytes_hashed_in_order(blob_store: BlobStore) -> None:
    content = blob(3 * CHUNK, seed=41)
    part = blob_store.open_partial("r" * 32, len(content), "again.bin", by_ranges=True)
    garbage = blob(CHUNK, seed=99)
    part.write_at(0, garbage)  # in order: hashed on the way...
    part.mark_present(0, CHUNK)
    _write_chunk(part, content, 1)
    _write_chunk(part, content, 0)  # ...then replaced: the digest must not keep it
    _write_chunk(part, content, 2)
    assert part.commit().sha256 == sha(content)


def test_a_wrong_digest_by_ranges_removes_the_partial(blob_store: BlobStore) -> None:
    content = blob(2 * CHUNK, seed=42)
    part = blob_store.open_partial("w" * 32, len(content), "bad.bin", by_ranges=True)
    for index in (1, 0):
        _write_chunk(part, content, index)
    with pytest.raises(HashMismatchError) as info:
        part.commit(sha(b"something else"))
    assert info.value.actual == sha(content)
    assert partial_files(blob_store) == [] and blob_store.partial_ranges("w" * 32) == []


def test_write_at_checks_its_bounds(blob_store: BlobStore) -> None:
    part = blob_store.open_partial("b" * 32, 100, "b.bin", by_ranges=True)
    for offset, data in ((-1, b"x"), (95, b"123456"), (100, b"x")):
        with pytest.raises(ValueError):
            part.write_at(offset, data)
    part.close()
    assert blob_store.partial_ranges("b" * 32) == []


def test_commit_by_ranges_reads_the_disk_once_without_a_copy(blob_store: BlobStore) -> None:
    """Chunks that did not arrive in order are hashed at commit by reading them from
    disk in 1 MiB blocks: memory stays far below the file's size."""
    size = 24 * MIB
    content = blob(size, seed=43)
    part = blob_store.open_partial("m" * 32, size, "big.bin", by_ranges=True)
    step = 4 * MIB
    for start in reversed(range(0, size, step)):  # last chunk first: nothing in order
        part.write_at(start, content[start : start + step])
        part.mark_present(start, start + step)
    del content
    tracemalloc.start()
    try:
        meta = part.commit()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert meta.sha256 == sha(blob(size, seed=43))
    assert peak < 4 * MIB, f"peak traced allocation {peak} bytes"


def test_disk_full_in_write_at_records_nothing_and_keeps_the_partial(tmp_path: Path) -> None:
    content = blob(4 * CHUNK, seed=44)
    with tiny_tmpfs(tmp_path / "mnt", size="2m") as mnt, ExitStack() as stack:
        store = BlobStore(mnt / "store")
        part = stack.enter_context(
            store.open_partial("d" * 32, len(content), "full.bin", by_ranges=True)
        )
        _write_chunk(part, content, 0)
        filler = _fill(mnt, leave=64 * KIB)
        with pytest.raises(DiskFullError):
            _write_chunk(part, content, 2)
        assert part.ranges == [(0, CHUNK)]
        filler.unlink()
        for index in (2, 1, 3):
            _write_chunk(part, content, index)
        assert committed(store, part) == content


def test_a_batch_taken_before_close_is_never_written_through_a_closed_file(
    blob_store: BlobStore,
) -> None:
    content = blob(WRITE_BATCH_BYTES + 10, seed=45)
    part = blob_store.open_partial(sha(content), len(content), "late.bin")
    for piece in chunks(content):
        part.append(piece)
    batch = part.take_batch()
    assert batch is not None
    part.close()  # the connection went away while the writer thread was scheduled
    with pytest.raises(ValueError):
        part.write_batch(batch)  # refused: the descriptor may belong to another file now
    assert part_path(blob_store, part).stat().st_size == 0
    assert blob_store.partial_size(sha(content), len(content)) == 0


def test_a_commit_without_mime_detection_stores_the_same_object(blob_store: BlobStore) -> None:
    """A channel receiver only needs the sha256: it skips libmagic, the object is the same."""
    content = b"\x89PNG\r\n\x1a\n" + blob(5000, seed=46)
    with blob_store.open_partial(sha(content), len(content), "img.png") as part:
        part.write(content)
        meta = part.commit(sha(content), mime=False)
    assert (meta.sha256, meta.size, meta.mime_type) == (sha(content), len(content), "")
    with blob_store.open_object(sha(content)) as stored:
        assert stored.read() == content


def test_a_large_write_at_that_fails_is_not_hashed(tmp_path: Path) -> None:
    """A range continuing the hashed prefix is hashed in a second thread while it is
    written; when the write fails (disk full) that hash is dropped, so the range sent
    again is hashed once and the commit's sha256 is the content's."""
    content = blob(2 * BESIDE_MIN_BYTES * 2, seed=45)
    half = len(content) // 2
    with tiny_tmpfs(tmp_path / "mnt", size="4m") as mnt, ExitStack() as stack:
        store = BlobStore(mnt / "store")
        part = stack.enter_context(
            store.open_partial("e" * 32, len(content), "big.bin", by_ranges=True)
        )
        part.write_at(0, content[:half])
        part.mark_present(0, half)
        filler = _fill(mnt, leave=64 * KIB)
        with pytest.raises(DiskFullError):
            part.write_at(half, content[half:])
        filler.unlink()
        part.write_at(half, content[half:])
        part.mark_present(half, len(content))
        meta = part.commit(sha(content))
        assert meta.sha256 == sha(content)
        assert store.object_path(meta.sha256).read_bytes() == content
