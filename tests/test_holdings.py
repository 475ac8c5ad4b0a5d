"""What each principal holds in a worker's store, on real files: ownership records by
descriptor, partial files per principal, quotas, the free-space reserve (checked when a
transfer opens and before each batch, on a size-limited tmpfs), and the digests a proof
of possession compares."""

from __future__ import annotations

import errno
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, suppress
from pathlib import Path
from typing import Any

import pytest

from protocol.identity import anonymous_principal
from protocol.proof import proof_digest
from protocol.transfer_messages import FileProofRequest
from rtc_worker.holdings import (
    MAX_REMEMBERED,
    Holdings,
    Quota,
    QuotaExceededError,
    partial_key,
    ranges_digest,
)
from rtc_worker.storage import (
    BlobStore,
    DiskFullError,
    OwnerBook,
    ensure_room,
    free_bytes,
    free_bytes_of,
)
from tests.conftest import tiny_tmpfs
from tests.storage_helpers import KIB, MIB, blob, chunks, sha

ALICE = "a1" * 32  # fingerprints: 64 lowercase hex
BOB = "b0" * 32
NONCE = "0f" * 16


def holdings(
    store: BlobStore, *, files: int = 3, size: int = 10 * KIB, reserve: int = 0
) -> Holdings:
    return Holdings.for_worker(
        store,
        quota=Quota(max_bytes=size, max_files=files),
        anonymous_quota=Quota(max_bytes=size // 2, max_files=1),
        reserve_bytes=reserve,
    )


def stored(store: BlobStore, content: bytes) -> str:
    with store.open_partial(sha(content), len(content), "x") as partial:
        partial.write(content)
        return partial.commit(mime=False).sha256


# ===================================================================== ownership records


def test_an_ownership_record_is_per_owner_and_durable(tmp_path: Path) -> None:
    book = OwnerBook(tmp_path / "owners")
    digest = sha(b"content")
    assert not book.owns(ALICE, digest)
    book.record(ALICE, digest)
    book.record(ALICE, digest)  # twice is harmless
    assert book.owns(ALICE, digest) and not book.owns(BOB, digest)
    assert OwnerBook(tmp_path / "owners").owns(ALICE, digest)  # a restarted worker too
    assert oct((tmp_path / "owners" / ALICE / digest).stat().st_mode & 0o777) == "0o600"
    assert book.forget(ALICE, digest) and not book.forget(ALICE, digest)
    assert not book.owns(ALICE, digest)
    for owner, digest_ in (("anon-" + "0" * 32, digest), ("A1" * 32, digest), (ALICE, "x")):
        with pytest.raises(ValueError):
            book.record(owner, digest_)


def test_a_symlink_planted_as_an_owners_folder_is_never_followed(tmp_path: Path) -> None:
    book = OwnerBook(tmp_path / "owners")
    outside = tmp_path / "outside"
    outside.mkdir()
    digest = sha(b"victim")
    (outside / digest).touch()
    (tmp_path / "owners" / BOB).symlink_to(outside)
    assert not book.owns(BOB, digest)  # the marker outside does not count
    with pytest.raises(OSError) as info:
        book.record(BOB, sha(b"other"))
    assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)  # O_NOFOLLOW | O_DIRECTORY
    assert sorted(p.name for p in outside.iterdir()) == [digest]  # nothing written there


def test_only_a_fingerprints_ownership_is_persisted(blob_store: BlobStore) -> None:
    held = holdings(blob_store)
    digest = stored(blob_store, b"abc")
    assert held.record(ALICE, digest) and held.owns(ALICE, digest, 3)
    assert not held.owns(ALICE, digest, 4)  # held with another size: not that content
    assert not held.owns(BOB, digest, 3)
    for principal in ("client-1", anonymous_principal()):
        assert not held.record(principal, digest) and not held.owns(principal, digest, 3)
    blob_store.remove(digest)
    assert not held.owns(ALICE, digest, 3)  # no longer held: nothing to own


