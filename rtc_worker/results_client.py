"""HTTP client of the storage service (the signaling server's ``/upload`` and
``/download`` routes): the worker uploads a results ZIP for its owner, the owner
downloads it.

Both directions stream from or to a file (never the whole body in memory). An upload
declares its sha256 (``X-Content-SHA256``, hashed from the file first) and its owner
(``X-Owner``); the service answers with a download token (a capability for that one
result) that the worker hands to the owner. An upload is retried with exponential
backoff while the service is unreachable or answers 5xx; a 4xx answer is final (a
retry after a lost answer is safe: the same content under the same owner and job is
answered as stored). A download presents the token (``X-Download-Token``) or a key,
goes to a temporary file next to the target (the file layer's atomic writer), is
hashed while it streams (its one hasher), and is published only when its sha256
matches. A download cut mid-body resumes where it stopped with an HTTP byte range
(``Range: bytes=N-`` and ``If-Range`` with the answer's ``ETag``, RFC 9110 section 14):
the rest is appended and hashed on; when the result was replaced meanwhile the service
answers the whole new content, and the download starts over with it.

The service's API: :mod:`signaling.results_api`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import aiohttp
from loguru import logger
from pydantic import BaseModel, Field, ValidationError
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from protocol.messages import TOKEN_PATTERN, is_valid_job_id
from rtc_worker.storage import AtomicFile, ContentHasher, hash_file, layout

__all__ = [
    "CHUNK_BYTES",
    "REDIRECT_REFUSED",
    "DownloadedResults",
    "ResultsServiceClient",
    "ResultsServiceError",
    "StoredResults",
    "download_results",
]

#: Bytes read from or written to disk per call off the event loop (1 MiB).
CHUNK_BYTES = 1 << 20

Opener = Callable[[], BinaryIO]
"""Opens the file to upload (a fresh reader per attempt; closed after it)."""


class ResultsServiceError(Exception):
    """The storage service refused a request, or every attempt failed.

    Attributes:
        status: the HTTP status of the last answer, or None when none came.
        code: the error code of the service's JSON answer (``JOB_EXISTS``,
            ``TOKEN_EXPIRED``, ``DISK_FULL``...), or None.
    """

    def __init__(self, message: str, status: int | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code


REDIRECT_REFUSED = "REDIRECT_REFUSED"
"""The code of a 3xx answer: redirects are never followed (the API key and the download
token would go to whatever host the answer names)."""


async def _refusal(response: aiohttp.ClientResponse, what: str) -> ResultsServiceError:
    """The error for a non-success answer, with the code of its JSON body if any
    (:data:`REDIRECT_REFUSED` for a 3xx, whatever its body)."""
    if 300 <= response.status < 400:
        return ResultsServiceError(
            f"{what} answered {response.status}: redirects are not followed",
            response.status,
            REDIRECT_REFUSED,
        )
    text = (await response.text())[:500]
    code = None
    try:
        error = json.loads(text).get("error", {})
        code = str(error["code"]) if isinstance(error, dict) and "code" in error else None
    except (ValueError, AttributeError):
        pass
    return ResultsServiceError(f"{what} answered {response.status}: {text}", response.status, code)


class _Receipt(BaseModel):
    """The storage service's answer to an upload (docs/openapi.yaml, ``UploadReceipt``)."""

    job_id: str
    download_url: str = Field(min_length=1, pattern=r"^[^\r\n]+$")
    size: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    owner: str
    download_token: str = Field(pattern=TOKEN_PATTERN.pattern)
    expires_at: str


@dataclass(frozen=True)
class StoredResults:
    """The storage service's answer to an upload.

    Attributes:
        job_id: the id the file is stored under (scoped by its owner).
        download_path: where it is served, relative to the service (``/download/{job_id}``).
        size: bytes stored.
        sha256: the stored content's sha256 (hex).
        attempts: how many uploads it took.
        owner: the principal the result belongs to.
        download_token: a capability to download (or delete) this one result: base64url,
            never containing ``::``; give it to the owner.
        expires_at: when the token expires, ISO 8601 UTC (``YYYY-MM-DDTHH:MM:SSZ``).
    """

    job_id: str
    download_path: str
    size: int
    sha256: str
    attempts: int
    owner: str = ""
    download_token: str = ""
    expires_at: str = ""


