"""Safe ZIP handling: zip slip, ZIP bombs, corrupted and lying archives (real files only)."""

from __future__ import annotations

import io
import os
import stat
import struct
import warnings
import zipfile
from pathlib import Path

import pytest

from rtc_worker.archive import (
    DEFAULT_ZIP_LIMITS,
    ArchiveError,
    ZipLimits,
    ZipSummary,
    extract_zip,
    inspect_zip,
    looks_like_zip,
)
from rtc_worker.storage import DiskFullError, SafeRoot
from tests.conftest import tiny_tmpfs

# -- building and patching archives ------------------------------------------------------

_CENTRAL = b"PK\x01\x02"
_LOCAL = b"PK\x03\x04"


def build_zip(
    entries: list[tuple[str | zipfile.ZipInfo, bytes]], method: int = zipfile.ZIP_DEFLATED
) -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are built on purpose
        with zipfile.ZipFile(buffer, "w", method) as zf:
            for name, data in entries:
                # writestr() cannot build an empty name from a str; a ZipInfo can
                zf.writestr(zipfile.ZipInfo("") if name == "" else name, data)
    return buffer.getvalue()


def _headers(data: bytes, signature: bytes) -> list[int]:
    found, start = [], 0
    while (at := data.find(signature, start)) >= 0:
        found.append(at)
        start = at + 1
    return found


def patch_central(data: bytes, offset: int, fmt: str, value: int, index: int = 0) -> bytes:
    """Overwrite a field of the ``index``-th central-directory header."""
    at = _headers(data, _CENTRAL)[index] + offset
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


def patch_local(data: bytes, offset: int, fmt: str, value: int, index: int = 0) -> bytes:
    at = _headers(data, _LOCAL)[index] + offset
    out = bytearray(data)
    struct.pack_into(fmt, out, at, value)
    return bytes(out)


# central directory: flags @8, method @10, compressed size @20, uncompressed size @24
# local header: flags @6


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """tmp/work/dest (empty) is where archives go; tmp/work must stay as it is."""
    (tmp_path / "work" / "dest").mkdir(parents=True)
    return tmp_path / "work"


def extract_bytes(data: bytes, dest: Path, limits: ZipLimits | None = None) -> list[str]:
    with io.BytesIO(data) as f:
        return extract_zip(f, SafeRoot(dest), limits or DEFAULT_ZIP_LIMITS)


def inspect_bytes(data: bytes, limits: ZipLimits | None = None) -> ZipSummary:
    with io.BytesIO(data) as f:
        return inspect_zip(f) if limits is None else inspect_zip(f, limits)


def assert_refused(
    data: bytes, work: Path, kind: str, limits: ZipLimits | None = None, *, inspect: bool = True
) -> ArchiveError:
    """Both inspection (optionally) and extraction refuse; nothing stays anywhere."""
    if inspect:
        with pytest.raises(ArchiveError) as info:
            inspect_bytes(data, limits)
        assert info.value.kind == kind, str(info.value)
    with pytest.raises(ArchiveError) as info:
        extract_bytes(data, work / "dest", limits)
    assert info.value.kind == kind, str(info.value)
    assert sorted(p.name for p in work.iterdir()) == ["dest"]
    assert list((work / "dest").iterdir()) == []
    return info.value


# -- good archives -----------------------------------------------------------------------


