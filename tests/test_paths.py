"""Shared-storage path safety: validation, symlinks, races, atomic writes (real files only)."""

from __future__ import annotations

import ctypes
import errno
import os
import pickle
import shutil
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from loguru import logger

from rtc_worker.storage import (
    DiskFullError,
    FilesystemAdapter,
    PathErrorKind,
    StoragePathError,
    fsync_directory,
    split_user_path,
    validate_path_in_root,
)
from tests.conftest import tiny_tmpfs

T = TypeVar("T")

OUTSIDE = PathErrorKind.OUTSIDE_ROOT


# -- helpers -----------------------------------------------------------------------------


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


_CAP_DAC_OVERRIDE = 1
_CAP_DAC_READ_SEARCH = 2
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _NoCapabilities(Exception):
    pass


def _drop_dac_capabilities_in_this_thread() -> None:
    """Clear CAP_DAC_OVERRIDE and CAP_DAC_READ_SEARCH from the calling thread's effective set.

    Linux capabilities are per thread, so permission bits then apply to this thread even
    when running as root, while the rest of the process keeps its privileges.
    """
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        capget, capset = libc.capget, libc.capset
    except (OSError, AttributeError) as exc:
        raise _NoCapabilities(f"capget/capset unavailable: {exc}") from exc
    header = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    if capget(ctypes.byref(header), data) != 0:
        raise _NoCapabilities(f"capget failed: errno {ctypes.get_errno()}")
    data[0].effective &= ~((1 << _CAP_DAC_OVERRIDE) | (1 << _CAP_DAC_READ_SEARCH))
    if capset(ctypes.byref(header), data) != 0:
        raise _NoCapabilities(f"capset failed: errno {ctypes.get_errno()}")


def as_unprivileged(fn: Callable[[], T]) -> T:
    """Run ``fn`` so that file permission bits are enforced, even for root.

    As root, ``fn`` runs in a fresh thread without the DAC-override capabilities; the
    exception or result is handed back to the caller.
    """
    if os.geteuid() != 0:
        return fn()
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            _drop_dac_capabilities_in_this_thread()
        except _NoCapabilities as exc:
            box["skip"] = str(exc)
            return
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target)
    thread.start()
    thread.join()
    if "skip" in box:
        pytest.skip(f"cannot drop capabilities to test permissions as root: {box['skip']}")
    if "error" in box:
        raise box["error"]
    return box["value"]


def raises_kind(kind: PathErrorKind, fn: Callable[[], object]) -> StoragePathError:
    with pytest.raises(StoragePathError) as info:
        fn()
    assert info.value.kind is kind, repr(info.value)
    return info.value


class SwapAfterValidate(FilesystemAdapter):
    """Runs ``swap`` right after the first validation: the window an attacker races."""

    def __init__(self, root: Path, swap: Callable[[], None]) -> None:
        super().__init__(root)
        self._swap: Callable[[], None] | None = swap

    def validate(self, rel: str) -> Path:
        resolved = super().validate(rel)
        if self._swap is not None:
            swap, self._swap = self._swap, None
            swap()
        return resolved


@pytest.fixture
def tree(tmp_path: Path) -> dict[str, Path]:
    """root/ with files, sub-directories and symlinks; outside/ next to it."""
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    (root / "sub" / "deeper").mkdir(parents=True)
    (outside / "dir").mkdir(parents=True)
    (outside / "empty").mkdir()
    (root / "a.txt").write_bytes(b"hello")
    (root / "sub" / "b.txt").write_bytes(b"inside b")
    (root / "sub" / "deeper" / "c.txt").write_bytes(b"c" * 10)
    (outside / "secret.txt").write_bytes(b"secret")
    (outside / "dir" / "b.txt").write_bytes(b"outside b")
    return {"tmp": tmp_path, "root": root, "outside": outside}


@pytest.fixture
def fs(tree: dict[str, Path]) -> FilesystemAdapter:
    return FilesystemAdapter(tree["root"])


# -- lexical validation ------------------------------------------------------------------


