"""HTTP client of the relay road: relay objects in the storage service, as the sender
uploads them and the receiver fetches them (aiohttp; retries with tenacity).

A relay object is a tus upload created with the ``relay`` metadata key
(:mod:`signaling.relay_routes`). :meth:`RelayHttp.upload` creates it (``POST /files/``)
and sends its bytes in one streaming ``PATCH`` fed by the caller's ``pieces(offset)``;
after a dropped connection, a timeout or a 5xx it asks the upload's offset
(``HEAD /files/{id}``) and sends again from there, a bounded number of times. The
request that completes the upload answers where the object is read and with which
token (``Upload-Relay-Url``, ``Upload-Relay-Token``, ``Upload-Relay-Expires``,
``Upload-Relay-Sha256``); a ``HEAD`` of the completed upload answers them again, so an
answer lost on the way is not a lost object. :meth:`RelayHttp.fetch` reads a byte range
of an object with one ranged ``GET /relay/{id}`` (``X-Relay-Token``), streamed in pieces
of about :data:`FETCH_PIECE_BYTES`; a cut body raises, and the caller resumes with a new
range from what it verified.

Errors are :class:`RelayHttpError` with a code: ``RELAY_GONE`` (404/410: expired,
deleted, wrong token: the service does not say which), ``RELAY_REFUSED`` (401/403: the
key; also another refusal that no retry changes: a quota, a full disk),
``RELAY_UNREACHABLE`` (connection refused or reset, timeouts, 5xx, after the retries),
``RELAY_SHORT`` (the object is shorter than the range asked: 416, or a clipped 206).
A redirect (3xx) is never followed (the key and token would go to another host): it is
``RELAY_REFUSED``.

Deadlines: besides ``timeout_s`` for each wait (to connect, for the next bytes), each
PATCH and each GET's body must be done within ``timeout_s + bytes /``
:data:`MIN_RATE_BYTES_S` seconds, else RELAY_UNREACHABLE: a service that stops reading a
body, or trickles one, cannot hold a transfer for ever.

Secrets: the API key travels only in ``X-API-Key`` and the relay token only in
``X-Relay-Token``; neither is ever in a URL, a log line or an exception's text (errors
name the upload id, statuses and the service's error code, and are raised ``from None``
so no aiohttp exception holding the request's headers is chained).

Source: the tus protocol 1.0.0 (https://tus.io/protocols/resumable-upload), "Core
Protocol" (HEAD for the offset, PATCH from it); RFC 9110 section 14 (Range, 206, 416).
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import TypeVar

import aiohttp
from loguru import logger
from tenacity import AsyncRetrying, retry_if_exception, stop_after_attempt, wait_exponential

from protocol.relay_messages import TOKEN_PATTERN, UPLOAD_ID_PATTERN
from rtc_worker.relay_http_answers import (
    NETWORK_ERRORS,
    RELAY_GONE,
    RELAY_REFUSED,
    RELAY_SHORT,
    RELAY_UNREACHABLE,
    CheckedBody,
    RelayHttpError,
    RelayObject,
    check_span,
    completed,
    cut,
    refusal,
    retryable,
    service_code,
)

__all__ = [
    "FETCH_PIECE_BYTES",
    "MIN_RATE_BYTES_S",
    "READ_BUFFER_BYTES",
    "RELAY_GONE",
    "RELAY_REFUSED",
    "RELAY_SHORT",
    "RELAY_UNREACHABLE",
    "RelayHttp",
    "RelayHttpError",
    "RelayObject",
]

FETCH_PIECE_BYTES = 1 << 20
"""Most bytes :meth:`RelayHttp.fetch` yields at once (1 MiB)."""
READ_BUFFER_BYTES = 1 << 20
"""aiohttp's read buffer for a fetch (1 MiB, not its 64 KiB): the socket is paused only
when twice this waits, so each read hands on up to a whole piece. 256 MB over loopback
here: 1.3-3.2 GB/s; 4 MiB measured no faster, and slower with uvloop."""
PROBE_TIMEOUT_S = 3.0
"""Longest :meth:`RelayHttp.reachable` waits, seconds."""
TUS_VERSION = "1.0.0"
MIN_RATE_BYTES_S = 1_000_000
"""Slowest rate a PATCH or a GET's body may run at (1 MB/s): each must be done within
``timeout_s + bytes / MIN_RATE_BYTES_S`` seconds (aiohttp times only each read, and no
write at all)."""
_UPLOAD_ID = UPLOAD_ID_PATTERN
_PROBE_ID = "0" * 32

Pieces = Callable[[int], AsyncIterator[bytes]]
"""``pieces(offset)``: the object's bytes from ``offset`` to its end, in pieces."""
_T = TypeVar("_T")


