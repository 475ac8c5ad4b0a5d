"""Helpers for the SafeRoot tests: client text in, file layer out.

:class:`Fs` drives a :class:`~rtc_worker.storage.SafeRoot` the way the worker does:
the client's text is checked and split by :func:`rtc_worker.errors.user_parts` (the
protocol's ``split_path``), then handed to the file layer as components.
:class:`SwapAfterResolve` is the attacker: it runs a swap right after the first
resolution, in the window between the check and the use.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, TypeVar

import pytest

from rtc_worker.paths import path_reason, user_parts
from rtc_worker.storage import SafeRoot, StorageError, StorageErrorKind
from rtc_worker.storage.resolver import Resolved

T = TypeVar("T")
K = StorageErrorKind


class Fs:
    """A SafeRoot addressed with client text (what the worker receives)."""

    def __init__(self, root: Path | SafeRoot, *, slow_warning_s: float = 1.0) -> None:
        if not isinstance(root, SafeRoot):
            root = SafeRoot(root, slow_warning_s=slow_warning_s)
        self.safe = root
        self.root = self.safe.root

    def validate(self, rel: str) -> Path:
        return self.safe.absolute(user_parts(rel))

    def validate_input(self, rel: str) -> Path:
        with self.safe.open_input(user_parts(rel)) as handle:
            return handle.path

    def open_file(self, rel: str) -> BinaryIO:
        return self.safe.open_file(user_parts(rel))

    def makedirs(self, rel: str) -> Path:
        self.safe.makedirs(user_parts(rel))
        return self.safe.absolute(user_parts(rel))

    def atomic_write(self, rel: str, data: Any) -> Path:
        self.safe.write_atomic(user_parts(rel), data)
        return self.safe.absolute(user_parts(rel))

    def fsync_tree(self, rel: str) -> tuple[int, int]:
        return self.safe.fsync_tree(user_parts(rel))

    def remove_tree(self, rel: str) -> None:
        self.safe.remove_tree(user_parts(rel))

    def exists(self, rel: str) -> bool:
        try:
            parts = user_parts(rel)
        except StorageError:
            return False
        return self.safe.exists(parts)


class SwapAfterResolve(SafeRoot):
    """Runs ``swap`` right after the first resolution: the window an attacker races."""

    def __init__(self, root: Path, swap: Callable[[], None]) -> None:
        super().__init__(root)
        self._swap: Callable[[], None] | None = swap

    def _resolve_at(self, rfd: int, parts: tuple[str, ...]) -> Resolved:
        resolved = super()._resolve_at(rfd, parts)
        if self._swap is not None:
            swap, self._swap = self._swap, None
            swap()
        return resolved


def raises_kind(kind: StorageErrorKind, fn: Callable[[], object]) -> StorageError:
    """Call ``fn``; require a StorageError of ``kind`` and return it."""
    with pytest.raises(StorageError) as info:
        fn()
    assert info.value.kind is kind, repr(info.value)
    return info.value


def reason(err: StorageError, rel: str) -> str:
    """The PATH_ERROR text the worker would send for ``err`` on ``rel``."""
    return path_reason(err, rel)


# -- permissions, enforced even as root by dropping capabilities in one thread ----------


def as_unprivileged(fn: Callable[[], T]) -> T:
    """Run ``fn`` so that file permission bits are enforced, even for root.

    As root, ``fn`` runs in a fresh thread without CAP_DAC_OVERRIDE and
    CAP_DAC_READ_SEARCH (capabilities are per thread); the result or exception is
    handed back.
    """
    if os.geteuid() != 0:
        return fn()
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [
            ("effective", ctypes.c_uint32),
            ("permitted", ctypes.c_uint32),
            ("inheritable", ctypes.c_uint32),
        ]

    box: dict[str, Any] = {}

    def target() -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            header = Header(0x20080522, 0)
            data = (Data * 2)()
            if libc.capget(ctypes.byref(header), data) != 0:
                raise OSError(ctypes.get_errno(), "capget failed")
            data[0].effective &= ~((1 << 1) | (1 << 2))  # DAC_OVERRIDE, DAC_READ_SEARCH
            if libc.capset(ctypes.byref(header), data) != 0:
                raise OSError(ctypes.get_errno(), "capset failed")
        except (OSError, AttributeError) as exc:
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
    return box["value"]  # type: ignore[no-any-return]