def test_valid_relative_file_and_directory(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    root = tree["root"].resolve()
    assert fs.validate("a.txt") == root / "a.txt"
    assert fs.validate("sub/deeper") == root / "sub" / "deeper"
    assert fs.validate("sub/deeper/") == root / "sub" / "deeper"
    assert fs.validate("./sub//b.txt") == root / "sub" / "b.txt"
    assert fs.validate("sub\\b.txt") == root / "sub" / "b.txt"
    assert fs.validate("not/yet/created.bin") == root / "not" / "yet" / "created.bin"
    assert fs.validate_input("sub") == root / "sub"
    assert fs.validate_input("sub/deeper/c.txt") == root / "sub" / "deeper" / "c.txt"


@pytest.mark.parametrize("rel", ["", ".", "./", ".//.", "./."])
def test_empty_and_dot_mean_the_root(
    fs: FilesystemAdapter, tree: dict[str, Path], rel: str
) -> None:
    assert fs.validate(rel) == tree["root"].resolve()
    assert fs.validate_input(rel) == tree["root"].resolve()


@pytest.mark.parametrize(
    "rel",
    [
        "..",
        "../",
        "../outside/secret.txt",
        "a/../../x",
        "sub/../a.txt",  # would stay inside: rejected anyway, no lexical games
        "sub/..",
        "/etc/passwd",
        "/",
        "\\etc\\passwd",
        "C:\\x",
        "c:x",
        "C:",
        "\\\\server\\share",
        "//server/share",
        "a\x00b",
        "\x00",
        "a\nb",
        "a\x1fb",
        "a\x7fb",
        "a\x85b",
        "..\\x",
        "sub\\..\\..\\x",
        "．．/outside",  # fullwidth dots: NFKC gives ".."
        "sub/．．",
        "a／b",  # fullwidth solidus: NFKC gives "/"
        "\ud800",  # lone surrogate: not encodable
        "x" * 256,
        "é" * 128,  # 256 bytes of UTF-8
        "a/" * 2049,  # over 4096 bytes
    ],
)
def test_rejected_paths_are_outside_root(
    fs: FilesystemAdapter, tree: dict[str, Path], rel: str
) -> None:
    err = raises_kind(OUTSIDE, lambda: fs.validate(rel))
    assert err.user_path == rel
    assert err.reason == f"Path outside shared storage: {rel}"
    assert str(err) == err.reason
    assert str(tree["root"]) not in err.reason
    assert fs.exists(rel) is False
    raises_kind(OUTSIDE, lambda: validate_path_in_root(rel, tree["root"]))
    raises_kind(OUTSIDE, lambda: split_user_path(rel))


def test_length_limits_accept_the_maximum(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    name = "é" * 127 + "x"  # 255 bytes
    assert fs.validate(name) == tree["root"].resolve() / name
    long_rel = "/".join(["d" * 200] * 20)  # 4019 bytes
    assert fs.validate(long_rel).name == "d" * 200


def test_unicode_look_alikes_that_are_plain_names(
    fs: FilesystemAdapter, tree: dict[str, Path]
) -> None:
    # U+2215 DIVISION SLASH has no compatibility mapping: an ordinary character in a name
    assert fs.validate("a∕b") == tree["root"].resolve() / "a∕b"
    assert fs.validate("a．b.txt") == tree["root"].resolve() / "a．b.txt"
    assert split_user_path("..a/b..") == ("..a", "b..")


def test_non_string_path_is_refused(tree: dict[str, Path]) -> None:
    err = raises_kind(OUTSIDE, lambda: validate_path_in_root(b"a.txt", tree["root"]))  # type: ignore[arg-type]
    assert err.user_path == "b'a.txt'"


# -- symlinks ----------------------------------------------------------------------------


@pytest.mark.parametrize("absolute", [True, False])
def test_symlinked_file_pointing_outside(
    fs: FilesystemAdapter, tree: dict[str, Path], absolute: bool
) -> None:
    target = tree["outside"] / "secret.txt" if absolute else Path("../outside/secret.txt")
    (tree["root"] / "link.txt").symlink_to(target)
    for call in (fs.validate, fs.validate_input, fs.open_file, fs.to_absolute):
        err = raises_kind(OUTSIDE, lambda call=call: call("link.txt"))
        assert err.reason == "Path outside shared storage: link.txt"
        assert str(tree["outside"]) in err.detail
    assert fs.exists("link.txt") is False


def test_symlinked_directory_pointing_outside(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    (tree["root"] / "linkdir").symlink_to(tree["outside"] / "dir", target_is_directory=True)
    for rel in ("linkdir", "linkdir/b.txt", "linkdir/new/file.txt", "./linkdir/b.txt"):
        raises_kind(OUTSIDE, lambda rel=rel: fs.validate(rel))
    raises_kind(OUTSIDE, lambda: fs.open_file("linkdir/b.txt"))
    raises_kind(OUTSIDE, lambda: fs.makedirs("linkdir/new"))
    raises_kind(OUTSIDE, lambda: fs.atomic_write("linkdir/new.txt", b"x"))
    raises_kind(OUTSIDE, lambda: fs.fsync_tree("linkdir"))
    raises_kind(OUTSIDE, lambda: fs.remove_tree("linkdir/b.txt"))
    assert sorted(p.name for p in (tree["outside"] / "dir").iterdir()) == ["b.txt"]
    assert (tree["outside"] / "dir" / "b.txt").read_bytes() == b"outside b"


def test_chained_symlinks(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    root = tree["root"]
    (root / "out3").symlink_to(tree["outside"] / "secret.txt")
    (root / "out2").symlink_to("out3")
    (root / "out1").symlink_to("sub/../out2")
    raises_kind(OUTSIDE, lambda: fs.validate("out1"))
    (root / "in3").symlink_to("a.txt")
    (root / "in2").symlink_to(root / "in3")
    (root / "in1").symlink_to("in2")
    assert fs.validate("in1") == root.resolve() / "a.txt"
    with fs.open_file("in1") as f:
        assert f.read() == b"hello"


@pytest.mark.parametrize("rel", ["loop1", "loop1/x", "self", "self/deeper/x"])
def test_symlink_loops_are_errors_not_hangs(
    fs: FilesystemAdapter, tree: dict[str, Path], rel: str
) -> None:
    root = tree["root"]
    (root / "loop1").symlink_to("loop2")
    (root / "loop2").symlink_to(root / "loop1")
    (root / "self").symlink_to("self")
    raises_kind(OUTSIDE, lambda: fs.validate(rel))
    raises_kind(OUTSIDE, lambda: fs.validate_input(rel))
    raises_kind(OUTSIDE, lambda: fs.open_file(rel))
    assert fs.exists(rel) is False


def test_long_symlink_chain_inside_resolves(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    root = tree["root"]
    for i in range(45):  # longer than the kernel follows (40): the resolved path is used
        (root / f"long{i}").symlink_to(f"long{i + 1}")
    (root / "long45").write_bytes(b"end")
    assert fs.validate("long0") == root.resolve() / "long45"
    with fs.open_file("long0") as f:
        assert f.read() == b"end"


def test_loop_through_outside_is_refused(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    (tree["root"] / "go").symlink_to(tree["outside"] / "back")
    (tree["outside"] / "back").symlink_to(tree["root"] / "go")
    raises_kind(OUTSIDE, lambda: fs.validate("go"))
    raises_kind(OUTSIDE, lambda: fs.validate_input("go"))


def test_symlink_inside_to_inside_is_allowed(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    root = tree["root"]
    (root / "to_sub").symlink_to("sub", target_is_directory=True)
    (root / "abs_to_b").symlink_to(root / "sub" / "b.txt")
    (root / "sub" / "up").symlink_to("../a.txt")
    assert fs.validate("to_sub/b.txt") == root.resolve() / "sub" / "b.txt"
    assert fs.validate_input("to_sub") == root.resolve() / "sub"
    with fs.open_file("abs_to_b") as f:
        assert f.read() == b"inside b"
    with fs.open_file("sub/up") as f:
        assert f.read() == b"hello"
    assert fs.makedirs("to_sub/made") == root.resolve() / "sub" / "made"
    assert (root / "sub" / "made").is_dir()


# -- no existence oracle -----------------------------------------------------------------


def _errors_for(fs: FilesystemAdapter, rel: str) -> list[tuple[str, PathErrorKind, str]]:
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
        with pytest.raises(StoragePathError) as info:
            call(rel)
        found.append((name, info.value.kind, info.value.reason.replace(rel, "<path>")))
    return found


def test_no_existence_oracle_through_parent_references(
    fs: FilesystemAdapter, tree: dict[str, Path]
) -> None:
    existing = _errors_for(fs, "../outside/secret.txt")
    missing = _errors_for(fs, "../outside/missing.txt")
    assert existing == missing
    assert {kind for _, kind, _ in existing} == {OUTSIDE}
    assert not (tree["outside"] / "missing.txt").exists()


def test_no_existence_oracle_through_symlinks(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    (tree["root"] / "to_existing").symlink_to(tree["outside"] / "secret.txt")
    (tree["root"] / "to_missing").symlink_to(tree["outside"] / "missing.txt")
    (tree["root"] / "to_dir").symlink_to(tree["outside"] / "dir")
    (tree["root"] / "to_nodir").symlink_to(tree["outside"] / "nodir")
    assert _errors_for(fs, "to_existing") == _errors_for(fs, "to_missing")
    assert _errors_for(fs, "to_dir/b.txt") == _errors_for(fs, "to_nodir/b.txt")
    assert {kind for _, kind, _ in _errors_for(fs, "to_missing")} == {OUTSIDE}
    assert not (tree["outside"] / "missing.txt").exists()
    assert not (tree["outside"] / "nodir").exists()
    assert (tree["outside"] / "secret.txt").read_bytes() == b"secret"
    assert fs.exists("to_existing") is fs.exists("to_missing") is False


# -- input validation and use ------------------------------------------------------------


@pytest.mark.parametrize("rel", ["missing.txt", "sub/missing/deeper.txt", "a.txt/below"])
def test_missing_input_is_not_found(fs: FilesystemAdapter, rel: str) -> None:
    err = raises_kind(PathErrorKind.NOT_FOUND, lambda: fs.validate_input(rel))
    assert err.reason == f"Input path does not exist: {rel}"


def test_vanished_between_validation_and_use(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    fs.validate_input("sub/b.txt")
    (tree["root"] / "sub" / "b.txt").unlink()
    err = raises_kind(PathErrorKind.VANISHED, lambda: fs.open_file("sub/b.txt"))
    assert err.reason == "File not found: sub/b.txt"
    shutil.rmtree(tree["root"] / "sub")
    raises_kind(PathErrorKind.VANISHED, lambda: fs.open_file("sub/deeper/c.txt"))


def test_open_file_reads_and_logs_size(fs: FilesystemAdapter) -> None:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="DEBUG", format="{message}")
    try:
        with fs.open_file("sub/deeper/c.txt") as f:
            assert f.read() == b"c" * 10
            assert f.readable() and not f.writable()
    finally:
        logger.remove(sink)
    assert any("'sub/deeper/c.txt' (10 bytes)" in m and " ms" in m for m in messages)
    assert any("validated" in m and " ms" in m for m in messages)


def test_slow_validation_is_a_warning(tree: dict[str, Path]) -> None:
    fs = FilesystemAdapter(tree["root"], slow_warning_s=0.0)
    records: list[Any] = []
    sink = logger.add(lambda m: records.append(m.record), level="DEBUG")
    try:
        fs.validate("a.txt")
    finally:
        logger.remove(sink)
    assert [r["level"].name for r in records] == ["WARNING"]
    assert "slow" in records[0]["message"]


def test_non_regular_inputs_are_corrupted(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    os.mkfifo(tree["root"] / "pipe")
    raises_kind(PathErrorKind.CORRUPTED, lambda: fs.validate_input("pipe"))
    raises_kind(PathErrorKind.CORRUPTED, lambda: fs.open_file("pipe"))  # must not block
    err = raises_kind(PathErrorKind.CORRUPTED, lambda: fs.open_file("sub"))
    assert err.reason == "File corrupted or invalid format: sub"


def test_file_swapped_for_symlink_after_validation(
    fs: FilesystemAdapter, tree: dict[str, Path]
) -> None:
    root = tree["root"]
    fs.validate_input("a.txt")
    (root / "a.txt").unlink()
    (root / "a.txt").symlink_to(tree["outside"] / "secret.txt")
    raises_kind(OUTSIDE, lambda: fs.open_file("a.txt"))


@pytest.mark.parametrize("use_proc", [True, False])
def test_file_swapped_inside_the_open_window(tree: dict[str, Path], use_proc: bool) -> None:
    root = tree["root"]

    def swap() -> None:
        (root / "a.txt").unlink()
        (root / "a.txt").symlink_to(tree["outside"] / "secret.txt")

    racer = SwapAfterValidate(root, swap)
    if not use_proc:
        racer._proc_fd_dir = str(tree["tmp"] / "no-proc-here")
    err = raises_kind(OUTSIDE, lambda: racer.open_file("a.txt"))
    assert err.reason == "Path outside shared storage: a.txt"


@pytest.mark.parametrize("use_proc", [True, False])
def test_parent_swapped_inside_the_open_window(tree: dict[str, Path], use_proc: bool) -> None:
    root = tree["root"]

    def swap() -> None:
        (root / "sub").rename(root / "sub_old")
        (root / "sub").symlink_to(tree["outside"] / "dir", target_is_directory=True)

    racer = SwapAfterValidate(root, swap)
    if not use_proc:
        racer._proc_fd_dir = str(tree["tmp"] / "no-proc-here")
    raises_kind(OUTSIDE, lambda: racer.open_file("sub/b.txt"))


def test_open_without_proc_uses_inode_comparison(tree: dict[str, Path]) -> None:
    fs = FilesystemAdapter(tree["root"])
    fs._proc_fd_dir = str(tree["tmp"] / "no-proc-here")
    with fs.open_file("sub/deeper/c.txt") as f:
        assert f.read() == b"c" * 10


# -- permissions (enforced even as root, by dropping capabilities in a thread) -----------


def test_permission_denied_file(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    (tree["root"] / "a.txt").chmod(0o000)
    err = as_unprivileged(
        lambda: raises_kind(PathErrorKind.PERMISSION_DENIED, lambda: fs.validate_input("a.txt"))
    )
    assert err.reason == "Permission denied: a.txt"
    as_unprivileged(
        lambda: raises_kind(PathErrorKind.PERMISSION_DENIED, lambda: fs.open_file("a.txt"))
    )
    as_unprivileged(lambda: raises_kind(PathErrorKind.PERMISSION_DENIED, lambda: fs.fsync_tree("")))


@pytest.mark.parametrize("mode", [0o000, 0o300, 0o600])  # no access, not listable, not searchable
def test_permission_denied_directory(
    fs: FilesystemAdapter, tree: dict[str, Path], mode: int
) -> None:
    (tree["root"] / "sub").chmod(mode)
    try:
        as_unprivileged(
            lambda: raises_kind(PathErrorKind.PERMISSION_DENIED, lambda: fs.validate_input("sub"))
        )
        assert fs.validate_input("sub")  # the privileged test thread itself still may
    finally:
        (tree["root"] / "sub").chmod(0o755)


def test_permission_denied_creating(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    (tree["root"] / "sub").chmod(0o555)
    try:
        as_unprivileged(
            lambda: raises_kind(PathErrorKind.PERMISSION_DENIED, lambda: fs.makedirs("sub/new"))
        )
        as_unprivileged(
            lambda: raises_kind(
                PathErrorKind.PERMISSION_DENIED, lambda: fs.atomic_write("sub/f", b"x")
            )
        )
        assert sorted(p.name for p in (tree["root"] / "sub").iterdir()) == ["b.txt", "deeper"]
    finally:
        (tree["root"] / "sub").chmod(0o755)


# -- makedirs ----------------------------------------------------------------------------


def test_makedirs_creates_nested_directories(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    made = fs.makedirs("out/x/y/z")
    assert made == tree["root"].resolve() / "out" / "x" / "y" / "z"
    assert made.is_dir()
    assert fs.makedirs("out/x/y/z") == made  # idempotent
    assert fs.makedirs("") == tree["root"].resolve()


@pytest.mark.parametrize("rel", ["a.txt", "a.txt/below", "sub/b.txt/x/y"])
def test_makedirs_refuses_existing_file(fs: FilesystemAdapter, rel: str) -> None:
    err = raises_kind(PathErrorKind.NOT_A_DIRECTORY, lambda: fs.makedirs(rel))
    assert err.reason == f"Not a directory: {rel}"


@pytest.mark.parametrize("component", ["new", "sub"])
def test_makedirs_refuses_symlink_swapped_in(tree: dict[str, Path], component: str) -> None:
    root, empty = tree["root"], tree["outside"] / "empty"

    def swap() -> None:
        if (root / component).exists():
            (root / component).rename(root / f"{component}_old")
        (root / component).symlink_to(empty, target_is_directory=True)

    racer = SwapAfterValidate(root, swap)
    raises_kind(OUTSIDE, lambda: racer.makedirs(f"{component}/x/y"))
    assert list(empty.iterdir()) == []


# -- atomic_write ------------------------------------------------------------------------


def _visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_write_creates_and_replaces(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    root = tree["root"]
    path = fs.atomic_write("results/new.bin", b"first")
    assert path == root.resolve() / "results" / "new.bin"
    assert path.read_bytes() == b"first"
    assert fs.atomic_write("results/new.bin", [b"sec", bytearray(b"on"), memoryview(b"d")]) == path
    assert path.read_bytes() == b"second"
    assert _visible(root / "results") == ["new.bin"]
    fs.atomic_write("a.txt", (bytes([i]) * 1000 for i in range(50)))
    assert (root / "a.txt").read_bytes() == b"".join(bytes([i]) * 1000 for i in range(50))
    (root / "a.txt").chmod(0o600)
    fs.atomic_write("a.txt", b"mode kept")
    assert (root / "a.txt").stat().st_mode & 0o777 == 0o600
    assert _visible(root) == ["a.txt", "results", "sub"]


def test_atomic_write_failure_keeps_old_content_and_no_temp(
    fs: FilesystemAdapter, tree: dict[str, Path]
) -> None:
    def chunks() -> Iterator[bytes]:
        yield b"partial"
        raise RuntimeError("source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        fs.atomic_write("a.txt", chunks())
    assert (tree["root"] / "a.txt").read_bytes() == b"hello"
    assert _visible(tree["root"]) == ["a.txt", "sub"]
    with pytest.raises(TypeError):
        fs.atomic_write("a.txt", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        fs.atomic_write("a.txt", ["text"])  # type: ignore[list-item]
    assert _visible(tree["root"]) == ["a.txt", "sub"]


@pytest.mark.parametrize("rel", ["", ".", "sub"])
def test_atomic_write_refuses_directories(fs: FilesystemAdapter, rel: str) -> None:
    with pytest.raises(IsADirectoryError):
        fs.atomic_write(rel, b"x")


def test_atomic_write_refuses_swapped_parent(tree: dict[str, Path]) -> None:
    root, empty = tree["root"], tree["outside"] / "empty"

    def swap() -> None:
        (root / "sub").rename(root / "sub_old")
        (root / "sub").symlink_to(empty, target_is_directory=True)

    racer = SwapAfterValidate(root, swap)
    raises_kind(OUTSIDE, lambda: racer.atomic_write("sub/result.bin", b"data"))
    assert list(empty.iterdir()) == []


def test_atomic_write_disk_full(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        fs = FilesystemAdapter(mnt)
        fs.atomic_write("keep.bin", b"k" * 1000)
        with pytest.raises(DiskFullError) as info:
            fs.atomic_write("keep.bin", [b"x" * 32768] * 8)
        assert info.value.errno in (errno.ENOSPC, errno.EDQUOT)
        assert isinstance(info.value, OSError)
        with pytest.raises(DiskFullError):
            fs.atomic_write("big/new.bin", b"y" * 200_000)
        assert (mnt / "keep.bin").read_bytes() == b"k" * 1000
        assert _visible(mnt) == ["big", "keep.bin"]
        assert _visible(mnt / "big") == []


# -- fsync_tree, remove_tree, conversions ------------------------------------------------


def test_fsync_tree_counts_regular_files(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    root = tree["root"]
    (root / "sub" / "deeper" / "more").mkdir()
    (root / "sub" / "deeper" / "more" / "d.bin").write_bytes(b"d" * 1234)
    (root / "sub" / "link_out").symlink_to(tree["outside"] / "secret.txt")
    (root / "sub" / "link_dir_out").symlink_to(tree["outside"] / "dir")
    (root / "sub" / "link_in").symlink_to("b.txt")
    assert fs.fsync_tree("sub") == (3, 8 + 10 + 1234)
    assert fs.fsync_tree("sub/deeper/more") == (1, 1234)
    assert fs.fsync_tree("") == (4, 5 + 8 + 10 + 1234)
    raises_kind(PathErrorKind.NOT_FOUND, lambda: fs.fsync_tree("nope"))
    raises_kind(PathErrorKind.NOT_A_DIRECTORY, lambda: fs.fsync_tree("a.txt"))
    fsync_directory(root)


def test_remove_tree(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    root = tree["root"]
    (root / "sub" / "link_dir_out").symlink_to(tree["outside"] / "dir")
    fs.remove_tree("sub")
    assert not (root / "sub").exists()
    assert (tree["outside"] / "dir" / "b.txt").read_bytes() == b"outside b"
    fs.remove_tree("sub")  # missing: nothing to do
    fs.remove_tree("missing/deeper")
    fs.remove_tree("a.txt")
    assert _visible(root) == []
    raises_kind(OUTSIDE, lambda: fs.remove_tree(""))
    raises_kind(OUTSIDE, lambda: fs.remove_tree("../outside"))
    assert root.is_dir()
    assert (tree["outside"] / "secret.txt").exists()


@pytest.mark.parametrize("rel", ["sub", "sub/deeper"])
def test_remove_tree_refuses_symlink_swapped_in(tree: dict[str, Path], rel: str) -> None:
    root = tree["root"]

    def swap() -> None:
        (root / "sub").rename(root / "sub_old")
        (root / "sub").symlink_to(tree["outside"] / "dir", target_is_directory=True)

    racer = SwapAfterValidate(root, swap)
    raises_kind(OUTSIDE, lambda: racer.remove_tree(rel))
    assert (tree["outside"] / "dir" / "b.txt").read_bytes() == b"outside b"
    assert (root / "sub").is_symlink()


def test_to_relative_and_to_absolute(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    root = tree["root"].resolve()
    assert fs.to_absolute("sub/b.txt") == root / "sub" / "b.txt"
    assert fs.to_relative(root / "sub" / "b.txt") == "sub/b.txt"
    assert fs.to_relative(str(root / "sub" / "deeper")) == "sub/deeper"
    assert fs.to_relative(root) == "."
    assert fs.to_relative(fs.to_absolute("a.txt")) == "a.txt"
    alias = tree["tmp"] / "alias"
    alias.symlink_to(root, target_is_directory=True)
    assert fs.to_relative(alias / "a.txt") == "a.txt"
    err = raises_kind(OUTSIDE, lambda: fs.to_relative(tree["outside"] / "secret.txt"))
    assert err.reason == "Path outside shared storage: secret.txt"
    raises_kind(OUTSIDE, lambda: fs.to_relative(root / ".." / "outside"))
    (tree["root"] / "linkdir").symlink_to(tree["outside"] / "dir")
    err = raises_kind(OUTSIDE, lambda: fs.to_relative(root / "linkdir" / "b.txt"))
    assert err.user_path == "linkdir/b.txt"


def test_exists(fs: FilesystemAdapter, tree: dict[str, Path]) -> None:
    (tree["root"] / "out").symlink_to(tree["outside"] / "secret.txt")
    assert fs.exists("a.txt") and fs.exists("sub") and fs.exists("") and fs.exists("sub\\b.txt")
    for rel in ("missing", "../outside/secret.txt", "out", "a\x00", "/etc/passwd", "a.txt/x"):
        assert fs.exists(rel) is False


def test_constructor_and_root_resolution(tree: dict[str, Path]) -> None:
    with pytest.raises(ValueError):
        FilesystemAdapter(tree["tmp"] / "missing")
    with pytest.raises(ValueError):
        FilesystemAdapter(tree["root"] / "a.txt")
    alias = tree["tmp"] / "alias"
    alias.symlink_to(tree["root"], target_is_directory=True)
    fs = FilesystemAdapter(alias)
    assert fs.root == tree["root"].resolve()
    assert fs.validate("a.txt") == tree["root"].resolve() / "a.txt"
    assert validate_path_in_root("sub/b.txt", alias) == tree["root"].resolve() / "sub" / "b.txt"


def test_error_objects_round_trip_and_hide_absolute_paths(
    fs: FilesystemAdapter, tree: dict[str, Path]
) -> None:
    (tree["root"] / "out").symlink_to(tree["outside"] / "secret.txt")
    errors = [
        raises_kind(OUTSIDE, lambda: fs.validate("out")),
        raises_kind(PathErrorKind.NOT_FOUND, lambda: fs.validate_input("nope")),
        raises_kind(PathErrorKind.VANISHED, lambda: fs.open_file("nope")),
    ]
    for err in errors:
        assert str(tree["tmp"]) not in err.reason
        assert str(tree["tmp"]) not in str(err)
        assert err.detail  # the log gets the details
        copy = pickle.loads(pickle.dumps(err))
        assert (copy.kind, copy.user_path, copy.detail) == (err.kind, err.user_path, err.detail)
        assert "detail=" in repr(err)
    assert [k.value for k in PathErrorKind] == [
        "Path outside shared storage",
        "Input path does not exist",
        "File not found",
        "Permission denied",
        "File corrupted or invalid format",
        "Not a directory",
    ]


# -- property: whatever the client sends, the result is inside the root ------------------


@pytest.fixture(scope="module")
def property_tree(tmp_path_factory: pytest.TempPathFactory) -> FilesystemAdapter:
    base = tmp_path_factory.mktemp("property")
    root = base / "root"
    outside = base / "outside"
    (root / "a" / "b").mkdir(parents=True)
    outside.mkdir()
    (outside / "secret").write_bytes(b"s")
    (root / "a" / "file").write_bytes(b"f")
    (root / "out").symlink_to(outside)
    (root / "a" / "up").symlink_to("../..")
    (root / "in").symlink_to("a/b")
    (root / "loop").symlink_to("loop")
    return FilesystemAdapter(root)


_PIECES = st.sampled_from(
    [
        "..",
        ".",
        "",
        "a",
        "b",
        "file",
        "out",
        "up",
        "in",
        "loop",
        "secret",
        "．．",
        "∕",
        "／",
        "\\",
        "/",
        "\x00",
        "C:",
        "~",
        "ａ",
        "..\u200b",
        " ",
        "\u202e",
        "..\\..",
        "\t",
    ]
)
_USER_PATHS = st.one_of(
    st.text(max_size=30),
    st.builds(
        lambda parts, sep: sep.join(parts),
        st.lists(st.one_of(_PIECES, st.text(max_size=4)), max_size=8),
        st.sampled_from(["/", "\\"]),
    ),
)


@settings(max_examples=200, deadline=None)
@given(rel=_USER_PATHS)
def test_property_result_is_always_inside_root(property_tree: FilesystemAdapter, rel: str) -> None:
    fs = property_tree
    root = str(fs.root)
    has_parent_ref = ".." in rel.replace("\\", "/").split("/")
    try:
        resolved = fs.validate(rel)
    except StoragePathError as err:
        assert err.user_path == rel
        assert err.reason.startswith(err.kind.value + ": ")
        assert fs.exists(rel) is False
        return
    assert not has_parent_ref
    real = os.path.realpath(resolved)
    assert real == root or real.startswith(root + os.sep)
    try:
        checked = fs.validate_input(rel)
    except StoragePathError as err:
        assert err.kind in (PathErrorKind.NOT_FOUND, PathErrorKind.CORRUPTED)
    else:
        assert checked == resolved
        assert fs.exists(rel)


@pytest.mark.parametrize("target", ["secret.txt", "missing.txt"])
def test_validate_input_race_gives_no_existence_oracle(tree: dict[str, Path], target: str) -> None:
    """A parent swapped for a symlink between containment and the existence check:
    the answer is OUTSIDE_ROOT whether or not the outside target exists."""
    root, outside = tree["root"], tree["outside"]
    (root / "box").mkdir()
    (root / "box" / target).write_text("inside")

    def swap() -> None:
        shutil.rmtree(root / "box")
        (root / "box").symlink_to(outside)

    fs = SwapAfterValidate(root, swap)
    raises_kind(PathErrorKind.OUTSIDE_ROOT, lambda: fs.validate_input(f"box/{target}"))
