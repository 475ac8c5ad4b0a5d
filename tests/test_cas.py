"""The content-addressed store: storing, dedupe, resume, locking, expiry and full disks.

Everything runs on real files (``tmp_path``, or a size-limited tmpfs for full disks).
"""

from __future__ import annotations

import errno
import fcntl
import gc
import hashlib
import json
import os
import random
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rtc_worker.storage import (
    SHA256_HEX,
    ContentStore,
    DiskFullError,
    HashMismatchError,
    PartialBusyError,
    PartialFile,
    resolve_store_root,
)
from rtc_worker.storage.cas import WRITE_BUFFER_BYTES
from tests.conftest import REPO, tiny_tmpfs

KIB = 1024
MIB = 1024 * KIB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def chunks(data: bytes, size: int = 64 * KIB) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def partial_files(store: ContentStore) -> list[str]:
    return sorted(p.name for p in (store.root / "partial").iterdir())


def object_files(store: ContentStore) -> list[Path]:
    return sorted(p for p in (store.root / "objects").rglob("*") if p.is_file())


@pytest.fixture
def store(tmp_path: Path) -> ContentStore:
    return ContentStore(tmp_path / "store")


# -- storing -----------------------------------------------------------------------------


def test_store_in_several_writes_and_commit(store: ContentStore) -> None:
    content = blob(300 * KIB + 17)
    digest = sha(content)
    assert not store.has(digest)
    with store.open_partial(digest, len(content), "weights.bin") as part:
        assert part.offset == 0
        sidecar = json.loads((store.root / "partial" / f"{digest}.json").read_text())
        assert sidecar["sha256"] == digest
        assert sidecar["size"] == len(content)
        assert sidecar["name"] == "weights.bin"
        assert sidecar["created_at"].endswith("Z")
        assert sidecar["updated_at"].endswith("Z")
        for chunk in chunks(content, 50_000):
            part.write(chunk)
        assert part.offset == len(content)
        assert part.hexdigest() == digest
        path = part.commit()

    assert path == store.root / "objects" / digest[:2] / digest
    assert path == store.object_path(digest)
    assert path.read_bytes() == content
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert store.has(digest)
    assert partial_files(store) == []
    assert store.total_partial_bytes() == 0
    # committing again returns the same object; the closed file refuses writes
    assert part.commit() == path
    with pytest.raises(ValueError):
        part.write(b"more")


def test_store_creates_its_directories(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "a" / ".." / "a" / "store", partial_ttl_s=60)
    assert store.root == (tmp_path / "a" / "store").resolve()
    assert store.partial_ttl_s == 60
    for sub in ("objects", "partial"):
        assert stat.S_IMODE((store.root / sub).stat().st_mode) == 0o755


def test_object_path_layout_and_bad_digests(store: ContentStore) -> None:
    digest = "ab" + "0" * 62
    assert store.object_path(digest) == store.root / "objects" / "ab" / digest
    assert SHA256_HEX.fullmatch(digest)
    bad = ["", "ab", digest.upper(), digest + "0", digest[:-1] + "g", " " + digest[1:], "../" * 21]
    for value in bad:
        with pytest.raises(ValueError):
            store.object_path(value)
        with pytest.raises(ValueError):
            store.has(value)
        with pytest.raises(ValueError):
            store.partial_size(value, 10)
        with pytest.raises(ValueError):
            store.open_partial(value, 10, "x")
    with pytest.raises(ValueError):
        store.open_partial(digest, -1, "x")
    with pytest.raises(ValueError):
        store.partial_size(digest, -1)
    with pytest.raises(ValueError):
        store.open_anonymous("x", -5)
    assert partial_files(store) == []


def test_empty_content(store: ContentStore) -> None:
    digest = sha(b"")
    with store.open_partial(digest, 0, "empty") as part:
        path = part.commit()
    assert path.read_bytes() == b""
    assert store.has(digest)


