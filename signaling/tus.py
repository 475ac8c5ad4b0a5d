"""tus 1.0 resumable uploads at ``/files/``, on the storage service's resumable uploads.

For off-the-shelf clients (tuspy, tus-js-client, Uppy's Tus plugin): extensions
``creation``, ``creation-with-upload``, ``termination``, ``checksum`` (sha1, sha256) and
``expiration``. Every request but OPTIONS carries ``Tus-Resumable: 1.0.0`` (else 412);
every answer carries it back.

==================================  =================================================
``OPTIONS /files/``                 204, ``Tus-Version``, ``Tus-Extension``,
                                    ``Tus-Max-Size``, ``Tus-Checksum-Algorithm`` (no key)
``POST /files/``                    ``Upload-Length``, ``Upload-Metadata`` -> 201,
                                    ``Location: /files/{id}``, ``Upload-Expires``; with
                                    ``Content-Type: application/offset+octet-stream``
                                    the body is the first bytes (``Upload-Offset``)
``HEAD /files/{id}``                ``Upload-Offset``, ``Upload-Length``,
                                    ``Upload-Metadata``, ``Upload-Expires``,
                                    ``Cache-Control: no-store``
``PATCH /files/{id}``               ``Upload-Offset`` (must be the upload's, else 409),
                                    ``Content-Type: application/offset+octet-stream``
                                    (else 415), optional ``Upload-Checksum`` -> 204 and
                                    the new ``Upload-Offset``
``DELETE /files/{id}``              204; later requests answer 410
==================================  =================================================

An upload here *is* a resumable upload of :class:`~signaling.upload_manager.UploadManager`:
the same keys (``X-API-Key`` or ``Authorization: Bearer``, any role), the same owner
checks (another principal's upload is 404), quotas (413 QUOTA_EXCEEDED, 507 DISK_FULL)
and partial file. ``Upload-Metadata`` maps onto its fields
(:func:`~signaling.tus_fields.init_body`). When the last byte arrives the upload is
completed as ``POST /api/upload/complete`` does it: the same record and blob. With a
``job_id`` (and ``owner``) in the metadata it is also stored as that owner's result of
the job, the record ``POST /upload`` makes, downloadable with
``GET /download/{job_id}``: the request that completes it answers
``Upload-Download-Url`` (``/download/{job_id}``), ``Upload-Download-Token`` (the
download token ``POST /upload`` gives, for ``X-Download-Token``) and
``Upload-Download-Expires`` (the token's expiry, ISO 8601 UTC). With the ``relay`` key
(any value; not with ``job_id``) it is a relay object (:mod:`signaling.relay_objects`):
the request that completes it, and a ``HEAD`` of it afterwards (so a lost answer is not
a lost object), answer ``Upload-Relay-Url`` (``/relay/{upload_id}``),
``Upload-Relay-Token`` (for ``X-Relay-Token``), ``Upload-Relay-Expires`` (ISO 8601 UTC)
and ``Upload-Relay-Sha256``.

``POST /files/{id}`` with ``X-HTTP-Method-Override: PATCH`` (``DELETE``, ``HEAD``) is
handled as that method (tus 1.0.0, "Core Protocol"); another value answers 400
METHOD_OVERRIDE_INVALID. A browser page on an origin in ``--allowed-origin`` may use
the routes: preflights and answers carry the CORS headers of :mod:`signaling.tus_cors`.

Bounds: a PATCH body may not run past ``Upload-Length`` (413); a body that sends nothing
for ``tus_idle_timeout_s`` (60 s) or is not done within ``tus_patch_deadline_s`` (1 h)
ends with 408 (what arrived is kept unless a checksum was given); one PATCH or DELETE
per upload at a time (423 UPLOAD_LOCKED; across instances on PostgreSQL, by an advisory
lock). A chunk whose checksum does not match answers 460 and is not kept; the offset is
unchanged. An unfinished upload expires ``upload_ttl_s`` after its last change
(``Upload-Expires``; a PATCH within :data:`~signaling.upload_offsets.TOUCH_EVERY_S` of
the last change is not a new one, so no PATCH in a quick series writes the database; the
header always gives the expiry kept): it then answers 410 and its partial is removed.
Errors are JSON ``{"error": {"code", "message", "timestamp"}}``.

Source: the tus protocol 1.0.0 (https://tus.io/protocols/resumable-upload); tusd
``pkg/handler/unrouted_handler.go`` (locks with 423, the order of the checks).
"""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from loguru import logger

