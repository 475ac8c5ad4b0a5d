"""A content-addressed store with resumable partial files.

Layout under the store root::

    objects/ab/abcdef...        complete content, named by its SHA-256, read-only (0o444)
    partial/<sha256>.part       bytes received so far for an announced SHA-256
    partial/<sha256>.json       sidecar: {"sha256", "size", "name", "created_at", "updated_at"}
    partial/anon-<uuid>.part    a transfer whose SHA-256 was not announced (no resume)

Ideas and their sources:

* git-style content-addressed objects: content is stored once, under
  ``objects/<first two hex digits>/<sha256>``, and never edited in place.
* tus resumable uploads: the receiver asks what it already holds (:meth:`ContentStore.has`
  for the whole object, :meth:`ContentStore.partial_size` for the resume offset, like tus
  ``HEAD`` returning ``Upload-Offset``), appends from exactly that offset, and partials
  that nobody touched for a while expire (:meth:`ContentStore.cleanup`).
* magic-wormhole (``cli/cmd_receive.py``): write to a temporary file, verify the SHA-256,
  then rename into place atomically.

Guarantees:

* The bytes on disk are always a prefix of what was written: data is appended at explicit
  offsets, and after a failed write or flush the file is truncated back to the bytes known
  to be good, so a resume never continues after a hole or garbage. (If the machine itself
  loses power, the final digest check still refuses a damaged tail.)
* Nothing is held in memory beyond a 1 MiB write buffer; resuming re-hashes the prefix on
  disk in 1 MiB reads.
* Corrupted content is never stored: the digest is checked before the atomic move.
* One writer per partial: an exclusive ``fcntl.flock`` across processes, plus a registry
  inside this process (``flock`` emulated over NFS is per process, and closing any
  descriptor of a file drops the process's lock, so the registry is checked before a
  partial is ever opened a second time).

Every call here blocks; asynchronous callers run them in a thread.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import secrets
import stat
import threading
import time
import uuid
import weakref
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

from loguru import logger

from rtc_worker.storage.metadata import format_timestamp
from rtc_worker.storage.paths import DISK_FULL_ERRNOS, DiskFullError, fsync_directory

__all__ = [
    "DEFAULT_PARTIAL_TTL_S",
    "READ_CHUNK_BYTES",
    "SHA256_HEX",
    "STRAY_TEMP_AGE_S",
    "WRITE_BUFFER_BYTES",
    "ContentStore",
    "HashMismatchError",
    "PartialBusyError",
    "PartialFile",
    "resolve_store_root",
]

SHA256_HEX = re.compile(r"[0-9a-f]{64}")
"""A SHA-256 digest as the store spells it: 64 lowercase hex digits (use ``fullmatch``)."""

DEFAULT_PARTIAL_TTL_S = 7 * 24 * 3600.0
"""How long an untouched partial is kept for a resume, in seconds (7 days)."""

WRITE_BUFFER_BYTES = 1 << 20
"""Bytes buffered in memory by :meth:`PartialFile.write` before they go to disk (1 MiB)."""

READ_CHUNK_BYTES = 1 << 20
"""Read size, in bytes, when re-hashing a resumed prefix (1 MiB)."""

STRAY_TEMP_AGE_S = 60.0
"""A temporary sidecar file older than this many seconds is left over from a crash."""

_OBJECTS = "objects"
_PARTIAL = "partial"
_PART_SUFFIX = ".part"
_SIDECAR_SUFFIX = ".json"
_TEMP_SUFFIX = ".tmp"
_ANON_PREFIX = "anon-"
_OPEN_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW
_LOCK_ATTEMPTS = 8

# Partials open in this process, by absolute path. Guarded by _REGISTRY_LOCK.
_REGISTRY_LOCK = threading.Lock()
_OPEN_PARTIALS: set[str] = set()


class _Hasher(Protocol):
    """The part of a ``hashlib`` hash object used here."""

    def update(self, data: bytes | bytearray | memoryview, /) -> None: ...

    def hexdigest(self) -> str: ...


class HashMismatchError(ValueError):
    """The received content does not have the expected SHA-256; nothing was stored.

    Attributes:
        expected: the digest the content should have had (lowercase hex), or ``None``.
        actual: the digest of the bytes actually received (lowercase hex).
    """

    def __init__(self, expected: str | None, actual: str) -> None:
        super().__init__(f"sha256 mismatch: expected {expected}, got {actual}")
        self.expected = expected
        self.actual = actual


class PartialBusyError(RuntimeError):
    """Another transfer, in this process or another one, is writing this partial file."""


def resolve_store_root(shared_root: Path | None, data_dir: Path) -> Path:
    """Where the content store lives.

    Returns:
        ``shared_root / ".rtc-store"`` when there is a shared storage root (so every
        worker on that storage shares one store), else ``data_dir / "store"``.
    """
    if shared_root is not None:
        return shared_root / ".rtc-store"
    return data_dir / "store"


def _check_sha(sha256: object) -> str:
    if not isinstance(sha256, str) or SHA256_HEX.fullmatch(sha256) is None:
        raise ValueError(f"not a sha256 digest (64 lowercase hex digits): {sha256!r}")
    return sha256


def _check_size(size: object, *, optional: bool = False) -> None:
    if size is None and optional:
        return
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"size must be a non-negative integer number of bytes: {size!r}")


def _now_text() -> str:
    return format_timestamp(datetime.now(UTC))


def _claim(path: Path) -> None:
    """Register ``path`` as open in this process, or raise PartialBusyError."""
    key = str(path)
    with _REGISTRY_LOCK:
        if key in _OPEN_PARTIALS:
            raise PartialBusyError(f"partial {path.name} is already open in this process")
        _OPEN_PARTIALS.add(key)


def _unclaim(path: Path) -> None:
    with _REGISTRY_LOCK:
        _OPEN_PARTIALS.discard(str(path))


def _release_fd(fd: int, path: Path) -> None:
    """Close ``fd`` (which drops its flock) and unregister ``path``; runs at most once."""
    try:
        os.close(fd)
    finally:
        _unclaim(path)


def _same_file(fd: int, path: Path) -> bool:
    """Whether ``path`` still names the file open as ``fd`` (not unlinked or replaced)."""
    try:
        current = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (current.st_dev, current.st_ino) == (opened.st_dev, opened.st_ino)


def _lock_fd(path: Path, *, create: bool) -> int | None:
    """Open ``path`` and take an exclusive, non-blocking flock on it.

    The caller must already hold the in-process claim on ``path``. Retries when the file
    was unlinked or replaced between the open and the lock (the holder removed it).

    Returns:
        The locked descriptor, or ``None`` when ``create`` is false and the file is gone.

    Raises:
        PartialBusyError: another open file description holds the lock.
        OSError: the file cannot be opened (a symlink, permissions...) or is not a
            regular file (``EINVAL``).
    """
    flags = _OPEN_FLAGS | (os.O_CREAT if create else 0)
    for _ in range(_LOCK_ATTEMPTS):
        try:
            fd = os.open(path, flags, 0o644)
        except FileNotFoundError:
            if create:
                raise
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError(errno.EINVAL, "not a regular file", str(path))
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise PartialBusyError(
                    f"partial {path.name} is being written by another transfer"
                ) from None
            if _same_file(fd, path):
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
        if not create:
            return None
    raise PartialBusyError(f"partial {path.name} keeps being replaced")


def _write_json_atomic(path: Path, payload: dict[str, Any], label: str) -> None:
    """Write ``payload`` as JSON to ``path`` via a temporary file, fsync and rename.

    Raises:
        DiskFullError: no space (``filename`` is ``label``).
        OSError: other write failures; the temporary file is removed.
    """
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{_TEMP_SUFFIX}")
    data = json.dumps(payload, sort_keys=True).encode()
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        with suppress(OSError):
            os.unlink(tmp)
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(exc.errno, os.strerror(exc.errno), label) from exc
        raise


class ContentStore:
    """Content-addressed objects plus resumable partial files under one root directory.

    Attributes:
        root: the store's directory, resolved to an absolute path.
        partial_ttl_s: seconds a partial may stay untouched before :meth:`cleanup`
            removes it (tus "expiration").

    Several instances (and processes) may share a root: partials are locked with
    ``fcntl.flock`` and objects appear by atomic rename.
    """

    def __init__(self, root: Path, *, partial_ttl_s: float = DEFAULT_PARTIAL_TTL_S) -> None:
        """Create ``root/objects`` and ``root/partial`` (mode 0o755) when missing.

        Raises:
            ValueError: ``partial_ttl_s`` is negative.
            OSError: the directories cannot be created.
        """
        if partial_ttl_s < 0:
            raise ValueError(f"partial_ttl_s must be >= 0 seconds: {partial_ttl_s!r}")
        root = Path(root)
        for sub in (_OBJECTS, _PARTIAL):
            (root / sub).mkdir(mode=0o755, parents=True, exist_ok=True)
        self.root: Path = root.resolve()
        self.partial_ttl_s: float = float(partial_ttl_s)
        self._objects = self.root / _OBJECTS
        self._partial = self.root / _PARTIAL

    def __repr__(self) -> str:
        return f"ContentStore(root={str(self.root)!r}, partial_ttl_s={self.partial_ttl_s})"

    # -- paths -----------------------------------------------------------------------

    def object_path(self, sha256: str) -> Path:
        """Path of the object with this digest: ``root/objects/<sha256[:2]>/<sha256>``.

        The object may not exist; see :meth:`has`.

        Raises:
            ValueError: ``sha256`` is not 64 lowercase hex digits (callers normalise case).
        """
        _check_sha(sha256)
        return self._objects / sha256[:2] / sha256

    def _part_path(self, sha256: str) -> Path:
        return self._partial / f"{sha256}{_PART_SUFFIX}"

    def _sidecar_path(self, sha256: str) -> Path:
        return self._partial / f"{sha256}{_SIDECAR_SUFFIX}"

    # -- queries ---------------------------------------------------------------------

    def has(self, sha256: str) -> bool:
        """Whether the complete object with this digest is stored (no bytes need sending).

        Raises:
            ValueError: ``sha256`` is not 64 lowercase hex digits.
        """
        return self.object_path(sha256).is_file()

    def partial_size(self, sha256: str, size: int) -> int:
        """Bytes already held in the partial for this content: the offset to resume from.

        Args:
            sha256: the announced digest (64 lowercase hex digits).
            size: the announced total size, in bytes.

        Returns:
            The partial's length in bytes, or 0 when there is none. A partial that is
            longer than ``size``, or whose sidecar records another size or digest (or is
            unreadable), is inconsistent: it is removed (unless another transfer holds it
            open) and 0 is returned.

        Raises:
            ValueError: bad ``sha256`` or negative ``size``.
            OSError: the partial directory cannot be read (never for a missing partial).
        """
        _check_sha(sha256)
        _check_size(size)
        part = self._part_path(sha256)
        try:
            st = os.stat(part, follow_symlinks=False)
        except FileNotFoundError:
            return 0
        if not stat.S_ISREG(st.st_mode):
            return 0
        if st.st_size <= size and _sidecar_consistent(self._load_sidecar(sha256), sha256, size):
            return st.st_size
        logger.info(
            "discarding inconsistent partial {sha} ({held} bytes held, {size} announced)",
            sha=sha256,
            held=st.st_size,
            size=size,
        )
        self._remove_if_idle(part, self._sidecar_path(sha256))
        return 0

    def total_partial_bytes(self) -> int:
        """Sum of the lengths of all partial files (announced and anonymous), in bytes."""
        total = 0
        with os.scandir(self._partial) as entries:
            for entry in entries:
                if not entry.name.endswith(_PART_SUFFIX):
                    continue
                with suppress(FileNotFoundError):
                    st = entry.stat(follow_symlinks=False)
                    if stat.S_ISREG(st.st_mode):
                        total += st.st_size
        return total

    def _load_sidecar(self, sha256: str) -> dict[str, Any] | None:
        """The sidecar's content; ``None`` when missing; ``{}`` when unreadable."""
        try:
            raw = self._sidecar_path(sha256).read_bytes()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(raw)
        except ValueError:
            return {}
        return data if isinstance(data, dict) else {}

    # -- opening ---------------------------------------------------------------------

    def open_partial(self, sha256: str, size: int, name: str) -> PartialFile:
        """Open the partial for this content for appending, resuming after the bytes held.

        The existing prefix is re-hashed (streamed, :data:`READ_CHUNK_BYTES` reads) so the
        final digest covers the whole file. An inconsistent partial (longer than ``size``,
        or a sidecar with another size or digest) is truncated to 0 first. The sidecar
        ``partial/<sha256>.json`` is written or refreshed (``created_at`` kept across
        resumes, ``updated_at`` now; ISO 8601 UTC).

        Args:
            sha256: the announced digest (64 lowercase hex digits).
            size: the announced total size, in bytes.
            name: the file's name as announced; recorded in the sidecar and used as the
                ``filename`` of a :class:`DiskFullError` (never an absolute path).

        Returns:
            An open :class:`PartialFile` whose ``offset`` is the number of bytes resumed.

        Raises:
            ValueError: bad ``sha256`` or negative ``size``.
            PartialBusyError: the partial is open in this process, or locked by another.
            DiskFullError: no space to write the sidecar.
            OSError: the partial cannot be opened or read.
        """
        _check_sha(sha256)
        _check_size(size)
        part = self._part_path(sha256)
        sidecar = self._sidecar_path(sha256)
        _claim(part)
        try:
            fd = _lock_fd(part, create=True)
            assert fd is not None  # create=True never returns None
        except BaseException:
            _unclaim(part)
            raise
        try:
            held = os.fstat(fd).st_size
            meta = self._load_sidecar(sha256)
            created_at = _now_text()
            if held > size or not _sidecar_consistent(meta, sha256, size):
                logger.info(
                    "restarting inconsistent partial {sha} ({held} bytes held, {size} announced)",
                    sha=sha256,
                    held=held,
                    size=size,
                )
                os.ftruncate(fd, 0)
                held = 0
            elif meta and isinstance(meta.get("created_at"), str):
                created_at = meta["created_at"]
            digest, held = _hash_prefix(fd, held)
            payload = {
                "sha256": sha256,
                "size": size,
                "name": name,
                "created_at": created_at,
                "updated_at": _now_text(),
            }
            _write_json_atomic(sidecar, payload, name)
        except BaseException:
            _release_fd(fd, part)
            raise
        if held:
            logger.debug("resuming partial {sha} at byte {offset}", sha=sha256, offset=held)
        return PartialFile(
            store=self,
            path=part,
            fd=fd,
            sha256=sha256,
            size=size,
            name=name,
            sidecar=sidecar,
            digest=digest,
            offset=held,
        )

    def open_anonymous(self, name: str, size: int | None) -> PartialFile:
        """Open a new partial for content whose digest was not announced (legacy senders).

        The file is ``partial/anon-<uuid>.part``; there is no sidecar and no resume
        (:meth:`PartialFile.close` discards it). The digest is computed as bytes arrive and
        ``commit(None)`` stores the content under it.

        Args:
            name: the file's name as announced (used in :class:`DiskFullError`).
            size: the announced total size in bytes, or ``None`` when unknown (then
                nothing bounds the writes; the caller must).

        Raises:
            ValueError: negative ``size``.
            OSError: the partial cannot be created.
        """
        _check_size(size, optional=True)
        part = self._partial / f"{_ANON_PREFIX}{uuid.uuid4().hex}{_PART_SUFFIX}"
        _claim(part)
        try:
            fd = _lock_fd(part, create=True)
            assert fd is not None
        except BaseException:
            _unclaim(part)
            raise
        return PartialFile(
            store=self,
            path=part,
            fd=fd,
            sha256=None,
            size=size,
            name=name,
            sidecar=None,
            digest=hashlib.sha256(),
            offset=0,
        )

    # -- housekeeping ----------------------------------------------------------------

    @contextmanager
    def _idle_lock(self, part: Path) -> Iterator[int | None]:
        """Lock ``part`` if nobody holds it; yields the descriptor, or ``None`` if busy/gone.

        Checks this process's registry before opening anything, so a partial open here is
        never opened (and its NFS lock never dropped) by a second descriptor.
        """
        try:
            _claim(part)
        except PartialBusyError:
            yield None
            return
        fd: int | None = None
        try:
            with suppress(PartialBusyError):
                fd = _lock_fd(part, create=False)
            yield fd
        finally:
            if fd is not None:
                os.close(fd)
            _unclaim(part)

    def _remove_if_idle(self, part: Path, sidecar: Path | None) -> bool:
        """Remove ``part`` and ``sidecar`` unless another transfer holds the partial.

        Returns:
            Whether the partial file was removed.
        """
        with self._idle_lock(part) as fd:
            if fd is None:
                return False
            os.unlink(part)
            if sidecar is not None:
                with suppress(FileNotFoundError):
                    os.unlink(sidecar)
            return True

    def cleanup(self, now: float | None = None) -> int:
        """Expire partials nobody touched for :attr:`partial_ttl_s` seconds.

        A partial (``.part``, announced or anonymous) is removed, with its sidecar, when
        neither it nor its sidecar was modified after ``now - partial_ttl_s`` and no
        transfer holds it open or locked. Sidecars without a partial expire the same way;
        temporary files older than :data:`STRAY_TEMP_AGE_S` seconds (left by a crash while
        writing a sidecar) are removed too.

        Args:
            now: the current time as a Unix timestamp in seconds; ``time.time()`` when
                omitted.

        Returns:
            How many partial files were removed (sidecars and temporary files not counted).

        Raises:
            OSError: the partial directory cannot be read or an entry cannot be removed.
        """
        now = time.time() if now is None else now
        cutoff = now - self.partial_ttl_s
        removed = 0
        with os.scandir(self._partial) as it:
            entries = list(it)
        names = {entry.name for entry in entries}
        for entry in entries:
            path = Path(entry.path)
            mtime = _mtime(path)
            if mtime is None:
                continue
            name = entry.name
            if name.endswith(_PART_SUFFIX):
                sidecar = path.with_suffix(_SIDECAR_SUFFIX)
                touched = max(mtime, _mtime(sidecar) or mtime)
                if touched <= cutoff and self._remove_if_idle(path, sidecar):
                    removed += 1
                    logger.info("expired partial {name}", name=name)
                continue
            if name.startswith("."):
                stale = name.endswith(_TEMP_SUFFIX) and mtime <= now - STRAY_TEMP_AGE_S
            else:
                part = path.with_suffix(_PART_SUFFIX)
                stale = (
                    name.endswith(_SIDECAR_SUFFIX)
                    and mtime <= cutoff
                    and part.name not in names
                    and not part.exists()
                )
            if stale:
                with suppress(FileNotFoundError):
                    os.unlink(path)
        if removed:
            logger.info("cleanup removed {count} expired partial(s)", count=removed)
        return removed