@dataclass(frozen=True)
class DownloadedResults:
    """A verified download: where it was saved, its size (bytes), sha256, and how many
    times it was resumed after a cut."""

    path: Path
    size: int
    sha256: str
    resumes: int = 0


_CUT = (aiohttp.ClientPayloadError, aiohttp.ClientConnectionError, TimeoutError)
"""What a download cut mid-body raises (a resume may follow)."""


@dataclass
class _Download:
    """A download in progress: the temporary file, the hasher, what the service said of
    the content (its expected sha256, its ``ETag``, its size in bytes)."""

    target: AtomicFile | None = None
    hasher: ContentHasher = field(default_factory=ContentHasher)
    expected: str | None = None
    etag: str | None = None
    size: int | None = None

    @property
    def complete(self) -> bool:
        return self.size is not None and self.hasher.size == self.size

    @property
    def resumable(self) -> bool:
        return self.target is not None and self.etag is not None and self.size is not None

    def range_headers(self) -> dict[str, str]:
        """``Range`` and ``If-Range`` for the bytes still missing (none before any)."""
        if not self.resumable or self.hasher.size == 0:
            return {}
        return {"Range": f"bytes={self.hasher.size}-", "If-Range": str(self.etag)}

    def start_over(self) -> None:
        """Empty the temporary file and the hasher (blocking)."""
        assert self.target is not None
        self.target.file.seek(0)
        self.target.file.truncate()
        self.hasher = ContentHasher()


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


async def _file_chunks(file: BinaryIO) -> AsyncIterator[bytes]:
    fd = file.fileno()
    position = 0
    while chunk := await asyncio.to_thread(os.pread, fd, CHUNK_BYTES, position):
        position += len(chunk)
        yield chunk


def _worth_retrying(exc: BaseException) -> bool:
    """Retry while the service is unreachable or answers 5xx; a 4xx answer is final."""
    if isinstance(exc, ResultsServiceError):
        return exc.status is None or exc.status >= 500
    return isinstance(exc, aiohttp.ClientError | TimeoutError | ValueError | KeyError | OSError)


