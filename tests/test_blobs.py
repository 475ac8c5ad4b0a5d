"""The blob store: storing, dedupe, locking, expiry, and the worker's existing folders.

Everything runs on real files (``tmp_path``). Partial files themselves (resume, full
disks, ranges, the batch path) are in test_partials.py.
"""

from __future__ import annotations

import fcntl
import gc
import json
import os
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rtc_worker.storage import (
    SHA256_HEX,
    BlobStore,
    HashMismatchError,
    PartialBusyError,
    PartialFile,
    layout,
)
from tests.conftest import REPO
from tests.storage_helpers import (
    KIB,
    blob,
    chunks,
    committed,
    object_files,
    part_path,
    partial_files,
    sha,
)

# -- storing -----------------------------------------------------------------------------


def test_store_in_several_writes_and_commit(blob_store: BlobStore) -> None:
    content = blob(300 * KIB + 17)
    digest = sha(content)
    assert not blob_store.has(digest)
    with blob_store.open_partial(digest, len(content), "weights.bin") as part:
        assert part.offset == 0
        sidecar = json.loads((blob_store.root / "partial" / f"{digest}.json").read_text())
        assert sidecar["sha256"] == digest
        assert sidecar["size"] == len(content)
        assert sidecar["name"] == "weights.bin"
        assert sidecar["created_at"].endswith("Z")
        assert sidecar["updated_at"].endswith("Z")
        for chunk in chunks(content, 50_000):
            part.write(chunk)
        assert part.offset == len(content)
        assert part.hexdigest() == digest
        meta = part.commit()

    assert (meta.sha256, meta.size) == (digest, len(content))
    path = blob_store.object_path(digest)
    assert path == blob_store.root / "objects" / digest[:2] / digest
    assert path.read_bytes() == content
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert blob_store.has(digest)
    assert partial_files(blob_store) == []
    assert blob_store.total_partial_bytes() == 0
    # committing again returns the same object; the closed file refuses writes
    assert part.commit() == meta
    with pytest.raises(ValueError):
        part.write(b"more")


def test_store_creates_its_directories(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "a" / ".." / "a" / "store", partial_ttl_s=60)
    assert store.root == (tmp_path / "a" / "store").resolve()
    assert store.partial_ttl_s == 60
    for sub in ("objects", "partial"):
        assert stat.S_IMODE((store.root / sub).stat().st_mode) == 0o755


def test_object_path_layout_and_bad_digests(blob_store: BlobStore) -> None:
    digest = "ab" + "0" * 62
    assert blob_store.object_path(digest) == blob_store.root / "objects" / "ab" / digest
    assert SHA256_HEX.fullmatch(digest)
    bad = ["", "ab", digest.upper(), digest + "0", digest[:-1] + "g", " " + digest[1:], "../" * 21]
    for value in bad:
        with pytest.raises(ValueError):
            blob_store.object_path(value)
        with pytest.raises(ValueError):
            blob_store.has(value)
        with pytest.raises(ValueError):
            blob_store.partial_size("key", 10, sha256=value)
        with pytest.raises(ValueError):
            blob_store.open_partial("key", 10, "x", sha256=value)
    for key in ["", ".", "..", "a/b", "-x", ".json", "x" * 129, "a\x00"]:
        with pytest.raises(ValueError):
            blob_store.open_partial(key, 10, "x")
    with pytest.raises(ValueError):
        blob_store.open_partial(digest, -1, "x")
    with pytest.raises(ValueError):
        blob_store.partial_size(digest, -1)
    with pytest.raises(ValueError):
        blob_store.open_anonymous("x", -5)
    assert partial_files(blob_store) == []


def test_empty_content(blob_store: BlobStore) -> None:
    digest = sha(b"")
    with blob_store.open_partial(digest, 0, "empty") as part:
        part.commit()
    assert blob_store.object_path(digest).read_bytes() == b""
    assert blob_store.has(digest)


def test_dedupe_keeps_one_object(blob_store: BlobStore) -> None:
    content = blob(10_000, seed=3)
    digest = sha(content)
    with blob_store.open_partial(digest, len(content), "a.bin") as part:
        part.write(content)
        first = blob_store.object_path(part.commit().sha256)
    inode = first.stat().st_ino
    # the receiver asks first: nothing needs sending
    assert blob_store.has(digest)
    # a second transfer of the same content (e.g. an anonymous one) keeps the stored object
    with blob_store.open_anonymous("b.bin", len(content)) as again:
        again.write(content)
        second = blob_store.object_path(again.commit().sha256)
    assert second == first
    assert first.stat().st_ino == inode
    assert object_files(blob_store) == [first]
    assert partial_files(blob_store) == []


def test_commit_requires_the_announced_size(blob_store: BlobStore) -> None:
    content = blob(5000, seed=4)
    digest = sha(content)
    part = blob_store.open_partial(digest, len(content), "c.bin")
    part.write(content[:4000])
    with pytest.raises(ValueError, match="4000 of 5000"):
        part.commit()
    # still open and usable: nothing was lost
    part.write(content[4000:])
    assert blob_store.object_path(part.commit().sha256).read_bytes() == content


