"""BlobStore: content addressed by SHA-256, plus the partial files that fill it.

Layout under the store's folder (folder names are parameters: the worker uses
``objects``/``partial``, the storage service ``blobs``/``partial``)::

    objects/ab/<sha256>      complete content, named by its SHA-256 (never edited)
    partial/<key>.part       a partial file (see :mod:`rtc_worker.storage.partials`)
    partial/<key>.json       its sidecar: {"sha256", "size", "name", "created_at",
                             "updated_at"[, "ranges"]} (no sidecar: anonymous)

Identical content is stored once: a commit whose object exists already drops its
partial. Several stores (and processes) may share a folder: partials are locked, objects
appear by an atomic link. Sidecars written before ranges existed (no ``"ranges"``)
mean "the file's length is the prefix held", which is still how in-order partials are
read: the worker's existing ``.rtc-store`` folders keep working as they are.

Every call blocks; asynchronous callers run them in a thread.
"""

from __future__ import annotations

import json
import os
import re
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any, BinaryIO

from loguru import logger

from rtc_worker.storage import layout, locks
from rtc_worker.storage.atomic import fsync_dir, publish, write_atomic
from rtc_worker.storage.errors import as_disk_full
from rtc_worker.storage.expiry import PART_SUFFIX as _PART
from rtc_worker.storage.expiry import SIDECAR_SUFFIX as _SIDECAR
from rtc_worker.storage.expiry import STRAY_TEMP_AGE_S, each_bucket, expire, remove_stray_temps
from rtc_worker.storage.metadata import ContentHasher
from rtc_worker.storage.partials import PartialFile
from rtc_worker.storage.record import Range, consistent, prefix_ranges, ranges_of, resume
from rtc_worker.storage.resolver import DIR_FLAGS

__all__ = [
    "DEFAULT_PARTIAL_TTL_S",
    "SHA256_HEX",
    "STRAY_TEMP_AGE_S",
    "BlobStore",
]

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
"""A SHA-256 digest as the store spells it: 64 lowercase hex digits (use ``fullmatch``)."""
DEFAULT_PARTIAL_TTL_S = 7 * 24 * 3600.0
"""How long an untouched partial is kept for a resume, in seconds (7 days)."""

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_ANON = "anon-"
_READ = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC


def _check_sha(sha256: object) -> str:
    if not isinstance(sha256, str) or SHA256_HEX.fullmatch(sha256) is None:
        raise ValueError(f"not a sha256 digest (64 lowercase hex digits): {sha256!r}")
    return sha256


def _check_size(size: object, *, optional: bool = False) -> None:
    if size is None and optional:
        return
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be a non-negative integer number of bytes: {size!r}")


def _check_key(key: object) -> str:
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise ValueError(f"not a partial key ([A-Za-z0-9][A-Za-z0-9_-]{{0,127}}): {key!r}")
    return key


