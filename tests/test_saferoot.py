"""SafeRoot with client paths: validation, symlinks, inputs, permissions, atomic writes,
trees (real files only). The attacks (swaps after a check, existence oracles) are in
test_saferoot_attacks.py."""

from __future__ import annotations

import errno
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from protocol.errors import PathReason
from protocol.limits import Limits
from rtc_worker.paths import user_parts
from rtc_worker.storage import DiskFullError, StorageErrorKind
from tests.conftest import tiny_tmpfs
from tests.saferoot_helpers import Fs, as_unprivileged, raises_kind, reason

PathErrorKind = StorageErrorKind
OUTSIDE = PathErrorKind.OUTSIDE_ROOT


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
def fs(tree: dict[str, Path]) -> Fs:
    return Fs(tree["root"])


# -- lexical validation ------------------------------------------------------------------


def test_valid_relative_file_and_directory(fs: Fs, tree: dict[str, Path]) -> None:
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
def test_empty_and_dot_mean_the_root(fs: Fs, tree: dict[str, Path], rel: str) -> None:
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
def test_rejected_paths_are_outside_root(fs: Fs, tree: dict[str, Path], rel: str) -> None:
    err = raises_kind(OUTSIDE, lambda: fs.validate(rel))
    assert reason(err, rel) == f"Path outside shared storage: {rel}"
    assert str(tree["root"]) not in str(err) and str(tree["root"]) not in reason(err, rel)
    assert err.detail  # why, for the log
    assert fs.exists(rel) is False
    raises_kind(OUTSIDE, lambda: user_parts(rel))


def test_length_limits_accept_the_maximum(fs: Fs, tree: dict[str, Path]) -> None:
    name = "é" * 127 + "x"  # 255 bytes
    assert fs.validate(name) == tree["root"].resolve() / name
    long_rel = "/".join(["d" * 200] * 20)  # 4019 bytes
    assert fs.validate(long_rel).name == "d" * 200


def test_unicode_look_alikes_that_are_plain_names(fs: Fs, tree: dict[str, Path]) -> None:
    # U+2215 DIVISION SLASH has no compatibility mapping: an ordinary character in a name
    assert fs.validate("a∕b") == tree["root"].resolve() / "a∕b"
    assert fs.validate("a．b.txt") == tree["root"].resolve() / "a．b.txt"
    assert user_parts("..a/b..") == ("..a", "b..")


def test_non_plain_components_are_refused_by_the_file_layer(fs: Fs) -> None:
    for parts in [("",), (".",), ("..",), ("a/b",), ("a\x00",), ("a", ".."), "a.txt", [b"a"]]:
        with pytest.raises(ValueError):
            fs.safe.resolve(parts)  # type: ignore[arg-type]
        with pytest.raises(ValueError):
            fs.safe.write_atomic(parts, b"x")  # type: ignore[arg-type]
        assert fs.safe.exists(parts) is False  # type: ignore[arg-type]
    raises_kind(OUTSIDE, lambda: user_parts(b"a.txt"))  # type: ignore[arg-type]


# -- symlinks ----------------------------------------------------------------------------


@pytest.mark.parametrize("absolute", [True, False])
def test_symlinked_file_pointing_outside(fs: Fs, tree: dict[str, Path], absolute: bool) -> None:
    target = tree["outside"] / "secret.txt" if absolute else Path("../outside/secret.txt")
    (tree["root"] / "link.txt").symlink_to(target)
    for call in (fs.validate, fs.validate_input, fs.open_file):
        err = raises_kind(OUTSIDE, lambda call=call: call("link.txt"))
        assert reason(err, "link.txt") == "Path outside shared storage: link.txt"
        assert str(tree["outside"]) in err.detail
        assert str(tree["outside"]) not in str(err)
    assert fs.exists("link.txt") is False


def test_symlinked_directory_pointing_outside(fs: Fs, tree: dict[str, Path]) -> None:
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


def test_chained_symlinks(fs: Fs, tree: dict[str, Path]) -> None:
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
def test_symlink_loops_are_errors_not_hangs(fs: Fs, tree: dict[str, Path], rel: str) -> None:
    root = tree["root"]
    (root / "loop1").symlink_to("loop2")
    (root / "loop2").symlink_to(root / "loop1")
    (root / "self").symlink_to("self")
    raises_kind(OUTSIDE, lambda: fs.validate(rel))
    raises_kind(OUTSIDE, lambda: fs.validate_input(rel))
    raises_kind(OUTSIDE, lambda: fs.open_file(rel))
    assert fs.exists(rel) is False


def test_long_symlink_chain_inside_resolves(fs: Fs, tree: dict[str, Path]) -> None:
    root = tree["root"]
    for i in range(45):  # longer than the kernel follows (40): the resolved path is used
        (root / f"long{i}").symlink_to(f"long{i + 1}")
    (root / "long45").write_bytes(b"end")
    assert fs.validate("long0") == root.resolve() / "long45"
    with fs.open_file("long0") as f:
        assert f.read() == b"end"


