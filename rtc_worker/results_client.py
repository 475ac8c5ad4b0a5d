"""HTTP client of the storage service (the signaling server's ``/upload`` and
``/download`` routes): the worker uploads a results ZIP, the client downloads it.

Both directions stream from or to a file (never the whole body in memory). An upload
is retried with exponential backoff while the service is unreachable or answers 5xx;
a 4xx answer is final. A download goes to a temporary file next to the target (the
file layer's atomic writer), is hashed while it streams (its one hasher), and is
published only when its sha256 matches.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import aiohttp
from loguru import logger
from tenacity import (
    AsyncRetrying,
    RetryError,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from rtc_worker.storage import AtomicFile, ContentHasher, layout

__all__ = [
    "CHUNK_BYTES",
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
    """

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class StoredResults:
    """The storage service's answer to an upload.

    Attributes:
        job_id: the id the file is stored under.
        download_path: where it is served, relative to the service (``/download/{job_id}``).
        size: bytes stored.
        sha256: the stored content's sha256 (hex).
        attempts: how many uploads it took.
    """

    job_id: str
    download_path: str
    size: int
    sha256: str
    attempts: int


@dataclass(frozen=True)
class DownloadedResults:
    """A verified download: where it was saved, its size (bytes) and sha256."""

    path: Path
    size: int
    sha256: str


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
        retries: upload attempts after the first one.
        backoff_s: the first wait before a retry, seconds (doubling each time).
        timeout_s: the limit of one request, seconds.
    """

    url: str
    api_key: str | None = field(repr=False)
    retries: int = 5
    backoff_s: float = 0.5
    timeout_s: float = 300.0

    async def _upload_once(
        self, session: aiohttp.ClientSession, open_file: Opener, job_id: str
    ) -> StoredResults:
        file = await asyncio.to_thread(open_file)
        try:
            size = (await asyncio.to_thread(os.fstat, file.fileno())).st_size
            headers = {
                **_headers(self.api_key),
                "X-Job-Id": job_id,
                "Content-Type": "application/zip",
                "Content-Length": str(size),
            }
            url = self.url.rstrip("/") + "/upload"
            async with session.post(url, data=_file_chunks(file), headers=headers) as response:
                if response.status != 201:
                    text = (await response.text())[:500]
                    raise ResultsServiceError(
                        f"upload of {job_id} answered {response.status}: {text}", response.status
                    )
                body = await response.json()
        finally:
            await asyncio.to_thread(file.close)
        return StoredResults(
            job_id=str(body["job_id"]),
            download_path=str(body["download_url"]),
            size=int(body["size"]),
            sha256=str(body["sha256"]),
            attempts=0,
        )

    async def upload(self, open_file: Opener, job_id: str) -> StoredResults:
        """Upload a file to ``{url}/upload`` under ``job_id`` (raw body, ``X-Job-Id``).

        Args:
            open_file: opens the file (streamed from its descriptor); called once per
                attempt, the file is closed after it.
            job_id: the id to store it under.

        Returns:
            What the service stored.

        Raises:
            ResultsServiceError: a 4xx answer (not retried), or every attempt failed
                (the service unreachable, 5xx, or the file unreadable).
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
                        stored = await self._upload_once(session, open_file, job_id)
                        number = attempt.retry_state.attempt_number
                        return dataclasses.replace(stored, attempts=number)
            except RetryError as exc:
                last = exc.last_attempt.exception()
                raise ResultsServiceError(
                    f"upload of {job_id} failed after {self.retries + 1} attempts: {last}"
                ) from None
        raise AssertionError("unreachable")  # pragma: no cover

    async def download(
        self, job_id: str, output_dir: Path, *, sha256: str | None = None, keep: bool = False
    ) -> DownloadedResults:
        """Fetch ``{url}/download/{job_id}`` into ``output_dir/results-{job_id}.zip``.

        The body streams into the atomic writer's temporary file while it is hashed;
        it is published only when its sha256 equals ``sha256`` (when given), else the
        service's ``X-Content-SHA256`` header (when sent). With ``keep`` the service
        keeps the file after the download (``?keep=true``; it is otherwise deleted when
        ``AUTO_DELETE`` is on).

        Raises:
            ResultsServiceError: the service answered an error, or the sha256 does not
                match (nothing is left behind).
            aiohttp.ClientError, OSError: the connection or the disk failed.
            ValueError: ``job_id`` makes no file name.
        """
        url = f"{self.url.rstrip('/')}/download/{job_id}" + ("?keep=true" if keep else "")
        name = layout.results_zip_name(job_id)
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, headers=_headers(self.api_key)) as response,
        ):
            if response.status != 200:
                text = (await response.text())[:500]
                raise ResultsServiceError(
                    f"download of {job_id} answered {response.status}: {text}", response.status
                )
            expected = (sha256 or response.headers.get("X-Content-SHA256") or "").lower() or None
            target = await asyncio.to_thread(_open_target, output_dir, name)
            hasher = ContentHasher()
            try:
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    hasher.update(chunk)
                    await asyncio.to_thread(target.write, chunk)
                got = hasher.hexdigest()
                if expected is not None and got != expected:
                    raise ResultsServiceError(
                        f"sha256 mismatch for {job_id}: expected {expected}, got {got}"
                    )
                await asyncio.to_thread(target.publish)
            except BaseException:
                await asyncio.to_thread(target.abort)
                raise
        path = output_dir / name
        logger.info("downloaded {}: {} bytes, sha256 {}", path, hasher.size, got)
        return DownloadedResults(path, hasher.size, got)


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
) -> DownloadedResults:
    """:meth:`ResultsServiceClient.download` in one call (the ``rtc-client download``
    command).

    Raises:
        As :meth:`ResultsServiceClient.download`.
    """
    client = ResultsServiceClient(storage_url, api_key, timeout_s=timeout_s)
    return await client.download(job_id, output_dir, sha256=sha256, keep=keep)