def test_dedupe_keeps_one_object(store: ContentStore) -> None:
    content = blob(10_000, seed=3)
    digest = sha(content)
    with store.open_partial(digest, len(content), "a.bin") as part:
        part.write(content)
        first = part.commit()
    inode = first.stat().st_ino
    # the receiver asks first: nothing needs sending
    assert store.has(digest)
    # a second transfer of the same content (e.g. an anonymous one) keeps the stored object
    with store.open_anonymous("b.bin", len(content)) as again:
        again.write(content)
        second = again.commit()
    assert second == first
    assert first.stat().st_ino == inode
    assert object_files(store) == [first]
    assert partial_files(store) == []


def test_commit_requires_the_announced_size(store: ContentStore) -> None:
    content = blob(5000, seed=4)
    digest = sha(content)
    part = store.open_partial(digest, len(content), "c.bin")
    part.write(content[:4000])
    with pytest.raises(ValueError, match="4000 of 5000"):
        part.commit()
    # still open and usable: nothing was lost
    part.write(content[4000:])
    assert part.commit().read_bytes() == content


def test_writing_past_the_size_is_refused(store: ContentStore) -> None:
    content = blob(1000, seed=5)
    digest = sha(content)
    with store.open_partial(digest, len(content), "d.bin") as part:
        part.write(content[:900])
        with pytest.raises(ValueError, match="exceed"):
            part.write(content[900:] + b"!")
        assert part.offset == 900
        assert part.hexdigest() == sha(content[:900])
        part.write(content[900:])
        assert part.commit().read_bytes() == content


def test_hash_mismatch_stores_nothing(store: ContentStore) -> None:
    content = blob(4000, seed=6)
    announced = sha(content)
    corrupted = bytearray(content)
    corrupted[1234] ^= 0xFF
    part = store.open_partial(announced, len(content), "e.bin")
    part.write(bytes(corrupted))
    with pytest.raises(HashMismatchError) as info:
        part.commit()
    assert isinstance(info.value, ValueError)
    assert info.value.expected == announced
    assert info.value.actual == sha(bytes(corrupted))
    assert not store.has(announced)
    assert not store.has(sha(bytes(corrupted)))
    assert object_files(store) == []
    assert partial_files(store) == []
    assert part.closed


def test_hash_mismatch_against_expected_digest(store: ContentStore) -> None:
    content = blob(2000, seed=7)
    with store.open_anonymous("f.bin", None) as part:
        part.write(content)
        wrong = sha(b"something else")
        with pytest.raises(HashMismatchError) as info:
            part.commit(wrong)
    assert (info.value.expected, info.value.actual) == (wrong, sha(content))
    assert object_files(store) == []
    assert partial_files(store) == []


def test_anonymous_transfer_is_stored_under_its_digest(store: ContentStore) -> None:
    content = blob(200 * KIB, seed=8)
    with store.open_anonymous("legacy.bin", None) as part:
        assert part.sha256 is None
        assert part.path.name.startswith("anon-")
        assert part.path.name.endswith(".part")
        for chunk in chunks(content, 7000):
            part.write(chunk)
        path = part.commit(None)
    assert path == store.object_path(sha(content))
    assert path.read_bytes() == content
    assert partial_files(store) == []


def test_closing_an_anonymous_partial_discards_it(store: ContentStore) -> None:
    with store.open_anonymous("gone.bin", 100) as part:
        part.write(b"x" * 50)
        assert part.path.exists()
    assert part.closed
    assert not part.path.exists()
    assert partial_files(store) == []
    with pytest.raises(ValueError):
        part.commit()


def test_anonymous_with_size_refuses_overrun(store: ContentStore) -> None:
    with store.open_anonymous("g.bin", 3) as part:
        part.write(b"abc")
        with pytest.raises(ValueError):
            part.write(b"d")
        assert part.commit().read_bytes() == b"abc"


def test_discard_removes_partial_and_sidecar(store: ContentStore) -> None:
    content = blob(3000, seed=9)
    digest = sha(content)
    part = store.open_partial(digest, len(content), "h.bin")
    part.write(content[:1000])
    part.discard()
    part.discard()  # idempotent
    assert partial_files(store) == []
    assert store.partial_size(digest, len(content)) == 0
    # discarding after close removes what the close kept
    again = store.open_partial(digest, len(content), "h.bin")
    again.write(content[:1000])
    again.close()
    assert store.partial_size(digest, len(content)) == 1000
    again.discard()
    assert partial_files(store) == []


