"""Safe inspection and extraction of ZIP archives (training packages, result bundles).

A ZIP from a client is untrusted input. Two classic attacks are refused here:

* **Zip slip**: member names such as ``../../etc/cron.d/x``, ``/abs/path``, ``C:\\x`` or
  symlink members that make extraction write outside the destination. Member names are
  checked with the same rules as client paths (:func:`protocol.names.split_path`),
  symlink and special-file members are refused, and every file is created through the
  destination's :class:`~rtc_worker.storage.SafeRoot` (by descriptor, ``O_EXCL |
  O_NOFOLLOW``).
* **ZIP bombs**: small archives that expand to enormous sizes. The declared sizes in the
  central directory are checked against :class:`ZipLimits` (total size, compression ratio,
  member count) for an early refusal, but declared sizes can lie: the limits are
  enforced on the bytes really read and written while extracting
  (:mod:`rtc_worker.zip_budget`), and extraction stops at the first byte over a cap.

Every problem with the archive raises :class:`ArchiveError`; the worker reports all of them
to the client as ``"File corrupted or invalid format: {path}"``.
"""

from __future__ import annotations

import os
import stat
import struct
import threading
import time
import zipfile
import zlib
from dataclasses import dataclass
from typing import BinaryIO, cast

from loguru import logger

from protocol.names import InvalidNameError, split_path
from rtc_worker.storage import SafeRoot, StorageError, as_disk_full
from rtc_worker.zip_budget import (
    DEFAULT_ZIP_LIMITS,
    ArchiveError,
    ArchiveErrorKind,
    CountingReader,
    ExtractionBudget,
    ZipLimits,
)

try:
    import lzma

    _LZMA_ERRORS: tuple[type[Exception], ...] = (lzma.LZMAError,)
except ImportError:  # Python built without lzma: zipfile then refuses LZMA members itself
    _LZMA_ERRORS = ()

__all__ = [
    "DEFAULT_ZIP_LIMITS",
    "EXTRACT_CHUNK_BYTES",
    "ArchiveError",
    "ArchiveErrorKind",
    "ZipLimits",
    "ZipSummary",
    "build_zip",
    "extract_zip",
    "inspect_zip",
    "looks_like_zip",
]

EXTRACT_CHUNK_BYTES = 1 << 20
"""Bytes decompressed and written per step while extracting a member."""

_SUPPORTED_METHODS = frozenset(
    {zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA}
)
_FLAG_ENCRYPTED = 0x1
_ALLOWED_TYPES = frozenset({0, stat.S_IFREG, stat.S_IFDIR})  # 0: no Unix mode recorded

# What reading a damaged archive can raise from zipfile and the decompressors (bz2 reports
# bad data as OSError; a bad offset can make zipfile seek before the start: OSError EINVAL).
_READ_ERRORS: tuple[type[Exception], ...] = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    EOFError,
    OSError,
    ValueError,
    struct.error,
    NotImplementedError,
    RuntimeError,
    IndexError,
    OverflowError,
    *_LZMA_ERRORS,
)


@dataclass(frozen=True)
class ZipSummary:
    """What the central directory declares (all sizes in bytes).

    Attributes:
        member_count: entries, directories included.
        file_count: entries that are files.
        total_uncompressed: sum of the declared uncompressed sizes.
        total_compressed: sum of the declared compressed sizes.
    """

    member_count: int
    file_count: int
    total_uncompressed: int
    total_compressed: int


@dataclass(frozen=True)
class _Member:
    info: zipfile.ZipInfo
    rel: str  # normalized relative POSIX path ("" for a directory entry naming the root)
    is_dir: bool


def looks_like_zip(name: str, head: bytes) -> bool:
    """True when a file is meant to be a ZIP: its name ends with ``.zip`` (any case) or its
    content starts with a ZIP signature (local file header ``PK\\x03\\x04`` or the
    end-of-central-directory record ``PK\\x05\\x06`` of an empty archive)."""
    return name.lower().endswith(".zip") or head.startswith((b"PK\x03\x04", b"PK\x05\x06"))


