"""The S3 blob backend (``storage_backend = s3``): blobs in an S3-compatible bucket
(AWS S3, MinIO, Cloudflare R2, Ceph RGW...) through aiobotocore.

* A blob is the object ``blobs/<sha256>``, written once (dedupe: a commit whose blob
  exists stores nothing new).
* A partial upload is an S3 multipart upload plus small piece objects under
  ``partial/<key>/`` (see :mod:`signaling.blobs_s3_upload`); it survives a restart of
  the service, and of the object holding it: :meth:`S3Blobs.open_upload` rebuilds it
  from ``list_parts`` and the pieces.
* Reads stream with ``Range`` (RFC 9110 section 14), 1 MiB at a time.
* The cleanup aborts multipart uploads and removes partials untouched for the partial
  TTL; a bucket lifecycle rule (``AbortIncompleteMultipartUpload``) is the backstop.

The bucket must exist (:meth:`S3Blobs.open` checks it). Credentials come from botocore's
standard chain (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``/``AWS_SESSION_TOKEN``,
``AWS_DEFAULT_REGION``, profiles, roles); this module never reads, logs or passes them.
"""

from __future__ import annotations

import json
import re
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

from aiobotocore.session import get_session
from botocore.config import Config
from loguru import logger

from rtc_worker.storage.record import now_text
from signaling.blobs import BlobNotFoundError, BlobStoreError, Range
from signaling.blobs_s3_calls import (
    BLOBS_PREFIX,
    PARTIAL_PREFIX,
    S3Calls,
    blob_key,
    data_key,
    info_key,
    part_size_for,
    partial_prefix,
)
from signaling.blobs_s3_upload import S3Upload

__all__ = ["DEFAULT_SWEEP_GRACE_S", "S3Blobs", "S3Reader", "client_config"]

DEFAULT_SWEEP_GRACE_S = 900.0
"""Blobs younger than this are never swept as unreferenced, seconds (15 min): another
instance may have committed one and not yet written its record."""

_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,127}")
_SHA = re.compile(r"[0-9a-f]{64}")


