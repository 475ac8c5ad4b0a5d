"""The file-saver handler on real files: validation, atomic writes, metadata, memory."""

from __future__ import annotations

import base64
import gzip
import hashlib
import os
import re
import struct
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import pytest

from rtc_worker.file_saver import DECODE_SLICE_CHARS, handler

ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z$")


def _png(width: int = 2, height: int = 2) -> bytes:
    """A valid RGB PNG: signature, IHDR, IDAT, IEND with CRCs."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = zlib.crc32(kind + body) & 0xFFFFFFFF
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", crc)

    rows = b"".join(b"\x00" + b"\xff\x00\x00" * width for _ in range(height))
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


PDF = (
    b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< /Type /Catalog /Pages 2 0 R >>\nendobj\n"
    b"2 0 obj\n<< /Type /Pages /Kids [] /Count 0 >>\nendobj\n"
    b"trailer\n<< /Root 1 0 R >>\n%%EOF\n"
)


def _event(
    data: bytes | str, folder: str = "out", name: str = "file.bin", **extra: Any
) -> dict[str, Any]:
    text = base64.b64encode(data).decode() if isinstance(data, bytes) else data
    return {"input": {"destination_folder": folder, "filename": name, "file_data": text, **extra}}


def _tree(root: Path) -> list[str]:
    """Every entry below ``root`` (relative, sorted), without following symlinks."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    shared = tmp_path / "shared"
    shared.mkdir()
    return shared


def _assert_failed(result: dict[str, Any], *fragments: str) -> None:
    assert result["success"] is False
    assert result["file_path"] is None
    assert result["metadata"] is None
    assert isinstance(result["error"], str) and result["error"]
    for fragment in fragments:
        assert fragment in result["error"]


def test_saves_decoded_bytes_with_metadata(root: Path) -> None:
    content = b"hello shared storage\n" * 100
    result = handler(_event(content, folder="a/b", name="greeting.txt"), root=root)

    assert result["success"] is True, result
    assert result["error"] is None
    assert result["file_path"] == "a/b/greeting.txt"
    saved = root / result["file_path"]
    assert saved.resolve().is_relative_to(root.resolve())
    assert saved.read_bytes() == content
    meta = result["metadata"]
    assert meta["size"] == len(content)
    assert meta["sha256"] == hashlib.sha256(content).hexdigest()
    assert meta["mime_type"] == "text/plain"
    assert meta["compressed"] is False
    assert ISO_UTC.match(meta["created_at"])
    assert _tree(root) == ["a", "a/b", "a/b/greeting.txt"]


@pytest.mark.parametrize(
    ("content", "name", "mime"),
    [(_png(), "picture.txt", "image/png"), (PDF, "document.bin", "application/pdf")],
)
def test_mime_type_comes_from_content(root: Path, content: bytes, name: str, mime: str) -> None:
    result = handler(_event(content, name=name), root=root)
    assert result["success"] is True, result
    assert result["metadata"]["mime_type"] == mime
    assert (root / "out" / name).read_bytes() == content


def test_root_folder_and_empty_content(root: Path) -> None:
    result = handler(_event(b"", folder="", name="empty"), root=root)
    assert result["success"] is True, result
    assert result["file_path"] == "empty"
    assert (root / "empty").read_bytes() == b""
    assert result["metadata"]["size"] == 0
    assert result["metadata"]["sha256"] == hashlib.sha256(b"").hexdigest()


def test_compression_stores_gzip_of_the_content(root: Path) -> None:
    content = _png() + b"pixels " * 20_000
    result = handler(_event(content, name="img.png", compress=True), root=root)

    assert result["success"] is True, result
    assert result["file_path"] == "out/img.png.gz"
    stored = (root / "out" / "img.png.gz").read_bytes()
    assert len(stored) < len(content)
    assert gzip.decompress(stored) == content
    meta = result["metadata"]
    assert meta["compressed"] is True
    assert meta["size"] == len(content)
    assert meta["sha256"] == hashlib.sha256(content).hexdigest()
    assert meta["mime_type"] == "image/png"
    assert _tree(root) == ["out", "out/img.png.gz"]


def test_base64_with_newlines_across_slices(root: Path) -> None:
    content = os.urandom(DECODE_SLICE_CHARS * 2 + 1234)
    text = base64.encodebytes(content).decode()  # a newline every 76 characters
    assert len(text) > 2 * DECODE_SLICE_CHARS
    result = handler(_event(text, name="r.bin"), root=root)
    assert result["success"] is True, result
    assert (root / "out" / "r.bin").read_bytes() == content
    assert result["metadata"]["size"] == len(content)