def test_writing_past_the_size_is_refused(blob_store: BlobStore) -> None:
    content = blob(1000, seed=5)
    digest = sha(content)
    with blob_store.open_partial(digest, len(content), "d.bin") as part:
        part.write(content[:900])
        with pytest.raises(ValueError, match="exceed"):
            part.write(content[900:] + b"!")
        assert part.offset == 900
        assert part.hexdigest() == sha(content[:900])
        part.write(content[900:])
        assert blob_store.object_path(part.commit().sha256).read_bytes() == content


def test_hash_mismatch_stores_nothing(blob_store: BlobStore) -> None:
    content = blob(4000, seed=6)
    announced = sha(content)
    corrupted = bytearray(content)
    corrupted[1234] ^= 0xFF
    part = blob_store.open_partial(announced, len(content), "e.bin")
    part.write(bytes(corrupted))
    with pytest.raises(HashMismatchError) as info:
        part.commit()
    assert isinstance(info.value, ValueError)
    assert info.value.expected == announced
    assert info.value.actual == sha(bytes(corrupted))
    assert not blob_store.has(announced)
    assert not blob_store.has(sha(bytes(corrupted)))
    assert object_files(blob_store) == []
    assert partial_files(blob_store) == []
    assert part.closed


def test_hash_mismatch_against_expected_digest(blob_store: BlobStore) -> None:
    content = blob(2000, seed=7)
    with blob_store.open_anonymous("f.bin", None) as part:
        part.write(content)
        wrong = sha(b"something else")
        with pytest.raises(HashMismatchError) as info:
            part.commit(wrong)
    assert (info.value.expected, info.value.actual) == (wrong, sha(content))
    assert object_files(blob_store) == []
    assert partial_files(blob_store) == []


def test_anonymous_transfer_is_stored_under_its_digest(blob_store: BlobStore) -> None:
    content = blob(200 * KIB, seed=8)
    with blob_store.open_anonymous("legacy.bin", None) as part:
        assert part.sha256 is None
        assert part.key.startswith("anon-")
        assert partial_files(blob_store) == [f"{part.key}.part"]  # no sidecar: no resume
        for chunk in chunks(content, 7000):
            part.write(chunk)
        meta = part.commit(None)
    assert meta.sha256 == sha(content)
    assert blob_store.object_path(meta.sha256).read_bytes() == content
    assert partial_files(blob_store) == []


def test_closing_an_anonymous_partial_discards_it(blob_store: BlobStore) -> None:
    with blob_store.open_anonymous("gone.bin", 100) as part:
        part.write(b"x" * 50)
        assert partial_files(blob_store) == [f"{part.key}.part"]
    assert part.closed
    assert partial_files(blob_store) == []
    with pytest.raises(ValueError):
        part.commit()


def test_anonymous_with_size_refuses_overrun(blob_store: BlobStore) -> None:
    with blob_store.open_anonymous("g.bin", 3) as part:
        part.write(b"abc")
        with pytest.raises(ValueError):
            part.write(b"d")
        assert blob_store.object_path(part.commit().sha256).read_bytes() == b"abc"


def test_discard_removes_partial_and_sidecar(blob_store: BlobStore) -> None:
    content = blob(3000, seed=9)
    digest = sha(content)
    part = blob_store.open_partial(digest, len(content), "h.bin")
    part.write(content[:1000])
    part.discard()
    part.discard()  # idempotent
    assert partial_files(blob_store) == []
    assert blob_store.partial_size(digest, len(content)) == 0
    # discarding after close removes what the close kept
    again = blob_store.open_partial(digest, len(content), "h.bin")
    again.write(content[:1000])
    again.close()
    assert blob_store.partial_size(digest, len(content)) == 1000
    again.discard()
    assert partial_files(blob_store) == []


# -- locking -----------------------------------------------------------------------------


def test_second_open_in_this_process_is_busy(blob_store: BlobStore, tmp_path: Path) -> None:
    content = blob(1000, seed=17)
    digest = sha(content)
    first = blob_store.open_partial(digest, len(content), "w.bin")
    first.write(content[:500])
    with pytest.raises(PartialBusyError):
        blob_store.open_partial(digest, len(content), "w.bin")
    # another store instance on the same root is refused too
    with pytest.raises(PartialBusyError):
        BlobStore(tmp_path / "store").open_partial(digest, len(content), "w.bin")
    # the refused opens disturbed nothing: the first writer carries on
    first.write(content[500:])
    assert committed(blob_store, first) == content


def test_partial_is_free_again_after_close(blob_store: BlobStore) -> None:
    digest = sha(b"xyz")
    blob_store.open_partial(digest, 3, "x.bin").close()
    with blob_store.open_partial(digest, 3, "x.bin") as part:
        part.write(b"xyz")
        part.commit()


def test_a_foreign_flock_makes_the_partial_busy(blob_store: BlobStore) -> None:
    digest = sha(b"lock")
    blob_store.open_partial(digest, 4, "y.bin").close()
    path = blob_store.root / "partial" / f"{digest}.part"
    with path.open("rb") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        with pytest.raises(PartialBusyError):
            blob_store.open_partial(digest, 4, "y.bin")
    with blob_store.open_partial(digest, 4, "y.bin") as part:
        part.write(b"lock")
        part.commit()


