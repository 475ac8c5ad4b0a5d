"""Resumable chunked uploads on the result store, and the store's periodic cleanup.

Enabled with the result store (see :mod:`signaling.results_api`), with the same keys
(any role: :mod:`signaling.auth`) and the same JSON errors ``{"error": {"code",
"message", "timestamp"}}``. An upload belongs to the principal of the key that created
it; every other key but an admin's is told UPLOAD_NOT_FOUND.

===================================  ===================================================
``POST /api/upload/init``            JSON ``{file_name, total_size, user_id, user_role,
                                     content_type}`` -> 201 ``{upload_id, chunk_size,
                                     total_chunks, status: "initiated"}``
``PUT /api/upload/chunk``            headers ``X-Upload-Id``, ``X-Chunk-Index``
                                     (0-based), body = the chunk -> ``{upload_id,
                                     chunk_index, status: "uploaded"}``
``POST /api/upload/complete``        JSON ``{upload_id[, sha256]}`` -> ``{upload_id, key,
                                     sha256, size, mime_type, status: "completed"}``
``GET /api/upload/{id}/status``      the upload's fields, ``status``,
                                     ``chunks_uploaded``, ``missing_chunks``, ``owner``,
                                     ``expires_at``
``POST /api/upload/cancel``          JSON ``{upload_id}`` -> ``{upload_id, status:
                                     "cancelled"}``
===================================  ===================================================

Every chunk but the last is exactly ``chunk_size`` bytes; the last one holds the rest.
A chunk of another size is refused (INVALID_FIELD). Each upload is ONE partial upload
of the blob backend (:class:`~signaling.blobs.BlobUpload`, key = ``upload_id``: a
partial file with its sidecar, or an S3 multipart upload with its pieces): chunk *i*
is written at offset *i* x ``chunk_size`` and, once durable, recorded as present, so
sending a chunk again replaces it and a restarted server (or another instance) still
knows which chunks it holds. Completing checks that every chunk is there
(INVALID_FIELD lists the missing indexes), verifies the content and commits it into the
content-addressed blob store shared with ``/upload`` (identical content is stored
once). The upload gets the key
``{user_role}/{user_id}/{YYYYMMDD}/{category}/{file_name}`` (UTC date of completion;
category from the MIME type detected in the content, else from ``content_type``); a key
already held by another upload gets a ``-N`` suffix before the extension.

A ``sha256`` given to complete is checked: another digest answers SHA256_MISMATCH
(400), nothing is published and the chunks are dropped.

Limits (:mod:`signaling.config`): a principal's *open* uploads (unfinished, changed
within ``upload_ttl_s``) number at most ``upload_quota_count`` and announce at most
``upload_quota_bytes`` in all (413 QUOTA_EXCEEDED at init); with the folder backend an
upload must leave ``disk_reserve_bytes`` free on the storage disk, counting what open
uploads still announce (507 DISK_FULL at init, and before every piece of a chunk is
written).

Errors: MISSING_FIELD / INVALID_FIELD / SHA256_MISMATCH (400), FILE_TOO_LARGE and
QUOTA_EXCEEDED (413), UPLOAD_NOT_FOUND (404: unknown, cancelled, expired (unchanged
for ``upload_ttl_s``: cancelled as it is read) or another principal's upload),
UPLOAD_COMPLETED (409: chunk, complete or cancel on a completed upload),
DISK_FULL (507).

State: the records live in SQLite (table ``uploads``), the bytes and the record of the
chunks held in the backend's partial (``partial/<upload_id>.part`` / ``.json``, or
``partial/<upload_id>/`` in the bucket); both survive a restart. Chunk folders
``uploads/<upload_id>/<index>`` of earlier versions are moved into their upload's
partial at start-up (:meth:`UploadManager.open`; folder backend).

Cleanup (:func:`cleanup`): removes unfinished and cancelled uploads not changed for
``upload_ttl_s`` seconds (default 24 h) with their partials, partials and old chunk folders with no
record, rows of ``files`` deleted more than ``upload_ttl_s`` ago, and blobs no live
record references.
The server runs it every ``cleanup_interval_s`` seconds; ``rtc-signaling --storage-path
P --cleanup-once`` runs it once.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from signaling.api_common import ApiError, ApiErrorCode
from signaling.auth import Caller, Role
from signaling.config import SignalingSettings
from signaling.results_api import CHUNK_BYTES, STORE_KEY
from signaling.store_cleanup import CleanupReport, cleanup
from signaling.upload_fields import category_of, sha256_field, text_field
from signaling.upload_manager import UploadManager

__all__ = [
    "UPLOADS_KEY",
    "CleanupReport",
    "UploadManager",
    "category_of",
    "cleanup",
    "setup_uploads",
]

_MAX_JSON_BYTES = 64 * 1024


UPLOADS_KEY: web.AppKey[UploadManager] = web.AppKey("uploads", UploadManager)
"""The app's :class:`UploadManager` (present only when storage is enabled)."""


