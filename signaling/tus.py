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
the job, the record ``POST /upload`` makes, downloadable with ``GET /download/{job_id}``.

Bounds: a PATCH body may not run past ``Upload-Length`` (413); a body that sends
nothing for ``read_timeout_s`` or is not done within ``patch_deadline_s`` ends with 408
(what arrived is kept unless a checksum was given); one PATCH or DELETE per upload at a
time (423 UPLOAD_LOCKED, per process). A chunk whose checksum does not match answers
460 and is not kept; the offset is unchanged. An unfinished upload expires
``upload_ttl_s`` after its last change (``Upload-Expires``): it then answers 410 and its
partial is removed. Errors are JSON ``{"error": {"code", "message", "timestamp"}}``.

Source: the tus protocol 1.0.0 (https://tus.io/protocols/resumable-upload); tusd
``pkg/handler/unrouted_handler.go`` (locks with 423, the order of the checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta

from aiohttp import web
from loguru import logger

from signaling.api_common import ApiError, ApiErrorCode, error_response
from signaling.auth import Caller, Role
from signaling.db import UploadRecord
from signaling.results_api import CHUNK_BYTES, STORE_KEY
from signaling.sqlite_file import is_disk_full
from signaling.tus_fields import (
    CHECKSUMS,
    TUS_VERSION,
    Checksum,
    TusError,
    counter,
    http_date,
    init_body,
    metadata_header,
    parse_checksum,
    parse_metadata,
    result_of,
)
from signaling.upload_manager import UploadManager
from signaling.uploads_api import UPLOADS_KEY

__all__ = ["TUS_KEY", "TUS_PATHS", "TusService", "setup_tus"]

TUS_PATHS = ("/files/", "/files/{upload_id}")
"""The tus routes' paths (described by the tus protocol, not ``docs/openapi.yaml``)."""

EXTENSIONS = "creation,creation-with-upload,termination,checksum,expiration"
OFFSET_TYPE = "application/offset+octet-stream"
LINGER_S = 30.0
"""How long an unfinished upload's partial stays open after a PATCH, seconds."""
MAX_LINGERING = 256
"""Most partials kept open between PATCHes (each holds a descriptor)."""
PIECE_BYTES = 4 * CHUNK_BYTES
"""Bytes of a PATCH body gathered before one write (4 MiB; one more in flight)."""
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


class TusService:
    """The tus side of one app's :class:`UploadManager`.

    Args:
        manager: the app's resumable uploads.
        read_timeout_s: longest wait for the next bytes of a body, seconds.
        patch_deadline_s: longest time one body may take, seconds.
        now: the clock deciding expiry (Unix time, seconds); tests move it.
    """

    def __init__(
        self,
        manager: UploadManager,
        *,
        read_timeout_s: float = 60.0,
        patch_deadline_s: float = 3600.0,
        now: Callable[[], float] = time.time,
    ) -> None:
        self.manager = manager
        self.read_timeout_s = read_timeout_s
        self.patch_deadline_s = patch_deadline_s
        self.now = now
        self.linger_s = LINGER_S
        self._busy: set[str] = set()
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Future[None]] = set()

    async def caller(self, request: web.Request) -> Caller:
        """The caller: any valid key (401 / 403 as the other storage routes)."""
        auth = self.manager.store.auth
        return await auth.require(request, Role.ADMIN, Role.WORKER, Role.CLIENT)

    @contextlib.contextmanager
    def hold(self, upload_id: str) -> Iterator[None]:
        """One changing request per upload: TusError 423 UPLOAD_LOCKED while another runs."""
        if upload_id in self._busy:
            raise TusError(423, "UPLOAD_LOCKED", f"upload {upload_id!r} is busy; try again")
        self._busy.add(upload_id)
        try:
            yield
        finally:
            self._busy.discard(upload_id)

    def expires(self, record: UploadRecord) -> datetime | None:
        """When the unfinished ``record`` expires, else ``None``."""
        if record.status not in ("initiated", "in_progress"):
            return None
        changed = datetime.strptime(record.updated_at, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        return changed + timedelta(seconds=self.manager.ttl_s)

    async def live(self, upload_id: str, caller: Caller) -> UploadRecord:
        """The upload ``upload_id`` of ``caller``, unless gone; an expired one is
        cancelled first (its partial removed).

        Raises:
            ApiError: UPLOAD_NOT_FOUND (unknown, malformed, another principal's); GONE
                (terminated, or expired).
        """
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise ApiError(ApiErrorCode.UPLOAD_NOT_FOUND, f"no upload {upload_id!r}")
        record = await self.manager.record(upload_id, caller)
        if record.status == "cancelled":
            raise ApiError(ApiErrorCode.GONE, f"upload {upload_id!r} was terminated")
        expires = self.expires(record)
        if expires is not None and self.now() >= expires.timestamp():
            await self.drop_lingering(upload_id)
            with contextlib.suppress(ApiError):  # completed or cancelled meanwhile
                await self.manager.cancel(upload_id, caller)
            logger.info("tus upload {} expired", upload_id)
            raise ApiError(ApiErrorCode.GONE, f"upload {upload_id!r} expired")
        return record

    async def _body(self, request: web.Request, checksum: Checksum | None) -> AsyncIterator[bytes]:
        """The request body in pieces of :data:`PIECE_BYTES`, within the deadlines;
        checked against ``checksum`` at its end."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.patch_deadline_s
        pieces: list[bytes] = []
        held = 0
        while True:
            try:
                data = request.content.read_nowait(PIECE_BYTES - held)  # what is buffered
                if not data:
                    timeout = min(deadline, loop.time() + self.read_timeout_s)
                    async with asyncio.timeout_at(timeout):
                        data = await request.content.read(PIECE_BYTES - held)
            except (TimeoutError, ConnectionError) as exc:
                if pieces:  # what arrived: put_bytes keeps it when no checksum is given
                    yield b"".join(pieces)
                if isinstance(exc, TimeoutError):
                    raise TusError(408, "REQUEST_TIMEOUT", "the body was too slow") from None
                raise
            if data:
                pieces.append(data)
                held += len(data)
            if held and (held >= PIECE_BYTES or not data):
                piece = pieces[0] if len(pieces) == 1 else b"".join(pieces)
                if checksum is not None:
                    checksum.update(piece)
                yield piece
                pieces, held = [], 0
            if not data:
                break
        if checksum is not None:
            checksum.check()

    async def write(
        self, request: web.Request, record: UploadRecord, caller: Caller, offset_header: str | None
    ) -> int:
        """Append the body of ``request`` at ``offset_header``, which must be the
        upload's offset; complete the upload when its last byte arrived. Returns the new
        offset.

        Raises:
            TusError: 409 OFFSET_MISMATCH, 460 CHECKSUM_MISMATCH, 408 REQUEST_TIMEOUT.
            ApiError: FILE_TOO_LARGE (past ``Upload-Length``), INVALID_FIELD (a bad
                ``Upload-Offset`` or ``Upload-Checksum``), as :meth:`UploadManager.put_bytes`.
        """
        offset = counter(offset_header, "Upload-Offset")
        held = await self.manager.held_bytes(record)
        if offset != held:
            raise TusError(409, "OFFSET_MISMATCH", f"the upload's offset is {held}, not {offset}")
        checksum = parse_checksum(request.headers.get("Upload-Checksum"))
        length = request.content_length
        if length is not None and offset + length > record.total_size:
            raise ApiError(
                ApiErrorCode.FILE_TOO_LARGE,
                f"the bytes run past the upload's length of {record.total_size} bytes",
            )
        if record.status == "completed" or not request.body_exists:
            return held
        await self.manager.keep_open(record)  # the hash made on the way serves finish
        try:
            written = await self.manager.put_bytes(
                record.upload_id,
                offset,
                self._body(request, checksum),
                caller,
                keep_on_error=checksum is None,
            )
            held = offset + written
            if held == record.total_size:
                await self.finish(record, caller)
            else:
                await self._linger(record)
        finally:
            await self.manager.let_go(record.upload_id)
        return held

    async def _linger(self, record: UploadRecord) -> None:
        """Keep the partial of an unfinished upload open ``linger_s`` seconds after a
        PATCH (at most :data:`MAX_LINGERING` of them), for the next PATCH."""
        upload_id = record.upload_id
        timer = self._lingering.pop(upload_id, None)
        if timer is not None:
            timer.cancel()
        elif len(self._lingering) >= MAX_LINGERING:
            return
        else:
            await self.manager.keep_open(record)
        loop = asyncio.get_running_loop()
        self._lingering[upload_id] = loop.call_later(self.linger_s, self._end_linger, upload_id)

    def _end_linger(self, upload_id: str) -> None:
        if self._lingering.pop(upload_id, None) is not None:
            task = asyncio.ensure_future(self.manager.let_go(upload_id))
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def drop_lingering(self, upload_id: str | None = None) -> None:
        """Close the lingering partial of ``upload_id`` (``None``: of every upload)."""
        for uid in [upload_id] if upload_id is not None else list(self._lingering):
            timer = self._lingering.pop(uid, None)
            if timer is not None:
                timer.cancel()
                await self.manager.let_go(uid)

    async def close(self, app: web.Application) -> None:
        """``on_cleanup``: close every lingering partial."""
        await self.drop_lingering()
        await asyncio.gather(*self._closing, return_exceptions=True)

    async def finish(self, record: UploadRecord, caller: Caller) -> None:
        """Complete the upload whose bytes are all held (as a result when it is one)."""
        result = result_of(record)
        await self.drop_lingering(record.upload_id)
        if result is None:
            done = await self.manager.complete(record.upload_id, caller)
        else:
            done, _ = await self.manager.complete_result(record.upload_id, caller, *result)
        logger.info("tus upload {} completed: {} bytes", done.upload_id, done.total_size)


TUS_KEY: web.AppKey[TusService] = web.AppKey("tus", TusService)
"""The app's :class:`TusService` (present only when storage is enabled)."""


def setup_tus(app: web.Application) -> bool:
    """Add the tus routes at ``/files/`` to ``app``; after
    :func:`signaling.uploads_api.setup_uploads`, nothing when storage is off.

    Returns:
        Whether the routes were added.
    """
    if UPLOADS_KEY not in app:
        return False
    app[TUS_KEY] = tus = TusService(app[UPLOADS_KEY])
    app.on_cleanup.append(tus.close)
    app.router.add_route("OPTIONS", "/files/", _options)
    app.router.add_route("OPTIONS", "/files/{upload_id}", _options)
    app.router.add_post("/files/", _tus(_create))
    app.router.add_head("/files/{upload_id}", _tus(_head))
    app.router.add_patch("/files/{upload_id}", _tus(_patch))
    app.router.add_delete("/files/{upload_id}", _tus(_delete))
    return True


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _tus(handler: Handler) -> Handler:
    """Check ``Tus-Resumable``, answer errors as JSON, add ``Tus-Resumable`` to every
    answer; a refused request whose body was not read closes its connection."""

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
        except (ConnectionError, asyncio.IncompleteReadError) as exc:
            logger.info("tus {} {}: the client went away ({})", request.method, request.path, exc)
            response = error_response(ApiErrorCode.INVALID_FIELD, "the body was cut")
        except Exception as exc:  # the disk, the database, or a bug
            response = _failure(request, exc)
        response.headers["Tus-Resumable"] = TUS_VERSION
        if response.status == 412:
            response.headers["Tus-Version"] = TUS_VERSION
        if response.status >= 400 and request.body_exists and not request.content.is_eof():
            response.force_close()
        return response

    handle.__doc__ = handler.__doc__
    return handle


def _failure(request: web.Request, exc: Exception) -> web.Response:
    if is_disk_full(exc):
        return error_response(ApiErrorCode.DISK_FULL, "the storage disk is full")
    if isinstance(exc, OSError):
        logger.error("storage failure on {} {}: {}", request.method, request.path, exc)
        return error_response(ApiErrorCode.STORAGE_ERROR, "storage failure")
    logger.opt(exception=exc).error("unexpected failure on {} {}", request.method, request.path)
    return error_response(ApiErrorCode.INTERNAL_ERROR, "internal error")


async def _options(request: web.Request) -> web.Response:
    """``OPTIONS /files/``: what this server speaks (no key needed)."""
    store = request.app[STORE_KEY]
    headers = {
        "Tus-Resumable": TUS_VERSION,
        "Tus-Version": TUS_VERSION,
        "Tus-Extension": EXTENSIONS,
        "Tus-Max-Size": str(store.max_file_size),
        "Tus-Checksum-Algorithm": ",".join(CHECKSUMS),
    }
    return web.Response(status=204, headers=headers)


def _state_headers(
    tus: TusService, record: UploadRecord, offset: int, *, changed: bool = False
) -> dict[str, str]:
    """``Upload-Offset`` and, while unfinished, ``Upload-Expires`` (from now when the
    request ``changed`` the upload)."""
    headers = {"Upload-Offset": str(offset)}
    expires = tus.expires(record)
    if changed:
        expires = datetime.fromtimestamp(int(tus.now()), UTC) + timedelta(seconds=tus.manager.ttl_s)
    if expires is not None and offset < record.total_size:
        headers["Upload-Expires"] = http_date(expires)
    return headers


async def _create(request: web.Request) -> web.Response:
    """``POST /files/``: creation (and creation-with-upload)."""
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
    body = init_body(meta, length, caller)
    if "job_id" in meta:
        await _require_no_result(request, body["user_role"], body["user_id"])
    with_bytes = request.content_type == OFFSET_TYPE and request.body_exists
    if not with_bytes and request.body_exists and request.content_length:
        raise TusError(415, "UNSUPPORTED_MEDIA_TYPE", f"the first bytes need {OFFSET_TYPE}")
    record = await tus.manager.init(body, caller)
    headers = {"Location": f"/files/{record.upload_id}"}
    with tus.hold(record.upload_id):
        if with_bytes:
            offset = await tus.write(request, record, caller, "0")
            headers.update(_state_headers(tus, record, offset, changed=True))
        elif length == 0:
            await tus.finish(record, caller)
        else:
            headers.update(_state_headers(tus, record, 0))
            del headers["Upload-Offset"]
    return web.Response(status=201, headers=headers)


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
    return web.Response(status=200, headers=headers)


async def _patch(request: web.Request) -> web.Response:
    """``PATCH /files/{upload_id}``: the next bytes, at the upload's offset."""
    tus = request.app[TUS_KEY]
    caller = await tus.caller(request)
    upload_id = request.match_info["upload_id"]
    if request.content_type != OFFSET_TYPE:
        raise TusError(415, "UNSUPPORTED_MEDIA_TYPE", f"a PATCH body must be {OFFSET_TYPE}")
    await tus.live(upload_id, caller)  # another principal never holds the upload's lock
    with tus.hold(upload_id):
        record = await tus.live(upload_id, caller)
        offset = await tus.write(request, record, caller, request.headers.get("Upload-Offset"))
    return web.Response(status=204, headers=_state_headers(tus, record, offset, changed=True))


async def _delete(request: web.Request) -> web.Response:
    """``DELETE /files/{upload_id}``: termination (the partial is removed)."""
    tus = request.app[TUS_KEY]
    caller = await tus.caller(request)
    upload_id = request.match_info["upload_id"]
    await tus.live(upload_id, caller)
    with tus.hold(upload_id):
        await tus.live(upload_id, caller)
        await tus.drop_lingering(upload_id)
        await tus.manager.cancel(upload_id, caller)
    return web.Response(status=204)
