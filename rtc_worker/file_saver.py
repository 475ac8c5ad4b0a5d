"""The file-saver handler: store a base64-encoded file in shared storage.

Follows the serverless handler convention: :func:`handler` takes an event dict whose
``"input"`` holds the request and returns a JSON-ready result dict; it never raises.

The destination is checked with the same :class:`~rtc_worker.storage.FilesystemAdapter`
that guards every other shared-storage path, the name with
:func:`protocol.transfer.check_name`, and the metadata comes from the same
:class:`~rtc_worker.storage.MetadataBuilder` the channel receiver and the storage service
use, so a file saved here is described exactly like one received any other way.

The base64 text is decoded in slices (:data:`DECODE_SLICE_CHARS` characters at a time),
so memory stays bounded by a few MiB whatever the file size; only the input string itself
is held whole (the convention delivers it that way).
"""

from __future__ import annotations

import base64
import errno
import gzip
import os
import re
import secrets
import stat
from collections.abc import Iterator, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from loguru import logger

from protocol.transfer import check_name
from rtc_worker.settings import WorkerSettings
from rtc_worker.storage import (
    DiskFullError,
    FileMetadata,
    FilesystemAdapter,
    MetadataBuilder,
    PathErrorKind,
    StoragePathError,
    fsync_directory,
)

__all__ = ["DECODE_SLICE_CHARS", "GZIP_LEVEL", "handler"]

DECODE_SLICE_CHARS = 1 << 20
"""Base64 characters decoded at a time (a multiple of 4): 1 MiB of text gives 768 KiB of
bytes, so decoding and writing hold only a few MiB at once."""

GZIP_LEVEL = 6
"""gzip compression level used when ``compress`` is set (zlib's default: a good ratio
without level 9's cost on large files)."""

_WHITESPACE = re.compile(r"[ \t\r\n\f\v]+")
_TMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_PROC_FD_DIR = "/proc/self/fd"


class _RefusedError(Exception):
    """A request refused with a client-facing message (``str(error)``)."""


@dataclass(frozen=True, slots=True)
class _Request:
    folder: str
    filename: str
    data: str
    compress: bool
    overwrite: bool

    @property
    def stored_name(self) -> str:
        return f"{self.filename}.gz" if self.compress else self.filename


def handler(event: Mapping[str, Any], *, root: Path | None = None) -> dict[str, Any]:
    """Decode ``event["input"]["file_data"]`` and save it atomically in shared storage.

    Args:
        event: ``{"input": {...}}`` with

            - ``destination_folder`` (str, required): folder relative to the shared root,
              created when missing; ``""`` or ``"."`` is the root itself.
            - ``filename`` (str, required): a base name (no directory part, not ``..``).
            - ``file_data`` (str, required): the content in standard base64 (padding
              required; ASCII whitespace and newlines are ignored).
            - ``compress`` (bool, optional, default False): store gzip-compressed under
              ``filename + ".gz"``.
            - ``overwrite`` (bool, optional, default False; also accepted at the top level
              of ``event``): replace an existing file instead of refusing.
        root: the shared-storage root; when None it is detected like the worker's
            (``SHARED_STORAGE_ROOT``, else the first existing ``RTC_SHARED_ROOT_CANDIDATES``).

    Returns:
        ``{"success": bool, "file_path": str | None, "metadata": dict | None,
        "error": str | None}``. On success ``file_path`` is the saved file's path relative
        to the shared root (POSIX separators, ``.gz`` appended when compressed) and
        ``metadata`` is ``{"size": int, "sha256": str, "mime_type": str,
        "created_at": str, "compressed": bool}``: ``size`` is the decoded content's length
        in bytes (before compression), ``sha256`` its lowercase hex digest, ``mime_type``
        detected by libmagic from the content (not the name), ``created_at`` ISO 8601 UTC
        (e.g. ``"2026-11-21T01:02:03Z"``). On failure ``success`` is False, ``file_path``
        and ``metadata`` are None and ``error`` says why.

    Errors (never raised, returned in ``error``): no shared root; a missing or mistyped
    field; a bad filename; a destination outside the root (``"Path outside shared
    storage: ..."``, also through symlinks); invalid base64; an existing file without
    ``overwrite``; permission, disk-full and other I/O failures. Every check that needs no
    writing, including a full base64 validation pass, runs before anything is created, so
    a refused request writes nothing; the content goes to a temporary file in the
    destination folder that is fsynced and renamed into place, and removed on any failure.
    """
    try:
        return _save(event, root)
    except _RefusedError as exc:
        logger.warning("file-saver refused the request: {error}", error=exc)
        return _failure(str(exc))
    except StoragePathError as exc:
        logger.warning("file-saver path refused: {error!r}", error=exc)
        return _failure(exc.reason)
    except DiskFullError as exc:
        logger.error("file-saver: storage full: {error}", error=exc)
        return _failure(f"No space left on shared storage: {exc.strerror}")
    except OSError as exc:
        logger.opt(exception=exc).error("file-saver I/O error")
        return _failure(f"Could not save the file: {exc.strerror or type(exc).__name__}")
    except Exception as exc:
        logger.opt(exception=exc).error("file-saver failed unexpectedly")
        return _failure(f"Internal error while saving the file ({type(exc).__name__})")


