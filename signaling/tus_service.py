"""The state of tus uploads beside :class:`~signaling.upload_manager.UploadManager`:
the per-upload lock, expiry, the PATCH body with its deadlines and checksum, partials
kept open between PATCHes, and completion (see :mod:`signaling.tus` for the routes).

Source: the tus protocol 1.0.0, sections "Core Protocol", "Checksum", "Expiration";
tusd ``pkg/handler/unrouted_handler.go`` (423 while an upload is locked); PostgreSQL
advisory locks (https://www.postgresql.org/docs/current/explicit-locking.html).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator, Callable, Collection
from datetime import datetime

from aiohttp import web
from loguru import logger

from signaling.api_common import ApiError, ApiErrorCode
from signaling.auth import Caller, Role
from signaling.config_storage import DEFAULT_TUS_IDLE_TIMEOUT_S, DEFAULT_TUS_PATCH_DEADLINE_S
from signaling.db import UploadRecord
from signaling.results_api import CHUNK_BYTES
from signaling.results_store import Stored
from signaling.tus_fields import Checksum, TusError, counter, parse_checksum, result_of
from signaling.upload_manager import UploadManager

__all__ = ["LINGER_S", "MAX_LINGERING", "PIECE_BYTES", "TusService"]

LINGER_S = 30.0
"""How long an unfinished upload's partial stays open after a PATCH, seconds."""
MAX_LINGERING = 256
"""Most partials kept open between PATCHes (each holds a descriptor)."""
PIECE_BYTES = CHUNK_BYTES
"""Bytes of a PATCH body gathered before one write (1 MiB; one more in flight)."""
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


