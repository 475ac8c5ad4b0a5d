"""The file layer's descriptor walk, hard-link policy and private copies, on real files.

Each swap below happens *while* the walk is running (between the listing of a folder
and the opening of its entries), which is the window a path-based walk loses."""

from __future__ import annotations

import os
import threading
import zipfile
from pathlib import Path

import pytest

from rtc_worker.archive import build_zip
from rtc_worker.storage import SafeRoot, StorageError, StorageErrorKind
from rtc_worker.storage.copies import CopyLimitError, copy_tree
from rtc_worker.storage.trees import iter_files

SECRET = b"outside the root: never read\n"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    """root/{a.txt, b.txt, sub/c.txt} and outside/{secret.txt} beside it."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    (root / "a.txt").write_bytes(b"alpha")
    (root / "b.txt").write_bytes(b"bravo")
    (root / "sub" / "c.txt").write_bytes(b"charlie")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(SECRET)
    return root


def read_all(top: Path, **kwargs: bool) -> dict[str, bytes]:
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        return {
            "/".join(parts): os.pread(file_fd, 1 << 20, 0)
            for parts, file_fd, _st in iter_files(fd, **kwargs)
        }
    finally:
        os.close(fd)


def test_iter_files_yields_regular_files_by_descriptor(tree: Path) -> None:
    os.mkfifo(tree / "fifo")
    (tree / "link").symlink_to(tree.parent / "outside" / "secret.txt")
    (tree / "linkdir").symlink_to(tree.parent / "outside", target_is_directory=True)
    assert read_all(tree) == {"a.txt": b"alpha", "b.txt": b"bravo", "sub/c.txt": b"charlie"}


def test_hard_linked_files_are_skipped_unless_allowed(tree: Path) -> None:
    os.link(tree.parent / "outside" / "secret.txt", tree / "innocent.txt")
    assert "innocent.txt" not in read_all(tree)
    assert read_all(tree, allow_hardlinks=True)["innocent.txt"] == SECRET


@pytest.mark.parametrize("swap", ["symlink", "hardlink", "fifo", "dir-symlink"])
def test_an_entry_swapped_during_the_walk_is_skipped(tree: Path, swap: str) -> None:
    """The folder is listed with b.txt and sub as a regular file and a folder; right
    after, the attacker turns them into a way out. Nothing outside is read, no hang."""
    outside = tree.parent / "outside"
    top = os.open(tree, os.O_RDONLY | os.O_DIRECTORY)
    seen: dict[str, bytes] = {}
    try:
        for parts, fd, _st in iter_files(top):
            seen["/".join(parts)] = os.pread(fd, 1 << 20, 0)
            if parts == ("a.txt",):  # listed already: swap what comes next
                os.unlink(tree / "b.txt")
                if swap == "symlink":
                    (tree / "b.txt").symlink_to(outside / "secret.txt")
                elif swap == "hardlink":
                    os.link(outside / "secret.txt", tree / "b.txt")
                elif swap == "fifo":
                    os.mkfifo(tree / "b.txt")
                else:
                    (tree / "b.txt").write_bytes(b"bravo")
                    (tree / "sub").rename(tree / "sub.old")
                    (tree / "sub").symlink_to(outside, target_is_directory=True)
    finally:
        os.close(top)
    assert all(SECRET not in data for data in seen.values())
    if swap == "dir-symlink":
        assert seen == {"a.txt": b"alpha", "b.txt": b"bravo"}
    else:
        assert seen == {"a.txt": b"alpha", "sub/c.txt": b"charlie"}


def test_open_input_refuses_a_hard_linked_file(tree: Path) -> None:
    os.link(tree.parent / "outside" / "secret.txt", tree / "innocent.txt")
    with pytest.raises(StorageError) as info:
        SafeRoot(tree).open_input(("innocent.txt",))
    assert info.value.kind is StorageErrorKind.HARD_LINKED
    assert str(tree.parent) not in str(info.value)
    with SafeRoot(tree, allow_hardlinks=True).open_input(("innocent.txt",)) as handle:
        assert os.pread(handle.fd, 100, 0) == SECRET
    # a subroot keeps the policy of the root it came from
    with SafeRoot(tree).subroot(()) as sub, pytest.raises(StorageError):
        sub.open_input(("innocent.txt",))


def test_results_counts_and_zip_leave_out_links(tree: Path) -> None:
    os.link(tree.parent / "outside" / "secret.txt", tree / "sub" / "hard.txt")
    (tree / "sub" / "soft.txt").symlink_to(tree.parent / "outside" / "secret.txt")
    (tree.parent / "top").mkdir()
    safe = SafeRoot(tree.parent)
    assert safe.fsync_tree(("root",)) == (3, len(b"alphabravocharlie"))
    assert build_zip(safe, ("root",), ("top", "r.zip")) == 3
    with zipfile.ZipFile(tree.parent / "top" / "r.zip") as archive:
        assert archive.namelist() == ["a.txt", "b.txt", "sub/c.txt"]
        assert all(SECRET not in archive.read(name) for name in archive.namelist())


def test_build_zip_while_a_folder_flips_to_a_symlink(tree: Path) -> None:
    """An attacker flips sub between the real folder and a symlink to an outside
    folder as fast as it can while results are packed: no packed byte is from outside."""
    outside = tree.parent / "outside"
    for i in range(40):
        (tree / "sub" / f"f{i}.bin").write_bytes(os.urandom(20_000))
    (tree.parent / "top").mkdir()
    safe = SafeRoot(tree.parent)
    stop = threading.Event()

    def flip() -> None:
        while not stop.is_set():
            (tree / "sub").rename(tree / "sub.real")
            (tree / "sub").symlink_to(outside, target_is_directory=True)
            (tree / "sub").unlink()
            (tree / "sub.real").rename(tree / "sub")

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        for _ in range(20):
            build_zip(safe, ("root",), ("top", "r.zip"))
            with zipfile.ZipFile(tree.parent / "top" / "r.zip") as archive:
                assert "secret.txt" not in {Path(n).name for n in archive.namelist()}
                assert all(SECRET not in archive.read(n) for n in archive.namelist())
    finally:
        stop.set()
        flipper.join()


def test_copy_tree_makes_a_read_only_copy_of_regular_files(tree: Path, tmp_path: Path) -> None:
    (tree / "link").symlink_to(tree.parent / "outside" / "secret.txt")
    os.link(tree.parent / "outside" / "secret.txt", tree / "hard.txt")
    (tmp_path / "copy").mkdir()
    with SafeRoot(tree).subroot(()) as source:
        assert copy_tree(source, SafeRoot(tmp_path / "copy"), max_bytes=100, max_files=3) == (
            3,
            len(b"alphabravocharlie"),
        )
    copy = tmp_path / "copy"
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == [
        "a.txt",
        "b.txt",
        "sub/c.txt",
    ]
    assert (copy / "sub" / "c.txt").read_bytes() == b"charlie"
    assert (copy / "a.txt").stat().st_mode & 0o222 == 0


@pytest.mark.parametrize(("max_bytes", "max_files"), [(10, 100), (10_000, 2)])
def test_copy_tree_stops_at_its_caps(
    tree: Path, tmp_path: Path, max_bytes: int, max_files: int
) -> None:
    (tmp_path / "copy").mkdir()
    with pytest.raises(CopyLimitError):
        copy_tree(
            SafeRoot(tree), SafeRoot(tmp_path / "copy"), max_bytes=max_bytes, max_files=max_files
        )
    copied = [p for p in (tmp_path / "copy").rglob("*") if p.is_file()]
    assert len(copied) <= 2 and sum(p.stat().st_size for p in copied) <= 10_000


def test_copy_tree_stops_when_asked(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "copy").mkdir()
    stop = threading.Event()
    stop.set()
    assert copy_tree(
        SafeRoot(tree), SafeRoot(tmp_path / "copy"), max_bytes=100, max_files=10, stop=stop
    ) == (0, 0)
