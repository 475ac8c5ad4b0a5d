"""Relay objects: tus uploads created with the ``relay`` metadata key, which the relay
road's receiver reads with a relay token until they expire (see
:mod:`signaling.relay_routes` for the routes).

A relay object is an ordinary upload of its principal while it is unfinished (same
quotas, same expiry ``upload_ttl_s`` after its last change). Once completed its bytes
are a content-addressed blob like any other, and its record (``uploads.relay = 1``)
keeps it live for ``relay_ttl_s`` after the completion: the relay token issued then
(:func:`~signaling.capability.issue_relay`, binding the upload id, the sha256, the size
and that expiry) reads it from any key; its principal's quota counts it until it is
deleted or expires. Deleting it, or its expiry (the periodic cleanup,
:func:`~signaling.store_cleanup.cleanup`), removes its record; its blob goes only when
no other record (a result, an upload, another relay object of the same bytes) uses it.

Every refusal of a read is the same 404 ``RELAY_NOT_FOUND`` with the same message: no
object, a malformed, forged, expired or foreign token, an object deleted or expired.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

from loguru import logger

from protocol.relay_messages import TOKEN_PATTERN, UPLOAD_ID_PATTERN
from rtc_worker.storage import parse_timestamp
from signaling.api_common import ApiError, ApiErrorCode
from signaling.auth import Caller, Role
from signaling.capability import CapabilityError, RelayCapability
from signaling.db import UploadRecord
from signaling.results_store import ResultsService

__all__ = ["NOT_FOUND_MESSAGE", "RELAY_METADATA_KEY", "RelayObjects"]

RELAY_METADATA_KEY = "relay"
"""The ``Upload-Metadata`` key that makes a tus upload a relay object (any value)."""
NOT_FOUND_MESSAGE = "no such relay object"
"""The one message of every refused read (no oracle)."""


def _not_found() -> ApiError:
    return ApiError(ApiErrorCode.RELAY_NOT_FOUND, NOT_FOUND_MESSAGE)


class RelayObjects:
    """The relay objects of one app's result store.

    Args:
        store: the result store (its database, blobs and token secret).
        ttl_s: the lifetime of a completed relay object, seconds (``relay_ttl_s``).
        now: the clock deciding expiry (Unix time, seconds); tests move it.
    """

    def __init__(
        self, store: ResultsService, ttl_s: float, now: Callable[[], float] = time.time
    ) -> None:
        self.store = store
        self.ttl_s = ttl_s
        self.now = now

    def expires_at(self, record: UploadRecord) -> int:
        """When the completed ``record`` expires, Unix seconds (its completion plus
        ``ttl_s``)."""
        return int(parse_timestamp(record.updated_at).timestamp() + self.ttl_s)

    def live(self, record: UploadRecord | None) -> bool:
        """Whether ``record`` is a completed, unexpired relay object."""
        return (
            record is not None
            and record.relay
            and record.status == "completed"
            and not record.deleted
            and record.sha256 is not None
            and self.now() < self.expires_at(record)
        )

    def headers(self, record: UploadRecord) -> dict[str, str]:
        """What the request completing ``record`` (or a HEAD of it) answers: where and
        with which token it is read, until when, and its sha256."""
        assert record.sha256 is not None
        expires_at = self.expires_at(record)
        grant = RelayCapability(record.upload_id, record.sha256, record.total_size, expires_at)
        when = datetime.fromtimestamp(expires_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        return {
            "Upload-Relay-Url": f"/relay/{record.upload_id}",
            "Upload-Relay-Token": self.store.relay_token(grant),
            "Upload-Relay-Expires": when,
            "Upload-Relay-Sha256": record.sha256,
            "Cache-Control": "no-store",
        }

    async def completed_headers(self, upload_id: str) -> dict[str, str]:
        """:meth:`headers` of the relay object ``upload_id`` once it is completed and
        live, else none."""
        record = await self.store.db.get_upload(upload_id)
        if record is None or not self.live(record):
            return {}
        return self.headers(record)

    async def find(self, upload_id: str, token: str | None) -> UploadRecord:
        """The live relay object ``upload_id`` that ``token`` reads.

        Raises:
            ApiError: RELAY_NOT_FOUND for every refusal (the same for all).
        """
        if (
            token is None
            or not TOKEN_PATTERN.fullmatch(token)
            or not UPLOAD_ID_PATTERN.fullmatch(upload_id)
        ):
            raise _not_found()
        try:
            grant = self.store.check_relay_token(token, self.now())
        except CapabilityError:
            raise _not_found() from None
        if grant.upload_id != upload_id:
            raise _not_found()
        record = await self.store.db.get_upload(upload_id)
        if (
            record is None
            or not self.live(record)
            or record.sha256 != grant.sha256
            or record.total_size != grant.size
        ):
            raise _not_found()
        return record

    async def owned(self, upload_id: str, caller: Caller) -> UploadRecord:
        """The completed relay object ``upload_id`` of ``caller``'s principal (any for
        an admin), expired or not.

        Raises:
            ApiError: RELAY_NOT_FOUND otherwise.
        """
        if not UPLOAD_ID_PATTERN.fullmatch(upload_id):
            raise _not_found()
        record = await self.store.db.get_upload(upload_id)
        if (
            record is None
            or not record.relay
            or record.status != "completed"
            or (caller.role is not Role.ADMIN and record.owner != caller.principal)
        ):
            raise _not_found()
        return record

    async def remove(self, record: UploadRecord) -> bool:
        """Remove the relay object ``record`` (its row; its blob when no other record
        uses it), under the store lock. Whether it was still there."""
        upload_id = record.upload_id
        async with self.store.lock:  # works on a full disk (the database's reserve)
            removed = await self.store.freeing(lambda: self.store.db.remove_relay_object(upload_id))
            if removed is not None and removed.sha256 is not None:
                await self.store.drop_blob_if_unused(removed.sha256)
        if removed is not None:
            logger.info("relay object {} removed", record.upload_id)
        return removed is not None
