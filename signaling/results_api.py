"""The fallback result store: HTTP routes on the signaling server, backed by SQLite.

A worker whose client has gone uploads its results here *for their owner* (the
client's principal); the owner downloads them later with the download token it got
(or with its own key). Enabled when the server gets a storage path (see
:class:`~signaling.config.SignalingSettings`); the routes are then:

=================================  ====================================================
``POST /upload``                   worker or admin key. Multipart form (``job_id``,
                                   ``file``) or a raw body with ``X-Job-Id``; headers
                                   ``X-Owner`` (the owner principal; an admin's default
                                   is itself), ``X-Replace: true`` (replace the owner's
                                   live result of that job), ``X-Content-SHA256``
                                   (checked). 201 ``{"job_id", "owner", "download_url",
                                   "size", "sha256", "download_token", "expires_at"}``;
                                   200 with the same fields when that content was
                                   stored already; 409 JOB_EXISTS
``GET /download/{job_id}``         token or the owner's client key or admin: the bytes
                                   (200); HEAD: the headers only; ``?keep=true`` keeps
                                   the record when ``AUTO_DELETE`` is on (only the
                                   owner's download of the whole content in one answer
                                   deletes); ``Range``/``If-Range`` (one range: 206,
                                   416 when unsatisfiable; ``ETag`` is the sha256);
                                   404 unknown, 410 deleted
``DELETE /delete/{job_id}``        token, the owner's client key or admin: 200
                                   ``{"job_id", "deleted": true}``; 404 / 410
``GET /list``                      200 ``{"files": [record, ...]}``: the caller's own
                                   records (an admin: everyone's, or ``?owner=``)
=================================  ====================================================

Who may do what, and how keys and tokens are checked: :mod:`signaling.auth`. Job ids
are :func:`protocol.messages.is_valid_job_id` on every route (``.`` and ``..`` are
refused: they do not survive URL normalisation). Every answer of these routes is JSON,
errors ``{"error": {"code", "message", "timestamp"}}`` (:mod:`signaling.api_common`),
a full disk included (507 DISK_FULL); reads and deletes keep working on a full disk.

An upload streams into an anonymous partial of the blob backend (never whole in
memory: a partial file, or S3 parts of at least 5 MiB) while its size, SHA-256 and MIME
type are computed, then is committed into the blob store (folder: fsync, atomic link;
S3: the completed object copied to ``blobs/<sha256>``); see
:mod:`signaling.results_store` for the layout.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
from aiohttp import BodyPartReader, MultipartReader, web
from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger

from protocol.messages import is_valid_job_id
from rtc_worker.storage import SHA256_HEX
from signaling.api_common import (
    ApiError,
    ApiErrorCode,
    error_response,
    json_errors,
    now_timestamp,
)
from signaling.auth import ADMIN_PRINCIPAL, Caller, Role
from signaling.blobs import BlobUpload
from signaling.config import SignalingSettings
from signaling.keys import is_valid_owner
from signaling.results_store import STORE_KEY, ResultsService

__all__ = [
    "CHUNK_BYTES",
    "STORE_KEY",
    "ApiError",
    "ApiErrorCode",
    "ResultsService",
    "check_job_id",
    "error_response",
    "now_timestamp",
    "setup_storage",
    "truthy",
]

CHUNK_BYTES = 1 << 20
"""Bytes written to or read from disk per call off the event loop (1 MiB)."""

MAX_FIELD_BYTES = 1024
"""Largest accepted text field of a multipart upload (``job_id``), in bytes."""

MULTIPART_OVERHEAD_BYTES = 1 << 20
"""Slack allowed over ``storage_max_file_size`` for a multipart body's framing, in bytes;
the file part itself is held to the exact limit while it streams."""

_TRUE_WORDS = frozenset({"1", "true", "yes", "on"})


def truthy(value: str | None) -> bool:
    """Whether a header or query value says yes: ``1``, ``true``, ``yes`` or ``on``
    (any case, surrounding spaces ignored); anything else, or nothing, is no."""
    return value is not None and value.strip().lower() in _TRUE_WORDS


def setup_storage(app: web.Application, settings: SignalingSettings) -> bool:
    """Open the result store and add its routes and middleware to ``app`` when storage
    is enabled.

    The store opens (folders, database migration) on the app's startup.

    Returns:
        Whether storage is enabled (and the routes were added).

    Raises:
        OSError: the storage folder cannot be prepared.
        ValueError: the database URL is malformed.
    """
    from signaling.results_routes import add_read_routes

    if not settings.storage_enabled:
        return False
    store = ResultsService(settings)
    app[STORE_KEY] = store
    app.middlewares.append(json_errors)
    app.router.add_post("/upload", _upload)
    add_read_routes(app)

    async def open_store(app: web.Application) -> None:
        await store.open()
        logger.info("result store at {} (database {!r})", store.root, store.db)

    async def close_store(app: web.Application) -> None:
        await store.close()

    app.on_startup.append(open_store)
    app.on_cleanup.append(close_store)
    return True


def check_job_id(job_id: str | None) -> str:
    """``job_id`` when it is a valid job id.

    Raises:
        ApiError: MISSING_FIELD when absent or empty, INVALID_FIELD when malformed
            (dot-only ids such as ``.`` and ``..`` included).
    """
    if job_id is None or job_id == "":
        raise ApiError(ApiErrorCode.MISSING_FIELD, "job_id is required")
    if not is_valid_job_id(job_id):
        raise ApiError(
            ApiErrorCode.INVALID_FIELD, "job_id must match [A-Za-z0-9._-]{1,64}, not only dots"
        )
    return job_id


def _owner_of(request: web.Request, caller: Caller) -> str:
    owner = request.headers.get("X-Owner")
    if owner is None or owner == "":
        if caller.role is Role.ADMIN:
            return ADMIN_PRINCIPAL
        raise ApiError(ApiErrorCode.MISSING_FIELD, "X-Owner (the result's owner) is required")
    if not is_valid_owner(owner):
        raise ApiError(
            ApiErrorCode.INVALID_FIELD, "X-Owner must be a fingerprint, anon- principal or peer id"
        )
    return owner


def _declared_sha256(request: web.Request) -> str | None:
    value = request.headers.get("X-Content-SHA256")
    if value is None or value == "":
        return None
    value = value.strip().lower()
    if not SHA256_HEX.fullmatch(value):
        raise ApiError(ApiErrorCode.INVALID_FIELD, "X-Content-SHA256 must be 64 hex digits")
    return value


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK_BYTES):
        yield chunk


async def _read_field(part: BodyPartReader) -> str:
    data = bytearray()
    while chunk := await part.read_chunk(MAX_FIELD_BYTES):
        data += chunk
        if len(data) > MAX_FIELD_BYTES:
            raise ApiError(ApiErrorCode.INVALID_FIELD, f"field {part.name!r} is too long")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(ApiErrorCode.INVALID_FIELD, f"field {part.name!r} is not UTF-8") from None


async def _next_part(reader: MultipartReader) -> Any:
    """The next part, or a 400 for a malformed body (missing or truncated boundaries,
    control characters in part headers) instead of a server error."""
    try:
        return await reader.next()
    except (ValueError, HttpProcessingError) as exc:
        raise ApiError(ApiErrorCode.INVALID_FIELD, f"malformed multipart body: {exc}") from None


async def _receive_multipart(
    request: web.Request, store: ResultsService, precheck: Callable[[str], Awaitable[None]]
) -> tuple[str, BlobUpload]:
    """Read a multipart upload: the ``job_id`` field and the ``file`` part, any order.
    ``precheck`` runs on the job id as soon as it is known, before the file if it
    comes first."""
    try:
        reader = await request.multipart()
    except (ValueError, aiohttp.ClientError, HttpProcessingError) as exc:  # no boundary...
        raise ApiError(ApiErrorCode.INVALID_FIELD, f"malformed multipart body: {exc}") from None
    job_id: str | None = None
    staged: BlobUpload | None = None
    try:
        while (part := await _next_part(reader)) is not None:
            if not isinstance(part, BodyPartReader):
                raise ApiError(ApiErrorCode.INVALID_FIELD, "nested multipart is not accepted")
            if part.name == "job_id":
                job_id = check_job_id(await _read_field(part))
                await precheck(job_id)
            elif part.name == "file":
                if staged is not None:
                    raise ApiError(ApiErrorCode.INVALID_FIELD, "more than one file part")
                staged = await store.receive(_part_chunks(part))
            else:
                await part.release()
        if staged is None:
            raise ApiError(ApiErrorCode.MISSING_FIELD, "the file part is required")
        return check_job_id(job_id), staged
    except BaseException:
        if staged is not None:
            await staged.discard()
        raise


def _too_large(store: ResultsService) -> ApiError:
    return ApiError(
        ApiErrorCode.FILE_TOO_LARGE, f"the file is larger than {store.max_file_size} bytes"
    )


async def _upload(request: web.Request) -> web.Response:
    """``POST /upload``: see the module docstring."""
    store = request.app[STORE_KEY]
    caller = await store.auth.require(request, Role.WORKER, Role.ADMIN)
    owner = _owner_of(request, caller)
    replace = truthy(request.headers.get("X-Replace"))
    declared = _declared_sha256(request)

    async def precheck(job_id: str) -> None:
        """Refuse early (before the body) what the commit would refuse."""
        if replace:
            return
        existing = await store.existing_live(owner, job_id)
        if existing is not None and existing.sha256 != declared:
            raise ApiError(
                ApiErrorCode.JOB_EXISTS,
                f"a result for job {job_id!r} is stored already; send X-Replace: true to "
                "replace it",
            )

    length = request.content_length
    limit = store.max_file_size
    if request.content_type.startswith("multipart/"):
        limit += MULTIPART_OVERHEAD_BYTES
    if length is not None and length > limit:
        raise _too_large(store)
    if length is not None:
        await asyncio.to_thread(store.require_room, length)
    if request.content_type.startswith("multipart/"):
        job_id, staged = await _receive_multipart(request, store, precheck)
    else:
        job_id = check_job_id(request.headers.get("X-Job-Id"))
        if not request.body_exists:
            raise ApiError(ApiErrorCode.MISSING_FIELD, "the request body (the file) is empty")
        await precheck(job_id)
        staged = await store.receive(request.content.iter_chunked(CHUNK_BYTES))
    try:
        stored = await store.commit(owner, job_id, staged, replace=replace, sha256=declared)
    finally:
        await staged.discard()  # no-op once committed
    record = stored.record
    logger.info(
        "stored job {!r} of {}: {} bytes, sha256 {}",
        job_id,
        owner,
        record.file_size,
        record.sha256,
    )
    return web.json_response(stored.as_dict(), status=201 if stored.created else 200)