# -- resume ------------------------------------------------------------------------------


def test_resume_after_disconnect(store: ContentStore) -> None:
    content = blob(2 * MIB + 333, seed=10)
    digest = sha(content)
    cut = int(len(content) * 0.4)
    assert store.partial_size(digest, len(content)) == 0
    part = store.open_partial(digest, len(content), "big.bin")
    for chunk in chunks(content[:cut]):
        part.write(chunk)
    part.close()  # the connection dropped
    part.close()  # idempotent
    assert store.partial_size(digest, len(content)) == cut
    assert store.total_partial_bytes() == cut
    assert part.path.read_bytes() == content[:cut]

    with store.open_partial(digest, len(content), "big.bin") as resumed:
        assert resumed.offset == cut
        assert resumed.hexdigest() == sha(content[:cut])
        for chunk in chunks(content[cut:]):
            resumed.write(chunk)
        assert resumed.hexdigest() == digest
        path = resumed.commit()
    assert path.read_bytes() == content


def test_resume_after_restart_with_a_new_store(tmp_path: Path) -> None:
    content = blob(500 * KIB, seed=11)
    digest = sha(content)
    first = ContentStore(tmp_path / "store")
    with first.open_partial(digest, len(content), "r.bin") as part:
        part.write(content[:123_457])
    created = json.loads((first.root / "partial" / f"{digest}.json").read_text())["created_at"]

    restarted = ContentStore(tmp_path / "store")
    assert restarted.partial_size(digest, len(content)) == 123_457
    with restarted.open_partial(digest, len(content), "r.bin") as part:
        sidecar = json.loads((restarted.root / "partial" / f"{digest}.json").read_text())
        assert sidecar["created_at"] == created
        assert part.offset == 123_457
        part.write(content[123_457:])
        path = part.commit()
    assert path.read_bytes() == content
    assert sha(path.read_bytes()) == digest


def test_disk_holds_a_prefix_while_writing(store: ContentStore) -> None:
    content = blob(3 * MIB + 5, seed=12)
    digest = sha(content)
    with store.open_partial(digest, len(content), "p.bin") as part:
        for chunk in chunks(content, 100_000):
            part.write(chunk)
            on_disk = part.path.read_bytes()
            assert on_disk == content[: len(on_disk)]
            assert part.offset - len(on_disk) < WRITE_BUFFER_BYTES
        part.flush()
        assert part.path.read_bytes() == content
        part.commit()


def test_abandoned_file_leaves_a_prefix(store: ContentStore) -> None:
    """A file dropped without close (a crash) releases its lock and leaves a prefix."""
    content = blob(WRITE_BUFFER_BYTES + 300 * KIB, seed=13)
    digest = sha(content)
    part: PartialFile | None = store.open_partial(digest, len(content), "q.bin")
    assert part is not None
    for chunk in chunks(content):
        part.write(chunk)
    del part
    gc.collect()
    held = store.partial_size(digest, len(content))
    assert 0 < held < len(content)  # the buffered tail was lost, the rest is kept
    with store.open_partial(digest, len(content), "q.bin") as resumed:
        assert resumed.offset == held
        resumed.write(content[held:])
        assert resumed.commit().read_bytes() == content


def test_partial_longer_than_size_is_discarded(store: ContentStore) -> None:
    content = blob(1000, seed=14)
    digest = sha(content)
    with store.open_partial(digest, len(content), "s.bin") as part:
        part.write(content)
    assert store.partial_size(digest, len(content)) == 1000
    assert store.partial_size(digest, 999) == 0
    assert partial_files(store) == []


def test_partial_with_a_different_recorded_size_is_discarded(store: ContentStore) -> None:
    content = blob(1000, seed=15)
    digest = sha(content)
    with store.open_partial(digest, 5000, "t.bin") as part:
        part.write(content)
    assert store.partial_size(digest, 5000) == 1000
    assert store.partial_size(digest, 4000) == 0
    assert partial_files(store) == []