def _failure(error: str) -> dict[str, Any]:
    return {"success": False, "file_path": None, "metadata": None, "error": error}


def _save(event: Mapping[str, Any], root: Path | None) -> dict[str, Any]:
    request = _parse(event)
    adapter = _adapter(root)
    rel_file = _join(request.folder, request.stored_name)
    adapter.validate(request.folder)
    target = adapter.validate(rel_file)
    if not request.overwrite and adapter.exists(rel_file):
        raise _RefusedError(f"File already exists: {rel_file} (set overwrite to replace it)")
    if target.is_dir():
        raise _RefusedError(f"A directory exists where the file would go: {rel_file}")
    for _ in _iter_decoded(request.data):  # validate all the base64 before writing anything
        pass
    path, meta = _write(adapter, request, rel_file)
    file_path = adapter.to_relative(path)
    logger.info(
        "file-saver stored {path!r}: {size} bytes, {mime}, compressed={compressed}",
        path=file_path,
        size=meta.size,
        mime=meta.mime_type,
        compressed=request.compress,
    )
    return {
        "success": True,
        "file_path": file_path,
        "metadata": {
            "size": meta.size,
            "sha256": meta.sha256,
            "mime_type": meta.mime_type,
            "created_at": meta.created_at,
            "compressed": request.compress,
        },
        "error": None,
    }


def _parse(event: Mapping[str, Any]) -> _Request:
    """Check the event's fields (types, filename) without touching the filesystem."""
    if not isinstance(event, Mapping):
        raise _RefusedError("event must be an object")
    body = event.get("input")
    if not isinstance(body, Mapping):
        raise _RefusedError("event has no 'input' object")
    missing = [key for key in ("destination_folder", "filename", "file_data") if key not in body]
    if missing:
        raise _RefusedError(f"missing field(s) in input: {', '.join(missing)}")
    for key in ("destination_folder", "filename", "file_data"):
        if not isinstance(body[key], str):
            raise _RefusedError(f"input field '{key}' must be a string")
    compress = _flag(body, "compress")
    overwrite = _flag(body, "overwrite") or _flag(event, "overwrite")
    filename: str = body["filename"]
    reason = check_name(filename)
    if reason is None and compress:
        reason = check_name(f"{filename}.gz")
    if reason is not None:
        raise _RefusedError(f"Invalid filename {filename!r}: {reason}")
    return _Request(
        folder=body["destination_folder"],
        filename=filename,
        data=body["file_data"],
        compress=compress,
        overwrite=overwrite,
    )


def _flag(fields: Mapping[str, Any], key: str) -> bool:
    value = fields.get(key)
    if value is None:
        return False
    if not isinstance(value, bool):
        raise _RefusedError(f"field '{key}' must be true or false")
    return value


def _adapter(root: Path | None) -> FilesystemAdapter:
    if root is None:
        try:
            root = WorkerSettings().detect_shared_root()
        except ValueError as exc:  # includes pydantic's ValidationError
            raise _RefusedError(f"Shared storage is misconfigured: {exc}") from None
        if root is None:
            raise _RefusedError(
                "No shared storage root: set SHARED_STORAGE_ROOT or mount one of "
                "RTC_SHARED_ROOT_CANDIDATES"
            )
    try:
        return FilesystemAdapter(root)
    except ValueError:
        raise _RefusedError("Shared storage root is not an existing directory") from None


def _join(folder: str, name: str) -> str:
    folder = folder.replace("\\", "/").rstrip("/")
    return f"{folder}/{name}" if folder not in ("", ".") else name


def _iter_decoded(text: str) -> Iterator[bytes]:
    """Yield the bytes encoded by ``text``, one block per :data:`DECODE_SLICE_CHARS` slice.

    ASCII whitespace is skipped; each slice's characters are checked against the base64
    alphabet (``validate=True``), ``=`` padding may only end the data, and the total
    length without whitespace must be a multiple of 4.

    Raises:
        _RefusedError: the text is not valid base64 (nothing is yielded past the fault).
    """
    carry = ""
    padded = False
    for start in range(0, len(text), DECODE_SLICE_CHARS):
        piece = _WHITESPACE.sub("", text[start : start + DECODE_SLICE_CHARS])
        if carry:
            piece = carry + piece
        usable = len(piece) - len(piece) % 4
        block, carry = piece[:usable], piece[usable:]
        if not block:
            continue
        if padded:
            raise _RefusedError(
                f"file_data is not valid base64: data after '=' padding near character {start}"
            )
        pad_at = block.find("=")
        if pad_at != -1:
            if pad_at < len(block) - 2 or block[pad_at:].strip("="):
                raise _RefusedError(
                    "file_data is not valid base64: '=' padding in the middle "
                    f"near character {start + pad_at}"
                )
            padded = True
        try:
            decoded = base64.b64decode(block, validate=True)
        except ValueError as exc:  # binascii.Error, or non-ASCII characters
            raise _RefusedError(
                f"file_data is not valid base64 (near character {start}): {exc}"
            ) from None
        yield decoded
    if carry:
        raise _RefusedError(
            "file_data is not valid base64: its length without whitespace is not a multiple of 4"
        )