def test_good_zip_extracts_exact_bytes(work: Path, tmp_path: Path) -> None:
    payload = os.urandom(300_000)
    script = zipfile.ZipInfo("bin/run.sh")
    script.create_system = 3
    script.external_attr = (stat.S_IFREG | 0o4755) << 16
    data = build_zip(
        [
            ("a.txt", b"alpha\n"),
            ("dir/sub/", b""),
            ("dir/b.bin", payload),
            ("empty.txt", b""),
            ("dir\\win.txt", b"windows separators"),
            (script, b"#!/bin/sh\necho hi\n"),
        ]
    )
    archive = tmp_path / "good.zip"
    archive.write_bytes(data)
    with archive.open("rb") as f:
        summary = inspect_zip(f)
    assert summary.member_count == 6
    assert summary.file_count == 5
    assert summary.total_uncompressed == 6 + 300_000 + 0 + 18 + 18
    assert summary.total_compressed == sum(
        i.compress_size for i in zipfile.ZipFile(archive).infolist()
    )
    dest = work / "dest"
    with archive.open("rb") as f:
        files = extract_zip(f, SafeRoot(dest))
    assert files == ["a.txt", "bin/run.sh", "dir/b.bin", "dir/win.txt", "empty.txt"]
    assert (dest / "a.txt").read_bytes() == b"alpha\n"
    assert (dest / "dir" / "b.bin").read_bytes() == payload
    assert (dest / "dir" / "win.txt").read_bytes() == b"windows separators"
    assert (dest / "empty.txt").read_bytes() == b""
    assert (dest / "dir" / "sub").is_dir()
    mode = (dest / "bin" / "run.sh").stat().st_mode
    assert mode & 0o7111 == 0  # no exec, setuid, setgid or sticky bit from the archive
    assert sorted(p.name for p in work.iterdir()) == ["dest"]


def test_empty_zip(work: Path) -> None:
    data = build_zip([])
    assert data.startswith(b"PK\x05\x06")
    assert inspect_bytes(data) == ZipSummary(0, 0, 0, 0)
    assert extract_bytes(data, work / "dest") == []


def test_small_compressible_files_are_not_bombs(work: Path) -> None:
    data = build_zip([(f"zeros{i}.bin", bytes(500_000)) for i in range(2)])
    summary = inspect_bytes(data)
    assert summary.total_uncompressed / summary.total_compressed > 200
    assert extract_bytes(data, work / "dest") == ["zeros0.bin", "zeros1.bin"]


def test_looks_like_zip() -> None:
    assert looks_like_zip("data.ZIP", b"")
    assert looks_like_zip("data.bin", b"PK\x03\x04rest")
    assert looks_like_zip("noext", build_zip([]))
    assert not looks_like_zip("data.zip.txt", b"hello")
    assert not looks_like_zip("model.pt", b"PK\x01\x02")


def test_destination_must_be_an_empty_directory(work: Path) -> None:
    data = build_zip([("a.txt", b"a")])
    with pytest.raises(ValueError):
        extract_bytes(data, work / "missing")
    (work / "dest" / "keep.txt").write_bytes(b"k")
    with pytest.raises(ValueError):
        extract_bytes(data, work / "dest")
    assert [p.name for p in (work / "dest").iterdir()] == ["keep.txt"]


# -- corrupted ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        os.urandom(4096),
        b"",
        b"PK\x03\x04" + b"\x00" * 10,
        build_zip([("a.txt", b"x" * 5000), ("b.txt", b"y" * 5000)])[:-30],  # truncated
    ],
    ids=["random", "empty", "header-only", "truncated"],
)
def test_corrupted_archives(work: Path, data: bytes) -> None:
    err = assert_refused(data, work, "corrupted")
    assert "corrupted" in str(err)


def test_corrupted_zip_file_on_disk(tmp_path: Path, work: Path) -> None:
    path = tmp_path / "random.zip"
    path.write_bytes(os.urandom(10_000))
    with path.open("rb") as f:
        head = f.read(4)
        f.seek(0)
        assert looks_like_zip(path.name, head)
        with pytest.raises(ArchiveError) as info:
            inspect_zip(f)
    assert info.value.kind == "corrupted"


def test_bad_crc_removes_everything_extracted(work: Path) -> None:
    data = build_zip(
        [("first.txt", b"fine"), ("dir/data.bin", b"A" * 1000)], method=zipfile.ZIP_STORED
    )
    at = data.find(b"A" * 1000) + 500
    data = data[:at] + b"B" + data[at + 1 :]
    assert inspect_bytes(data).file_count == 2  # the directory is intact
    err = assert_refused(data, work, "corrupted", inspect=False)
    assert "CRC" in err.message


