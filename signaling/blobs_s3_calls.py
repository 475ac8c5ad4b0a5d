"""The S3 requests of the blob backend, on one aiobotocore client and one bucket, and
the names of its objects.

Every request goes through :meth:`S3Calls.call`, which maps botocore's errors onto the
backend's: a missing key or upload is :class:`~signaling.blobs.BlobNotFoundError`,
anything else :class:`~signaling.blobs.BlobStoreError` with the S3 error code (the
message names the operation only: never a credential, a signed header or a URL).

Source: the Amazon S3 API reference (PutObject, GetObject with Range, HeadObject,
ListObjectsV2, CreateMultipartUpload, UploadPart, ListParts, CompleteMultipartUpload,
AbortMultipartUpload, ListMultipartUploads, CopyObject, UploadPartCopy).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from rtc_worker.storage import SHA256_HEX
from signaling.blobs import BlobNotFoundError, BlobStoreError

__all__ = [
    "BLOBS_PREFIX",
    "COPY_LIMIT_BYTES",
    "COPY_PART_BYTES",
    "MAX_ALIGNED_PART_BYTES",
    "MAX_PARTS",
    "MIN_PART_BYTES",
    "PARTIAL_PREFIX",
    "PIECE_NAME",
    "READ_BYTES",
    "S3Calls",
    "blob_key",
    "data_key",
    "info_key",
    "part_size_for",
    "partial_prefix",
    "piece_key",
    "staging_key",
]

BLOBS_PREFIX = "blobs/"
"""Key prefix of the blobs (``blobs/<sha256>``)."""
PARTIAL_PREFIX = "partial/"
"""Key prefix of the partial uploads (``partial/<key>/...``)."""
READ_BYTES = 1 << 20
"""Bytes per piece of a streamed read (1 MiB)."""
COPY_LIMIT_BYTES = 5 * 1024**3
"""Largest object ``CopyObject`` copies in one request (5 GiB); larger ones are copied
part by part (``UploadPartCopy``)."""
COPY_PART_BYTES = 1024**3
"""Part size of a copy part by part, bytes (1 GiB)."""

_NOT_FOUND = frozenset({"404", "NoSuchKey", "NoSuchUpload", "NotFound"})


def blob_key(sha256: str) -> str:
    """``blobs/<sha256>``. Raises ValueError for a malformed digest."""
    if not isinstance(sha256, str) or SHA256_HEX.fullmatch(sha256) is None:
        raise ValueError(f"not a sha256 digest (64 lowercase hex digits): {sha256!r}")
    return BLOBS_PREFIX + sha256


def partial_prefix(key: str) -> str:
    """``partial/<key>/``: where everything of the partial ``key`` lives."""
    return f"{PARTIAL_PREFIX}{key}/"


MIN_PART_BYTES = 5 * 1024**2
"""The smallest part S3 accepts but the last one, bytes (5 MiB)."""
MAX_PARTS = 10_000
"""The most parts of one multipart upload."""
MAX_ALIGNED_PART_BYTES = 64 * 1024**2
"""Largest part made a multiple of the chunk size, bytes (64 MiB): a write buffers up to
one part in memory, so a larger chunk size gets parts of the smallest size instead
(its chunks then span parts; the bytes that straddle one are kept as pieces)."""

PIECE_NAME = re.compile(r"(\d{16})-(\d{16})")
"""The name of a piece object: ``<start>-<end>``, 16 digits each."""


def part_size_for(size: int, align: int = 1) -> int:
    """The region (part) size of content of ``size`` bytes written at multiples of
    ``align`` bytes: at least :data:`MIN_PART_BYTES`, large enough that ``size`` needs
    at most :data:`MAX_PARTS` parts, and a multiple of ``align`` when that stays within
    :data:`MAX_ALIGNED_PART_BYTES` (else a multiple of 1 MiB)."""
    need = max(MIN_PART_BYTES, -(-size // MAX_PARTS))
    aligned = -(-need // max(1, align)) * max(1, align)
    if aligned <= max(MAX_ALIGNED_PART_BYTES, need):
        return aligned
    return -(-need // 1024**2) * 1024**2


def piece_key(key: str, start: int, end: int) -> str:
    """The piece object holding bytes ``[start, end)`` of the partial ``key``."""
    return f"{partial_prefix(key)}piece/{start:016d}-{end:016d}"


def info_key(key: str) -> str:
    """The record of the partial ``key``."""
    return f"{partial_prefix(key)}info.json"


def data_key(key: str) -> str:
    """The multipart upload's target (the staging object) of the partial ``key``."""
    return f"{partial_prefix(key)}data"