def _open_zip(fileobj: BinaryIO) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(fileobj)
    except _READ_ERRORS as exc:
        raise ArchiveError(ArchiveErrorKind.CORRUPTED, f"not a readable ZIP: {exc!r}") from exc


def _member_path(info: zipfile.ZipInfo) -> tuple[str, bool]:
    """Normalized relative path of a member and whether it is a directory entry."""
    raw = info.orig_filename
    if "\x00" in raw or "\x00" in info.filename:
        raise ArchiveError(ArchiveErrorKind.UNSAFE_MEMBER, f"NUL byte in member name {raw!r}")
    if not raw:
        raise ArchiveError(ArchiveErrorKind.UNSAFE_MEMBER, "empty member name")
    try:
        parts = split_path(raw)
    except InvalidNameError as exc:
        raise ArchiveError(
            ArchiveErrorKind.UNSAFE_MEMBER, f"member name {raw!r}: {exc.detail}"
        ) from None
    is_dir = raw.replace("\\", "/").endswith("/")
    if not parts and not is_dir:
        raise ArchiveError(ArchiveErrorKind.UNSAFE_MEMBER, f"member name {raw!r} names no file")
    return "/".join(parts), is_dir


def _check_members(zf: zipfile.ZipFile, limits: ZipLimits) -> tuple[ZipSummary, list[_Member]]:
    """Check every central-directory entry against the safety rules and the limits."""
    try:
        infos = zf.infolist()
    except _READ_ERRORS as exc:
        raise ArchiveError(ArchiveErrorKind.CORRUPTED, f"unreadable directory: {exc!r}") from exc
    if len(infos) > limits.max_members:
        raise ArchiveError(
            ArchiveErrorKind.TOO_LARGE,
            f"{len(infos)} members, more than the limit of {limits.max_members}",
        )
    members: list[_Member] = []
    names: set[str] = set()
    files: set[str] = set()
    dirs: set[str] = set()
    total_uncompressed = 0
    total_compressed = 0
    for info in infos:
        rel, is_dir = _member_path(info)
        if rel in names:
            raise ArchiveError(ArchiveErrorKind.UNSAFE_MEMBER, f"duplicate member {rel!r}")
        if rel:
            names.add(rel)
        file_type = stat.S_IFMT(info.external_attr >> 16)
        if file_type not in _ALLOWED_TYPES:
            what = "symlink" if file_type == stat.S_IFLNK else f"special file {file_type:o}"
            raise ArchiveError(ArchiveErrorKind.UNSAFE_MEMBER, f"member {rel!r} is a {what}")
        if info.flag_bits & _FLAG_ENCRYPTED:
            raise ArchiveError(ArchiveErrorKind.ENCRYPTED, f"member {rel!r} is encrypted")
        if info.compress_type not in _SUPPORTED_METHODS:
            raise ArchiveError(
                ArchiveErrorKind.CORRUPTED,
                f"member {rel!r} uses unsupported compression method {info.compress_type}",
            )
        if info.file_size < 0 or info.compress_size < 0:
            raise ArchiveError(ArchiveErrorKind.CORRUPTED, f"member {rel!r}: negative size")
        if info.file_size > limits.ratio_min_bytes:
            ratio = info.file_size / max(info.compress_size, 1)
            if ratio > limits.max_ratio:
                raise ArchiveError(
                    ArchiveErrorKind.TOO_LARGE,
                    f"member {rel!r} expands {ratio:.0f}x "
                    f"({info.compress_size} -> {info.file_size} bytes), "
                    f"over the limit of {limits.max_ratio:g}x",
                )
        total_uncompressed += info.file_size
        total_compressed += info.compress_size
        if total_uncompressed > limits.max_total_bytes:
            raise ArchiveError(
                ArchiveErrorKind.TOO_LARGE,
                f"declared content exceeds {limits.max_total_bytes} bytes",
            )
        parents = rel.split("/")[:-1]
        dirs.update("/".join(parents[: i + 1]) for i in range(len(parents)))
        if is_dir:
            if rel:
                dirs.add(rel)
        else:
            files.add(rel)
        members.append(_Member(info=info, rel=rel, is_dir=is_dir))
    clash = files & dirs
    if clash:
        raise ArchiveError(
            ArchiveErrorKind.UNSAFE_MEMBER,
            f"{sorted(clash)[0]!r} is both a file and a directory",
        )
    if total_uncompressed > limits.ratio_min_bytes:
        ratio = total_uncompressed / max(total_compressed, 1)
        if ratio > limits.max_ratio:
            raise ArchiveError(
                ArchiveErrorKind.TOO_LARGE,
                f"archive expands {ratio:.0f}x ({total_compressed} -> {total_uncompressed} "
                f"bytes), over the limit of {limits.max_ratio:g}x",
            )
    summary = ZipSummary(
        member_count=len(infos),
        file_count=len(files),
        total_uncompressed=total_uncompressed,
        total_compressed=total_compressed,
    )
    return summary, members