def test_damaged_deflate_stream(work: Path) -> None:
    data = build_zip([("a.txt", os.urandom(2000) + b"z" * 20_000)])
    start = _headers(data, _LOCAL)[0] + 30 + len("a.txt")
    damaged = data[:start] + bytes(200) + data[start + 200 :]
    assert_refused(damaged, work, "corrupted", inspect=False)


def test_unsupported_compression_method(work: Path) -> None:
    data = patch_central(build_zip([("a.txt", b"hello")]), 10, "<H", 99)
    assert_refused(data, work, "corrupted")


def test_header_declaring_less_than_the_data(work: Path) -> None:
    """Declared sizes lie small (to pass the limits): extraction stops at the declared size
    and the CRC no longer matches, so the member is refused and nothing is left."""
    data = build_zip([("big.bin", bytes(4 << 20))])
    lying = patch_central(data, 24, "<I", 1000)
    summary = inspect_bytes(lying)
    assert summary.total_uncompressed == 1000
    assert_refused(lying, work, "corrupted", inspect=False)


def test_header_declaring_more_than_the_data(work: Path) -> None:
    data = build_zip([("ok.txt", b"fine"), ("short.txt", b"x" * 1000)])
    lying = patch_central(data, 24, "<I", 5000, index=1)
    assert inspect_bytes(lying).total_uncompressed == 5004
    assert_refused(lying, work, "corrupted", inspect=False)


# -- zip slip and unsafe members ---------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "../evil.txt",
        "/abs.txt",
        "..\\evil.txt",
        "a/../../evil.txt",
        "ok/../evil.txt",
        "C:\\evil.txt",
        "C:/evil.txt",
        "\\\\server\\share\\evil.txt",
        "a\x01b.txt",
        "a/\x7f",
        "．．/evil.txt",
        "",
        "x" * 300,
    ],
)
def test_zip_slip_members_are_refused(work: Path, tmp_path: Path, name: str) -> None:
    data = build_zip([("good.txt", b"good"), (name, b"evil")])
    assert_refused(data, work, "unsafe_member")
    assert not any(p.name == "evil.txt" for p in tmp_path.rglob("*"))
    assert not Path("/abs.txt").exists()


def test_nul_in_member_name(work: Path) -> None:
    data = build_zip([("okZZevil", b"x")]).replace(b"okZZevil", b"ok\x00Zevil")
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.infolist()[0].filename == "ok"  # zipfile silently truncates at NUL
    assert_refused(data, work, "unsafe_member")


def test_symlink_member(work: Path, tmp_path: Path) -> None:
    link = zipfile.ZipInfo("innocent")
    link.create_system = 3
    link.external_attr = (stat.S_IFLNK | 0o777) << 16
    data = build_zip([(link, str(tmp_path).encode()), ("innocent/evil.txt", b"x")])
    err = assert_refused(data, work, "unsafe_member")
    assert "symlink" in err.message


def test_special_file_member(work: Path) -> None:
    fifo = zipfile.ZipInfo("pipe")
    fifo.create_system = 3
    fifo.external_attr = (stat.S_IFIFO | 0o644) << 16
    assert_refused(build_zip([(fifo, b"")]), work, "unsafe_member")


@pytest.mark.parametrize(
    "names",
    [
        ["a.txt", "a.txt"],
        ["dir/x.txt", "dir\\x.txt"],
        ["d/", "d/"],
        ["a", "a/b.txt"],
        ["a/b.txt", "a"],
        ["a/", "a"],
    ],
)
def test_duplicate_and_conflicting_names(work: Path, names: list[str]) -> None:
    assert_refused(build_zip([(n, b"1") for n in names]), work, "unsafe_member")


def test_encrypted_member(work: Path) -> None:
    data = build_zip([("plain.txt", b"p"), ("secret.txt", b"s" * 100)])
    data = patch_central(data, 8, "<H", 0x1, index=1)
    data = patch_local(data, 6, "<H", 0x1, index=1)
    assert_refused(data, work, "encrypted")