from signaling.api_common import ApiError, ApiErrorCode, error_response
from signaling.config import SignalingSettings
from signaling.db import UploadRecord
from signaling.db_engine import StoreLockTimeoutError
from signaling.relay_objects import RELAY_METADATA_KEY
from signaling.relay_routes import RELAY_KEY
from signaling.results_api import STORE_KEY
from signaling.results_store import Stored
from signaling.sqlite_file import is_disk_full
from signaling.tus_cors import cors_headers
from signaling.tus_fields import (
    CHECKSUMS,
    TUS_VERSION,
    TusError,
    counter,
    http_date,
    init_body,
    metadata_header,
    parse_metadata,
)
from signaling.tus_service import TusService
from signaling.uploads_api import UPLOADS_KEY

__all__ = ["TUS_KEY", "TUS_PATHS", "TusService", "setup_tus"]

TUS_PATHS = ("/files/", "/files/{upload_id}")
"""The tus routes' paths (described by the tus protocol, not ``docs/openapi.yaml``)."""

EXTENSIONS = "creation,creation-with-upload,termination,checksum,expiration"
OFFSET_TYPE = "application/offset+octet-stream"
METHOD_OVERRIDE = "X-HTTP-Method-Override"


TUS_KEY: web.AppKey[TusService] = web.AppKey("tus", TusService)
"""The app's :class:`TusService` (present only when storage is enabled)."""


def setup_tus(app: web.Application, settings: SignalingSettings) -> bool:
    """Add the tus routes at ``/files/`` to ``app``; after
    :func:`signaling.uploads_api.setup_uploads`, nothing when storage is off.

    Args:
        app: the application.
        settings: its settings (``tus_idle_timeout_s``, ``tus_patch_deadline_s``, and
            ``allowed_origins`` for CORS, :mod:`signaling.tus_cors`).

    Returns:
        Whether the routes were added.
    """
    if UPLOADS_KEY not in app:
        return False
    app[TUS_KEY] = tus = TusService(
        app[UPLOADS_KEY],
        read_timeout_s=settings.tus_idle_timeout_s,
        patch_deadline_s=settings.tus_patch_deadline_s,
        allowed_origins=settings.allowed_origins,
    )
    app.on_cleanup.append(tus.close)
    app.router.add_route("OPTIONS", "/files/", _options)
    app.router.add_route("OPTIONS", "/files/{upload_id}", _options)
    app.router.add_post("/files/", _tus(_create))
    app.router.add_post("/files/{upload_id}", _tus(_override))
    app.router.add_head("/files/{upload_id}", _tus(_head))
    app.router.add_patch("/files/{upload_id}", _tus(_patch))
    app.router.add_delete("/files/{upload_id}", _tus(_delete))
    return True


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _tus(handler: Handler) -> Handler:
    """Check ``Tus-Resumable``, answer errors as JSON, add ``Tus-Resumable`` and the
    CORS headers to every answer; a refused request whose body was not read closes its
    connection."""

    async def handle(request: web.Request) -> web.StreamResponse:
        response: web.StreamResponse
        try:
            if request.headers.get("Tus-Resumable") != TUS_VERSION:
                raise TusError(412, "TUS_VERSION_UNSUPPORTED", f"send Tus-Resumable: {TUS_VERSION}")
            response = await handler(request)
        except asyncio.CancelledError:
            raise
        except TusError as exc:
            response = exc.response()
        except ApiError as exc:
            response = error_response(exc.code, exc.message)
        except (ConnectionError, asyncio.IncompleteReadError, HttpProcessingError) as exc:
            logger.info(
                "tus {} {}: a cut or malformed body ({})", request.method, request.path, exc
            )
            response = error_response(ApiErrorCode.INVALID_FIELD, "the body was cut or malformed")
        except Exception as exc:  # the disk, the database, or a bug
            response = _failure(request, exc)
        response.headers["Tus-Resumable"] = TUS_VERSION
        response.headers.update(cors_headers(request, request.app[TUS_KEY].allowed_origins))
        if response.status == 412:
            response.headers["Tus-Version"] = TUS_VERSION
        if response.status >= 400 and request.body_exists and not request.content.is_eof():
            response.force_close()
        return response

    handle.__doc__ = handler.__doc__
    return handle