def test_a_connection_remembers_what_a_principal_without_a_key_owns(
    blob_store: BlobStore,
) -> None:
    held = holdings(blob_store)
    digests = [stored(blob_store, bytes([i])) for i in range(3)]
    principal = "client-1"
    mine = held.mine(lambda: principal)
    mine.record(digests[0])
    assert mine.owns(digests[0], 1) and not mine.owns(digests[1], 1)
    assert not held.mine(lambda: principal).owns(digests[0], 1)  # another connection
    principal = "client-2"  # the principal learnt later is not the same one
    assert not mine.owns(digests[0], 1)
    for i in range(MAX_REMEMBERED + 1):  # bounded: the oldest go first
        mine.record(f"{i:064x}")
    assert not mine.owns(digests[0], 1)
    keyed = held.mine(lambda: ALICE)
    keyed.record(digests[2])
    assert held.mine(lambda: ALICE).owns(digests[2], 1)  # on disk, for any connection


def test_a_clients_own_store_owns_what_it_holds(blob_store: BlobStore) -> None:
    own = Holdings.single_owner(blob_store)
    digest = stored(blob_store, b"results")
    assert own.owns("worker-1", digest, 7) and own.partial_key("worker-1", digest) == digest
    assert own.resumable(anonymous_principal()) and not own.record(ALICE, digest)
    with own.open_partial("worker-1", sha(b"zz"), 2, "z") as partial:
        assert partial.key == sha(b"zz")


# ===================================================================== partial files


def test_each_principal_has_its_own_partial_file(blob_store: BlobStore) -> None:
    held = holdings(blob_store)
    content = blob(3000, seed=1)
    digest = sha(content)
    assert partial_key(ALICE, digest) != partial_key(BOB, digest)
    assert partial_key(ALICE, digest) == held.partial_key(ALICE, digest)
    with held.open_partial(ALICE, digest, len(content), "a") as partial:
        partial.write(content[:1000])
    with held.open_partial(BOB, digest, len(content), "b") as partial:
        assert partial.offset == 0  # never Alice's bytes
    with held.open_partial(ALICE, digest, len(content), "a") as partial:
        assert partial.offset == 1000
        assert partial.reserve_bytes == held.reserve_bytes
    assert held.remove_partial(BOB, digest) and not held.remove_partial(BOB, digest)
    assert held.resumable(ALICE) and held.resumable("client-1")
    assert not held.resumable(anonymous_principal())


def test_the_quota_counts_a_principals_other_partial_files(blob_store: BlobStore) -> None:
    held = holdings(blob_store, files=2, size=10 * KIB)
    first, second, third = (sha(bytes([i])) for i in range(3))
    held.open_partial(ALICE, first, 4 * KIB, "1").close()
    held.open_partial(ALICE, first, 4 * KIB, "1").close()  # its own again: no new one
    with pytest.raises(QuotaExceededError, match="4096 bytes of unfinished transfers"):
        held.open_partial(ALICE, second, 7 * KIB, "2")  # 4 + 7 KiB > 10 KiB
    held.open_partial(ALICE, second, 6 * KIB, "2").close()
    with pytest.raises(QuotaExceededError, match="2 unfinished transfers already; at most 2"):
        held.open_partial(ALICE, third, 1, "3")
    held.open_partial(BOB, third, 10 * KIB, "3").close()  # another principal: unaffected
    assert len(blob_store.partial_keys()) == 3
    anonymous = anonymous_principal()
    with pytest.raises(QuotaExceededError):
        held.open_partial(anonymous, third, 6 * KIB, "3")  # half the bytes for anonymous
    held.open_partial(anonymous, third, 5 * KIB, "3").close()
    with pytest.raises(QuotaExceededError):
        held.open_partial(anonymous, first, 1, "1")  # and one file
    blob_store.remove_partial_if_idle(partial_key(ALICE, first))  # expired, or completed
    held.open_partial(ALICE, third, 1, "3").close()


class SlowOpens(BlobStore):
    """A store whose opens wait for a second one (up to 0.5 s): two opens the quota let
    through would both be inside ``open_partial`` at once."""

    barrier = threading.Barrier(2)

    def open_partial(self, *args: Any, **kwargs: Any) -> Any:
        with suppress(threading.BrokenBarrierError):
            self.barrier.wait(timeout=0.5)
        return super().open_partial(*args, **kwargs)


