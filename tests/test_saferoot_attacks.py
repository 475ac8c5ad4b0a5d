"""Attacks on SafeRoot, written as the attacker's steps (real files only).

The attacker can write inside the root and races the worker: right after SafeRoot
resolved a path (the check), it swaps a directory or a file for a symlink leading
outside (the use). Every operation must then refuse (``OUTSIDE_ROOT``) or act on
what is inside, never read, create, list or remove anything outside; and no answer may
depend on what exists outside the root (no existence oracle).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from rtc_worker.storage import SafeRoot, StorageError, StorageErrorKind
from tests.saferoot_helpers import Fs, SwapAfterResolve, raises_kind, reason

K = StorageErrorKind


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """root/ with a.txt, sub/b.txt, sub/deeper/c.txt; outside/ next to it."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "sub" / "deeper").mkdir(parents=True)
    (outside / "dir" / "inner").mkdir(parents=True)
    (outside / "empty").mkdir()
    (root / "a.txt").write_bytes(b"hello")
    (root / "sub" / "b.txt").write_bytes(b"inside b")
    (root / "sub" / "deeper" / "c.txt").write_bytes(b"c" * 10)
    (outside / "secret.txt").write_bytes(b"secret")
    (outside / "dir" / "b.txt").write_bytes(b"outside b")
    (outside / "dir" / "inner" / "x").write_bytes(b"x")
    return {"tmp": tmp_path, "root": root, "outside": outside}


def picture(folder: Path) -> dict[str, bytes | None]:
    """Every entry below ``folder`` with its bytes (None for directories)."""
    found: dict[str, bytes | None] = {}
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in dirnames:
            found[os.path.relpath(os.path.join(dirpath, name), folder)] = None
        for name in filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, folder)] = Path(path).read_bytes()
    return found


def swap_dir(root: Path, name: str, target: Path) -> Callable[[], None]:
    """The attacker: move ``root/name`` away and put a symlink to ``target`` there."""

    def swap() -> None:
        if (root / name).exists():
            (root / name).rename(root / f"{name}_old")
        (root / name).symlink_to(target, target_is_directory=True)

    return swap


def swap_file(root: Path, name: str, target: Path) -> Callable[[], None]:
    def swap() -> None:
        (root / name).unlink()
        (root / name).symlink_to(target)

    return swap


# Every operation that walks through the directory "sub": the attacker swaps "sub" for
# a symlink to outside/dir right after the resolution.
THROUGH_SUB: dict[str, Callable[[SafeRoot], object]] = {
    "open_input": lambda r: r.open_input(("sub", "b.txt")),
    "open_input (dir)": lambda r: r.open_input(("sub", "deeper")),
    "open_file": lambda r: r.open_file(("sub", "b.txt")),
    "open_dir": lambda r: r.open_dir(("sub", "deeper")),
    "open_dir (create)": lambda r: r.open_dir(("sub", "new"), create=True),
    "makedirs": lambda r: r.makedirs(("sub", "x", "y")),
    "subroot": lambda r: r.subroot(("sub",)),
    "create_file": lambda r: r.create_file(("sub", "new.bin")),
    "atomic_file": lambda r: r.atomic_file(("sub", "new.bin")),
    "write_atomic": lambda r: r.write_atomic(("sub", "b.txt"), b"overwrite"),
    "walk_files": lambda r: r.walk_files(("sub",)),
    "snapshot": lambda r: r.snapshot(("sub",)),
    "prune": lambda r: r.prune(("sub",), set()),
    "fsync_tree": lambda r: r.fsync_tree(("sub",)),
    "remove_tree": lambda r: r.remove_tree(("sub", "deeper")),
    "remove_empty_dir": lambda r: r.remove_empty_dir(("sub", "deeper")),
}


@pytest.mark.parametrize("operation", sorted(THROUGH_SUB))
def test_a_directory_swapped_after_the_check_is_refused(
    tree: dict[str, Path], operation: str
) -> None:
    root, outside = tree["root"], tree["outside"]
    before = picture(outside)
    racer = SwapAfterResolve(root, swap_dir(root, "sub", outside / "dir"))
    call = THROUGH_SUB[operation]
    if operation == "remove_empty_dir":
        assert call(racer) is False  # refused quietly: nothing removed
    else:
        err = raises_kind(K.OUTSIDE_ROOT, lambda: call(racer))
        assert str(outside) not in str(err)
        assert reason(err, "sub/b.txt") == "Path outside shared storage: sub/b.txt"
    assert picture(outside) == before  # nothing read out, created or removed there
    assert (root / "sub").is_symlink()  # the attacker's link itself is left alone
    assert (root / "sub_old" / "b.txt").read_bytes() == b"inside b"


def test_exists_answers_no_through_a_swapped_directory(tree: dict[str, Path]) -> None:
    root = tree["root"]
    racer = SwapAfterResolve(root, swap_dir(root, "sub", tree["outside"] / "dir"))
    assert racer.exists(("sub", "b.txt")) is False  # though outside/dir/b.txt exists


@pytest.mark.parametrize("operation", ["open_file", "open_input", "remove_tree"])
def test_a_file_swapped_after_the_check_is_refused(tree: dict[str, Path], operation: str) -> None:
    root, outside = tree["root"], tree["outside"]
    racer = SwapAfterResolve(root, swap_file(root, "a.txt", outside / "secret.txt"))
    call = getattr(racer, operation)
    raises_kind(K.OUTSIDE_ROOT, lambda: call(("a.txt",)))
    assert (outside / "secret.txt").read_bytes() == b"secret"
    assert (root / "a.txt").is_symlink()