def _failure(request: web.Request, exc: Exception) -> web.Response:
    if isinstance(exc, StoreLockTimeoutError):
        return error_response(ApiErrorCode.STORAGE_BUSY, str(exc))
    if is_disk_full(exc):
        return error_response(ApiErrorCode.DISK_FULL, "the storage disk is full")
    if isinstance(exc, OSError):
        logger.error("storage failure on {} {}: {}", request.method, request.path, exc)
        return error_response(ApiErrorCode.STORAGE_ERROR, "storage failure")
    # the traceback's lines only: no variable values (they may hold a key)
    trace = "".join(traceback.format_exception(exc))
    logger.error("unexpected failure on {} {}:\n{}", request.method, request.path, trace)
    return error_response(ApiErrorCode.INTERNAL_ERROR, "internal error")


async def _options(request: web.Request) -> web.Response:
    """``OPTIONS /files/``: what this server speaks (no key needed); also the answer
    to a browser's CORS preflight (:func:`~signaling.tus_cors.cors_headers`)."""
    store = request.app[STORE_KEY]
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": EXTENSIONS,
        "Tus-Max-Size": str(store.max_file_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
    }
    headers.update(cors_headers(request, request.app[TUS_KEY].allowed_origins))
    return web.Response(status=204, headers=headers)


async def _override(request: web.Request) -> web.StreamResponse:
    """``POST /files/{upload_id}`` with ``X-HTTP-Method-Override: PATCH``, ``DELETE``
    or ``HEAD``: handled as that method (tus 1.0.0, "Core Protocol": a server SHOULD
    honour the header, for clients behind proxies or browsers that only send GET and
    POST). Any other value: 400 METHOD_OVERRIDE_INVALID; none: 405."""
    method = request.headers.get(METHOD_OVERRIDE)
    if method is None:
        raise TusError(
            405, "METHOD_NOT_ALLOWED", f"POST to an upload needs {METHOD_OVERRIDE}: PATCH"
        )
    handler = _OVERRIDES.get(method.strip().upper())
    if handler is None:
        raise TusError(
            400,
            "METHOD_OVERRIDE_INVALID",
            f"{METHOD_OVERRIDE} must be one of {', '.join(_OVERRIDES)}",
        )
    return await handler(request)


def _download_headers(stored: Stored | None) -> dict[str, str]:
    """For the request that completed a result upload: where and with which token its
    owner downloads it (as ``POST /upload`` answers in JSON), not to be cached."""
    if stored is None:
        return {}
    return {
        "Upload-Download-Url": str(stored.as_dict()["download_url"]),
        "Upload-Download-Token": stored.token,
        "Upload-Download-Expires": stored.expires_at,
        "Cache-Control": "no-store",
    }


def _state_headers(tus: TusService, record: UploadRecord, offset: int) -> dict[str, str]:
    """``Upload-Offset`` and, while unfinished, ``Upload-Expires`` (from the record's last
    change)."""
    headers = {"Upload-Offset": str(offset)}
    expires = tus.expires(record)
    if expires is not None and offset < record.total_size:
        headers["Upload-Expires"] = http_date(expires)
    return headers


async def _create(request: web.Request) -> web.Response:
    """``POST /files/``: creation (and creation-with-upload)."""
    override = request.headers.get(METHOD_OVERRIDE)
    if override is not None and override.strip().upper() != "POST":
        raise TusError(
            400, "METHOD_OVERRIDE_INVALID", f"{METHOD_OVERRIDE} on /files/ can only be POST"
        )
    tus = request.app[TUS_KEY]
    caller = await tus.caller(request)
    if "Upload-Defer-Length" in request.headers:
        raise ApiError(ApiErrorCode.INVALID_FIELD, "Upload-Defer-Length is not supported")
    length = counter(request.headers.get("Upload-Length"), "Upload-Length")
    store = request.app[STORE_KEY]
    if length > store.max_file_size:
        raise ApiError(
            ApiErrorCode.FILE_TOO_LARGE, f"the file is larger than {store.max_file_size} bytes"
        )
    meta = parse_metadata(request.headers.get("Upload-Metadata"))
    body, result = init_body(meta, length, caller)
    relay = RELAY_METADATA_KEY in meta
    if relay and result is not None:
        raise ApiError(ApiErrorCode.INVALID_FIELD, "a relay object cannot be a job's result")
    if result is not None:
        await _require_no_result(request, *result)
    with_bytes = request.content_type == OFFSET_TYPE and request.body_exists
    if not with_bytes and request.body_exists and request.content_length:
        raise TusError(415, "UNSUPPORTED_MEDIA_TYPE", f"the first bytes need {OFFSET_TYPE}")
    record = await tus.manager.init(body, caller, result=result, relay=relay)
    headers = {"Location": f"/files/{record.upload_id}"}
    async with tus.hold(record.upload_id):
        if with_bytes:
            offset, record, stored = await tus.write(request, record, caller, "0")
            headers.update(_state_headers(tus, record, offset))
            headers.update(_download_headers(stored))
            headers.update(await _relay_headers(request, record, offset))
        elif length == 0:
            headers.update(_download_headers(await tus.finish(record, caller)))
            headers.update(await _relay_headers(request, record, 0))
        else:
            headers.update(_state_headers(tus, record, 0))
            del headers["Upload-Offset"]
    return web.Response(status=201, headers=headers)