def test_open_restarts_an_inconsistent_partial(store: ContentStore) -> None:
    content = blob(1000, seed=16)
    digest = sha(content)
    with store.open_partial(digest, 2000, "u.bin") as part:
        part.write(blob(1500, seed=99))
    with store.open_partial(digest, len(content), "u.bin") as part:
        assert part.offset == 0
        sidecar = json.loads((store.root / "partial" / f"{digest}.json").read_text())
        assert sidecar["size"] == len(content)
        part.write(content)
        assert part.commit().read_bytes() == content


def test_sidecar_keeps_any_name(store: ContentStore) -> None:
    digest = sha(b"n")
    name = "résumé \ud800 \u202e.txt"
    with store.open_partial(digest, 1, name) as part:
        part.write(b"n")
        sidecar = json.loads((store.root / "partial" / f"{digest}.json").read_text())
        assert sidecar["name"] == name
        assert part.commit().read_bytes() == b"n"


def test_unreadable_sidecar_is_inconsistent(store: ContentStore) -> None:
    digest = sha(b"abc")
    with store.open_partial(digest, 3, "v.bin") as part:
        part.write(b"ab")
    (store.root / "partial" / f"{digest}.json").write_text("{not json")
    assert store.partial_size(digest, 3) == 0
    assert partial_files(store) == []


def test_partial_size_without_a_partial(store: ContentStore) -> None:
    assert store.partial_size("cd" * 32, 100) == 0
    assert partial_files(store) == []


# -- locking -----------------------------------------------------------------------------


def test_second_open_in_this_process_is_busy(store: ContentStore, tmp_path: Path) -> None:
    content = blob(1000, seed=17)
    digest = sha(content)
    first = store.open_partial(digest, len(content), "w.bin")
    first.write(content[:500])
    with pytest.raises(PartialBusyError):
        store.open_partial(digest, len(content), "w.bin")
    # another store instance on the same root is refused too
    with pytest.raises(PartialBusyError):
        ContentStore(tmp_path / "store").open_partial(digest, len(content), "w.bin")
    # the refused opens disturbed nothing: the first writer carries on
    first.write(content[500:])
    assert first.commit().read_bytes() == content


def test_partial_is_free_again_after_close(store: ContentStore) -> None:
    digest = sha(b"xyz")
    store.open_partial(digest, 3, "x.bin").close()
    with store.open_partial(digest, 3, "x.bin") as part:
        part.write(b"xyz")
        part.commit()


def test_a_foreign_flock_makes_the_partial_busy(store: ContentStore) -> None:
    digest = sha(b"lock")
    store.open_partial(digest, 4, "y.bin").close()
    path = store.root / "partial" / f"{digest}.part"
    with path.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(PartialBusyError):
            store.open_partial(digest, 4, "y.bin")
    with store.open_partial(digest, 4, "y.bin") as part:
        part.write(b"lock")
        part.commit()


_HOLDER = """
import sys
from pathlib import Path
from rtc_worker.storage import ContentStore

part = ContentStore(Path(sys.argv[1])).open_partial(sys.argv[2], int(sys.argv[3]), "z.bin")
part.write(b"held")
part.flush()
print("ready", flush=True)
sys.stdin.read()
part.close()
"""