def client_config(endpoint_url: str | None) -> Config:
    """The botocore settings: path-style addressing for a custom endpoint (MinIO, R2),
    checksums only where required (older S3-compatible stores refuse the newer
    trailer checksums), 3 attempts with standard backoff, bounded timeouts (seconds)."""
    return Config(
        s3={"addressing_style": "path" if endpoint_url else "auto"},
        retries={"max_attempts": 3, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        connect_timeout=10,
        read_timeout=60,
    )


def _check_key(key: object) -> str:
    if not isinstance(key, str) or _KEY.fullmatch(key) is None:
        raise ValueError(f"not a partial key ([A-Za-z0-9][A-Za-z0-9_-]{{0,127}}): {key!r}")
    return key


class S3Reader:
    """Bytes ``[start, end)`` of one blob (see :class:`signaling.blobs.BlobReader`)."""

    def __init__(self, calls: S3Calls, key: str, size: int, start: int, end: int) -> None:
        self.size, self.start, self.end = size, start, end
        self._calls, self._key = calls, key

    async def chunks(self) -> AsyncIterator[bytes]:
        """The bytes by ``Range`` GET, 1 MiB at a time. Raises BlobStoreError,
        BlobNotFoundError (removed meanwhile)."""
        if self.end <= self.start:
            return
        whole = self.start == 0 and self.end == self.size
        end = None if whole else self.end
        async for chunk in self._calls.get_chunks(self._key, self.start, end):
            yield chunk

    async def close(self) -> None:
        """Nothing to release: each read is one request."""


class S3Blobs:
    """Blobs and partial uploads in one bucket (see the module docstring and
    :class:`signaling.blobs.BlobBackend`).

    Args:
        bucket: the bucket's name (it must exist).
        endpoint_url: the S3 endpoint (MinIO, R2...); ``None``: AWS from the region.
        partial_ttl_s: seconds a partial may stay untouched before :meth:`cleanup`.
        max_file_size: the largest content, bytes (sizes the parts of an anonymous
            upload so it fits in 10,000 parts).
        sweep_grace_s: see :data:`DEFAULT_SWEEP_GRACE_S` (the default), seconds.
    """

    kind = "s3"
    local_disk = False

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None,
        *,
        partial_ttl_s: float,
        max_file_size: int,
        sweep_grace_s: float | None = None,
    ) -> None:
        self.bucket = bucket
        self.endpoint_url = endpoint_url
        self.partial_ttl_s = partial_ttl_s
        self.max_file_size = max_file_size
        self.sweep_grace_s = DEFAULT_SWEEP_GRACE_S if sweep_grace_s is None else sweep_grace_s
        self._stack: AsyncExitStack | None = None
        self._calls: S3Calls | None = None

    def __repr__(self) -> str:
        return f"S3Blobs(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r})"

    @property
    def calls(self) -> S3Calls:
        """The bucket's requests (after :meth:`open`)."""
        if self._calls is None:
            raise RuntimeError("the S3 blob store is not open")
        return self._calls

    async def open(self) -> None:
        """Make the client and check the bucket (``HeadBucket``).

        Raises:
            BlobStoreError: the bucket is missing, refused or unreachable.
        """
        if self._calls is not None:
            return
        session = get_session()
        region = session.get_config_variable("region") or "us-east-1"
        stack = AsyncExitStack()
        client = await stack.enter_async_context(
            session.create_client(
                "s3",
                endpoint_url=self.endpoint_url,
                region_name=region,
                config=client_config(self.endpoint_url),
            )
        )
        calls = S3Calls(client, self.bucket)
        try:
            await calls.call("head_bucket")
        except BlobNotFoundError:
            await stack.aclose()
            raise BlobStoreError("NoSuchBucket", f"bucket {self.bucket!r} does not exist") from None
        except BaseException:
            await stack.aclose()
            raise
        self._stack, self._calls = stack, calls
        logger.info("blobs in S3 bucket {} ({})", self.bucket, self.endpoint_url or "AWS")

    async def close(self) -> None:
        """Close the client (idempotent)."""
        stack, self._stack, self._calls = self._stack, None, None
        if stack is not None:
            await stack.aclose()

    async def ping(self) -> None:
        """``HeadBucket``: raises BlobStoreError when the bucket is not reachable."""
        await self.calls.call("head_bucket")

    # ------------------------------------------------------------------ blobs

    def location(self, sha256: str) -> str:
        """``blobs/<sha256>``. Raises ValueError."""
        return blob_key(sha256)

    async def has(self, sha256: str) -> bool:
        """See :meth:`signaling.blobs.BlobBackend.has`."""
        return await self.calls.exists(blob_key(sha256))

    async def size(self, sha256: str) -> int | None:
        """See :meth:`signaling.blobs.BlobBackend.size`."""
        found = await self.calls.head(blob_key(sha256))
        return None if found is None else found[0]

    async def open_reader(self, sha256: str, start: int = 0, end: int | None = None) -> S3Reader:
        """See :meth:`signaling.blobs.BlobBackend.open_reader`."""
        key = blob_key(sha256)
        found = await self.calls.head(key)
        if found is None:
            raise BlobNotFoundError(f"no blob {sha256}")
        size = found[0]
        stop = size if end is None else end
        if not 0 <= start <= stop <= size:
            raise ValueError(f"range [{start}, {stop}) is not within {size} bytes")
        return S3Reader(self.calls, key, size, start, stop)

    async def remove(self, sha256: str) -> bool:
        """See :meth:`signaling.blobs.BlobBackend.remove`."""
        key = blob_key(sha256)
        if not await self.calls.exists(key):
            return False
        await self.calls.delete(key)
        return True

    async def hashes(self) -> list[str]:
        """See :meth:`signaling.blobs.BlobBackend.hashes` (older than the grace)."""
        cutoff = time.time() - self.sweep_grace_s
        found = []
        for key, modified in await self.calls.list_keys(BLOBS_PREFIX):
            name = key[len(BLOBS_PREFIX) :]
            if _SHA.fullmatch(name) and modified.timestamp() <= cutoff:
                found.append(name)
        return sorted(found)

    # ------------------------------------------------------------------ partials

    async def new_anonymous(self, name: str) -> S3Upload:
        """See :meth:`signaling.blobs.BlobBackend.new_anonymous` (parts sent as the
        bytes come; under one part, kept in memory until commit)."""
        key = f"anon-{uuid.uuid4().hex}"
        info = {"part_size": part_size_for(self.max_file_size), "name": name}
        return S3Upload(self.calls, key, None, name, info)

    async def _read_info(self, key: str) -> dict[str, Any] | None:
        try:
            raw = await self.calls.get_bytes(info_key(key))
        except BlobNotFoundError:
            return None
        try:
            info = json.loads(raw)
        except ValueError:
            return {}
        return info if isinstance(info, dict) else {}

    async def _resume(self, key: str, size: int | None) -> S3Upload | None:
        """The partial ``key`` rebuilt from the bucket (its record, the multipart
        upload's parts, the pieces), or ``None`` when it has no record; ValueError when
        its record is unusable (another size, unreadable, staged data gone)."""
        info = await self._read_info(key)
        if info is None:
            return None
        recorded = info.get("size")
        if (
            not isinstance(info.get("part_size"), int)
            or not isinstance(recorded, int)
            or (size is not None and recorded != size)
        ):
            raise ValueError(f"the record of partial {key} does not match")
        name = str(info.get("name", key))
        upload = S3Upload(self.calls, key, recorded, name, info)
        if info.get("staged") and await self.calls.head(data_key(key)) is None:
            raise ValueError(f"the assembled content of partial {key} is gone")
        await upload.load()
        return upload

    async def open_upload(self, key: str, size: int, name: str, *, align: int = 1) -> S3Upload:
        """See :meth:`signaling.blobs.BlobBackend.open_upload`. An inconsistent
        partial (another size, an unreadable record) restarts empty; the multipart
        upload is started (or adopted) when the first part is sent."""
        _check_key(key)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative integer number of bytes: {size!r}")
        try:
            upload = await self._resume(key, size)
        except ValueError as exc:
            logger.info("restarting partial {}: {}", key, exc)
            await self.remove_upload(key)
            upload = None
        if upload is not None:
            logger.debug("resuming partial {} ({} bytes held)", key, upload.offset)
            return upload
        info: dict[str, Any] = {
            "size": size,
            "name": name,
            "part_size": part_size_for(size, align),
            "created_at": now_text(),
        }
        upload = S3Upload(self.calls, key, size, name, info)
        await upload.save_record()
        return upload

    async def upload_ranges(self, key: str) -> list[Range]:
        """See :meth:`signaling.blobs.BlobBackend.upload_ranges`."""
        _check_key(key)
        try:
            upload = await self._resume(key, None)
        except (ValueError, BlobNotFoundError):
            return []
        return [] if upload is None else await upload.ranges()

    async def remove_upload(self, key: str) -> bool:
        """See :meth:`signaling.blobs.BlobBackend.remove_upload` (no lock on S3)."""
        _check_key(key)
        removed = False
        prefix = partial_prefix(key)
        for target, upload_id, _ in await self.calls.list_multipart(prefix):
            await self.calls.abort(target, upload_id)
            removed = True
        for name, _ in await self.calls.list_keys(prefix):
            await self.calls.delete(name)
            removed = True
        return removed

    async def _partials(self) -> dict[str, float]:
        """Every partial key with its last change (Unix time, seconds)."""
        touched: dict[str, float] = {}
        for name, modified in await self.calls.list_keys(PARTIAL_PREFIX):
            key = name[len(PARTIAL_PREFIX) :].split("/", 1)[0]
            touched[key] = max(touched.get(key, 0.0), modified.timestamp())
        for target, _, initiated in await self.calls.list_multipart(PARTIAL_PREFIX):
            key = target[len(PARTIAL_PREFIX) :].split("/", 1)[0]
            touched[key] = max(touched.get(key, 0.0), initiated.timestamp())
        return touched

    async def upload_keys(self) -> list[str]:
        """See :meth:`signaling.blobs.BlobBackend.upload_keys`."""
        return sorted(key for key in await self._partials() if _KEY.fullmatch(key))

    async def partial_bytes(self) -> int:
        """See :meth:`signaling.blobs.BlobBackend.partial_bytes` (one listing per partial)."""
        total = 0
        for key in await self.upload_keys():
            total += sum(high - low for low, high in await self.upload_ranges(key))
        return total

    async def _expire(self, cutoff: float, *, anonymous_only: bool) -> int:
        removed = 0
        for key, touched in (await self._partials()).items():
            if anonymous_only and not key.startswith("anon-"):
                continue
            if touched < cutoff and _KEY.fullmatch(key) and await self.remove_upload(key):
                logger.info("removed partial {} (untouched since {:.0f})", key, touched)
                removed += 1
        return removed

    async def drop_orphans(self) -> int:
        """Abort anonymous multipart uploads older than the partial TTL (a crash's
        leftovers: younger ones may be another instance's upload in progress)."""
        return await self._expire(time.time() - self.partial_ttl_s, anonymous_only=True)

    async def cleanup(self, now: float | None = None) -> int:
        """See :meth:`signaling.blobs.BlobBackend.cleanup`: every partial (record,
        pieces, multipart upload) untouched for the partial TTL is removed."""
        moment = time.time() if now is None else now
        return await self._expire(moment - self.partial_ttl_s, anonymous_only=False)
