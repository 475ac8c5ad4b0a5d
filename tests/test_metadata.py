"""File metadata: sha256, MIME detection, builder equivalence, timestamps (real files)."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import os
import re
import struct
import threading
import zipfile
import zlib
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from rtc_worker.storage import (
    MIME_SNIFF_BYTES,
    ContentHasher,
    FileMetadata,
    detect_mime,
    format_timestamp,
    hash_file,
)

FIXED = datetime(2026, 11, 21, 1, 2, 3, 456789, tzinfo=UTC)


def minimal_png(width: int = 2, height: int = 2) -> bytes:
    """A valid RGB PNG built by hand: signature, IHDR, IDAT (zlib), IEND, with CRCs."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(raw))
        + chunk(b"IEND", b"")
    )


def small_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("readme.txt", "hello " * 100)
    return buffer.getvalue()


PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
)


@pytest.mark.parametrize(
    ("content", "mime"),
    [
        (minimal_png(), "image/png"),
        (small_zip(), "application/zip"),
        (b"Plain words on a line.\nAnother line of text.\n", "text/plain"),
        (
            json.dumps({"job": "train", "epochs": [1, 2, 3], "lr": 0.001}).encode(),
            "application/json",
        ),
        (PDF, "application/pdf"),
        (b"", "application/x-empty"),
    ],
)
def test_detect_mime(tmp_path: Path, content: bytes, mime: str) -> None:
    assert detect_mime(content) == mime
    path = tmp_path / "file"
    path.write_bytes(content)
    assert hash_file(path).finish().mime_type == mime


def test_mime_uses_only_the_head(tmp_path: Path) -> None:
    content = minimal_png() + b"text after the image " * 10_000
    path = tmp_path / "big.png"
    path.write_bytes(content)
    meta = hash_file(path, block_bytes=1000).finish()
    assert meta.mime_type == "image/png"
    assert meta.size == len(content)
    assert MIME_SNIFF_BYTES >= 2048


@pytest.mark.parametrize("size", [0, 1, 4095, MIME_SNIFF_BYTES + 1, 3 * (1 << 20) + 17])
def test_sha256_matches_hashlib(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert hash_file(path).hexdigest() == expected
    assert hash_file(path, block_bytes=4096).hexdigest() == expected
    meta = hash_file(path, block_bytes=65536).finish()
    assert (meta.size, meta.sha256) == (size, expected)


def test_hasher_equals_hash_file(tmp_path: Path) -> None:
    data = minimal_png() + os.urandom(50_000)
    path = tmp_path / "x.png"
    path.write_bytes(data)
    expected = hash_file(path).finish(FIXED)
    # uneven chunks, one crossing the sniff boundary, empty chunks, several buffer types
    cuts = [0, 7, 7, 100, MIME_SNIFF_BYTES - 3, MIME_SNIFF_BYTES + 5, 30_000, len(data)]
    builder = ContentHasher()
    for i, (start, end) in enumerate(itertools.pairwise(cuts)):
        piece = data[start:end]
        builder.update([bytes, bytearray, memoryview][i % 3](piece))
    assert builder.size == len(data)
    assert builder.hexdigest() == hashlib.sha256(data).hexdigest()
    assert builder.finish(FIXED) == expected
    assert expected == FileMetadata(
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
        mime_type="image/png",
        created_at="2026-11-21T01:02:03Z",
    )
    with pytest.raises(RuntimeError):
        builder.update(b"more")


def test_created_at_format() -> None:
    assert format_timestamp(FIXED) == "2026-11-21T01:02:03Z"
    plus_two = timezone(timedelta(hours=2))
    assert format_timestamp(datetime(2026, 11, 21, 3, 2, 3, tzinfo=plus_two)) == (
        "2026-11-21T01:02:03Z"
    )
    assert format_timestamp(datetime(2026, 11, 21, 1, 2, 3)) == "2026-11-21T01:02:03Z"
    before = datetime.now(UTC).replace(microsecond=0)
    stamp = ContentHasher().finish().created_at
    after = datetime.now(UTC)
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", stamp)
    parsed = datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
    assert before <= parsed <= after


def test_metadata_object(tmp_path: Path) -> None:
    path = tmp_path / "t.txt"
    path.write_bytes(b"some text\n")
    meta = hash_file(path).finish(FIXED)
    assert meta.as_dict() == {
        "size": 10,
        "sha256": hashlib.sha256(b"some text\n").hexdigest(),
        "mime_type": "text/plain",
        "created_at": "2026-11-21T01:02:03Z",
    }
    json.dumps(meta.as_dict())
    with pytest.raises(dataclasses.FrozenInstanceError):
        meta.size = 1  # type: ignore[misc]
    assert not hasattr(meta, "__dict__")


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "missing").finish()
    with pytest.raises(FileNotFoundError):
        hash_file(tmp_path / "missing").hexdigest()
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ValueError):
        hash_file(tmp_path / "f", block_bytes=0).hexdigest()


def test_hash_file_by_descriptor_reads_a_range_and_stops(tmp_path: Path) -> None:
    data = os.urandom(3 * (1 << 20) + 5)
    path = tmp_path / "r.bin"
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 123, os.SEEK_SET)
        head = hash_file(fd, end=1000, block_bytes=300)
        assert (head.size, head.hexdigest()) == (1000, hashlib.sha256(data[:1000]).hexdigest())
        rest = hash_file(fd, hasher=head.copy(), start=1000)  # continues where it stopped
        assert rest.hexdigest() == hashlib.sha256(data).hexdigest()
        assert head.size == 1000  # the copy left the original alone
        assert os.lseek(fd, 0, os.SEEK_CUR) == 123  # pread: the offset never moved
        short = hash_file(fd, start=len(data) - 10, end=len(data) + 50)
        assert short.size == 10  # the file is shorter than asked: the caller compares
        stop = threading.Event()
        stop.set()
        assert hash_file(fd, stop=stop).size == 0
    finally:
        os.close(fd)
    with pytest.raises(ValueError):
        hash_file(path, start=-1)