def inspect_zip(fileobj: BinaryIO, limits: ZipLimits = DEFAULT_ZIP_LIMITS) -> ZipSummary:
    """Check a ZIP from its central directory only (no member is decompressed).

    Args:
        fileobj: the archive, opened for binary reading and seekable. It is not closed.
        limits: the ZIP-bomb bounds.

    Returns:
        The declared counts and sizes.

    Raises:
        ArchiveError: ``corrupted`` (not a ZIP, truncated, unsupported compression);
            ``unsafe_member`` (absolute, drive, ``..``, control characters, empty or
            duplicate names, a file that is also a directory, symlink or special-file
            members: zip slip); ``encrypted``; ``too_large`` (member count, declared
            total size or compression ratio over ``limits``: ZIP bomb).
    """
    with _open_zip(fileobj) as zf:
        summary, _members = _check_members(zf, limits)
    return summary


def _copy_member(
    zf: zipfile.ZipFile,
    member: _Member,
    out: BinaryIO,
    budget: ExtractionBudget,
    stop: threading.Event | None = None,
) -> None:
    """Stream one member into ``out``, each chunk accounted in ``budget`` before it is
    written."""
    info = member.info
    written = 0
    try:
        src = zf.open(info)
    except _READ_ERRORS as exc:
        raise ArchiveError(ArchiveErrorKind.CORRUPTED, f"member {member.rel!r}: {exc!r}") from exc
    with src:
        while True:
            try:
                chunk = src.read(EXTRACT_CHUNK_BYTES)
            except _READ_ERRORS as exc:
                raise ArchiveError(
                    ArchiveErrorKind.CORRUPTED, f"member {member.rel!r}: {exc!r}"
                ) from exc
            if not chunk:
                break
            if stop is not None and stop.is_set():
                raise ArchiveError(ArchiveErrorKind.CANCELLED, "extraction stopped")
            budget.spend(len(chunk))
            written += len(chunk)
            out.write(chunk)
    if written != info.file_size:
        raise ArchiveError(
            ArchiveErrorKind.CORRUPTED,
            f"member {member.rel!r}: {written} bytes, {info.file_size} declared",
        )


def _empty_directory(dest: SafeRoot) -> None:
    """Remove everything from ``dest`` (after a failed extraction)."""
    try:
        top = sorted(parts for parts in dest.snapshot(()) if len(parts) == 1)
    except (StorageError, OSError) as exc:
        logger.warning("could not list {}: {!r}", dest.root, exc)
        return
    for parts in top:
        try:
            dest.remove_tree(parts)
        except (StorageError, OSError) as exc:
            logger.warning("could not remove {!r} from {}: {!r}", parts[0], dest.root, exc)