def setup_uploads(app: web.Application, settings: SignalingSettings) -> bool:
    """Add the resumable upload routes and the periodic cleanup to ``app``.

    Call after :func:`signaling.results_api.setup_storage`; does nothing when storage
    is disabled. Chunk folders of earlier versions are moved into their uploads'
    partials on startup, after the store opens.

    Returns:
        Whether the routes were added.
    """
    if STORE_KEY not in app:
        return False
    manager = UploadManager(app[STORE_KEY], settings)
    app[UPLOADS_KEY] = manager
    app.router.add_post("/api/upload/init", _init)
    app.router.add_put("/api/upload/chunk", _chunk)
    app.router.add_post("/api/upload/complete", _complete)
    app.router.add_get("/api/upload/{upload_id}/status", _status)
    app.router.add_post("/api/upload/cancel", _cancel)
    app.on_startup.append(manager.start)  # after the store's own startup (setup_storage)
    app.on_cleanup.insert(0, manager.stop)  # before the store closes its database
    return True


async def _caller(request: web.Request) -> Caller:
    """The caller of a resumable-upload route: any valid key."""
    return await request.app[STORE_KEY].auth.require(request, Role.ADMIN, Role.WORKER, Role.CLIENT)


async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_length is not None and request.content_length > _MAX_JSON_BYTES:
        raise ApiError(ApiErrorCode.INVALID_FIELD, "the JSON body is too large")
    raw = await request.content.read(_MAX_JSON_BYTES + 1)
    if len(raw) > _MAX_JSON_BYTES:
        raise ApiError(ApiErrorCode.INVALID_FIELD, "the JSON body is too large")
    if not raw.strip():
        raise ApiError(ApiErrorCode.MISSING_FIELD, "a JSON object body is required")
    try:
        body = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(ApiErrorCode.INVALID_FIELD, "the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(ApiErrorCode.INVALID_FIELD, "the body must be a JSON object")
    return body


async def _init(request: web.Request) -> web.Response:
    """``POST /api/upload/init``: see the module docstring."""
    manager = request.app[UPLOADS_KEY]
    caller = await _caller(request)
    record = await manager.init(await _json_body(request), caller)
    return web.json_response(
        {
            "upload_id": record.upload_id,
            "chunk_size": record.chunk_size,
            "total_chunks": record.total_chunks,
            "status": record.status,
        },
        status=201,
    )


async def _chunk(request: web.Request) -> web.Response:
    """``PUT /api/upload/chunk``: see the module docstring."""
    manager = request.app[UPLOADS_KEY]
    caller = await _caller(request)
    upload_id = request.headers.get("X-Upload-Id", "")
    if not upload_id:
        raise ApiError(ApiErrorCode.MISSING_FIELD, "the X-Upload-Id header is required")
    raw_index = request.headers.get("X-Chunk-Index", "")
    if not raw_index:
        raise ApiError(ApiErrorCode.MISSING_FIELD, "the X-Chunk-Index header is required")
    if not (raw_index.isascii() and raw_index.isdigit()) or len(raw_index) > 12:
        raise ApiError(ApiErrorCode.INVALID_FIELD, "X-Chunk-Index must be an integer >= 0")
    index = int(raw_index)
    record = await manager.record(upload_id, caller)
    if (
        request.content_length is not None
        and 0 <= index < record.total_chunks
        and request.content_length != record.chunk_length(index)
    ):
        manager.require_open(record)
        raise ApiError(
            ApiErrorCode.INVALID_FIELD,
            f"chunk {index} must be {record.chunk_length(index)} bytes, "
            f"not {request.content_length}",
        )
    await manager.put_chunk(upload_id, index, request.content.iter_chunked(CHUNK_BYTES), caller)
    return web.json_response({"upload_id": upload_id, "chunk_index": index, "status": "uploaded"})


async def _complete(request: web.Request) -> web.Response:
    """``POST /api/upload/complete``: see the module docstring."""
    manager = request.app[UPLOADS_KEY]
    caller = await _caller(request)
    body = await _json_body(request)
    upload_id = text_field(body, "upload_id")
    record = await manager.complete(upload_id, caller, sha256_field(body))
    return web.json_response(
        {
            "upload_id": record.upload_id,
            "key": record.key,
            "sha256": record.sha256,
            "size": record.total_size,
            "mime_type": record.mime_type,
            "status": record.status,
        }
    )


async def _status(request: web.Request) -> web.Response:
    """``GET /api/upload/{upload_id}/status``: see the module docstring."""
    manager = request.app[UPLOADS_KEY]
    caller = await _caller(request)
    record = await manager.record(request.match_info["upload_id"], caller)
    return web.json_response(await manager.status_of(record))


async def _cancel(request: web.Request) -> web.Response:
    """``POST /api/upload/cancel``: see the module docstring."""
    manager = request.app[UPLOADS_KEY]
    caller = await _caller(request)
    record = await manager.cancel(text_field(await _json_body(request), "upload_id"), caller)
    return web.json_response({"upload_id": record.upload_id, "status": record.status})