def test_loop_through_outside_is_refused(fs: Fs, tree: dict[str, Path]) -> None:
    (tree["root"] / "go").symlink_to(tree["outside"] / "back")
    (tree["outside"] / "back").symlink_to(tree["root"] / "go")
    raises_kind(OUTSIDE, lambda: fs.validate("go"))
    raises_kind(OUTSIDE, lambda: fs.validate_input("go"))


def test_symlink_inside_to_inside_is_allowed(fs: Fs, tree: dict[str, Path]) -> None:
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


# -- input validation and use ------------------------------------------------------------


@pytest.mark.parametrize("rel", ["missing.txt", "sub/missing/deeper.txt", "a.txt/below"])
def test_missing_input_is_not_found(fs: Fs, rel: str) -> None:
    err = raises_kind(PathErrorKind.NOT_FOUND, lambda: fs.validate_input(rel))
    assert reason(err, rel) == f"Input path does not exist: {rel}"


def test_vanished_between_validation_and_use(fs: Fs, tree: dict[str, Path]) -> None:
    handle = fs.safe.open_input(user_parts("sub/b.txt"))
    (tree["root"] / "sub" / "b.txt").unlink()
    err = raises_kind(PathErrorKind.VANISHED, handle.verify)
    assert reason(err, "sub/b.txt") == "File not found: sub/b.txt"
    with handle.reader() as kept:  # the job reads what was validated, nothing else
        assert kept.read() == b"inside b"
    handle.close()
    raises_kind(PathErrorKind.NOT_FOUND, lambda: fs.open_file("sub/b.txt"))
    handle = fs.safe.open_input(user_parts("sub/deeper"))
    shutil.rmtree(tree["root"] / "sub")
    raises_kind(PathErrorKind.VANISHED, handle.verify)
    handle.close()


def test_open_file_reads_and_logs_size(fs: Fs) -> None:
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="DEBUG", format="{message}")
    try:
        with fs.open_file("sub/deeper/c.txt") as f:
            assert f.read() == b"c" * 10
            assert f.readable() and not f.writable()
    finally:
        logger.remove(sink)
    assert any("'sub/deeper/c.txt' (10 bytes)" in m and " ms" in m for m in messages)
    assert any("resolved" in m and " ms" in m for m in messages)


def test_slow_validation_is_a_warning(tree: dict[str, Path]) -> None:
    fs = Fs(tree["root"], slow_warning_s=0.0)
    records: list[Any] = []
    sink = logger.add(lambda m: records.append(m.record), level="DEBUG")
    try:
        fs.validate("a.txt")
    finally:
        logger.remove(sink)
    assert [r["level"].name for r in records] == ["WARNING"]
    assert "slow" in records[0]["message"]


def test_non_regular_inputs_are_corrupted(fs: Fs, tree: dict[str, Path]) -> None:
    os.mkfifo(tree["root"] / "pipe")
    raises_kind(PathErrorKind.CORRUPTED, lambda: fs.validate_input("pipe"))
    raises_kind(PathErrorKind.CORRUPTED, lambda: fs.open_file("pipe"))  # must not block
    err = raises_kind(PathErrorKind.CORRUPTED, lambda: fs.open_file("sub"))
    assert reason(err, "sub") == "File corrupted or invalid format: sub"


# -- permissions (enforced even as root, by dropping capabilities in a thread) -----------


def test_permission_denied_file(fs: Fs, tree: dict[str, Path]) -> None:
    (tree["root"] / "a.txt").chmod(0o000)
    err = as_unprivileged(
        lambda: raises_kind(PathErrorKind.PERMISSION_DENIED, lambda: fs.validate_input("a.txt"))
    )
    assert reason(err, "a.txt") == "Permission denied: a.txt"
    as_unprivileged(
        lambda: raises_kind(PathErrorKind.PERMISSION_DENIED, lambda: fs.open_file("a.txt"))
    )
    as_unprivileged(lambda: raises_kind(PathErrorKind.PERMISSION_DENIED, lambda: fs.fsync_tree("")))


@pytest.mark.parametrize("mode", [0o000, 0o300, 0o600])  # no access, not listable, not searchable
def test_permission_denied_directory(fs: Fs, tree: dict[str, Path], mode: int) -> None:
    (tree["root"] / "sub").chmod(mode)
    try:
        as_unprivileged(
            lambda: raises_kind(PathErrorKind.PERMISSION_DENIED, lambda: fs.validate_input("sub"))
        )
        assert fs.validate_input("sub")  # the privileged test thread itself still may
    finally:
        (tree["root"] / "sub").chmod(0o755)


def test_permission_denied_creating(fs: Fs, tree: dict[str, Path]) -> None:
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


def test_makedirs_creates_nested_directories(fs: Fs, tree: dict[str, Path]) -> None:
    made = fs.makedirs("out/x/y/z")
    assert made == tree["root"].resolve() / "out" / "x" / "y" / "z"
    assert made.is_dir()
    assert fs.makedirs("out/x/y/z") == made  # idempotent
    assert fs.makedirs("") == tree["root"].resolve()


