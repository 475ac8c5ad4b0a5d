"""Helpers shared by the file layer's tests (blob store and partial files)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Iterator
from pathlib import Path

from rtc_worker.storage import BlobStore, PartialFile

KIB = 1024
MIB = 1024 * KIB


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blob(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def chunks(data: bytes, size: int = 64 * KIB) -> Iterator[bytes]:
    for start in range(0, len(data), size):
        yield data[start : start + size]


def partial_files(store: BlobStore) -> list[str]:
    return sorted(p.name for p in (store.root / "partial").iterdir())


def object_files(store: BlobStore) -> list[Path]:
    return sorted(p for p in (store.root / "objects").rglob("*") if p.is_file())


def part_path(store: BlobStore, part: PartialFile) -> Path:
    return store.root / "partial" / f"{part.key}.part"


def committed(store: BlobStore, part: PartialFile, expected: str | None = None) -> bytes:
    """Commit ``part`` and read the stored object back."""
    return store.object_path(part.commit(expected).sha256).read_bytes()