def _write(
    adapter: FilesystemAdapter, request: _Request, rel_file: str
) -> tuple[Path, FileMetadata]:
    """Create the folder, stream the decoded content into a temporary file, rename it.

    Returns the resolved path of the saved file and the content's metadata. On failure
    the temporary file and any folders created here are removed again.
    """
    folder_path = adapter.validate(request.folder)
    created = _missing_dirs(folder_path, adapter.root)
    try:
        folder_path = adapter.makedirs(request.folder)
        dir_fd = _open_dir(folder_path, request.folder)
        try:
            meta = _write_in(dir_fd, request, rel_file)
        finally:
            os.close(dir_fd)
        fsync_directory(folder_path)
    except BaseException:
        for path in created:  # deepest first; only empty folders go
            with suppress(OSError):
                os.rmdir(path)
        raise
    return folder_path / request.stored_name, meta


def _missing_dirs(folder: Path, root: Path) -> list[Path]:
    """The folders between ``root`` and ``folder`` that do not exist yet, deepest first."""
    missing: list[Path] = []
    current = folder
    while current != root and not os.path.lexists(current):
        missing.append(current)
        current = current.parent
    return missing


def _open_dir(path: Path, rel: str) -> int:
    """Open the directory ``path`` (returned by makedirs) and check the opened one is it.

    Everything afterwards is done relative to this descriptor, so a folder swapped for a
    symlink after validation cannot redirect the write outside the root.
    """
    fd = os.open(path, _DIR_FLAGS)
    try:
        try:
            real: str | None = os.readlink(f"{_PROC_FD_DIR}/{fd}")
        except OSError:
            real = None
        if real is not None:
            same = real == str(path)
        else:
            opened, entry = os.fstat(fd), os.stat(path, follow_symlinks=False)
            same = (opened.st_dev, opened.st_ino) == (entry.st_dev, entry.st_ino)
        if not same:
            raise StoragePathError(
                PathErrorKind.OUTSIDE_ROOT, rel, f"{path} changed while it was opened"
            )
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_in(dir_fd: int, request: _Request, rel_file: str) -> FileMetadata:
    """Write the content to a temporary file in ``dir_fd`` and move it to its name."""
    name = request.stored_name
    tmp_name = f".rtcw-{secrets.token_hex(8)}.tmp"
    fd = os.open(tmp_name, _TMP_FLAGS, 0o644, dir_fd=dir_fd)
    builder = MetadataBuilder()
    try:
        with os.fdopen(fd, "wb") as raw:
            if request.compress:
                with gzip.GzipFile(
                    filename=name, mode="wb", fileobj=raw, compresslevel=GZIP_LEVEL
                ) as packed:
                    _copy(request.data, builder, packed)
            else:
                _copy(request.data, builder, raw)
            raw.flush()
            os.fsync(raw.fileno())
        _commit(dir_fd, tmp_name, name, rel_file, overwrite=request.overwrite)
    except BaseException as exc:
        with suppress(OSError):
            os.unlink(tmp_name, dir_fd=dir_fd)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFullError(exc.errno, os.strerror(exc.errno), rel_file) from exc
        raise
    return builder.finish()


def _copy(data: str, builder: MetadataBuilder, sink: BinaryIO | gzip.GzipFile) -> None:
    for block in _iter_decoded(data):
        builder.update(block)
        sink.write(block)


def _commit(dir_fd: int, tmp_name: str, name: str, rel_file: str, *, overwrite: bool) -> None:
    """Move ``tmp_name`` to ``name`` atomically; without ``overwrite``, never replace.

    The no-replace move is a hard link (fails if ``name`` exists) then an unlink of the
    temporary name; filesystems without hard links fall back to check-then-rename.
    """
    try:
        existing = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        existing = None
    if existing is not None:
        if stat.S_ISDIR(existing.st_mode):
            raise _RefusedError(f"A directory exists where the file would go: {rel_file}")
        if not overwrite:
            raise _RefusedError(f"File already exists: {rel_file} (set overwrite to replace it)")
    if overwrite:
        os.replace(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    try:
        os.link(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:
        raise _RefusedError(
            f"File already exists: {rel_file} (set overwrite to replace it)"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EMLINK):
            raise
        os.replace(tmp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        return
    try:
        os.unlink(tmp_name, dir_fd=dir_fd)
    except OSError as exc:  # the file is saved; only a stray link to it remains
        logger.warning("file-saver could not remove {tmp!r}: {error}", tmp=tmp_name, error=exc)
