"""The relay road's routes: reading and deleting relay objects (see
:mod:`signaling.relay_objects` for what they are, :mod:`signaling.tus` for how one is
uploaded).

=============================================  ========================================
``GET /relay/{upload_id}``                     the object's bytes: ``X-API-Key`` (or
                                               ``Authorization: Bearer``, any role) and
                                               ``X-Relay-Token``; 200, or 206 for one
                                               ``Range``; ``Accept-Ranges: bytes``,
                                               ``ETag: "<sha256>"``, ``Content-Length``
``HEAD /relay/{upload_id}``                    the same headers, no body
``DELETE /relay/{upload_id}``                  204: with its ``X-Relay-Token``, or
                                               without one by its principal's key (or
                                               an admin's)
=============================================  ========================================

A missing or bad key answers 401/403 as every storage route (checked first). Then no
such object, a malformed, forged, expired or foreign token, an object deleted or expired
all answer the same 404 ``RELAY_NOT_FOUND`` (no oracle). Ranges are those of
``/download/{job_id}`` (:mod:`signaling.byte_ranges`): a single range 206 with
``Content-Range``, an unsatisfiable one 416 ``RANGE_NOT_SATISFIABLE`` with ``Content-Range:
bytes */<size>``, several ranges or an ``If-Range`` that does not match the whole object.
The bytes come from the blob backend (a file, or a ranged S3 GET) as they are read,
never the whole object in memory. Answers are not to be cached (``Cache-Control:
no-store``): the token is a secret of the request.

Source: RFC 9110 section 14 (ranges), section 8.8.3 (ETag).
"""

from __future__ import annotations

from aiohttp import hdrs, web

from signaling.api_common import ApiErrorCode, error_response
from signaling.auth import Role
from signaling.byte_ranges import ByteRange, RangeNotSatisfiable, select_range, strong_etag
from signaling.config import SignalingSettings
from signaling.db import UploadRecord
from signaling.relay_objects import NOT_FOUND_MESSAGE, RelayObjects
from signaling.results_store import STORE_KEY

__all__ = ["RELAY_KEY", "RELAY_PATH", "TOKEN_HEADER", "setup_relay"]

RELAY_PATH = "/relay/{upload_id}"
"""The path of a relay object."""
TOKEN_HEADER = "X-Relay-Token"
"""The request header carrying a relay token."""

RELAY_KEY: web.AppKey[RelayObjects] = web.AppKey("relay_objects", RelayObjects)
"""The app's :class:`RelayObjects` (present only when storage is enabled)."""

_ROLES = (Role.ADMIN, Role.WORKER, Role.CLIENT)


def setup_relay(app: web.Application, settings: SignalingSettings) -> bool:
    """Add the relay routes to ``app`` (after :func:`signaling.results_api.setup_storage`;
    nothing when storage is off).

    Returns:
        Whether the routes were added.
    """
    if STORE_KEY not in app:
        return False
    app[RELAY_KEY] = RelayObjects(app[STORE_KEY], settings.relay_ttl_s)
    app.router.add_get(RELAY_PATH, _read)  # HEAD beside GET
    app.router.add_delete(RELAY_PATH, _delete)
    return True


def _headers(response: web.StreamResponse, record: UploadRecord, span: ByteRange | None) -> None:
    assert record.sha256 is not None
    response.content_type = "application/octet-stream"
    response.content_length = record.total_size if span is None else span.length
    response.headers[hdrs.ACCEPT_RANGES] = "bytes"
    response.headers[hdrs.ETAG] = strong_etag(record.sha256)
    response.headers[hdrs.CACHE_CONTROL] = "no-store"
    if span is not None:
        response.headers[hdrs.CONTENT_RANGE] = span.content_range()


async def _read(request: web.Request) -> web.StreamResponse:
    """``GET|HEAD /relay/{upload_id}``: the relay object's bytes (see the module)."""
    store = request.app[STORE_KEY]
    await store.auth.require(request, *_ROLES)
    relay = request.app[RELAY_KEY]
    record = await relay.find(request.match_info["upload_id"], request.headers.get(TOKEN_HEADER))
    assert record.sha256 is not None
    try:
        span = select_range(
            request.headers.get(hdrs.RANGE),
            request.headers.get(hdrs.IF_RANGE),
            strong_etag(record.sha256),
            record.total_size,
        )
    except RangeNotSatisfiable as refused:
        refusal = error_response(
            ApiErrorCode.RANGE_NOT_SATISFIABLE,
            f"the range is not satisfiable: the relay object has {record.total_size} bytes",
        )
        refusal.headers[hdrs.CONTENT_RANGE] = refused.content_range()
        refusal.headers[hdrs.ACCEPT_RANGES] = "bytes"
        return refusal
    status = 200 if span is None else 206
    if request.method == hdrs.METH_HEAD:
        response = web.StreamResponse(status=status)
        _headers(response, record, span)
        await response.prepare(request)
        await response.write_eof()
        return response
    start, end = (0, record.total_size) if span is None else (span.start, span.end)
    try:
        reader = await store.backend.open_reader(record.sha256, start, end)
    except FileNotFoundError:  # removed by a concurrent delete
        return error_response(ApiErrorCode.RELAY_NOT_FOUND, NOT_FOUND_MESSAGE)
    try:
        response = web.StreamResponse(status=status)
        _headers(response, record, span)
        await response.prepare(request)
        async for chunk in reader.chunks():
            await response.write(chunk)
        await response.write_eof()
    finally:
        await reader.close()
    return response


async def _delete(request: web.Request) -> web.Response:
    """``DELETE /relay/{upload_id}``: 204; with its ``X-Relay-Token``, or by its
    principal's key; else 404 RELAY_NOT_FOUND."""
    store = request.app[STORE_KEY]
    caller = await store.auth.require(request, *_ROLES)
    relay = request.app[RELAY_KEY]
    upload_id = request.match_info["upload_id"]
    token = request.headers.get(TOKEN_HEADER)
    if token is not None:
        record = await relay.find(upload_id, token)
    else:
        record = await relay.owned(upload_id, caller)
    await relay.remove(record)
    return web.Response(status=204)