def staging_key(key: str, token: str, start: int, end: int) -> str:
    """Bytes ``[start, end)`` of one atomic write ``token`` to the partial ``key``,
    staged until the write ends (then copied into a part or a piece)."""
    return f"{partial_prefix(key)}staging/{token}/{start:016d}-{end:016d}"


class S3Calls:
    """The bucket's requests (see the module docstring).

    Args:
        client: an open aiobotocore S3 client.
        bucket: the bucket's name.
    """

    def __init__(self, client: Any, bucket: str) -> None:
        self.client = client
        self.bucket = bucket

    async def call(self, operation: str, **kwargs: Any) -> Any:
        """One request on the bucket; its answer (a dict).

        Raises:
            BlobNotFoundError: no such key or multipart upload.
            BlobStoreError: any other refusal or failure (``code`` says which).
        """
        try:
            return await getattr(self.client, operation)(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", "unknown"))
            if code in _NOT_FOUND:
                raise BlobNotFoundError(f"{operation}: {code}") from None
            raise BlobStoreError(code, f"{operation} on bucket {self.bucket!r} failed") from None
        except BotoCoreError as exc:
            raise BlobStoreError("connection", f"{operation}: {type(exc).__name__}") from None

    # ------------------------------------------------------------------ objects

    async def head(self, key: str) -> tuple[int, datetime] | None:
        """``(size, last modified)`` of ``key``, or ``None`` when missing."""
        try:
            answer = await self.call("head_object", Key=key)
        except BlobNotFoundError:
            return None
        return int(answer["ContentLength"]), answer["LastModified"]

    async def exists(self, key: str) -> bool:
        """Whether ``key`` exists."""
        return await self.head(key) is not None

    async def put(self, key: str, data: bytes) -> None:
        """Write ``data`` as ``key`` (replacing it)."""
        await self.call("put_object", Key=key, Body=data)

    async def delete(self, key: str) -> None:
        """Delete ``key`` (missing is fine)."""
        try:
            await self.call("delete_object", Key=key)
        except BlobNotFoundError:
            return

    async def get_bytes(self, key: str) -> bytes:
        """The whole of ``key`` (small objects only: pieces and records)."""
        answer = await self.call("get_object", Key=key)
        async with answer["Body"] as body:
            data: bytes = await body.read()
        return data

    async def get_chunks(
        self, key: str, start: int = 0, end: int | None = None
    ) -> AsyncIterator[bytes]:
        """Bytes ``[start, end)`` of ``key`` (a ``Range`` request unless the whole),
        :data:`READ_BYTES` at a time.

        Raises:
            BlobNotFoundError, BlobStoreError: as :meth:`call`, also mid-read.
        """
        kwargs: dict[str, Any] = {"Key": key}
        if start or end is not None:
            last = "" if end is None else str(end - 1)
            kwargs["Range"] = f"bytes={start}-{last}"
        answer = await self.call("get_object", **kwargs)
        try:
            async with answer["Body"] as body:
                async for chunk in body.iter_chunks(READ_BYTES):
                    yield chunk
        except (BotoCoreError, OSError) as exc:  # the connection broke mid-read
            raise BlobStoreError("connection", f"get_object: {type(exc).__name__}") from None

    async def get_with_etag(self, key: str) -> tuple[str, AsyncIterator[bytes]]:
        """The ETag of ``key`` and its bytes, :data:`READ_BYTES` at a time (one GET)."""
        answer = await self.call("get_object", Key=key)

        async def chunks() -> AsyncIterator[bytes]:
            try:
                async with answer["Body"] as body:
                    async for chunk in body.iter_chunks(READ_BYTES):
                        yield chunk
            except (BotoCoreError, OSError) as exc:
                raise BlobStoreError("connection", f"get_object: {type(exc).__name__}") from None

        return str(answer.get("ETag", "")), chunks()

    async def list_keys(self, prefix: str) -> list[tuple[str, datetime]]:
        """Every key under ``prefix`` with its last-modified time (all pages)."""
        found: list[tuple[str, datetime]] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            answer = await self.call("list_objects_v2", **kwargs)
            found.extend((item["Key"], item["LastModified"]) for item in answer.get("Contents", []))
            token = answer.get("NextContinuationToken")
            if not answer.get("IsTruncated") or not token:
                return found

    async def copy(self, source: str, target: str, size: int, etag: str | None = None) -> None:
        """Copy ``source`` to ``target`` inside the bucket: one ``CopyObject`` up to
        :data:`COPY_LIMIT_BYTES`, else a multipart copy of :data:`COPY_PART_BYTES` parts.
        With ``etag``, only while ``source`` still has that ETag (``CopySourceIfMatch``:
        the object that was hashed, not one put there since).

        Raises:
            BlobStoreError: ``PreconditionFailed`` when ``source`` changed; as :meth:`call`.
        """
        origin = {"Bucket": self.bucket, "Key": source}
        condition = {"CopySourceIfMatch": etag} if etag else {}
        if size <= COPY_LIMIT_BYTES:
            await self.call("copy_object", Key=target, CopySource=origin, **condition)
            return
        upload_id = await self.create_multipart(target)
        try:
            parts = []
            for number, low in enumerate(range(0, size, COPY_PART_BYTES), start=1):
                high = min(low + COPY_PART_BYTES, size) - 1
                answer = await self.call(
                    "upload_part_copy",
                    Key=target,
                    UploadId=upload_id,
                    PartNumber=number,
                    CopySource=origin,
                    CopySourceRange=f"bytes={low}-{high}",
                    **condition,
                )
                parts.append((number, str(answer["CopyPartResult"]["ETag"])))
            await self.complete(target, upload_id, parts)
        except BaseException:
            await self.abort(target, upload_id)
            raise

    # ------------------------------------------------------------------ multipart

    async def create_multipart(self, key: str) -> str:
        """Start a multipart upload to ``key``; its upload id."""
        answer = await self.call(
            "create_multipart_upload", Key=key, ContentType="application/octet-stream"
        )
        return str(answer["UploadId"])

    async def upload_part(self, key: str, upload_id: str, number: int, data: bytes) -> str:
        """Send part ``number`` (replacing it); its ETag, quoted as S3 gives it."""
        answer = await self.call(
            "upload_part", Key=key, UploadId=upload_id, PartNumber=number, Body=bytes(data)
        )
        return str(answer["ETag"])

    async def upload_part_copy(self, key: str, upload_id: str, number: int, source: str) -> str:
        """Make part ``number`` a copy of the object ``source`` (inside the bucket, no
        byte through this server); its ETag."""
        answer = await self.call(
            "upload_part_copy",
            Key=key,
            UploadId=upload_id,
            PartNumber=number,
            CopySource={"Bucket": self.bucket, "Key": source},
        )
        return str(answer["CopyPartResult"]["ETag"])

    async def list_parts(self, key: str, upload_id: str) -> list[tuple[int, str, int]]:
        """``(part number, ETag, size)`` of every part sent (all pages).

        Raises:
            BlobNotFoundError: no such multipart upload (aborted or completed).
        """
        parts: list[tuple[int, str, int]] = []
        marker = 0
        while True:
            answer = await self.call(
                "list_parts", Key=key, UploadId=upload_id, PartNumberMarker=marker
            )
            for part in answer.get("Parts", []):
                parts.append((int(part["PartNumber"]), str(part["ETag"]), int(part["Size"])))
            marker = int(answer.get("NextPartNumberMarker") or 0)
            if not answer.get("IsTruncated") or not marker:
                return parts

    async def complete(self, key: str, upload_id: str, parts: list[tuple[int, str]]) -> str:
        """Complete the multipart upload from ``(part number, ETag)`` in order; the
        object's ETag."""
        listed = [{"PartNumber": number, "ETag": etag} for number, etag in parts]
        answer = await self.call(
            "complete_multipart_upload",
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": listed},
        )
        return str(answer.get("ETag", ""))

    async def abort(self, key: str, upload_id: str) -> None:
        """Abort the multipart upload (its parts are freed; gone already is fine)."""
        try:
            await self.call("abort_multipart_upload", Key=key, UploadId=upload_id)
        except BlobNotFoundError:
            return

    async def list_multipart(self, prefix: str) -> list[tuple[str, str, datetime]]:
        """``(key, upload id, initiated)`` of every multipart upload under ``prefix``."""
        found: list[tuple[str, str, datetime]] = []
        key_marker, id_marker = "", ""
        while True:
            kwargs: dict[str, Any] = {"Prefix": prefix}
            if key_marker:
                kwargs.update(KeyMarker=key_marker, UploadIdMarker=id_marker)
            answer = await self.call("list_multipart_uploads", **kwargs)
            found.extend(
                (item["Key"], item["UploadId"], item["Initiated"])
                for item in answer.get("Uploads", [])
            )
            key_marker = answer.get("NextKeyMarker") or ""
            id_marker = answer.get("NextUploadIdMarker") or ""
            if not answer.get("IsTruncated") or not key_marker:
                return found