def test_writes_never_go_through_a_file_swapped_for_a_symlink(tree: dict[str, Path]) -> None:
    root, outside = tree["root"], tree["outside"]
    racer = SwapAfterResolve(root, swap_file(root, "a.txt", outside / "secret.txt"))
    racer.write_atomic(("a.txt",), b"new")  # the link is replaced, never followed
    assert not (root / "a.txt").is_symlink() and (root / "a.txt").read_bytes() == b"new"
    assert (outside / "secret.txt").read_bytes() == b"secret"
    racer = SwapAfterResolve(root, swap_file(root, "a.txt", outside / "secret.txt"))
    with pytest.raises(FileExistsError):
        racer.create_file(("a.txt",))  # O_EXCL | O_NOFOLLOW: never written through
    assert (outside / "secret.txt").read_bytes() == b"secret"


def test_an_input_swapped_after_validation_is_caught_at_use(tree: dict[str, Path]) -> None:
    """The job keeps the descriptor opened at validation: it reads the validated file,
    and verify() tells that the path now leads elsewhere."""
    root, outside = tree["root"], tree["outside"]
    safe = SafeRoot(root)
    handle = safe.open_input(("sub", "b.txt"))
    swap_dir(root, "sub", outside / "dir")()  # the attacker, between validation and start
    raises_kind(K.OUTSIDE_ROOT, handle.verify)
    with handle.reader() as data:
        assert data.read() == b"inside b"  # never outside/dir/b.txt
    handle.close()
    handle = safe.open_input(("a.txt",))
    swap_file(root, "a.txt", outside / "secret.txt")()
    raises_kind(K.OUTSIDE_ROOT, handle.verify)
    with handle.reader() as data:
        assert data.read() == b"hello"
    handle.close()


def test_a_subdirectory_swapped_inside_an_output_folder_is_not_pruned_through(
    tree: dict[str, Path],
) -> None:
    root, outside = tree["root"], tree["outside"]
    safe = SafeRoot(root)
    keep = safe.snapshot(("sub",))
    (root / "sub" / "new").mkdir()  # the job's output...
    (root / "sub" / "new" / "f").write_bytes(b"f")
    shutil.rmtree(root / "sub" / "new")  # ...replaced by the attacker with a link out
    (root / "sub" / "new").symlink_to(outside / "dir", target_is_directory=True)
    before = picture(outside)
    assert safe.prune(("sub",), keep) == 1  # the link itself
    assert picture(outside) == before
    assert safe.snapshot(("sub",)) == keep


# -- no existence oracle -----------------------------------------------------------------


def _answers(fs: Fs, rel: str) -> list[tuple[str, K, str]]:
    calls: dict[str, Callable[[str], object]] = {
        "validate": fs.validate,
        "validate_input": fs.validate_input,
        "open_file": fs.open_file,
        "makedirs": fs.makedirs,
        "atomic_write": lambda r: fs.atomic_write(r, b"x"),
        "fsync_tree": fs.fsync_tree,
        "remove_tree": fs.remove_tree,
    }
    found = []
    for name, call in calls.items():
        with pytest.raises(StorageError) as info:
            call(rel)
        found.append((name, info.value.kind, reason(info.value, rel).replace(rel, "<path>")))
    return found


def test_no_existence_oracle_through_parent_references(tree: dict[str, Path]) -> None:
    fs = Fs(tree["root"])
    existing = _answers(fs, "../outside/secret.txt")
    missing = _answers(fs, "../outside/missing.txt")
    assert existing == missing
    assert {kind for _, kind, _ in existing} == {K.OUTSIDE_ROOT}
    assert not (tree["outside"] / "missing.txt").exists()


def test_no_existence_oracle_through_symlinks(tree: dict[str, Path]) -> None:
    fs = Fs(tree["root"])
    (tree["root"] / "to_existing").symlink_to(tree["outside"] / "secret.txt")
    (tree["root"] / "to_missing").symlink_to(tree["outside"] / "missing.txt")
    (tree["root"] / "to_dir").symlink_to(tree["outside"] / "dir")
    (tree["root"] / "to_nodir").symlink_to(tree["outside"] / "nodir")
    assert _answers(fs, "to_existing") == _answers(fs, "to_missing")
    assert _answers(fs, "to_dir/b.txt") == _answers(fs, "to_nodir/b.txt")
    assert {kind for _, kind, _ in _answers(fs, "to_missing")} == {K.OUTSIDE_ROOT}
    assert not (tree["outside"] / "missing.txt").exists()
    assert not (tree["outside"] / "nodir").exists()
    assert (tree["outside"] / "secret.txt").read_bytes() == b"secret"
    assert fs.exists("to_existing") is fs.exists("to_missing") is False


@pytest.mark.parametrize("target", ["secret.txt", "missing.txt"])
def test_a_parent_swapped_during_input_validation_is_no_oracle(
    tree: dict[str, Path], target: str
) -> None:
    """A parent swapped for a symlink between containment and the existence check:
    the answer is OUTSIDE_ROOT whether or not the outside target exists."""
    root, outside = tree["root"], tree["outside"]
    (root / "box").mkdir()
    (root / "box" / target).write_text("inside")

    def swap() -> None:
        shutil.rmtree(root / "box")
        (root / "box").symlink_to(outside)

    raises_kind(K.OUTSIDE_ROOT, lambda: SwapAfterResolve(root, swap).open_input(("box", target)))
