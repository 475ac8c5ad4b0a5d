"""The storage service's cleanup: expired uploads, old deleted records, unused blobs.

Run every ``cleanup_interval_s`` seconds by the server (:class:`~signaling.uploads_api.
UploadManager`) or once by ``rtc-signaling --storage-path P --cleanup-once``.
"""

from __future__ import annotations

import asyncio
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
            "orphan_chunk_dirs": self.orphan_chunk_dirs,
            "records": self.records,
            "blobs": self.blobs,
        }

    @property
    def total(self) -> int:
        """How many things were removed."""
        return len(self.uploads) + len(self.orphan_chunk_dirs) + len(self.records) + len(self.blobs)


async def cleanup(
    store: ResultsService, ttl_s: float, now: datetime | None = None
) -> CleanupReport:
    """Remove expired uploads, old deleted records and unreferenced blobs, and put the
    database's reserve file back when it was given up and there is room (file work runs
    in threads).

    Args:
        store: the result store (its blob store is opened when needed).
        ttl_s: age in seconds (since the last change) after which an unfinished or
            cancelled upload, or a deleted record, is removed.
        now: the current time (UTC); now when omitted.

    Inside the server call it under ``store.lock`` (see :meth:`UploadManager.cleanup`).

    Raises:
        OSError: a file or folder cannot be removed.
        sqlalchemy.exc.SQLAlchemyError: the database failed.
    """
    moment = now or datetime.now(UTC)
    cutoff = _stamp(moment - timedelta(seconds=ttl_s))
    report = CleanupReport()
    blobs = await asyncio.to_thread(lambda: store.store)
    for record in await store.db.stale_uploads(cutoff):
        if await store.db.delete_upload(record.upload_id, cutoff):
            await asyncio.to_thread(blobs.remove_partial_if_idle, record.upload_id)
            await asyncio.to_thread(remove_chunk_folder, store.root, record.upload_id)
            report.uploads.append(record.upload_id)
    known = await store.db.upload_ids()
    report.orphan_chunk_dirs.extend(await asyncio.to_thread(_orphans, store, known))
    for old in await store.db.purge_deleted_files(cutoff):
        report.records.append(old.job_id)
    await asyncio.to_thread(blobs.cleanup, moment.timestamp())  # unclaimed partials, temp files
    live = await store.db.live_hashes()
    report.blobs.extend(await asyncio.to_thread(_unused_blobs, store, live))
    await asyncio.to_thread(store.reserve_file.ensure)  # given up on a full disk: back if room
    for name, items in report.as_dict().items():
        for item in items:
            logger.info("cleanup removed {} {}", name.rstrip("s"), item)
    return report


def _orphans(store: ResultsService, known: set[str]) -> list[str]:
    """Remove the partials and chunk folders of uploads without a record (blocking)."""
    blobs = store.store
    removed = [
        key
        for key in blobs.partial_keys()
        if _UPLOAD_ID.fullmatch(key) and key not in known and blobs.remove_partial_if_idle(key)
    ]
    return removed + remove_orphan_chunk_folders(store.root, known)


def _unused_blobs(store: ResultsService, live: set[str]) -> list[str]:
    """Remove the blobs whose sha256 is not in ``live`` (blocking)."""
    blobs = store.store
    return [
        sha256 for sha256 in list(blobs.objects()) if sha256 not in live and blobs.remove(sha256)
    ]
