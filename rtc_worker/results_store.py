"""HTTP client of the storage service (the signaling server's ``/upload`` and
``/download`` routes): the worker uploads a results ZIP, the client downloads it.

Both directions stream from or to a file (never the whole body in memory). An upload
is retried with exponential backoff while the service is unreachable or answers 5xx;
a 4xx answer is final. A download goes to a temporary file next to the target, is
hashed while it streams, fsynced, and renamed into place only when its sha256 matches.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from loguru import logger

__all__ = [
    "CHUNK_BYTES",
    "DownloadedResults",
    "StorageError",
    "StoredResults",
    "download_results",
    "upload_results",
]

#: Bytes read from or written to disk per call off the event loop (1 MiB).
CHUNK_BYTES = 1 << 20


class StorageError(Exception):
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
    """A verified download: where it was saved, its size and sha256."""

    path: Path
    size: int
    sha256: str


def _headers(api_key: str | None) -> dict[str, str]:
    return {"X-API-Key": api_key} if api_key else {}


async def _file_chunks(path: Path) -> AsyncIterator[bytes]:
    handle = await asyncio.to_thread(path.open, "rb")
    try:
        while chunk := await asyncio.to_thread(handle.read, CHUNK_BYTES):
            yield chunk
    finally:
        await asyncio.to_thread(handle.close)


async def _upload_once(
    session: aiohttp.ClientSession, url: str, path: Path, job_id: str, api_key: str | None
) -> StoredResults:
    headers = {
        **_headers(api_key),
        "X-Job-Id": job_id,
        "Content-Type": "application/zip",
    }
    size = await asyncio.to_thread(lambda: path.stat().st_size)
    headers["Content-Length"] = str(size)
    async with session.post(url, data=_file_chunks(path), headers=headers) as response:
        if response.status != 201:
            text = (await response.text())[:500]
            raise StorageError(
                f"upload of {job_id} answered {response.status}: {text}", response.status
            )
        body = await response.json()
    return StoredResults(
        job_id=str(body["job_id"]),
        download_path=str(body["download_url"]),
        size=int(body["size"]),
        sha256=str(body["sha256"]),
        attempts=0,
    )


async def upload_results(
    storage_url: str,
    path: Path,
    job_id: str,
    *,
    api_key: str | None,
    retries: int = 5,
    backoff_s: float = 0.5,
    timeout_s: float = 300.0,
) -> StoredResults:
    """Upload ``path`` to ``{storage_url}/upload`` under ``job_id`` (raw body, ``X-Job-Id``).

    Args:
        storage_url: the service's base URL, e.g. ``http://127.0.0.1:8765``.
        path: the file to upload (streamed from disk).
        job_id: the id to store it under.
        api_key: sent as ``X-API-Key``.
        retries: attempts after the first one, while the service is unreachable or
            answers 5xx; waits ``backoff_s``, then twice as long each time.
        backoff_s: the first wait, seconds.
        timeout_s: the limit of one attempt, seconds.

    Returns:
        What the service stored.

    Raises:
        StorageError: a 4xx answer (not retried), or every attempt failed.
    """
    url = storage_url.rstrip("/") + "/upload"
    delay = backoff_s
    last: Exception | None = None
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for attempt in range(1, retries + 2):
            try:
                stored = await _upload_once(session, url, path, job_id, api_key)
            except StorageError as exc:
                if exc.status is not None and exc.status < 500:
                    raise
                last = exc
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as exc:
                last = exc
            else:
                return StoredResults(
                    stored.job_id, stored.download_path, stored.size, stored.sha256, attempt
                )
            if attempt <= retries:
                logger.warning(
                    "upload of {} failed (attempt {}): {}; retrying in {:.1f} s",
                    job_id,
                    attempt,
                    last,
                    delay,
                )
                await asyncio.sleep(delay)
                delay *= 2
    raise StorageError(f"upload of {job_id} failed after {retries + 1} attempts: {last}")


def _open_temp(target: Path) -> tuple[Path, int]:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{target.name}.{os.urandom(4).hex()}.part")
    return tmp, os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _publish(tmp: Path, target: Path) -> None:
    os.replace(tmp, target)
    dir_fd = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
    """Fetch ``{storage_url}/download/{job_id}`` into ``output_dir/results-{job_id}.zip``.

    The body streams to a temporary file while it is hashed; it is fsynced and renamed
    into place only when its sha256 equals ``sha256`` (when given), else the service's
    ``X-Content-SHA256`` header (when sent). With ``keep`` the service keeps the file
    after the download (``?keep=true``; it is otherwise deleted when ``AUTO_DELETE`` is on).

    Raises:
        StorageError: the service answered an error, or the sha256 does not match
            (nothing is left behind).
        aiohttp.ClientError, OSError: the connection or the disk failed.
    """
    url = f"{storage_url.rstrip('/')}/download/{job_id}" + ("?keep=true" if keep else "")
    target = output_dir / f"results-{job_id}.zip"
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.get(url, headers=_headers(api_key)) as response,
    ):
        if response.status != 200:
            text = (await response.text())[:500]
            raise StorageError(
                f"download of {job_id} answered {response.status}: {text}", response.status
            )
        expected = (sha256 or response.headers.get("X-Content-SHA256") or "").lower() or None
        digest = hashlib.sha256()
        size = 0
        tmp, fd = await asyncio.to_thread(_open_temp, target)
        try:
            try:
                async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                    digest.update(chunk)
                    size += len(chunk)
                    await asyncio.to_thread(_write_all, fd, chunk)
                await asyncio.to_thread(os.fsync, fd)
            finally:
                await asyncio.to_thread(os.close, fd)
            got = digest.hexdigest()
            if expected is not None and got != expected:
                raise StorageError(f"sha256 mismatch for {job_id}: expected {expected}, got {got}")
            await asyncio.to_thread(_publish, tmp, target)
        except BaseException:
            await asyncio.to_thread(tmp.unlink, missing_ok=True)
            raise
    logger.info("downloaded {}: {} bytes, sha256 {}", target, size, got)
    return DownloadedResults(target, size, got)