_HOLDER = """
import sys
from pathlib import Path
from rtc_worker.storage import BlobStore

part = BlobStore(Path(sys.argv[1])).open_partial(sys.argv[2], int(sys.argv[3]), "z.bin")
part.write(b"held")
part.flush()
print("ready", flush=True)
sys.stdin.read()
part.close()
"""


def test_another_process_holding_the_partial_makes_it_busy(blob_store: BlobStore) -> None:
    content = b"held by someone else"
    digest = sha(content)
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(blob_store.root), digest, str(len(content))],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdin is not None
        assert holder.stdout.readline().strip() == "ready"
        assert blob_store.partial_size(digest, len(content)) == 4
        with pytest.raises(PartialBusyError):
            blob_store.open_partial(digest, len(content), "z.bin")
        # a locked partial is not expired, whatever its age
        assert blob_store.cleanup(now=time.time() + 10 * blob_store.partial_ttl_s) == 0
        holder.stdin.close()
        assert holder.wait(timeout=10) == 0
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with blob_store.open_partial(digest, len(content), "z.bin") as part:
        assert part.offset == 4
        part.write(content[4:])
        assert committed(blob_store, part) == content


# -- expiry ------------------------------------------------------------------------------


def _age(path: Path, seconds: float) -> None:
    old = time.time() - seconds
    os.utime(path, (old, old))


def test_cleanup_expires_old_partials_only(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store", partial_ttl_s=3600)
    old_digest, fresh_digest, open_digest = sha(b"old"), sha(b"fresh"), sha(b"abcdefghij")
    for digest in (old_digest, fresh_digest):
        with store.open_partial(digest, 10, "f") as part:
            part.write(b"12345")
    anon: PartialFile | None = store.open_anonymous("legacy", None)
    assert anon is not None
    anon.write(b"anon")
    anon.flush()
    anon_path = part_path(store, anon)
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
    assert committed(store, busy) == b"abcdefghij"
    # everything else expires once old enough
    assert store.cleanup(now=time.time() + 7200) == 1
    assert partial_files(store) == []


def test_cleanup_keeps_a_partial_whose_sidecar_was_refreshed(tmp_path: Path) -> None:
    store = BlobStore(tmp_path / "store", partial_ttl_s=100)
    digest = sha(b"refreshed")
    with store.open_partial(digest, 9, "f") as part:
        part.write(b"refr")
    _age(store.root / "partial" / f"{digest}.part", 1000)  # the sidecar is fresh
    assert store.cleanup() == 0
    assert store.partial_size(digest, 9) == 4


# -- misc --------------------------------------------------------------------------------


def test_store_root(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    data = tmp_path / "data"
    assert layout.store_root(shared, data) == shared / ".rtc-store"
    assert layout.store_root(None, data) == data / "store"
    assert layout.store_parts(shared=True) == (".rtc-store",)
    assert layout.store_parts(shared=False) == ("store",)


# -- folders written before the one file layer -------------------------------------------


def test_a_worker_store_from_before_keeps_working(tmp_path: Path) -> None:
    """``.rtc-store`` as earlier workers wrote it: read-only objects under
    ``objects/ab/``, partials ``partial/<sha>.part`` with a sidecar without ranges."""
    root = tmp_path / ".rtc-store"
    stored = blob(70_000, seed=50)
    (root / "objects" / sha(stored)[:2]).mkdir(parents=True)
    obj = root / "objects" / sha(stored)[:2] / sha(stored)
    obj.write_bytes(stored)
    obj.chmod(0o444)
    content = blob(3 * 1024 * 1024 + 5, seed=51)
    digest, held = sha(content), 1_500_000
    (root / "partial").mkdir()
    (root / "partial" / f"{digest}.part").write_bytes(content[:held])
    old_sidecar = {
        "sha256": digest,
        "size": len(content),
        "name": "old.bin",
        "created_at": "2026-01-02T03:04:05Z",
        "updated_at": "2026-01-02T03:04:05Z",
    }
    (root / "partial" / f"{digest}.json").write_text(json.dumps(old_sidecar))

    store = BlobStore(root)
    assert store.has(sha(stored)) and store.size(sha(stored)) == len(stored)
    with store.open_object(sha(stored)) as file:
        assert file.read() == stored
    assert list(store.objects()) == [sha(stored)]
    assert store.partial_size(digest, len(content)) == held
    assert store.partial_ranges(digest) == [(0, held)]
    with store.open_partial(digest, len(content), "old.bin") as part:
        assert part.offset == held
        assert part.hexdigest() == sha(content[:held])
        sidecar = json.loads((root / "partial" / f"{digest}.json").read_text())
        assert sidecar["created_at"] == "2026-01-02T03:04:05Z"
        assert "ranges" not in sidecar  # still the in-order format
        part.write(content[held:])
        assert committed(store, part) == content
    assert sorted(store.objects()) == sorted([sha(stored), digest])
    assert partial_files(store) == []