def _big_with_bad_char() -> str:
    text = base64.b64encode(os.urandom(3 * DECODE_SLICE_CHARS // 2 * 3)).decode()
    middle = len(text) // 2 + 1
    return text[:middle] + "*" + text[middle + 1 :]


@pytest.mark.parametrize(
    "text",
    [
        pytest.param("not base64!!", id="bad-characters"),
        pytest.param("QUJD\u00e9QUJD", id="non-ascii"),
        pytest.param("QUJDRA", id="missing-padding"),
        pytest.param("QQ==QUJD", id="data-after-padding"),
        pytest.param("Q=Q=", id="padding-in-the-middle"),
        pytest.param(_big_with_bad_char(), id="bad-char-in-large-payload"),
    ],
)
def test_invalid_base64_writes_nothing(root: Path, text: str) -> None:
    result = handler(_event(text, folder="new/folder", name="x.bin"), root=root)
    _assert_failed(result, "base64")
    assert _tree(root) == []


def test_invalid_base64_leaves_existing_folder_clean(root: Path) -> None:
    (root / "keep").mkdir()
    result = handler(_event(_big_with_bad_char(), folder="keep", name="x.bin"), root=root)
    _assert_failed(result, "base64")
    assert _tree(root) == ["keep"]


@pytest.mark.parametrize("folder", ["../x", "/abs", "/abs/../x", "a/../../x"])
def test_destination_outside_root_is_refused(tmp_path: Path, root: Path, folder: str) -> None:
    result = handler(_event(b"data", folder=folder), root=root)
    _assert_failed(result, "Path outside shared storage")
    assert _tree(root) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shared"]


@pytest.mark.parametrize("folder", ["link", "link/sub", "link/../link"])
def test_symlinked_folder_leading_outside_is_refused(
    tmp_path: Path, root: Path, folder: str
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (root / "link").symlink_to(outside)
    result = handler(_event(b"data", folder=folder), root=root)
    _assert_failed(result, "Path outside shared storage")
    assert list(outside.iterdir()) == []
    assert _tree(root) == ["link"]


def test_symlink_inside_root_is_followed(root: Path) -> None:
    (root / "real").mkdir()
    (root / "alias").symlink_to(root / "real")
    result = handler(_event(b"data", folder="alias"), root=root)
    assert result["success"] is True, result
    assert result["file_path"] == "real/file.bin"
    assert (root / "real" / "file.bin").read_bytes() == b"data"


@pytest.mark.parametrize("name", ["../a", "a/b", "", ".", "..", "a\\b", "bad\x00name"])
def test_bad_filename_is_refused(root: Path, name: str) -> None:
    result = handler(_event(b"data", name=name), root=root)
    _assert_failed(result, "Invalid filename")
    assert _tree(root) == []


@pytest.mark.parametrize("field", ["destination_folder", "filename", "file_data"])
def test_missing_field_is_refused(root: Path, field: str) -> None:
    event = _event(b"data")
    del event["input"][field]
    _assert_failed(handler(event, root=root), "missing", field)
    assert _tree(root) == []


@pytest.mark.parametrize(
    ("event", "fragment"),
    [
        ({}, "input"),
        ({"input": "text"}, "input"),
        ("not an event", "event"),
        (_event(b"x") | {"input": {**_event(b"x")["input"], "file_data": b"eA=="}}, "file_data"),
        (_event(b"x") | {"input": {**_event(b"x")["input"], "file_data": 123}}, "file_data"),
        (_event(b"x") | {"input": {**_event(b"x")["input"], "filename": None}}, "filename"),
        (_event(b"x", compress="yes"), "compress"),
        (_event(b"x", overwrite=1), "overwrite"),
    ],
)
def test_malformed_event_is_refused(root: Path, event: Any, fragment: str) -> None:
    _assert_failed(handler(event, root=root), fragment)
    assert _tree(root) == []


def test_no_shared_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("SHARED_STORAGE_ROOT", raising=False)
    monkeypatch.delenv("RTC_SHARED_ROOT", raising=False)
    monkeypatch.setenv("RTC_SHARED_ROOT_CANDIDATES", str(tmp_path / "missing"))
    _assert_failed(handler(_event(b"data")), "No shared storage root")
    _assert_failed(handler(_event(b"data"), root=tmp_path / "missing"), "not an existing")


def test_shared_root_from_environment(monkeypatch: pytest.MonkeyPatch, root: Path) -> None:
    monkeypatch.delenv("SHARED_STORAGE_ROOT", raising=False)
    monkeypatch.delenv("RTC_SHARED_ROOT", raising=False)
    monkeypatch.setenv("RTC_SHARED_ROOT_CANDIDATES", f"/nonexistent-rtc-root,{root}")
    result = handler(_event(b"from env"))
    assert result["success"] is True, result
    assert (root / "out" / "file.bin").read_bytes() == b"from env"

    monkeypatch.setenv("SHARED_STORAGE_ROOT", str(root))
    result = handler(_event(b"again", name="second.bin"))
    assert result["success"] is True, result
    assert (root / "out" / "second.bin").read_bytes() == b"again"


def test_existing_file_refused_unless_overwrite(root: Path) -> None:
    assert handler(_event(b"first"), root=root)["success"] is True
    target = root / "out" / "file.bin"

    _assert_failed(handler(_event(b"second"), root=root), "already exists")
    assert target.read_bytes() == b"first"

    result = handler(_event(b"second", overwrite=True), root=root)
    assert result["success"] is True, result
    assert target.read_bytes() == b"second"

    event = _event(b"third") | {"overwrite": True}
    assert handler(event, root=root)["success"] is True
    assert target.read_bytes() == b"third"
    assert _tree(root) == ["out", "out/file.bin"]


def test_directory_at_target_is_refused(root: Path) -> None:
    (root / "out" / "file.bin").mkdir(parents=True)
    _assert_failed(handler(_event(b"data", overwrite=True), root=root), "directory")
    assert _tree(root) == ["out", "out/file.bin"]


def test_large_payload_streams_with_bounded_memory(root: Path) -> None:
    size = 20 * 1024 * 1024
    content = os.urandom(size)
    expected = hashlib.sha256(content).hexdigest()
    text = base64.b64encode(content).decode()
    del content
    event = _event(text, name="big.bin")

    tracemalloc.start()
    try:
        result = handler(event, root=root)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result["success"] is True, result
    assert result["metadata"]["size"] == size
    assert result["metadata"]["sha256"] == expected
    assert peak < 12 * 1024 * 1024, f"peak traced allocation {peak} bytes"
    saved = root / "out" / "big.bin"
    assert saved.stat().st_size == size
    digest = hashlib.sha256()
    with saved.open("rb") as file:
        while block := file.read(1 << 20):
            digest.update(block)
    assert digest.hexdigest() == expected