@pytest.mark.parametrize("rel", ["a.txt", "a.txt/below", "sub/b.txt/x/y"])
def test_makedirs_refuses_existing_file(fs: Fs, rel: str) -> None:
    err = raises_kind(PathErrorKind.NOT_A_DIRECTORY, lambda: fs.makedirs(rel))
    assert reason(err, rel) == f"Not a directory: {rel}"


# -- atomic_write ------------------------------------------------------------------------


def _visible(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_atomic_write_creates_and_replaces(fs: Fs, tree: dict[str, Path]) -> None:
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


def test_atomic_write_failure_keeps_old_content_and_no_temp(fs: Fs, tree: dict[str, Path]) -> None:
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
def test_atomic_write_refuses_directories(fs: Fs, rel: str) -> None:
    with pytest.raises(IsADirectoryError):
        fs.atomic_write(rel, b"x")


def test_atomic_write_disk_full(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        fs = Fs(mnt)
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


def test_fsync_tree_counts_regular_files(fs: Fs, tree: dict[str, Path]) -> None:
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


def test_remove_tree(fs: Fs, tree: dict[str, Path]) -> None:
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


def test_absolute_is_for_display_only(fs: Fs, tree: dict[str, Path]) -> None:
    root = tree["root"].resolve()
    assert fs.safe.absolute(("sub", "b.txt")) == root / "sub" / "b.txt"
    (tree["root"] / "to_sub").symlink_to("sub")
    assert fs.safe.absolute(("to_sub", "b.txt")) == root / "sub" / "b.txt"
    assert fs.safe.absolute(()) == root
    assert fs.safe.resolve(("to_sub", "new", "x")) == ("sub", "new", "x")
    (tree["root"] / "linkdir").symlink_to(tree["outside"] / "dir")
    raises_kind(OUTSIDE, lambda: fs.safe.absolute(("linkdir", "b.txt")))


def test_error_objects_round_trip_and_hide_absolute_paths(fs: Fs, tree: dict[str, Path]) -> None:
    (tree["root"] / "out").symlink_to(tree["outside"] / "secret.txt")
    errors = [
        raises_kind(OUTSIDE, lambda: fs.validate("out")),
        raises_kind(PathErrorKind.NOT_FOUND, lambda: fs.validate_input("nope")),
        raises_kind(PathErrorKind.NOT_FOUND, lambda: fs.open_file("nope")),
    ]
    for err in errors:
        assert str(tree["tmp"]) not in str(err)
        assert str(tree["tmp"]) in err.detail or err.kind is not OUTSIDE  # the log's detail
        assert err.detail
        copy = pickle.loads(pickle.dumps(err))
        assert (copy.kind, copy.parts, copy.detail) == (err.kind, err.parts, err.detail)
        assert "detail=" in repr(err)
    assert [k.value for k in PathReason] == [
        "Path outside shared storage",
        "Input path does not exist",
        "File not found",
        "Permission denied",
        "File corrupted or invalid format",
        "Not a directory",
        "Hard-linked file refused",
    ]
    # the file layer's kinds map to the wire's reasons by member name, one to one
    assert [k.name for k in StorageErrorKind] == [k.name for k in PathReason]


def test_exists(fs: Fs, tree: dict[str, Path]) -> None:
    (tree["root"] / "out").symlink_to(tree["outside"] / "secret.txt")
    assert fs.exists("a.txt") and fs.exists("sub") and fs.exists("") and fs.exists("sub\\b.txt")
    for rel in ("missing", "../outside/secret.txt", "out", "a\x00", "/etc/passwd", "a.txt/x"):
        assert fs.exists(rel) is False


def test_constructor_and_root_resolution(tree: dict[str, Path]) -> None:
    with pytest.raises(ValueError):
        Fs(tree["tmp"] / "missing")
    with pytest.raises(ValueError):
        Fs(tree["root"] / "a.txt")
    alias = tree["tmp"] / "alias"
    alias.symlink_to(tree["root"], target_is_directory=True)
    fs = Fs(alias)
    assert fs.root == tree["root"].resolve()
    assert fs.validate("a.txt") == tree["root"].resolve() / "a.txt"
    assert Fs(alias).validate("sub/b.txt") == tree["root"].resolve() / "sub" / "b.txt"


def test_client_paths_are_bounded_by_the_worker_limits(fs: Fs, tree: dict[str, Path]) -> None:
    """The worker splits client paths under its own Limits (RTC_MAX_PATH_BYTES...)."""
    small = Limits(max_path_bytes=12, max_name_bytes=5)
    assert user_parts("sub/b.txt", small) == ("sub", "b.txt")
    for rel in ("sub/deeper/c.txt", "abcdef/x"):  # 16 bytes in all; a 6-byte name
        raises_kind(OUTSIDE, lambda rel=rel: user_parts(rel, small))
    for bad in ({"max_path_bytes": 0}, {"max_name_bytes": True}, {"progress_interval_s": -1}):
        with pytest.raises(ValueError):
            Limits(**bad)  # type: ignore[arg-type]
