"""ZIP limits counted on the bytes really read and written (rtc_worker.zip_budget), and a
lying archive whose central directory understates what it expands to (real files)."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest

from rtc_worker.archive import extract_zip, inspect_zip
from rtc_worker.storage import SafeRoot
from rtc_worker.zip_budget import ArchiveError, CountingReader, ExtractionBudget, ZipLimits
from tests.zip_bombs import MiB, overlapping_zip


def test_counting_reader_counts_what_is_read() -> None:
    reader = CountingReader(io.BytesIO(b"0123456789"))
    assert reader.size == 10 and reader.tell() == 0
    assert reader.read(4) == b"0123"
    reader.seek(8)
    assert reader.read() == b"89"
    assert reader.bytes_read == 6 and reader.seekable()


def budget(data_size: int, **limits: float) -> tuple[ExtractionBudget, CountingReader]:
    reader = CountingReader(io.BytesIO(bytes(data_size)))
    return ExtractionBudget(ZipLimits(**limits), reader), reader  # type: ignore[arg-type]


def test_the_total_is_counted_on_bytes_written() -> None:
    spent, reader = budget(10 * MiB, max_total_bytes=3 * MiB)
    spent.start_member("a")
    reader.read(2 * MiB)
    spent.spend(2 * MiB)
    spent.start_member("b")
    reader.read(2 * MiB)
    with pytest.raises(ArchiveError, match="exceeds") as info:
        spent.spend(2 * MiB)
    assert info.value.kind == "too_large"


def test_a_member_ratio_is_bytes_written_over_bytes_read_for_it() -> None:
    spent, reader = budget(10 * MiB, max_ratio=10)
    spent.start_member("a")
    reader.read(MiB // 4)
    spent.spend(2 * MiB)  # 8x: fine
    with pytest.raises(ArchiveError, match="member 'a'"):
        spent.spend(MiB)  # 12x


def test_the_archive_ratio_is_bytes_written_over_its_real_size() -> None:
    """Overlapping members (each reading the same bytes again) cannot pass the whole
    archive's ratio: it is measured against the archive's size on disk."""
    spent, reader = budget(MiB, max_ratio=5)
    for name in "abcdef":
        spent.start_member(name)
        reader.seek(0)
        reader.read(MiB)
        if name == "f":
            with pytest.raises(ArchiveError, match="archive of"):
                spent.spend(MiB)
        else:
            spent.spend(MiB)


def test_members_are_counted_as_they_are_extracted() -> None:
    spent, _reader = budget(10, max_members=2)
    spent.start_member("a")
    spent.start_member("b")
    with pytest.raises(ArchiveError, match="more than 2 members"):
        spent.start_member("c")


def test_small_members_escape_the_ratio() -> None:
    spent, reader = budget(MiB, max_ratio=2)
    spent.start_member("tiny")
    reader.read(10)
    spent.spend(MiB)  # exactly ratio_min_bytes: not enforced yet


def test_the_lying_archive_is_refused_at_the_real_cap(tmp_path: Path) -> None:
    """Ten members sharing one 64 KB stream of 64 MiB of zeros, each declaring ratio 100:
    the declared sizes pass every check, and the real bytes are stopped at 200 times the
    archive's size, far below the 64 MiB it would write, leaving nothing behind."""
    data = overlapping_zip(64 * MiB, members=10, declared_ratio=100)
    limits = ZipLimits()  # the defaults: ratio 200
    summary = inspect_zip(io.BytesIO(data), limits)
    assert summary.total_uncompressed / summary.total_compressed == 100
    assert summary.total_uncompressed > 50 * MiB > 100 * len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as archive:  # it is a valid archive: the lie works
        assert archive.read("m03.bin") == bytes(summary.total_uncompressed // 10)
    dest = tmp_path / "dest"
    dest.mkdir()
    with pytest.raises(ArchiveError) as info:
        extract_zip(io.BytesIO(data), SafeRoot(dest), limits)
    assert info.value.kind == "too_large" and "archive of" in info.value.message
    written = int(re.search(r"more than (\d+) bytes", info.value.message).group(1))  # type: ignore[union-attr]
    assert written <= limits.max_ratio * len(data) + MiB
    assert list(dest.iterdir()) == []


def test_the_same_archive_extracts_when_the_operator_allows_its_real_ratio(
    tmp_path: Path,
) -> None:
    data = overlapping_zip(8 * MiB, members=3, declared_ratio=100)
    (tmp_path / "d").mkdir()
    names = extract_zip(io.BytesIO(data), SafeRoot(tmp_path / "d"), ZipLimits(max_ratio=1000))
    assert names == ["m00.bin", "m01.bin", "m02.bin"]
    (content,) = {p.read_bytes() for p in (tmp_path / "d").iterdir()}
    assert content == bytes(len(content)) and len(content) > 500_000