def test_concurrent_opens_of_one_principal_cannot_both_pass_its_quota(tmp_path: Path) -> None:
    store = SlowOpens(tmp_path / "store")
    held = holdings(store, files=1, size=10 * KIB)

    def open_one(i: int) -> str:
        try:
            held.open_partial(ALICE, sha(bytes([i])), KIB, f"{i}").close()
        except QuotaExceededError:
            return "refused"
        return "opened"

    with ThreadPoolExecutor(max_workers=2) as pool:  # the re-hash of a resume is slow
        outcomes = sorted(pool.map(open_one, range(2)))
    assert outcomes == ["opened", "refused"]
    assert len(store.partial_keys()) == 1


def test_a_transfer_that_would_eat_into_the_reserve_is_refused_when_it_opens(
    blob_store: BlobStore,
) -> None:
    free = free_bytes_of(blob_store.root)
    held = holdings(blob_store, size=2**62, reserve=free - 10 * MIB)
    held.open_partial(ALICE, sha(b"small"), MIB, "small").close()
    with pytest.raises(DiskFullError) as info:  # 11 MiB more would go below the reserve
        held.open_partial(ALICE, sha(b"big"), 11 * MIB, "big.bin")
    assert info.value.errno == errno.ENOSPC and info.value.filename == "big.bin"
    with pytest.raises(DiskFullError):  # what other transfers still expect counts too
        held.open_partial(ALICE, sha(b"mid"), 5 * MIB, "mid", pending=6 * MIB)
    with pytest.raises(DiskFullError):  # a legacy transfer as well
        held.open_anonymous("legacy.bin", 11 * MIB)
    assert not any(k.endswith(sha(b"big")) for k in blob_store.partial_keys())


def test_writes_stop_at_the_reserve_before_the_disk_fills(tmp_path: Path) -> None:
    """Something else (a job, another worker) fills the disk after the transfer opened:
    the transfer's writes stop at the reserve, not at the end of the disk."""
    content = blob(3 * MIB, seed=7)
    with tiny_tmpfs(tmp_path / "mnt", size="8m") as mnt, ExitStack() as stack:
        store = BlobStore(mnt / "store")
        reserve = 2 * MIB
        held = holdings(store, size=2**62, reserve=reserve)
        partial = stack.enter_context(
            held.open_partial(ALICE, sha(content), len(content), "big.bin")
        )
        filler = mnt / "filler"  # leaves room for one 1 MiB batch above the reserve
        filler.write_bytes(bytes(free_bytes_of(store.root) - reserve - int(1.5 * MIB)))
        with pytest.raises(DiskFullError) as info:
            for chunk in chunks(content):
                partial.write(chunk)
        assert info.value.errno == errno.ENOSPC
        assert 0 < partial.offset < len(content) and partial.offset % MIB == 0
        assert free_bytes_of(store.root) >= reserve  # the disk never filled
        partial.close()
        filler.unlink()
        with held.open_partial(ALICE, sha(content), len(content), "big.bin") as resumed:
            assert resumed.offset == MIB


def test_room_is_measured_by_descriptor() -> None:
    fd = os.open("/", os.O_RDONLY)
    try:
        assert free_bytes(fd) > 0
        ensure_room(fd, 0, 0)
        with pytest.raises(OSError) as info:
            ensure_room(fd, 0, free_bytes(fd) + 10**12)
        assert info.value.errno == errno.ENOSPC
    finally:
        os.close(fd)


def test_a_symlinked_folder_is_not_measured(tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tmp_path)
    with pytest.raises(OSError):
        free_bytes_of(tmp_path / "link")


# ===================================================================== proof digests


def test_the_digest_of_a_held_copy_is_the_senders_digest(blob_store: BlobStore) -> None:
    held = holdings(blob_store)
    content = blob(20_000, seed=3)
    digest = stored(blob_store, content)
    request = FileProofRequest(NONCE, ((0, 10), (19_990, 10), (5_000, 4096)))
    expected = proof_digest(NONCE, [content[0:10], content[19_990:], content[5_000:9_096]])
    assert held.stored_digest(digest, len(content), request) == expected
    assert held.stored_digest(digest, len(content) + 1, request) is None  # another size
    assert held.stored_digest(sha(b"not held"), 5, request) is None
    fd = os.open(blob_store.object_path(digest), os.O_RDONLY)
    try:
        assert ranges_digest(fd, request) == expected
        assert ranges_digest(fd, FileProofRequest(NONCE, ((19_999, 2),))) is None  # past it
    finally:
        os.close(fd)