def test_another_process_holding_the_partial_makes_it_busy(store: ContentStore) -> None:
    content = b"held by someone else"
    digest = sha(content)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(store.root), digest, str(len(content))],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "ready"
        assert store.partial_size(digest, len(content)) == 4
        with pytest.raises(PartialBusyError):
            store.open_partial(digest, len(content), "z.bin")
        # a locked partial is not expired, whatever its age
        assert store.cleanup(now=time.time() + 10 * store.partial_ttl_s) == 0
        holder.stdin.close()
        assert holder.wait(timeout=10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with store.open_partial(digest, len(content), "z.bin") as part:
        assert part.offset == 4
        part.write(content[4:])
        assert part.commit().read_bytes() == content


# -- expiry ------------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_cleanup_expires_old_partials_only(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store", partial_ttl_s=3600)
    old_digest, fresh_digest, open_digest = sha(b"old"), sha(b"fresh"), sha(b"abcdefghij")
    for digest in (old_digest, fresh_digest):
        with store.open_partial(digest, 10, "f") as part:
            part.write(b"12345")
    anon: PartialFile | None = store.open_anonymous("legacy", None)
    assert anon is not None
    anon.write(b"anon")
    anon.flush()
    anon_path = anon.path
    del anon  # left behind by a crash: an anonymous partial that nobody closed
    gc.collect()
    busy = store.open_partial(open_digest, 10, "f")
    busy.write(b"abc")
    busy.flush()
    partial_dir = store.root / "partial"
    for name in (f"{old_digest}.part", f"{old_digest}.json", anon_path.name):
        _age(partial_dir / name, 7200)
    for name in (f"{open_digest}.part", f"{open_digest}.json"):
        _age(partial_dir / name, 7200)
    orphan = partial_dir / f"{'ef' * 32}.json"
    orphan.write_text("{}")
    _age(orphan, 7200)
    old_temp = partial_dir / f".{'ef' * 32}.json.0123abcd.tmp"
    old_temp.write_text("{}")
    _age(old_temp, 600)
    new_temp = partial_dir / f".{'fe' * 32}.json.0123abcd.tmp"
    new_temp.write_text("{}")

    assert store.cleanup() == 2  # the old partial and the old anonymous one

    assert partial_files(store) == sorted(
        [
            f"{fresh_digest}.json",
            f"{fresh_digest}.part",
            f"{open_digest}.json",
            f"{open_digest}.part",
            new_temp.name,
        ]
    )
    assert store.partial_size(fresh_digest, 10) == 5
    busy.write(b"defghij")
    assert busy.commit().read_bytes() == b"abcdefghij"
    # everything else expires once old enough
    assert store.cleanup(now=time.time() + 7200) == 1
    assert partial_files(store) == []


def test_cleanup_keeps_a_partial_whose_sidecar_was_refreshed(tmp_path: Path) -> None:
    store = ContentStore(tmp_path / "store", partial_ttl_s=100)
    digest = sha(b"refreshed")
    with store.open_partial(digest, 9, "f") as part:
        part.write(b"refr")
    _age(store.root / "partial" / f"{digest}.part", 1000)  # the sidecar is fresh
    assert store.cleanup() == 0
    assert store.partial_size(digest, 9) == 4


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
        store = ContentStore(mnt / "store")
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
        on_disk = part.path.read_bytes()
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
            path = resumed.commit()
        assert sha(path.read_bytes()) == digest
        assert store.has(digest)


def test_disk_full_on_close_keeps_a_prefix(tmp_path: Path) -> None:
    content = blob(600 * KIB, seed=21)
    digest = sha(content)
    with tiny_tmpfs(tmp_path / "mnt", size="2m") as mnt, ExitStack() as stack:
        store = ContentStore(mnt / "store")
        part = stack.enter_context(store.open_partial(digest, len(content), "mid.bin"))
        part.write(content[: 100 * KIB])
        part.flush()
        filler = _fill(mnt, leave=200 * KIB)
        part.write(content[100 * KIB :])  # buffered: the disk is only touched on close
        with pytest.raises(DiskFullError):
            part.close()
        assert part.closed
        on_disk = part.path.read_bytes()
        assert 100 * KIB <= len(on_disk) < len(content)
        assert on_disk == content[: len(on_disk)]
        assert store.partial_size(digest, len(content)) == len(on_disk)

        filler.unlink()
        with store.open_partial(digest, len(content), "mid.bin") as resumed:
            resumed.write(content[resumed.offset :])
            assert resumed.commit().read_bytes() == content


# -- misc --------------------------------------------------------------------------------


def test_resolve_store_root(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    data = tmp_path / "data"
    assert resolve_store_root(shared, data) == shared / ".rtc-store"
    assert resolve_store_root(None, data) == data / "store"


def test_context_manager_keeps_the_partial_on_error(store: ContentStore) -> None:
    content = blob(5000, seed=22)
    digest = sha(content)
    with (
        pytest.raises(RuntimeError, match="channel closed"),
        store.open_partial(digest, len(content), "k.bin") as part,
    ):
        part.write(content[:2500])
        raise RuntimeError("channel closed")
    assert part.closed
    assert store.partial_size(digest, len(content)) == 2500


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
        store = ContentStore(root)
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
                store = ContentStore(root)
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
        path = part.commit()
        assert path.read_bytes() == content
        assert store.has(digest)
        assert list((root / "partial").iterdir()) == []
