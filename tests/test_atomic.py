"""The one atomic writer: publish on success, no temporary file left on failure, disk
full, and saves that must never replace an existing file. Real files only."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from rtc_worker.storage import AtomicFile, DiskFullError, atomic_file, publish, write_atomic
from rtc_worker.storage.atomic import is_temp_name
from tests.conftest import tiny_tmpfs


@pytest.fixture
def folder(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    path = tmp_path / "dir"
    path.mkdir()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    yield path, fd
    os.close(fd)


def names(path: Path) -> list[str]:
    return sorted(p.name for p in path.iterdir())


def test_success_publishes_the_whole_content(folder: tuple[Path, int]) -> None:
    path, fd = folder
    assert write_atomic(fd, "a.bin", [b"one", bytearray(b"two"), memoryview(b"three")]) == 11
    assert (path / "a.bin").read_bytes() == b"onetwothree"
    assert names(path) == ["a.bin"]
    assert stat.S_IMODE((path / "a.bin").stat().st_mode) == 0o644 & ~_umask()
    (path / "a.bin").chmod(0o600)
    write_atomic(fd, "a.bin", b"replaced")  # a replaced file keeps its mode
    assert (path / "a.bin").read_bytes() == b"replaced"
    assert stat.S_IMODE((path / "a.bin").stat().st_mode) == 0o600
    with atomic_file(fd, "b.bin", mode=0o444) as out:
        out.write(b"read-only")
        temps = [n for n in names(path) if is_temp_name(n)]
        assert len(temps) == 1 and set(names(path)) == {"a.bin", *temps}
        assert not (path / "b.bin").exists()  # not visible before it is complete
    assert stat.S_IMODE((path / "b.bin").stat().st_mode) == 0o444


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_a_failure_removes_the_temporary_file_and_keeps_the_old_content(
    folder: tuple[Path, int],
) -> None:
    path, fd = folder
    (path / "keep.txt").write_bytes(b"old")

    def source() -> Iterator[bytes]:
        yield b"partial"
        raise RuntimeError("the source failed")

    with pytest.raises(RuntimeError, match="source failed"):
        write_atomic(fd, "keep.txt", source())
    with pytest.raises(TypeError):
        write_atomic(fd, "keep.txt", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        write_atomic(fd, "keep.txt", ["text"])  # type: ignore[list-item]
    with pytest.raises(KeyError), atomic_file(fd, "new.txt") as out:
        out.write(b"x")
        raise KeyError("caller gave up")
    assert (path / "keep.txt").read_bytes() == b"old"
    assert names(path) == ["keep.txt"]


def test_no_replace_refuses_an_existing_target(folder: tuple[Path, int]) -> None:
    path, fd = folder
    (path / "taken").write_bytes(b"first")
    with pytest.raises(FileExistsError):
        write_atomic(fd, "taken", b"second", replace=False)
    # the target appears while the new file is being written: refused at publishing,
    # atomically (a hard link never replaces), and the temporary file goes
    racer = AtomicFile(fd, "late", replace=False)
    racer.write(b"mine")
    (path / "late").write_bytes(b"theirs")
    with pytest.raises(FileExistsError):
        racer.publish()
    assert (path / "taken").read_bytes() == b"first"
    assert (path / "late").read_bytes() == b"theirs"
    assert names(path) == ["late", "taken"]
    assert write_atomic(fd, "free", b"new", replace=False) == 3
    assert (path / "free").read_bytes() == b"new"


def test_directories_and_bad_names_are_refused(folder: tuple[Path, int]) -> None:
    path, fd = folder
    (path / "sub").mkdir()
    with pytest.raises(IsADirectoryError):
        write_atomic(fd, "sub", b"x")
    for name in ("", ".", "..", "a/b", "a\x00b"):
        with pytest.raises(ValueError):
            write_atomic(fd, name, b"x")
    assert names(path) == ["sub"]


def test_publish_moves_an_open_file_into_another_folder(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    (src / "part").write_bytes(b"content")
    src_fd = os.open(src, os.O_RDONLY | os.O_DIRECTORY)
    dst_fd = os.open(dst, os.O_RDONLY | os.O_DIRECTORY)
    fd = os.open(src / "part", os.O_RDONLY)
    try:
        publish(fd, src_fd, "part", dst_fd, "object", replace=False)
        assert (dst / "object").read_bytes() == b"content" and names(src) == []
        (src / "part").write_bytes(b"again")
        with pytest.raises(FileExistsError):
            publish(fd, src_fd, "part", dst_fd, "object", replace=False)
        assert (src / "part").read_bytes() == b"again"  # left for the caller
    finally:
        for descriptor in (fd, src_fd, dst_fd):
            os.close(descriptor)


def test_disk_full_raises_disk_full_error_and_leaves_nothing(tmp_path: Path) -> None:
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        fd = os.open(mnt, os.O_RDONLY | os.O_DIRECTORY)
        try:
            write_atomic(fd, "keep.bin", b"k" * 1000)
            with pytest.raises(DiskFullError) as info:
                write_atomic(fd, "keep.bin", [b"x" * 32768] * 8)
            assert info.value.errno in (errno.ENOSPC, errno.EDQUOT)
            assert isinstance(info.value, OSError)
            assert info.value.filename == "keep.bin"  # the label, never an absolute path
            with pytest.raises(DiskFullError), atomic_file(fd, "new.bin", label="x/new") as out:
                out.write(b"y" * 200_000)
        finally:
            os.close(fd)
        assert (mnt / "keep.bin").read_bytes() == b"k" * 1000
        assert names(mnt) == ["keep.bin"]
