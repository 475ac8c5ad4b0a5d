"""The read and delete routes of the result store: ``GET``/``HEAD /download/{job_id}``,
``DELETE /delete/{job_id}`` and ``GET /list`` (see :mod:`signaling.results_api` for the
table, :mod:`signaling.auth` for who may do what).

They only read the database, except the delete and the bookkeeping after a complete
download, so they keep working on a full disk: a delete gives up the database's reserve
file when SQLite has no room (:meth:`~signaling.results_store.ResultsService.delete`),
and a download whose ``downloaded_at`` cannot be recorded is still served. A download
may ask for one byte range (RFC 9110 section 14; see :func:`_download`).
"""

from __future__ import annotations

from aiohttp import hdrs, web
from loguru import logger
from pydantic import BaseModel, ConfigDict, field_validator

from signaling.api_common import ApiError, ApiErrorCode, error_response, now_timestamp
from signaling.auth import Role
from signaling.byte_ranges import RangeNotSatisfiable, select_range, strong_etag
from signaling.db import FileRecord
from signaling.db_engine import DATABASE_ERRORS, STORAGE_ERRORS
from signaling.results_api import check_job_id
from signaling.results_store import STORE_KEY, ResultsService

__all__ = ["DownloadQuery", "add_read_routes"]

_QUERY_BOOLS = frozenset({"true", "false", "1", "0", "yes", "no", "on", "off"})


class DownloadQuery(BaseModel):
    """The ``keep`` parameter of ``GET /download/{job_id}``; other parameters (``token``,
    ``owner``) are read by :mod:`signaling.auth`.

    Attributes:
        keep: ``1``, ``true``, ``yes`` or ``on`` (any case, surrounding spaces ignored)
            keep the record after the download; any other value (or none) does not.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    keep: bool = False

    @field_validator("keep", mode="before")
    @classmethod
    def _documented_words(cls, value: object) -> object:
        """Pass the documented words on to pydantic's bool parsing; any other text is
        "not keep" (documented: it never makes the download fail)."""
        if isinstance(value, str):
            word = value.strip().lower()
            return word if word in _QUERY_BOOLS else False
        return value


def add_read_routes(app: web.Application) -> None:
    """Add the download, delete and list routes to ``app`` (``HEAD`` beside ``GET``)."""
    app.router.add_get("/download/{job_id}", _download)
    app.router.add_delete("/delete/{job_id}", _delete)
    app.router.add_get("/list", _list)


def _headers(response: web.StreamResponse, record: FileRecord) -> None:
    response.content_type = record.mime_type
    response.content_length = record.file_size
    response.headers["Content-Disposition"] = f'attachment; filename="{record.job_id}"'
    response.headers["X-Content-SHA256"] = record.sha256
    response.headers[hdrs.ACCEPT_RANGES] = "bytes"
    response.headers[hdrs.ETAG] = strong_etag(record.sha256)


async def _after_download(
    store: ResultsService, record: FileRecord, *, by_owner: bool, keep: bool
) -> None:
    """Record the complete download; the owner's (without ``keep``) deletes the record."""
    try:
        await store.db.mark_downloaded(record.owner, record.job_id, now_timestamp())
    except DATABASE_ERRORS as exc:  # served anyway; the disk may be full
        logger.warning("could not record the download of {!r}: {}", record.job_id, exc)
    if store.auto_delete and by_owner and not keep:
        try:
            await store.delete(record.owner, record.job_id)
        except ApiError:  # deleted meanwhile
            return
        except STORAGE_ERRORS as exc:  # the answer is sent: log it, keep the file
            logger.error("could not delete {!r} after its download: {}", record.job_id, exc)
            return
        logger.info("job {!r} of {} downloaded and deleted", record.job_id, record.owner)


def _not_satisfiable(record: FileRecord, refused: RangeNotSatisfiable) -> web.Response:
    """416 RANGE_NOT_SATISFIABLE with ``Content-Range: bytes */<size>``."""
    response = error_response(
        ApiErrorCode.RANGE_NOT_SATISFIABLE,
        f"the range is not satisfiable: the result of job {record.job_id!r} has "
        f"{record.file_size} bytes",
    )
    response.headers[hdrs.CONTENT_RANGE] = refused.content_range()
    response.headers[hdrs.ACCEPT_RANGES] = "bytes"
    return response