def _sidecar_consistent(meta: dict[str, Any] | None, sha256: str, size: int) -> bool:
    """Whether a sidecar (``None`` when missing) agrees with the announced digest and size.

    A missing sidecar is accepted: the partial was created just before its sidecar when
    the process stopped in between, and the final digest check still protects the content.
    """
    if meta is None:
        return True
    recorded = meta.get("size")
    return (
        meta.get("sha256") == sha256
        and isinstance(recorded, int)
        and not isinstance(recorded, bool)
        and recorded == size
    )


def _mtime(path: Path) -> float | None:
    try:
        return os.stat(path, follow_symlinks=False).st_mtime
    except FileNotFoundError:
        return None


def _hash_prefix(fd: int, length: int) -> tuple[_Hasher, int]:
    """SHA-256 of the first ``length`` bytes of ``fd``, read in :data:`READ_CHUNK_BYTES`.

    Returns:
        ``(hash object, bytes hashed)``; if the file is shorter than ``length`` (it
        shrank), it is truncated to what was read and that length is returned.
    """
    digest = hashlib.sha256()
    buffer = bytearray(min(READ_CHUNK_BYTES, max(length, 1)))
    view = memoryview(buffer)
    done = 0
    while done < length:
        n = os.preadv(fd, [view[: min(len(view), length - done)]], done)
        if n == 0:
            os.ftruncate(fd, done)
            break
        digest.update(view[:n])
        done += n
    view.release()
    return digest, done