class TusService:
    """The tus side of one app's :class:`UploadManager`.

    Args:
        manager: the app's resumable uploads.
        read_timeout_s: longest wait for the next bytes of a body, seconds (the
            ``tus_idle_timeout_s`` setting).
        patch_deadline_s: longest time one body may take, seconds (the
            ``tus_patch_deadline_s`` setting).
        now: the clock deciding expiry (Unix time, seconds); tests move it.
        allowed_origins: normalized web origins whose pages may use the routes from a
            browser (CORS, :mod:`signaling.tus_cors`), besides the server's own.
    """

    def __init__(
        self,
        manager: UploadManager,
        *,
        read_timeout_s: float = DEFAULT_TUS_IDLE_TIMEOUT_S,
        patch_deadline_s: float = DEFAULT_TUS_PATCH_DEADLINE_S,
        now: Callable[[], float] = time.time,
        allowed_origins: Collection[str] = (),
    ) -> None:
        self.manager = manager
        self.allowed_origins = frozenset(allowed_origins)
        self.read_timeout_s = read_timeout_s
        self.patch_deadline_s = patch_deadline_s
        self.now = now
        self.linger_s = LINGER_S
        self._busy: set[str] = set()
        self._releases = 0  # holds ended so far, of any upload
        self._lingering: dict[str, asyncio.TimerHandle] = {}
        self._closing: set[asyncio.Future[None]] = set()

    async def caller(self, request: web.Request) -> Caller:
        """The caller: any valid key (401 / 403 as the other storage routes)."""
        auth = self.manager.store.auth
        return await auth.require(request, Role.ADMIN, Role.WORKER, Role.CLIENT)

    @contextlib.asynccontextmanager
    async def hold(self, upload_id: str) -> AsyncIterator[None]:
        """One changing request per upload, in this process and (on PostgreSQL) in every
        instance sharing the database (:meth:`UploadManager.upload_lock`): TusError 423
        UPLOAD_LOCKED while another runs."""
        if upload_id in self._busy:
            raise TusError(423, "UPLOAD_LOCKED", f"upload {upload_id!r} is busy; try again")
        self._busy.add(upload_id)
        try:
            async with self.manager.upload_lock(upload_id) as held:
                if not held:
                    raise TusError(
                        423, "UPLOAD_LOCKED", f"upload {upload_id!r} is busy elsewhere; try again"
                    )
                yield
        finally:
            self._busy.discard(upload_id)
            self._releases += 1

    def quiet_mark(self, upload_id: str) -> tuple[bool, int]:
        """A mark for :meth:`still_quiet`, taken before reading ``upload_id``'s record."""
        return upload_id not in self._busy, self._releases

    def still_quiet(self, mark: tuple[bool, int]) -> bool:
        """Whether no changing request held any upload since ``mark`` was taken (none
        held this one then): a record read since is as fresh as one read now, for this
        process's tus requests (others are raced as ever)."""
        idle, releases = mark
        return idle and releases == self._releases

    def expires(self, record: UploadRecord) -> datetime | None:
        """When the unfinished ``record`` expires, else ``None``."""
        return self.manager.expires(record)

    async def live(self, upload_id: str, caller: Caller) -> UploadRecord:
        """The upload ``upload_id`` of ``caller``, unless gone; an expired one is
        cancelled first (its partial removed).

        Raises:
            ApiError: UPLOAD_NOT_FOUND (unknown, malformed, another principal's); GONE
                (terminated, or expired).
        """
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise ApiError(ApiErrorCode.UPLOAD_NOT_FOUND, f"no upload {upload_id!r}")
        record = await self.manager.record(upload_id, caller)  # cancels an expired one
        if record.status == "cancelled":
            raise ApiError(ApiErrorCode.GONE, f"upload {upload_id!r} was terminated or expired")
        expires = self.expires(record)
        if expires is not None and self.now() >= expires.timestamp():
            await self.drop_lingering(upload_id)
            with contextlib.suppress(ApiError):  # completed or cancelled meanwhile
                await self.manager.cancel(upload_id, caller)
            logger.info("tus upload {} expired", upload_id)
            raise ApiError(ApiErrorCode.GONE, f"upload {upload_id!r} expired")
        return record

    async def _body(self, request: web.Request, checksum: Checksum | None) -> AsyncIterator[bytes]:
        """The request body as it arrives (pieces of at most :data:`PIECE_BYTES`),
        within the deadlines; checked against ``checksum`` at its end (each piece is
        hashed in a thread, in order, while the next is read)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.patch_deadline_s
        hashing: asyncio.Future[None] | None = None
        try:
            while True:
                try:
                    data = request.content.read_nowait(-1)  # what is buffered
                    if not data:
                        timeout = min(deadline, loop.time() + self.read_timeout_s)
                        async with asyncio.timeout_at(timeout):
                            data = await request.content.read(PIECE_BYTES)
                except TimeoutError:
                    raise TusError(408, "REQUEST_TIMEOUT", "the body was too slow") from None
                if not data:
                    break
                if checksum is not None:
                    if hashing is not None:
                        await hashing
                    hashing = loop.run_in_executor(None, checksum.update, data)
                yield data
            if hashing is not None:
                last, hashing = hashing, None
                await last
        finally:
            if hashing is not None:  # the body failed: its checksum is not wanted
                hashing.add_done_callback(lambda done: done.cancelled() or done.exception())
        if checksum is not None:
            checksum.check()

    async def write(
        self, request: web.Request, record: UploadRecord, caller: Caller, offset_header: str | None
    ) -> tuple[int, UploadRecord, Stored | None]:
        """Append the body of ``request`` at ``offset_header``, which must be the
        upload's offset; complete the upload when its last byte arrived. Returns the new
        offset, the record after the write (its ``updated_at`` gives the expiry) and,
        when this request completed a result upload, its :class:`Stored` (the download
        token), else ``None``.
        An unfinished upload holding all its bytes (its completion failed) is completed
        by any PATCH at its end, even an empty one.

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
        if record.status == "completed":
            return held, record, None
        if not request.body_exists:
            stored = None
            if held == record.total_size:  # every byte held, a completion failed before
                stored = await self.finish(record, caller)
            return held, record, stored
        await self.manager.keep_open(record)  # the hash made on the way serves finish
        stored = None
        try:
            written, record = await self.manager.put_bytes(
                record.upload_id,
                offset,
                self._body(request, checksum),
                caller,
                keep_on_error=checksum is None,
                known=record,
            )
            held = offset + written
            if held == record.total_size:
                stored = await self.finish(record, caller)
            else:
                await self._linger(record)
        finally:
            await self.manager.let_go(record.upload_id)
        return held, record, stored

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

    async def finish(self, record: UploadRecord, caller: Caller) -> Stored | None:
        """Complete the upload whose bytes are all held (as a result when it is one:
        then its :class:`Stored`, with the download token ``POST /upload`` gives)."""
        result = result_of(record)
        await self.drop_lingering(record.upload_id)
        stored = None
        if result is None:
            done = await self.manager.complete(record.upload_id, caller)
        else:
            done, stored = await self.manager.complete_result(record.upload_id, caller, *result)
        logger.info("tus upload {} completed: {} bytes", done.upload_id, done.total_size)
        return stored