async def _download(request: web.Request) -> web.StreamResponse:
    """``GET /download/{job_id}[?keep=true]``: stream the file, then maybe delete it.

    ``downloaded_at`` is set and (with ``AUTO_DELETE``, for the owner's download,
    without ``keep=true``) the record deleted only after the last byte was handed to
    the connection *and* the whole content went out in this one answer; an
    interrupted download, and a ``Range`` request for less than the whole (the
    resume of a cut download included), change nothing. ``HEAD`` answers the headers
    and changes nothing.

    Byte ranges (RFC 9110 section 14, :mod:`signaling.byte_ranges`): every answer
    carries ``Accept-Ranges: bytes`` and the strong ``ETag`` ``"<sha256>"``; a single
    range answers 206 with ``Content-Range`` and only those bytes, read from the
    blob backend from its start (S3: a ranged GET); an unsatisfiable one 416
    RANGE_NOT_SATISFIABLE with ``Content-Range: bytes */<size>``; several ranges, or
    an ``If-Range`` that does not match, the whole content (200). Who may download is
    decided first, so a ``Range`` is refused exactly like a plain GET.
    """
    store = request.app[STORE_KEY]
    job_id = check_job_id(request.match_info["job_id"])
    access = await store.auth.resolve_owner(request, job_id)
    record = await store.get_live(access.owner, job_id)
    if access.sha256 is not None and access.sha256 != record.sha256:
        raise ApiError(
            ApiErrorCode.GONE, f"the result of job {job_id!r} was replaced since this token"
        )
    if request.method == "HEAD":
        response = web.StreamResponse(status=200)
        _headers(response, record)
        await response.prepare(request)
        await response.write_eof()
        return response
    query = DownloadQuery.model_validate(dict(request.query))
    try:
        span = select_range(
            request.headers.get(hdrs.RANGE),
            request.headers.get(hdrs.IF_RANGE),
            strong_etag(record.sha256),
            record.file_size,
        )
    except RangeNotSatisfiable as refused:
        return _not_satisfiable(record, refused)
    start, end = (0, record.file_size) if span is None else (span.start, span.end)
    try:
        reader = await store.backend.open_reader(record.sha256, start, end)
    except FileNotFoundError:  # removed by a concurrent delete
        raise ApiError(ApiErrorCode.GONE, f"the file of job {job_id!r} was deleted") from None
    sent = 0
    try:
        response = web.StreamResponse(status=200 if span is None else 206)
        _headers(response, record)
        if span is not None:
            response.content_length = span.length
            response.headers[hdrs.CONTENT_RANGE] = span.content_range()
        await response.prepare(request)
        async for chunk in reader.chunks():
            await response.write(chunk)
            sent += len(chunk)
        await response.write_eof()
    finally:
        await reader.close()
    if start == 0 and end == record.file_size and sent == record.file_size:
        await _after_download(store, record, by_owner=access.by_owner, keep=query.keep)
    return response


async def _delete(request: web.Request) -> web.Response:
    """``DELETE /delete/{job_id}``: 200 ``{"job_id", "deleted": true}``; 404 / 410."""
    store = request.app[STORE_KEY]
    job_id = check_job_id(request.match_info["job_id"])
    access = await store.auth.resolve_owner(request, job_id)
    if access.sha256 is not None:
        record = await store.get_live(access.owner, job_id)
        if record.sha256 != access.sha256:
            raise ApiError(
                ApiErrorCode.GONE, f"the result of job {job_id!r} was replaced since this token"
            )
    await store.delete(access.owner, job_id)
    return web.json_response({"job_id": job_id, "deleted": True})


async def _list(request: web.Request) -> web.Response:
    """``GET /list``: 200 ``{"files": [record, ...]}``, deleted records included: the
    caller's own; an admin's: everyone's, or those of ``?owner=``."""
    store = request.app[STORE_KEY]
    caller = await store.auth.require(request, Role.ADMIN, Role.CLIENT, Role.WORKER)
    owner: str | None = caller.principal
    if caller.role is Role.ADMIN:
        owner = request.query.get("owner") or None
    records = await store.db.records(owner)
    return web.json_response({"files": [record.as_dict() for record in records]})