class PartialFile:
    """An open partial file: appends bytes, keeps the running SHA-256, commits to the store.

    Made by :meth:`ContentStore.open_partial` and :meth:`ContentStore.open_anonymous`;
    do not construct it directly. Not safe for concurrent use from several threads.

    Attributes:
        sha256: the announced digest, or ``None`` for an anonymous transfer.
        size: the announced total size in bytes, or ``None`` when unknown.
        name: the file's name as announced.
        path: the ``.part`` file.

    States: open -> committed | discarded | closed. After a failed write or flush
    (:class:`DiskFullError` or another ``OSError``) the file is *failed*: the partial has
    been truncated to a consistent prefix, and only :meth:`close` (keep it for a resume)
    and :meth:`discard` remain allowed.

    As a context manager, leaving the block calls :meth:`close` (the partial is kept)
    unless it was committed or discarded.
    """

    def __init__(
        self,
        *,
        store: ContentStore,
        path: Path,
        fd: int,
        sha256: str | None,
        size: int | None,
        name: str,
        sidecar: Path | None,
        digest: _Hasher,
        offset: int,
    ) -> None:
        self.sha256: str | None = sha256
        self.size: int | None = size
        self.name: str = name
        self.path: Path = path
        self._store = store
        self._sidecar = sidecar
        self._fd = fd
        self._hash = digest
        self._disk_size = offset  # bytes written to the file, all a prefix of the content
        self._synced_size = offset  # bytes known durable (resumed prefix, last fsync)
        self._buffer = bytearray()
        self._state = "open"
        self._failed = False  # a write or flush failed: the digest no longer matches the disk
        self._object: Path | None = None
        self._release = weakref.finalize(self, _release_fd, fd, path)

    def __repr__(self) -> str:
        return (
            f"PartialFile(name={self.name!r}, sha256={self.sha256!r}, size={self.size}, "
            f"offset={self.offset}, state={self._state})"
        )

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:
            self.close()
        except OSError as close_exc:  # do not hide the error that ended the block
            logger.warning(
                "closing partial {name!r} failed: {error}", name=self.name, error=close_exc
            )

    # -- state -----------------------------------------------------------------------

    @property
    def offset(self) -> int:
        """Bytes held: on disk plus buffered, i.e. the resumed prefix plus bytes written.

        After a failed write this is the length of the consistent prefix kept on disk.
        """
        return self._disk_size + len(self._buffer)

    @property
    def closed(self) -> bool:
        """Whether the file was closed, committed or discarded (the lock is released)."""
        return self._state in ("closed", "committed", "discarded")

    def _require_open(self) -> None:
        if self._state == "failed":
            raise ValueError(
                f"partial {self.name!r} failed on a write error; close() it and open it "
                f"again to resume at byte {self._disk_size}"
            )
        if self._state != "open":
            raise ValueError(f"partial {self.name!r} is {self._state}")

    def hexdigest(self) -> str:
        """SHA-256 (lowercase hex) of all bytes written so far, the resumed prefix included.

        Raises:
            ValueError: a write or flush failed (the digest would not match the bytes kept
                on disk), even after :meth:`close`.
        """
        if self._failed:
            raise ValueError(
                f"partial {self.name!r} failed on a write error; its digest is unknown"
            )
        return self._hash.hexdigest()

    # -- writing ---------------------------------------------------------------------

    def write(self, data: bytes | bytearray | memoryview) -> None:
        """Append ``data`` and update the running SHA-256.

        Up to :data:`WRITE_BUFFER_BYTES` are buffered in memory; larger amounts go to disk
        at once. The file on disk always holds a prefix of what was written.

        Raises:
            ValueError: the write would take the file past the announced ``size`` (nothing
                is written), or the file is not open.
            DiskFullError: ``ENOSPC``/``EDQUOT``. The partial is truncated to the bytes
                fully written before the error and kept for a resume; this object is then
                failed (close or discard it, then resume via
                :meth:`ContentStore.partial_size` / :meth:`ContentStore.open_partial`).
            OSError: another write error, handled the same way.
        """
        self._require_open()
        view = memoryview(data).cast("B")
        length = len(view)
        if length == 0:
            return
        if self.size is not None and self.offset + length > self.size:
            raise ValueError(
                f"writing {length} bytes at offset {self.offset} would exceed the "
                f"announced size of {self.size} bytes"
            )
        self._hash.update(view)
        if length >= WRITE_BUFFER_BYTES:
            self._drain()
            self._write_out(view)
            return
        self._buffer += view
        if len(self._buffer) >= WRITE_BUFFER_BYTES:
            self._drain()

    def _drain(self) -> None:
        if not self._buffer:
            return
        with memoryview(self._buffer) as view:
            self._write_out(view)
        self._buffer.clear()

    def _write_out(self, view: memoryview) -> None:
        """Write all of ``view`` at the end of the on-disk prefix; on error, fail."""
        try:
            while view:
                written = os.pwrite(self._fd, view, self._disk_size)
                self._disk_size += written
                view = view[written:]
        except OSError as exc:
            self._fail(exc, keep=self._disk_size)

    def flush(self) -> None:
        """Write out the buffer and ``os.fsync``: the bytes written so far become a durable
        prefix to resume from.

        Raises:
            ValueError: the file is not open.
            DiskFullError, OSError: as :meth:`write`; a failed fsync truncates the partial
                back to the last durable length.
        """
        self._require_open()
        self._drain()
        self._sync()

    def _sync(self) -> None:
        try:
            os.fsync(self._fd)
        except OSError as exc:
            # After a failed fsync the written-back state of recent pages is unknown.
            self._fail(exc, keep=self._synced_size)
        self._synced_size = self._disk_size

    def _fail(self, exc: OSError, *, keep: int) -> None:
        """Enter the failed state: truncate the partial to ``keep`` bytes, raise ``exc``.

        Raises:
            DiskFullError: ``exc`` is ``ENOSPC``/``EDQUOT`` (chained).
            OSError: ``exc`` itself otherwise.
        """
        self._state = "failed"
        self._failed = True
        self._buffer = bytearray()
        for length in dict.fromkeys((keep, self._synced_size)):
            try:
                os.ftruncate(self._fd, length)
                os.fsync(self._fd)
            except OSError as trunc_exc:
                logger.warning(
                    "could not truncate partial {name!r} to {length} bytes: {error}",
                    name=self.name,
                    length=length,
                    error=trunc_exc,
                )
                continue
            self._disk_size = length
            break
        else:
            self._disk_size = min(keep, self._synced_size)
        logger.warning(
            "write to partial {name!r} failed ({error}); kept {kept} bytes for a resume",
            name=self.name,
            error=exc,
            kept=self._disk_size,
        )
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(exc.errno, os.strerror(exc.errno), self.name) from exc
        raise exc

    # -- finishing -------------------------------------------------------------------

    def close(self) -> None:
        """Flush, fsync and release the lock, keeping the partial for a later resume.

        Idempotent; does nothing after :meth:`commit` or :meth:`discard`. A failed file is
        just released (its partial was already truncated to a consistent prefix). An
        anonymous partial cannot be resumed (nobody knows its name), so closing it
        discards it instead; partials left by a crash expire in :meth:`ContentStore.cleanup`.

        Raises:
            DiskFullError, OSError: the final flush failed; the partial is truncated to a
                consistent prefix and the lock is released anyway.
        """
        if self.closed:
            return
        if self.sha256 is None:
            self.discard()
            return
        try:
            if self._state == "open":
                self._drain()
                self._sync()
        finally:
            if self._state in ("open", "failed"):
                self._state = "closed"
            self._release()

    def discard(self) -> None:
        """Close and remove the partial and its sidecar (the transfer is abandoned).

        Idempotent; does nothing after :meth:`commit`. After :meth:`close` the partial is
        removed only if no other transfer has reopened it since.

        Raises:
            OSError: the partial cannot be removed.
        """
        if self._state in ("committed", "discarded"):
            return
        if self._state == "closed":
            self._state = "discarded"
            self._store._remove_if_idle(self.path, self._sidecar)
            return
        self._state = "discarded"
        self._buffer = bytearray()
        try:
            with suppress(FileNotFoundError):
                os.unlink(self.path)
            if self._sidecar is not None:
                with suppress(FileNotFoundError):
                    os.unlink(self._sidecar)
        finally:
            self._release()

    def commit(self, expected_sha256: str | None = None) -> Path:
        """Verify the content and move it into the store as a read-only object.

        Steps: flush and fsync; when ``size`` was announced, require ``offset == size``;
        compare the digest with ``expected_sha256`` and the announced ``sha256`` (each
        one given must match); make the file 0o444 and fsync it; ``os.replace`` it to
        ``objects/<ab>/<sha256>`` and fsync both directories. When the object already
        exists the existing one is kept and the partial dropped. The sidecar is removed
        and the lock released.

        Args:
            expected_sha256: the digest the sender announced at the end (64 lowercase hex
                digits), or ``None`` to rely on the digest announced at open (anonymous:
                store under the computed digest).

        Returns:
            The object's path. Calling :meth:`commit` again returns it again.

        Raises:
            ValueError: ``expected_sha256`` is malformed, ``offset != size`` (the partial
                is kept and stays open; the caller should check sizes first), or the file
                is not open.
            HashMismatchError: the digest differs; the partial and its sidecar are removed
                and nothing is stored.
            DiskFullError, OSError: flushing or moving failed; the partial is kept.
        """
        if self._state == "committed" and self._object is not None:
            return self._object
        self._require_open()
        if expected_sha256 is not None:
            _check_sha(expected_sha256)
        if self.size is not None and self.offset != self.size:
            raise ValueError(
                f"partial {self.name!r} holds {self.offset} of {self.size} bytes; "
                "it is not complete"
            )
        self._drain()
        self._sync()
        actual = self._hash.hexdigest()
        for expected in (expected_sha256, self.sha256):
            if expected is not None and expected != actual:
                logger.warning(
                    "sha256 mismatch for {name!r}: expected {expected}, got {actual}",
                    name=self.name,
                    expected=expected,
                    actual=actual,
                )
                self.discard()
                raise HashMismatchError(expected, actual)
        target = self._store.object_path(actual)
        try:
            self._move_to(target)
        except OSError as exc:
            if exc.errno in DISK_FULL_ERRNOS:
                raise DiskFullError(exc.errno, os.strerror(exc.errno), self.name) from exc
            raise
        if self._sidecar is not None:
            with suppress(FileNotFoundError):
                os.unlink(self._sidecar)
        fsync_directory(self.path.parent)
        self._state = "committed"
        self._object = target
        self._release()
        return target

    def _move_to(self, target: Path) -> None:
        """Move the verified, flushed partial to ``target`` (or drop it if that exists).

        On failure the partial is left in place with its normal mode (0o644).
        """
        bucket = target.parent
        new_bucket = not bucket.is_dir()
        bucket.mkdir(mode=0o755, exist_ok=True)
        if os.path.lexists(target):
            logger.debug("object {sha} already stored; dropping the partial", sha=target.name)
            os.unlink(self.path)
            return
        try:
            os.fchmod(self._fd, 0o444)
            os.fsync(self._fd)
            os.replace(self.path, target)
        except OSError:
            with suppress(OSError):
                os.fchmod(self._fd, 0o644)
            raise
        fsync_directory(bucket)
        if new_bucket:
            fsync_directory(bucket.parent)
        logger.debug("stored object {sha} ({size} bytes)", sha=target.name, size=self.offset)
