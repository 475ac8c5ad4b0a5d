"""The file-saver handler: store a base64-encoded file in shared storage.

Follows the serverless handler convention: :func:`handler` takes an event dict whose
``"input"`` holds the request and returns a JSON-ready result dict; it never raises.

The destination is checked like every other client path (``protocol.names.split_path``,
then :class:`~rtc_worker.storage.SafeRoot`), the name with
:func:`protocol.names.check_name`, the file is written with the file layer's atomic
writer (a link that never replaces an existing file unless ``overwrite``), and the
metadata comes from the same :class:`~rtc_worker.storage.ContentHasher` the channel
receiver and the storage service use, so a file saved here is described exactly like
one received any other way.

The base64 text is decoded by the standard library in slices
(:data:`DECODE_SLICE_CHARS` characters at a time), so memory stays bounded by a few MiB
whatever the file size; only the input string itself is held whole (the convention
delivers it that way).
"""

from __future__ import annotations

import base64
import binascii
import gzip
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from loguru import logger

from protocol.names import InvalidNameError, check_name
from rtc_worker.paths import path_reason, user_parts
from rtc_worker.settings import WorkerSettings
from rtc_worker.storage import ContentHasher, DiskFullError, FileMetadata, SafeRoot, StorageError

__all__ = ["DECODE_SLICE_CHARS", "GZIP_LEVEL", "handler"]

DECODE_SLICE_CHARS = 1 << 20
"""Base64 characters decoded at a time (a multiple of 4): 1 MiB of text gives 768 KiB of
bytes, so decoding and writing hold only a few MiB at once."""

GZIP_LEVEL = 6
"""gzip compression level used when ``compress`` is set (zlib's default: a good ratio
without level 9's cost on large files)."""

_WHITESPACE = re.compile(r"[ \t\r\n\f\v]+")


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
    except _PathRefusedError as exc:
        logger.warning("file-saver path refused: {error!r}", error=exc.error)
        return _failure(str(exc))
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


class _PathRefusedError(Exception):
    """A path refused by the file layer; ``str()`` is the client-facing reason."""

    def __init__(self, error: StorageError, shown: str) -> None:
        super().__init__(path_reason(error, shown))
        self.error = error


def _save(event: Mapping[str, Any], root_path: Path | None) -> dict[str, Any]:
    request = _parse(event)
    rel_file = _join(request.folder, request.stored_name)
    with _root(root_path) as root:
        try:
            folder = user_parts(request.folder)
            root.resolve(folder)
        except StorageError as exc:
            raise _PathRefusedError(exc, request.folder) from None
        target = (*folder, request.stored_name)
        if not request.overwrite and root.exists(target):
            raise _RefusedError(f"File already exists: {rel_file} (set overwrite to replace it)")
        for _ in _iter_decoded(request.data):  # validate all the base64 before writing
            pass
        try:
            meta = _write(root, request, folder, rel_file)
            file_path = "/".join((*root.resolve(folder), request.stored_name))
        except StorageError as exc:
            shown = rel_file if exc.parts == target else request.folder
            raise _PathRefusedError(exc, shown) from None
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
    try:
        check_name(filename)
        if compress:
            check_name(f"{filename}.gz")
    except InvalidNameError as exc:
        raise _RefusedError(f"Invalid filename {filename!r}: {exc.detail}") from None
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


def _root(root: Path | None) -> SafeRoot:
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
        return SafeRoot(root)
    except ValueError:
        raise _RefusedError("Shared storage root is not an existing directory") from None


def _join(folder: str, name: str) -> str:
    folder = folder.replace("\\", "/").rstrip("/")
    return f"{folder}/{name}" if folder not in ("", ".") else name


def _iter_decoded(text: str) -> Iterator[bytes]:
    """Yield the bytes encoded by ``text``, one block per :data:`DECODE_SLICE_CHARS` slice.

    ASCII whitespace is skipped; the rest is decoded by ``base64.b64decode`` with
    ``validate=True`` in 4-character-aligned blocks (alphabet checked, ``=`` padding
    only at a block's end), padding may only end the data, and the total length
    without whitespace must be a multiple of 4.

    Raises:
        _RefusedError: the text is not valid base64 (nothing is yielded past the fault).
    """
    carry = ""
    padded = False
    for start in range(0, len(text), DECODE_SLICE_CHARS):
        piece = carry + _WHITESPACE.sub("", text[start : start + DECODE_SLICE_CHARS])
        usable = len(piece) - len(piece) % 4
        block, carry = piece[:usable], piece[usable:]
        if not block:
            continue
        if padded:
            raise _RefusedError(
                f"file_data is not valid base64: data after '=' padding near character {start}"
            )
        try:
            decoded = base64.b64decode(block, validate=True)
        except (binascii.Error, ValueError) as exc:  # ValueError: non-ASCII characters
            raise _RefusedError(
                f"file_data is not valid base64 (near character {start}): {exc}"
            ) from None
        padded = block.endswith("=")
        yield decoded
    if carry:
        raise _RefusedError(
            "file_data is not valid base64: its length without whitespace is not a multiple of 4"
        )


def _write(
    root: SafeRoot, request: _Request, folder: tuple[str, ...], rel_file: str
) -> FileMetadata:
    """Create the folder and stream the decoded content into the file atomically (never
    replacing an existing one without ``overwrite``).

    Returns the content's metadata. On failure the temporary file and any folders
    created here are removed again.
    """
    created = root.makedirs(folder)
    hasher = ContentHasher()
    try:
        with root.atomic_file((*folder, request.stored_name), replace=request.overwrite) as out:
            if request.compress:
                with gzip.GzipFile(
                    filename=request.stored_name,
                    mode="wb",
                    fileobj=out,
                    compresslevel=GZIP_LEVEL,
                ) as packed:
                    _copy(request.data, hasher, packed)
            else:
                _copy(request.data, hasher, out)
    except IsADirectoryError:
        _remove_dirs(root, created)
        raise _RefusedError(f"A directory exists where the file would go: {rel_file}") from None
    except FileExistsError:
        _remove_dirs(root, created)
        raise _RefusedError(
            f"File already exists: {rel_file} (set overwrite to replace it)"
        ) from None
    except BaseException:
        _remove_dirs(root, created)
        raise
    return hasher.finish()


def _remove_dirs(root: SafeRoot, created: tuple[tuple[str, ...], ...]) -> None:
    """Remove the folders created for this request, deepest first (only empty ones)."""
    for parts in reversed(created):
        root.remove_empty_dir(parts)


def _copy(data: str, hasher: ContentHasher, sink: BinaryIO | gzip.GzipFile) -> None:
    for block in _iter_decoded(data):
        hasher.update(block)
        sink.write(block)