async def _relay_headers(request: web.Request, record: UploadRecord, offset: int) -> dict[str, str]:
    """For a relay object whose every byte is held (completed): ``Upload-Relay-Url``,
    ``Upload-Relay-Token``, ``Upload-Relay-Expires``, ``Upload-Relay-Sha256``
    (:meth:`~signaling.relay_objects.RelayObjects.headers`)."""
    if not record.relay or offset != record.total_size:
        return {}
    return await request.app[RELAY_KEY].completed_headers(record.upload_id)


async def _require_no_result(request: web.Request, owner: str, job_id: str) -> None:
    """JOB_EXISTS when ``owner`` holds a live result of ``job_id`` already (as
    ``POST /upload`` refuses it without ``X-Replace``)."""
    try:
        await request.app[STORE_KEY].get_live(owner, job_id)
    except ApiError:
        return
    raise ApiError(
        ApiErrorCode.JOB_EXISTS,
        f"a result for job {job_id!r} is stored already; delete it first",
    )


async def _head(request: web.Request) -> web.Response:
    """``HEAD /files/{upload_id}``: the offset, length, metadata and expiry."""
    tus = request.app[TUS_KEY]
    caller = await tus.caller(request)
    record = await tus.live(request.match_info["upload_id"], caller)
    headers = _state_headers(tus, record, await tus.manager.held_bytes(record))
    headers["Upload-Length"] = str(record.total_size)
    headers["Upload-Metadata"] = metadata_header(record)
    headers["Cache-Control"] = "no-store"
    headers.update(await _relay_headers(request, record, int(headers["Upload-Offset"])))
    return web.Response(status=200, headers=headers)


async def _patch(request: web.Request) -> web.Response:
    """``PATCH /files/{upload_id}``: the next bytes, at the upload's offset."""
    tus = request.app[TUS_KEY]
    caller = await tus.caller(request)
    upload_id = request.match_info["upload_id"]
    if request.content_type != OFFSET_TYPE:
        raise TusError(415, "UNSUPPORTED_MEDIA_TYPE", f"a PATCH body must be {OFFSET_TYPE}")
    mark = tus.quiet_mark(upload_id)
    record = await tus.live(upload_id, caller)  # another principal never holds the lock
    async with tus.hold(upload_id):
        if not tus.still_quiet(mark):  # another PATCH or DELETE may have changed it
            record = await tus.live(upload_id, caller)
        offset, record, stored = await tus.write(
            request, record, caller, request.headers.get("Upload-Offset")
        )
    headers = _state_headers(tus, record, offset)
    headers.update(_download_headers(stored))
    headers.update(await _relay_headers(request, record, offset))
    return web.Response(status=204, headers=headers)


async def _delete(request: web.Request) -> web.Response:
    """``DELETE /files/{upload_id}``: termination (the partial is removed)."""
    tus = request.app[TUS_KEY]
    caller = await tus.caller(request)
    upload_id = request.match_info["upload_id"]
    await tus.live(upload_id, caller)
    async with tus.hold(upload_id):
        await tus.live(upload_id, caller)
        await tus.drop_lingering(upload_id)
        await tus.manager.cancel(upload_id, caller)
    return web.Response(status=204)


_OVERRIDES: dict[str, Handler] = {"PATCH": _patch, "DELETE": _delete, "HEAD": _head}
"""The methods ``X-HTTP-Method-Override`` may name on ``POST /files/{upload_id}``."""