def extract_zip(
    fileobj: BinaryIO,
    dest: SafeRoot,
    limits: ZipLimits = DEFAULT_ZIP_LIMITS,
    stop: threading.Event | None = None,
) -> list[str]:
    """Check (as :func:`inspect_zip`) and extract a ZIP into the empty directory ``dest``.

    Each member is streamed in chunks of :data:`EXTRACT_CHUNK_BYTES` (never whole in
    memory). ``limits`` are enforced on the bytes really produced and on the archive
    bytes really read (:class:`~rtc_worker.zip_budget.ExtractionBudget`), whatever the
    headers declare: at most ``max_total_bytes``, and at most ``max_ratio`` times the
    archive's size, are ever written. Files are created new (``O_EXCL | O_NOFOLLOW``)
    through ``dest`` (by descriptor, never leaving it); parents are created as needed;
    files get mode 0o644 and directories 0o755 (before umask): no permission or
    executable bit comes from the archive.

    Args:
        fileobj: the archive, opened for binary reading and seekable. It is not closed.
        dest: the empty destination directory, opened by the caller.
        limits: the ZIP-bomb bounds.
        stop: when set (from another thread), extraction stops within one chunk with
            ``ArchiveError`` of kind ``cancelled``.

    Returns:
        The extracted files' paths relative to ``dest`` (POSIX form), sorted.

    Raises:
        ArchiveError: as :func:`inspect_zip`, plus ``corrupted`` for bad CRCs, damaged
            compressed data or sizes that do not match, and ``too_large`` when the bytes
            really produced pass a limit (total, ratio or member count).
        DiskFullError: the destination ran out of space.
        StorageError, OSError: the destination itself is unusable (permissions, or
            something swapped into it while extracting).
        ValueError: ``dest`` is not empty.

    On any error, everything extracted so far is removed (``dest`` is left empty).
    """
    if dest.snapshot(()):
        raise ValueError(f"extraction destination is not empty: {dest.root}")
    extracted: list[str] = []
    reader = CountingReader(fileobj)
    budget = ExtractionBudget(limits, reader)
    with _open_zip(cast(BinaryIO, reader)) as zf:
        _summary, members = _check_members(zf, limits)
        try:
            for member in members:
                budget.start_member(member.rel)
                parts = tuple(member.rel.split("/")) if member.rel else ()
                if member.is_dir:
                    dest.makedirs(parts)
                    continue
                try:
                    with dest.create_file(parts) as out:
                        _copy_member(zf, member, out, budget, stop)
                except OSError as exc:
                    full = as_disk_full(exc, member.rel)
                    if full is exc:
                        raise
                    raise full from exc
                extracted.append(member.rel)
        except BaseException:
            _empty_directory(dest)
            raise
    logger.debug(
        "extracted {files} files ({size} bytes) into {dest}",
        files=len(extracted),
        size=budget.written,
        dest=dest.root,
    )
    return sorted(extracted)


def _zip_time(mtime: float) -> tuple[int, int, int, int, int, int]:
    """A file's mtime as a ZIP timestamp (local time, clamped to 1980..2107)."""
    stamp = time.localtime(mtime)[:6]
    if stamp[0] < 1980:
        return (1980, 1, 1, 0, 0, 0)
    if stamp[0] > 2107:
        return (2107, 12, 31, 23, 59, 58)
    return (stamp[0], stamp[1], stamp[2], stamp[3], stamp[4], stamp[5])


def build_zip(root: SafeRoot, source: tuple[str, ...], target: tuple[str, ...]) -> int:
    """Pack the regular files under the directory ``source`` into one ZIP at ``target``
    (both under ``root``). Blocking: run it in a thread.

    The folder is walked by directory descriptors (:meth:`SafeRoot.open_files`): each
    file is opened relative to its directory without following a symlink and checked
    on its descriptor, so a symlink, a special file or a hard link to a file elsewhere
    (unless ``root`` allows hard links) is never packed, even when swapped in while
    packing. Names are relative to the folder, sorted; DEFLATE. The ZIP is written with
    the atomic writer: a reader never sees half a ZIP.

    Returns:
        How many files were packed.

    Raises:
        StorageError: ``source`` is missing, outside the root, or unreadable.
        DiskFullError, OSError: writing failed (the temporary file is removed).
    """
    os.close(root.open_dir(source))  # missing or refused: nothing is created
    count = 0
    with (
        root.atomic_file(target) as out,
        zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as archive,
    ):
        for parts, fd, st in root.open_files(source):
            info = zipfile.ZipInfo("/".join(parts), date_time=_zip_time(st.st_mtime))
            info.external_attr = (st.st_mode & 0xFFFF) << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            info.file_size = st.st_size
            with archive.open(info, "w") as dst:
                offset = 0
                while chunk := os.pread(fd, EXTRACT_CHUNK_BYTES, offset):
                    dst.write(chunk)
                    offset += len(chunk)
            count += 1
    return count