class BlobStore:
    """Objects by SHA-256 and partial files by key, under one folder.

    Args:
        root: the store's folder (created with its subfolders when missing).
        objects_dir: name of the objects folder.
        partial_dir: name of the partials folder.
        partial_ttl_s: seconds a partial may stay untouched before :meth:`cleanup`
            removes it (tus "expiration").
        object_mode: permission bits of published objects (0o444: read-only; the
            worker passes them through its umask, 0o440 by default).

    Attributes:
        root: the folder's real absolute path (display only).

    Raises:
        ValueError: a negative TTL or a folder name that is not a plain name.
        OSError: the folders cannot be created or opened.
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        objects_dir: str = layout.OBJECTS_DIR,
        partial_dir: str = layout.PARTIAL_DIR,
        partial_ttl_s: float = DEFAULT_PARTIAL_TTL_S,
        object_mode: int = 0o444,
    ) -> None:
        if partial_ttl_s < 0:
            raise ValueError(f"partial_ttl_s must be >= 0 seconds: {partial_ttl_s!r}")
        for name in (objects_dir, partial_dir):
            _check_key(name)
        base = Path(root)
        for sub in (objects_dir, partial_dir):
            (base / sub).mkdir(mode=0o755, parents=True, exist_ok=True)
        self.root = base.resolve()
        self.partial_ttl_s = float(partial_ttl_s)
        self.object_mode = object_mode
        self._objects_name = objects_dir
        self._partial_name = partial_dir
        st = os.stat(self.root / partial_dir)
        self._lock_prefix = f"{st.st_dev}:{st.st_ino}/"

    def __repr__(self) -> str:
        return f"BlobStore(root={str(self.root)!r}, partial_ttl_s={self.partial_ttl_s})"

    @contextmanager
    def _dir(self, name: str) -> Iterator[int]:
        """One of the store's folders, opened for one operation (the store never holds
        its folders open: a long-lived worker must not keep a shared volume busy, nor
        hold a descriptor an NFS remount would make stale)."""
        fd = os.open(self.root / name, DIR_FLAGS)
        try:
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def _dirs(self) -> Iterator[tuple[int, int]]:
        """The objects folder and the partials folder, for one operation."""
        with self._dir(self._objects_name) as objects, self._dir(self._partial_name) as partial:
            yield objects, partial

    # ------------------------------------------------------------------ objects

    @staticmethod
    def object_parts(sha256: str) -> tuple[str, str]:
        """``(sha256[:2], sha256)``: an object's place below the objects folder."""
        _check_sha(sha256)
        return (sha256[:2], sha256)

    def object_path(self, sha256: str) -> Path:
        """The object's absolute path (display; may not exist). Raises ValueError."""
        return self.root.joinpath(self._objects_name, *self.object_parts(sha256))

    def object_rel(self, sha256: str) -> str:
        """The object's path relative to the store folder, e.g. ``blobs/ab/<sha256>``."""
        return "/".join((self._objects_name, *self.object_parts(sha256)))

    def _stat(self, sha256: str) -> os.stat_result | None:
        with self._dir(self._objects_name) as objects:
            bucket, name = self.object_parts(sha256)
            try:
                st = os.stat(f"{bucket}/{name}", dir_fd=objects, follow_symlinks=False)
            except (FileNotFoundError, NotADirectoryError):
                return None
            return st if stat.S_ISREG(st.st_mode) else None

    def has(self, sha256: str) -> bool:
        """Whether the object is stored. Raises ValueError for a malformed digest."""
        return self._stat(sha256) is not None

    def size(self, sha256: str) -> int | None:
        """The object's size in bytes, or ``None`` when it is not stored."""
        st = self._stat(sha256)
        return None if st is None else st.st_size

    def open_object(self, sha256: str) -> BinaryIO:
        """Open the object for reading (binary, buffered).

        Raises:
            ValueError: malformed digest. FileNotFoundError: not stored. OSError.
        """
        with self._dir(self._objects_name) as objects:
            bucket, name = self.object_parts(sha256)
            fd = os.open(f"{bucket}/{name}", _READ, dir_fd=objects)
            return os.fdopen(fd, "rb")

    def remove(self, sha256: str) -> bool:
        """Remove the object; returns whether it existed.

        Raises:
            ValueError: malformed digest. OSError: it cannot be removed.
        """
        with self._dir(self._objects_name) as objects:
            bucket, name = self.object_parts(sha256)
            try:
                bucket_fd = os.open(bucket, DIR_FLAGS, dir_fd=objects)
            except FileNotFoundError:
                return False
            try:
                os.unlink(name, dir_fd=bucket_fd)
                fsync_dir(bucket_fd)
            except FileNotFoundError:
                return False
            finally:
                os.close(bucket_fd)
            return True

    def objects(self) -> Iterator[str]:
        """The digest of every stored object (other files in the folder are skipped)."""
        with self._dir(self._objects_name) as objects:
            for fd in each_bucket(objects):
                with os.scandir(fd) as entries:
                    found = sorted(e.name for e in entries if SHA256_HEX.fullmatch(e.name))
                yield from found

    def publish_object(self, fd: int, key: str, sha256: str, label: str) -> None:
        """Move the verified partial ``key`` (open as ``fd``) to the object ``sha256``,
        or drop it when the object exists. Used by :meth:`PartialFile.commit`.

        Raises:
            DiskFullError, OSError: the partial is left in place with its mode.
        """
        with self._dirs() as (objects, partial):
            bucket, name = self.object_parts(sha256)
            try:
                os.mkdir(bucket, 0o755, dir_fd=objects)
                fsync_dir(objects)
            except FileExistsError:
                pass
            except OSError as exc:
                raise as_disk_full(exc, label) from exc
            bucket_fd = os.open(bucket, DIR_FLAGS, dir_fd=objects)
            try:
                os.fchmod(fd, self.object_mode)
                publish(fd, partial, key + _PART, bucket_fd, name, replace=False, label=label)
            except FileExistsError:
                logger.debug("object {} already stored; dropping the partial", sha256)
                os.unlink(key + _PART, dir_fd=partial)
                fsync_dir(partial)
            except BaseException:
                with suppress(OSError):  # writable again, readable as an object would be
                    os.fchmod(fd, 0o600 | (self.object_mode & 0o044))
                raise
            finally:
                os.close(bucket_fd)

    # ------------------------------------------------------------------ partials

    def write_sidecar(self, key: str, payload: dict[str, Any]) -> None:
        """Write the sidecar of ``key`` atomically. Raises DiskFullError, OSError."""
        with self._dir(self._partial_name) as partial:
            data = json.dumps(payload, sort_keys=True).encode()
            write_atomic(partial, key + _SIDECAR, data, label=str(payload.get("name", key)))

    def read_sidecar(self, key: str) -> dict[str, Any] | None:
        """The sidecar of ``key``: ``None`` when missing, ``{}`` when unreadable."""
        with self._dir(self._partial_name) as partial:
            try:
                fd = os.open(key + _SIDECAR, _READ, dir_fd=partial)
            except FileNotFoundError:
                return None
            except OSError:
                return {}
            with os.fdopen(fd, "rb") as file:
                raw = file.read(1 << 20)
            try:
                data = json.loads(raw)
            except ValueError:
                return {}
            return data if isinstance(data, dict) else {}

    def remove_sidecar(self, key: str) -> None:
        """Remove the sidecar of ``key`` (missing is fine)."""
        with self._dir(self._partial_name) as partial, suppress(FileNotFoundError):
            os.unlink(key + _SIDECAR, dir_fd=partial)

    def remove_part(self, key: str) -> None:
        """Remove the partial of ``key`` and its sidecar, held or not (missing is fine)."""
        with self._dir(self._partial_name) as partial:
            with suppress(FileNotFoundError):
                os.unlink(key + _PART, dir_fd=partial)
            self.remove_sidecar(key)

    def remove_partial_if_idle(self, key: str) -> bool:
        """Remove the partial of ``key`` and its sidecar unless a writer holds it.

        Returns:
            Whether the partial file was removed.
        """
        with self._dir(self._partial_name) as partial:
            _check_key(key)
            with locks.idle_lock(self._lock_prefix + key, partial, key + _PART) as fd:
                if fd is None:
                    return False
                self.remove_part(key)
                return True

    def partial_ranges(self, key: str) -> list[Range]:
        """The recorded byte ranges of ``key`` (no lock taken; the durable record).

        A partial written in order reports ``[(0, its length)]``; none: ``[]``.
        """
        with self._dir(self._partial_name) as partial:
            _check_key(key)
            try:
                st = os.stat(key + _PART, dir_fd=partial, follow_symlinks=False)
            except FileNotFoundError:
                return []
            meta = self.read_sidecar(key) or {}
            return ranges_of(meta, st.st_size) if "ranges" in meta else prefix_ranges(st.st_size)

    def partial_size(self, key: str, size: int, *, sha256: str | None = None) -> int:
        """Bytes already held in order for ``key``: the offset to resume from.

        A partial longer than ``size``, or whose sidecar records another size or digest
        (or is unreadable), is inconsistent: it is removed (unless held) and 0 returned.
        ``sha256`` defaults to ``key`` when ``key`` is a digest.

        Raises:
            ValueError: a bad key or size.
        """
        with self._dir(self._partial_name) as partial:
            _check_key(key)
            _check_size(size)
            sha256 = self._default_sha(key, sha256)
            try:
                st = os.stat(key + _PART, dir_fd=partial, follow_symlinks=False)
            except FileNotFoundError:
                return 0
            if not stat.S_ISREG(st.st_mode):
                return 0
            if st.st_size <= size and consistent(self.read_sidecar(key), sha256, size):
                return st.st_size
            logger.info(
                "discarding inconsistent partial {} ({} of {} bytes)", key, st.st_size, size
            )
            self.remove_partial_if_idle(key)
            return 0

    def total_partial_bytes(self) -> int:
        """Sum of the lengths of all partial files, in bytes."""
        with self._dir(self._partial_name) as partial:
            total = 0
            with os.scandir(partial) as entries:
                for entry in entries:
                    if entry.name.endswith(_PART):
                        with suppress(FileNotFoundError):
                            st = entry.stat(follow_symlinks=False)
                            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
            return total

    def partial_keys(self) -> list[str]:
        """The key of every partial file present."""
        with self._dir(self._partial_name) as partial, os.scandir(partial) as entries:
            return sorted(e.name[: -len(_PART)] for e in entries if e.name.endswith(_PART))

    def _lock_new(self, key: str) -> tuple[str, int]:
        """Claim and lock (creating) the partial ``key``: (registry key, descriptor)."""
        with self._dir(self._partial_name) as partial:
            lock_key = self._lock_prefix + key
            locks.claim(lock_key)
            try:
                fd = locks.lock_file(partial, key + _PART, create=True)
                assert fd is not None  # create=True never returns None
            except BaseException:
                locks.unclaim(lock_key)
                raise
            return lock_key, fd

    @staticmethod
    def _default_sha(key: str, sha256: str | None) -> str | None:
        if sha256 is None and SHA256_HEX.fullmatch(key):
            return key
        return None if sha256 is None else _check_sha(sha256)

    def open_partial(
        self,
        key: str,
        size: int,
        name: str,
        *,
        sha256: str | None = None,
        by_ranges: bool = False,
    ) -> PartialFile:
        """Open (create or resume) the partial ``key`` for content of ``size`` bytes.

        In order: the bytes on disk are the prefix held; they are re-hashed (1 MiB reads)
        so the final digest covers the whole file. By ranges (a sidecar with
        ``"ranges"``): the recorded ranges are held. An inconsistent partial (longer than
        ``size``, or a sidecar with another size or digest) restarts empty. The sidecar
        is written (``created_at`` kept across resumes).

        Args:
            key: the partial's key (``[A-Za-z0-9][A-Za-z0-9_-]{0,127}``).
            size: the total size, bytes.
            name: the file's name (recorded; the label of a DiskFullError).
            sha256: the announced digest; defaults to ``key`` when it is a digest.
            by_ranges: it is filled by :meth:`PartialFile.write_at` (only recorded
                ranges are held, from the start).

        Raises:
            ValueError: bad key, digest or size.
            PartialBusyError: another writer (here or in another process) holds it.
            DiskFullError: no space for the sidecar. OSError: cannot open or read it.
        """
        _check_key(key)
        _check_size(size)
        sha256 = self._default_sha(key, sha256)
        lock_key, fd = self._lock_new(key)
        try:
            state = resume(fd, self.read_sidecar(key), key=key, sha256=sha256, size=size, name=name)
            self.write_sidecar(key, state.sidecar)
        except BaseException:
            locks.release(fd, lock_key)
            raise
        if state.held:
            logger.debug("resuming partial {} at byte {}", key, state.held)
        return PartialFile(
            home=self,
            lock_key=lock_key,
            fd=fd,
            key=key,
            sha256=sha256,
            size=size,
            name=name,
            persistent=True,
            hasher=state.hasher,
            held=state.held,
            ranges=state.ranges,
            sidecar=state.sidecar,
        )

    def open_anonymous(self, name: str, size: int | None) -> PartialFile:
        """Open a new partial for content whose digest is unknown (no sidecar, no resume:
        closing discards it). ``commit()`` stores the content under its own digest.

        Args:
            name: the file's name (the label of a DiskFullError).
            size: the total size in bytes, or ``None`` (nothing then bounds the writes).

        Raises:
            ValueError: negative size. OSError: the partial cannot be created.
        """
        _check_size(size, optional=True)
        key = f"{_ANON}{uuid.uuid4().hex}"
        lock_key, fd = self._lock_new(key)
        return PartialFile(
            home=self,
            lock_key=lock_key,
            fd=fd,
            key=key,
            sha256=None,
            size=size,
            name=name,
            persistent=False,
            hasher=ContentHasher(),
            held=0,
            ranges=None,
            sidecar=None,
        )

    # ------------------------------------------------------------------ housekeeping

    def cleanup(self, now: float | None = None) -> int:
        """Expire partials nobody touched for :attr:`partial_ttl_s` seconds and stray
        temporary files (see :func:`rtc_worker.storage.expiry.expire`).

        Args:
            now: the current time as a Unix timestamp, seconds (``time.time()``).

        Returns:
            How many partial files were removed.

        Raises:
            OSError: a folder cannot be read or an entry removed.
        """
        with self._dirs() as (objects, partial):
            now = time.time() if now is None else now
            cutoff = now - self.partial_ttl_s
            removed = expire(partial, cutoff, now, self.remove_partial_if_idle)
            remove_stray_temps(objects, now)
            return removed