@dataclass(frozen=True)
class ResultsServiceClient:
    """The storage service as the worker and the client use it.

    Attributes:
        url: the service's base URL, e.g. ``http://127.0.0.1:8765``.
        api_key: sent as ``X-API-Key`` (never in the ``repr``, so never in a log).
        retries: upload attempts after the first one; resumes of a cut download.
        backoff_s: the first wait before a retry or a resume, seconds (doubling each time).
        timeout_s: the limit of one request, seconds.
    """

    url: str
    api_key: str | None = field(repr=False)
    retries: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 300.0

    async def _upload_once(
        self,
        session: aiohttp.ClientSession,
        open_file: Opener,
        job_id: str,
        owner: str,
        replace: bool,
    ) -> StoredResults:
        file = await asyncio.to_thread(open_file)
        try:
            size = (await asyncio.to_thread(os.fstat, file.fileno())).st_size
            digest = (await asyncio.to_thread(hash_file, file.fileno())).hexdigest()
            headers = {
                **_headers(self.api_key),
                "X-Job-Id": job_id,
                "X-Owner": owner,
                "X-Content-SHA256": digest,
                "Content-Type": "application/zip",
                "Content-Length": str(size),
            }
            if replace:
                headers["X-Replace"] = "true"
            url = self.url.rstrip("/") + "/upload"
            async with session.post(
                url, data=_file_chunks(file), headers=headers, allow_redirects=False
            ) as response:
                if response.status not in (200, 201):
                    raise await _refusal(response, f"upload of {job_id}")
                body = await response.json()
        finally:
            await asyncio.to_thread(file.close)
        try:
            receipt = _Receipt.model_validate(body)
        except ValidationError:
            raise ResultsServiceError(
                f"upload of {job_id}: the service's answer is not an upload receipt"
            ) from None
        if receipt.sha256 != digest:
            raise ResultsServiceError(f"upload of {job_id}: the service stored other content")
        return StoredResults(
            job_id=receipt.job_id,
            download_path=receipt.download_url,
            size=receipt.size,
            sha256=receipt.sha256,
            attempts=0,
            owner=receipt.owner,
            download_token=receipt.download_token,
            expires_at=receipt.expires_at,
        )

    async def upload(
        self, open_file: Opener, job_id: str, *, owner: str, replace: bool = False
    ) -> StoredResults:
        """Upload a file to ``{url}/upload`` as the result ``job_id`` of ``owner`` (raw
        body; headers ``X-Job-Id``, ``X-Owner``, ``X-Content-SHA256``, ``X-Replace``).

        Args:
            open_file: opens the file (hashed, then streamed from its descriptor); called
                once per attempt, the file is closed after it.
            job_id: the id to store it under (scoped by ``owner``).
            owner: the principal the result belongs to (the client's fingerprint, or an
                anonymous connection's principal).
            replace: replace a result of ``owner`` already stored under ``job_id``;
                without it the service refuses one with other content (409
                ``JOB_EXISTS``).

        Returns:
            What the service stored, with the download token for the owner.

        Raises:
            ResultsServiceError: a 4xx answer (not retried; ``code`` says why), or every
                attempt failed (the service unreachable, 5xx, or the file unreadable).
        """
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        retrying = AsyncRetrying(
            stop=stop_after_attempt(self.retries + 1),
            wait=wait_exponential(multiplier=self.backoff_s, exp_base=2),
            retry=retry_if_exception(_worth_retrying),
            before_sleep=lambda state: logger.warning(
                "upload of {} failed (attempt {}): {}; retrying",
                job_id,
                state.attempt_number,
                state.outcome.exception() if state.outcome else "?",
            ),
        )
        async with aiohttp.ClientSession(timeout=timeout) as session:
            try:
                async for attempt in retrying:
                    with attempt:
                        stored = await self._upload_once(session, open_file, job_id, owner, replace)
                        number = attempt.retry_state.attempt_number
                        return dataclasses.replace(stored, attempts=number)
            except RetryError as exc:
                last = exc.last_attempt.exception()
                raise ResultsServiceError(
                    f"upload of {job_id} failed after {self.retries + 1} attempts: {last}"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def download(
        self,
        job_id: str,
        output_dir: Path,
        *,
        sha256: str | None = None,
        keep: bool = False,
        token: str | None = None,
        owner: str | None = None,
    ) -> DownloadedResults:
        """Fetch ``{url}/download/{job_id}`` into ``output_dir/results-{job_id}.zip``.

        Presents ``token`` (``X-Download-Token``) when given, and the key (when set).
        The body streams into the atomic writer's temporary file while it is hashed;
        it is published only when its sha256 equals ``sha256`` (when given), else the
        service's ``X-Content-SHA256`` header (when sent). The owner's download (its
        token or its own key) deletes the file afterwards when ``AUTO_DELETE`` is on,
        unless ``keep`` (``?keep=true``).

        A download cut mid-body (the connection dropped, a timeout) is resumed up to
        ``retries`` times, waiting ``backoff_s`` doubling, with ``Range: bytes=N-`` and
        ``If-Range: <ETag>`` (RFC 9110 section 14): a 206 answer's bytes are appended;
        a 200 answer (the result was replaced meanwhile) starts the file over. The
        service counts only an answer with every byte as the owner's complete download,
        so a resumed download is not deleted by ``AUTO_DELETE``.

        Args:
            job_id: the job.
            output_dir: where the ZIP goes (created).
            sha256: the expected digest (lowercase hex), or None.
            keep: keep the file on the service.
            token: the download token of the upload's answer, or None.
            owner: with an admin key, whose result (``?owner=``), or None.

        Raises:
            ResultsServiceError: the service answered an error (``code``: e.g.
                ``TOKEN_EXPIRED``, ``NOT_FOUND``, ``GONE``), or the sha256 does not
                match (nothing is left behind).
            aiohttp.ClientError, OSError: the connection or the disk failed.
            ValueError: ``job_id`` is not a job id.
        """
        if not is_valid_job_id(job_id):
            raise ValueError(f"not a job id: {job_id!r}")
        query = {"keep": "true"} if keep else {}
        if owner is not None:
            query["owner"] = owner
        url = f"{self.url.rstrip('/')}/download/{job_id}"
        headers = _headers(self.api_key)
        if token:
            headers["X-Download-Token"] = token
        name = layout.results_zip_name(job_id)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        state = _Download()
        resumes = 0
        try:
            async with aiohttp.ClientSession(timeout=timeout) as session:
                while True:
                    sent = {**headers, **state.range_headers()}
                    try:
                        async with session.get(
                            url, params=query, headers=sent, allow_redirects=False
                        ) as response:
                            await self._receive(response, state, job_id, output_dir / name, sha256)
                        break
                    except _CUT as exc:
                        if state.complete:
                            break
                        if not state.resumable or resumes >= self.retries:
                            raise
                        logger.warning(
                            "download of {} cut after {} bytes ({}); resuming",
                            job_id,
                            state.hasher.size,
                            type(exc).__name__,
                        )
                        await asyncio.sleep(self.backoff_s * 2**resumes)
                        resumes += 1
            got = state.hasher.hexdigest()
            if state.expected is not None and got != state.expected:
                raise ResultsServiceError(
                    f"sha256 mismatch for {job_id}: expected {state.expected}, got {got}"
                )
            assert state.target is not None
            await asyncio.to_thread(state.target.publish)
        except BaseException:
            if state.target is not None:
                await asyncio.to_thread(state.target.abort)
            raise
        path = output_dir / name
        logger.info("downloaded {}: {} bytes, sha256 {}", path, state.hasher.size, got)
        return DownloadedResults(path, state.hasher.size, got, resumes)

    @staticmethod
    async def _receive(
        response: aiohttp.ClientResponse,
        state: _Download,
        job_id: str,
        target: Path,
        sha256: str | None,
    ) -> None:
        """Take one answer of a download into ``state``: 200 (the whole content: into
        a new temporary file, or over what a resume had, when the result was replaced)
        or 206 (the missing bytes of a resume)."""
        if response.status == 206 and state.target is not None:
            sent_range = response.headers.get("Content-Range", "")
            if not sent_range.startswith(f"bytes {state.hasher.size}-"):
                raise ResultsServiceError(f"download of {job_id}: the service sent another range")
        elif response.status == 200:
            if state.target is None:
                state.target = await asyncio.to_thread(_open_target, target.parent, target.name)
            else:
                await asyncio.to_thread(state.start_over)
            state.expected = (sha256 or response.headers.get("X-Content-SHA256") or "").lower()
            state.expected = state.expected or None
            state.etag = response.headers.get("ETag")
            state.size = response.content_length
        else:
            raise await _refusal(response, f"download of {job_id}")
        assert state.target is not None
        async for chunk in response.content.iter_chunked(CHUNK_BYTES):
            state.hasher.update(chunk)
            await asyncio.to_thread(state.target.write, chunk)


def _open_target(output_dir: Path, name: str) -> AtomicFile:
    """Create ``output_dir`` and an atomic file ``name`` in it (blocking)."""
    output_dir.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(output_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return AtomicFile(dir_fd, name, close_dir=True)
    except BaseException:
        os.close(dir_fd)
        raise


async def download_results(
    storage_url: str,
    job_id: str,
    output_dir: Path,
    *,
    api_key: str | None,
    sha256: str | None = None,
    keep: bool = False,
    timeout_s: float = 300.0,
    token: str | None = None,
) -> DownloadedResults:
    """:meth:`ResultsServiceClient.download` in one call (the ``rtc-client download``
    command).

    Raises:
        As :meth:`ResultsServiceClient.download`.
    """
    client = ResultsServiceClient(storage_url, api_key, timeout_s=timeout_s)
    return await client.download(job_id, output_dir, sha256=sha256, keep=keep, token=token)
