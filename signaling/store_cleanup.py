"""The storage service's cleanup: expired uploads, old deleted records, unused blobs.

Run every ``cleanup_interval_s`` seconds by the server (:class:`~signaling.uploads_api.
UploadManager`) or once by ``rtc-signaling --storage-path P --cleanup-once``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from loguru import logger

from rtc_worker.storage import format_timestamp
from signaling.legacy_chunks import remove_chunk_folder, remove_orphan_chunk_folders
from signaling.results_store import ResultsService

__all__ = ["CleanupReport", "cleanup"]

_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def _stamp(moment: datetime) -> str:
    return format_timestamp(moment)


@dataclass(slots=True)
class CleanupReport:
    """What one :func:`cleanup` pass removed."""

    uploads: list[str] = field(default_factory=list)
    """Ids of expired unfinished or cancelled uploads (records and chunks removed)."""
    relays: list[str] = field(default_factory=list)
    """Ids of expired relay objects (records removed; blobs as any unused blob)."""
    orphan_chunk_dirs: list[str] = field(default_factory=list)
    """Chunk folders under ``uploads/`` that had no record."""
    records: list[str] = field(default_factory=list)
    """Job ids of deleted ``files`` rows removed after the retention."""
    blobs: list[str] = field(default_factory=list)
    """SHA-256 of blobs nothing referenced any more."""

    def as_dict(self) -> dict[str, list[str]]:
        """The report as a JSON-ready dict."""
        return {
            "uploads": self.uploads,
            "relays": self.relays,
            "orphan_chunk_dirs": self.orphan_chunk_dirs,
            "records": self.records,
            "blobs": self.blobs,
        }

    @property
    def total(self) -> int:
        """How many things were removed."""
        return sum(len(items) for items in self.as_dict().values())


async def _remove_relay_object(store: ResultsService, upload_id: str) -> bool:
    """Remove the expired relay object's row (works on a full disk)."""
    return await store.freeing(lambda: store.db.remove_relay_object(upload_id)) is not None


async def cleanup(
    store: ResultsService,
    ttl_s: float,
    now: datetime | None = None,
    *,
    lock: contextlib.AbstractAsyncContextManager[None] | None = None,
    relay_ttl_s: float | None = None,
) -> CleanupReport:
    """Remove expired uploads, old deleted records and unreferenced blobs, and put the
    database's reserve file back when it was given up and there is room (file work runs
    in threads).

    Args:
        store: the result store (its blob backend open).
        ttl_s: age in seconds (since the last change) after which an unfinished or
            cancelled upload, or a deleted record, is removed.
        now: the current time (UTC); now when omitted.
        relay_ttl_s: the lifetime of a completed relay object, seconds: older ones are
            removed (their blobs with the unused blobs); ``None``: none is.

    Inside the server pass ``lock=store.lock`` (see :meth:`UploadManager.cleanup`): it
    is held only to decide which blobs no record uses and to remove them, never while
    the object store's partials are listed or aborted.

    Raises:
        OSError: a file or folder cannot be removed, or the object store failed.
        sqlalchemy.exc.SQLAlchemyError: the database failed.
    """
    moment = now or datetime.now(UTC)
    cutoff = _stamp(moment - timedelta(seconds=ttl_s))
    report = CleanupReport()
    backend = store.backend
    for record in await store.db.stale_uploads(cutoff):
        if await store.db.delete_upload(record.upload_id, cutoff):
            await backend.remove_upload(record.upload_id)
            await asyncio.to_thread(remove_chunk_folder, store.root, record.upload_id)
            report.uploads.append(record.upload_id)
    if relay_ttl_s is not None:
        relay_cutoff = _stamp(moment - timedelta(seconds=relay_ttl_s))
        for record in await store.db.expired_relay_objects(relay_cutoff):
            if await _remove_relay_object(store, record.upload_id):
                report.relays.append(record.upload_id)
    keys = await backend.upload_keys()  # before the records: an upload's record comes first
    known = await store.db.upload_ids()
    for key in keys:
        if _UPLOAD_ID.fullmatch(key) and key not in known and await backend.remove_upload(key):
            report.orphan_chunk_dirs.append(key)
    folders = await asyncio.to_thread(remove_orphan_chunk_folders, store.root, known)
    report.orphan_chunk_dirs.extend(folders)
    for old in await store.db.purge_deleted_files(cutoff):
        report.records.append(old.job_id)
    await backend.cleanup(moment.timestamp())  # unclaimed partials, temporaries, multipart
    async with lock or contextlib.nullcontext():
        live = await store.db.live_hashes()
        for sha256 in await backend.hashes():
            if sha256 not in live and not store.is_pinned(sha256) and await backend.remove(sha256):
                report.blobs.append(sha256)
    await asyncio.to_thread(store.reserve_file.ensure)  # given up on a full disk: back if room
    for name, items in report.as_dict().items():
        for item in items:
            logger.info("cleanup removed {} {}", name.rstrip("s"), item)
    return report