class RelayHttp:
    """The storage service's relay objects, for one API key.

    Args:
        base_url: the service's base URL, e.g. ``http://127.0.0.1:8765`` (no path).
        api_key: the key (any role), sent only in ``X-API-Key``.
        session: an aiohttp session to use (not closed by :meth:`close`); by default one
            is made on first use and closed by :meth:`close`.
        timeout_s: longest wait to connect and for the next bytes of an answer,
            seconds; a whole PATCH or GET body has ``timeout_s + bytes /``
            :data:`MIN_RATE_BYTES_S` seconds.
        retries: most attempts of one step (create, each PATCH, the GET's answer) while
            the service is unreachable or answers 5xx.
        backoff_s: first wait between attempts, seconds (doubling, at most 5 s).
        min_rate_bytes_s: slowest rate of a whole PATCH or GET body, bytes per second
            (:data:`MIN_RATE_BYTES_S`).
    """

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 30.0,
        retries: int = 5,
        backoff_s: float = 0.2,
        min_rate_bytes_s: float = MIN_RATE_BYTES_S,
    ) -> None:
        self._base = base_url.rstrip("/")
        self._key = api_key
        self._session = session
        self._own_session = session is None
        self.timeout_s = timeout_s
        self.min_rate_bytes_s = min_rate_bytes_s
        self._timeout = aiohttp.ClientTimeout(
            total=None, sock_connect=timeout_s, sock_read=timeout_s
        )
        self._retries = max(1, retries)
        self._backoff_s = backoff_s

    def __repr__(self) -> str:
        return f"RelayHttp({self._base!r}, api_key=<hidden>)"

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
            self._own_session = True
        return self._session

    def _headers(self, extra: dict[str, str]) -> dict[str, str]:
        return {"X-API-Key": self._key, **extra}

    async def _retry(self, step: Callable[[], Awaitable[_T]]) -> _T:
        """``step()`` until it succeeds or fails for good: RELAY_UNREACHABLE is tried
        again (at most ``retries`` attempts, exponential backoff); the last error is
        raised."""
        async for attempt in AsyncRetrying(
            stop=stop_after_attempt(self._retries),
            wait=wait_exponential(multiplier=self._backoff_s, max=5.0),
            retry=retry_if_exception(retryable),
            reraise=True,
        ):
            with attempt:
                return await step()
        raise AssertionError("unreachable")  # pragma: no cover

    async def reachable(self) -> bool:
        """Whether the service is reachable with this key and serves relay objects,
        within :data:`PROBE_TIMEOUT_S` (3 s): ``GET /relay/{32 zeros}`` with the key
        and a token that reads nothing must answer 404 ``RELAY_NOT_FOUND`` (a bad key
        answers 401/403, a service without relay objects another 404). Never raises."""
        url = f"{self._base}/relay/{_PROBE_ID}"
        headers = self._headers({"X-Relay-Token": "probe"})
        try:
            async with self._http().get(
                url,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S),
                allow_redirects=False,
            ) as response:
                return response.status == 404 and await service_code(response) == "RELAY_NOT_FOUND"
        except (*NETWORK_ERRORS, ValueError) as exc:
            logger.info("the storage service is not reachable: {}", type(exc).__name__)
            return False

    async def upload(self, length: int, pieces: Pieces, *, name: str = "relay") -> RelayObject:
        """Store ``length`` bytes as a new relay object.

        Args:
            length: the object's length, bytes (> 0).
            pieces: ``pieces(offset)`` yields the object's bytes from ``offset`` to its
                end (exactly ``length - offset`` bytes, in pieces of any size; large
                pieces, 1 MiB or more, are fastest). Called once with 0 and again with
                the service's offset after each drop.
            name: the tus ``filename`` metadata (the service names a relay object
                by its id; never the plaintext's name).

        Returns:
            The completed :class:`RelayObject`.

        Raises:
            RelayHttpError: RELAY_REFUSED (401/403; quota ``QUOTA_EXCEEDED``, full disk
                ``DISK_FULL``, other 4xx: see ``service_code``), RELAY_GONE (the upload
                expired or was removed meanwhile), RELAY_UNREACHABLE (after the
                retries of the create and of the PATCHes).
            ValueError: ``length`` < 1, or ``pieces`` yielded more or fewer bytes than
                it should.
        """
        if length < 1:
            raise ValueError("a relay object holds at least one byte")
        upload_id = await self._retry(lambda: self._create(length, name))
        first = True

        async def send() -> RelayObject:
            nonlocal first
            offset = 0
            if not first:
                offset, done = await self._head(upload_id, length)
                if done is not None:
                    return done
            first = False
            return await self._patch(upload_id, offset, length, pieces)

        try:
            done = await self._retry(send)
        except BaseException:
            await self._terminate(upload_id)  # frees the quota at once (else it expires)
            raise
        logger.info("relay object {} stored: {} bytes", upload_id, length)
        return done

    async def _terminate(self, upload_id: str) -> None:
        """``DELETE /files/{id}`` of an upload given up: best effort, about 3 s at most
        (tried again while the service still holds the cut PATCH: 423)."""
        headers = self._headers({"Tus-Resumable": TUS_VERSION})
        url = f"{self._base}/files/{upload_id}"
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                while True:
                    async with self._http().delete(
                        url, headers=headers, allow_redirects=False
                    ) as response:
                        if response.status != 423:
                            return
                    await asyncio.sleep(0.05)
        except Exception as exc:  # unreachable: the unfinished upload expires
            logger.info("relay upload {}: not terminated ({})", upload_id, type(exc).__name__)

    async def _create(self, length: int, name: str) -> str:
        """``POST /files/``: the new upload's id."""
        meta = f"relay MQ==,filename {base64.b64encode(name.encode()).decode()}"
        headers = self._headers(
            {"Tus-Resumable": TUS_VERSION, "Upload-Length": str(length), "Upload-Metadata": meta}
        )
        try:
            async with self._http().post(
                f"{self._base}/files/",
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                if response.status != 201:
                    raise await refusal(response, "creating a relay object")
                location = response.headers.get("Location", "")
        except NETWORK_ERRORS as exc:
            raise cut("creating a relay object", exc) from None
        upload_id = location.rstrip("/").rpartition("/")[2]
        if not _UPLOAD_ID.fullmatch(upload_id):
            raise RelayHttpError(RELAY_REFUSED, "the service answered no upload location", 201)
        return upload_id

    async def _head(self, upload_id: str, length: int) -> tuple[int, RelayObject | None]:
        """``HEAD /files/{id}``: the upload's offset, and the object when complete."""
        headers = self._headers({"Tus-Resumable": TUS_VERSION})
        try:
            async with self._http().head(
                f"{self._base}/files/{upload_id}",
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                if response.status != 200:
                    raise await refusal(response, f"relay upload {upload_id}")
                offset = int(response.headers.get("Upload-Offset", "-1"))
                done = completed(upload_id, length, response)
        except NETWORK_ERRORS as exc:
            raise cut(f"relay upload {upload_id}", exc) from None
        except ValueError:
            raise RelayHttpError(RELAY_REFUSED, "the service answered no offset", 200) from None
        if not 0 <= offset <= length:
            raise RelayHttpError(RELAY_REFUSED, "the service answered a bad offset", 200)
        return offset, done

    async def _patch(self, upload_id: str, offset: int, length: int, pieces: Pieces) -> RelayObject:
        """One ``PATCH /files/{id}`` of the bytes from ``offset`` to the end."""
        headers = self._headers(
            {
                "Tus-Resumable": TUS_VERSION,
                "Upload-Offset": str(offset),
                "Content-Type": "application/offset+octet-stream",
                "Content-Length": str(length - offset),
            }
        )
        body = CheckedBody(pieces(offset), length - offset)
        try:
            async with (
                asyncio.timeout(self.deadline_s(length - offset)),
                self._http().patch(
                    f"{self._base}/files/{upload_id}",
                    headers=headers,
                    data=body.pieces(),
                    timeout=self._timeout,
                    allow_redirects=False,
                ) as response,
            ):
                if response.status != 204:
                    raise await refusal(response, f"relay upload {upload_id}")
                done = completed(upload_id, length, response)
        except NETWORK_ERRORS as exc:
            body.reraise()  # the caller's pieces failed: their error, not a drop
            raise cut(f"relay upload {upload_id}", exc) from None
        body.reraise()
        if done is None:  # a 204 short of the end: the service ended the body early
            raise RelayHttpError(RELAY_UNREACHABLE, f"relay upload {upload_id} is unfinished", 204)
        return done

    def deadline_s(self, nbytes: int) -> float:
        """Longest one request moving ``nbytes`` bytes may take, seconds:
        ``timeout_s + nbytes / min_rate_bytes_s``."""
        return self.timeout_s + nbytes / self.min_rate_bytes_s

    async def fetch(
        self, upload_id: str, token: str, start: int, end: int
    ) -> AsyncGenerator[bytes, None]:
        """The bytes ``[start, end)`` of the relay object ``upload_id``: one ranged
        ``GET /relay/{id}`` (``Range: bytes=start-(end-1)``), yielded in pieces of at
        most :data:`FETCH_PIECE_BYTES` (1 MiB) as they arrive (never the whole range
        in memory). An async generator: ``async for piece in relay.fetch(...)``.

        The request is tried again (``retries``) while no answer comes or the answer is
        a 5xx; a body cut midway raises RELAY_UNREACHABLE after the bytes that arrived:
        the caller resumes with a new range from what it verified.

        Raises:
            RelayHttpError: RELAY_GONE (404/410: no such object, expired, deleted, or
                not this token), RELAY_REFUSED (401/403: the key), RELAY_UNREACHABLE,
                RELAY_SHORT (the object ends before ``end``).
            ValueError: ``upload_id`` is not 32 hex digits, ``token`` is malformed, or
                not ``0 <= start < end``.
        """
        if not _UPLOAD_ID.fullmatch(upload_id) or not TOKEN_PATTERN.fullmatch(token):
            raise ValueError("a relay object is named by 32 hex digits and a token")
        if not 0 <= start < end:
            raise ValueError("a relay range needs 0 <= start < end")
        what = f"relay object {upload_id}"
        headers = self._headers({"X-Relay-Token": token, "Range": f"bytes={start}-{end - 1}"})
        url = f"{self._base}/relay/{upload_id}"

        async def get() -> aiohttp.ClientResponse:
            try:
                response = await self._http().get(
                    url,
                    headers=headers,
                    read_bufsize=READ_BUFFER_BYTES,
                    timeout=self._timeout,
                    allow_redirects=False,
                )
            except NETWORK_ERRORS as exc:
                raise cut(what, exc) from None
            if response.status not in (200, 206):
                try:
                    raise await refusal(response, what)
                finally:
                    response.release()
            return response

        response = await self._retry(get)
        try:
            check_span(response, start, end, what)
            expected = end - start
            got = 0
            deadline = asyncio.get_running_loop().time() + self.deadline_s(expected)
            pieces = response.content.iter_chunked(FETCH_PIECE_BYTES)
            try:
                while got < expected:
                    async with asyncio.timeout_at(deadline):  # times reads, not the caller
                        piece = await anext(pieces, b"")
                    if not piece:
                        break
                    extra = len(piece) > expected - got  # never past the range asked
                    piece = piece[: expected - got]
                    got += len(piece)
                    yield piece
                    if extra:
                        raise RelayHttpError(RELAY_UNREACHABLE, f"{what} sent more than asked")
            except NETWORK_ERRORS as exc:
                raise cut(f"{what} after {got} bytes", exc) from None
            if got != expected:
                raise RelayHttpError(RELAY_UNREACHABLE, f"{what} was cut after {got} bytes")
        finally:
            response.close()

    async def delete(self, upload_id: str, token: str) -> None:
        """Remove the relay object ``upload_id`` (``DELETE /relay/{id}`` with its token):
        best effort, one attempt bounded by ``timeout_s``; never raises (an object not
        removed expires)."""
        headers = self._headers({"X-Relay-Token": token})
        try:
            async with self._http().delete(
                f"{self._base}/relay/{upload_id}",
                headers=headers,
                timeout=self._timeout,
                allow_redirects=False,
            ) as response:
                if response.status not in (204, 404):
                    logger.info("relay object {}: delete answered {}", upload_id, response.status)
        except Exception as exc:  # best effort: expiry removes it otherwise
            logger.info("relay object {}: delete failed ({})", upload_id, type(exc).__name__)

    async def close(self) -> None:
        """Close the session this client made (a session passed in stays open)."""
        session, self._session = self._session, None
        if session is not None and self._own_session and not session.closed:
            await session.close()