# -- ZIP bombs and limits ----------------------------------------------------------------


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """One member of 50 MB of zeros: about 50 KB compressed (ratio about 1000)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf, zf.open("zeros.bin", "w") as f:
        chunk = bytes(1 << 20)
        for _ in range(50):
            f.write(chunk)
    return buffer.getvalue()


def test_zip_bomb_by_ratio(bomb: bytes, work: Path) -> None:
    assert len(bomb) < 200_000
    err = assert_refused(bomb, work, "too_large")
    assert "zeros.bin" in err.message
    assert_refused(bomb, work, "too_large", ZipLimits(max_ratio=50.0))


def test_zip_bomb_by_total_size(bomb: bytes, work: Path) -> None:
    limits = ZipLimits(max_total_bytes=10 * 10**6, max_ratio=10_000.0)
    assert_refused(bomb, work, "too_large", limits)


def test_whole_archive_ratio(work: Path) -> None:
    # many members below the per-member threshold that together expand enormously
    data = build_zip([(f"z{i}.bin", bytes(600_000)) for i in range(4)])
    assert_refused(data, work, "too_large", ZipLimits(max_ratio=100.0))


def test_total_size_limit_with_incompressible_data(work: Path) -> None:
    data = build_zip([("a.bin", os.urandom(600_000)), ("b.bin", os.urandom(600_000))])
    assert_refused(data, work, "too_large", ZipLimits(max_total_bytes=1_000_000))
    assert extract_bytes(data, work / "dest", ZipLimits(max_total_bytes=1_200_000)) == [
        "a.bin",
        "b.bin",
    ]


def test_max_members(work: Path) -> None:
    data = build_zip([(f"f{i}.txt", b"x") for i in range(11)])
    assert_refused(data, work, "too_large", ZipLimits(max_members=10))
    assert inspect_bytes(data, ZipLimits(max_members=11)).member_count == 11


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError):
        ZipLimits(max_ratio=0)
    with pytest.raises(ValueError):
        ZipLimits(max_total_bytes=-1)


def test_disk_full_while_extracting(tmp_path: Path) -> None:
    data = build_zip([("small.txt", b"s"), ("big.bin", os.urandom(200_000))])
    with tiny_tmpfs(tmp_path / "mnt") as mnt:
        dest = mnt / "dest"
        dest.mkdir()
        with pytest.raises(DiskFullError):
            extract_bytes(data, dest)
        assert list(dest.iterdir()) == []


def test_extraction_stops_when_asked(tmp_path: Path) -> None:
    import threading

    from rtc_worker.archive import ArchiveErrorKind

    archive = tmp_path / "a.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("one.txt", b"1" * 1000)
        zf.writestr("two.txt", b"2" * 1000)
    dest = tmp_path / "dest"
    dest.mkdir()
    stop = threading.Event()
    stop.set()
    with archive.open("rb") as handle, pytest.raises(ArchiveError) as info:
        extract_zip(handle, SafeRoot(dest), stop=stop)
    assert info.value.kind is ArchiveErrorKind.CANCELLED
    assert list(dest.iterdir()) == []


def test_build_zip_packs_regular_files_by_descriptor(tmp_path: Path) -> None:
    from rtc_worker.archive import build_zip as pack

    root = tmp_path / "root"
    (root / "out" / "sub").mkdir(parents=True)
    (root / "out" / "a.txt").write_bytes(b"alpha")
    (root / "out" / "sub" / "b.bin").write_bytes(os.urandom(70_000))
    (tmp_path / "secret.txt").write_bytes(b"secret")
    (root / "out" / "leak").symlink_to(tmp_path / "secret.txt")
    (root / "out" / "leakdir").symlink_to(tmp_path, target_is_directory=True)
    safe = SafeRoot(root)
    assert pack(safe, ("out",), ("jobs", "j", "results.zip")) == 2
    with zipfile.ZipFile(root / "jobs" / "j" / "results.zip") as zf:
        assert sorted(zf.namelist()) == ["a.txt", "sub/b.bin"]
        assert zf.read("a.txt") == b"alpha"
        assert zf.read("sub/b.bin") == (root / "out" / "sub" / "b.bin").read_bytes()
        assert zf.testzip() is None
    assert sorted(p.name for p in (root / "jobs" / "j").iterdir()) == ["results.zip"]
