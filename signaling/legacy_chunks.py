"""Chunk folders of the storage service from before the one file layer.

Resumable uploads used to keep every chunk in its own file, ``uploads/<upload_id>/
<index>`` under the storage folder (with temporaries ``.<index>.<random>.part``), and
concatenated them at the end. Now an upload is one partial file of the blob store.
At start-up :func:`migrate_chunk_folders` writes the chunks of every unfinished upload
into its partial at their offsets (recorded as present), then removes the folder; the
cleanup removes folders with no upload (:func:`remove_orphan_chunk_folders`). Every
file is reached through a :class:`~rtc_worker.storage.SafeRoot` on ``uploads/``.
"""

from __future__ import annotations

import re
from pathlib import Path

from loguru import logger

from rtc_worker.storage import BlobStore, SafeRoot, StorageError, layout
from signaling.db import UploadRecord
from signaling.db_schema import UNFINISHED

__all__ = ["migrate_chunk_folders", "remove_chunk_folder", "remove_orphan_chunk_folders"]

_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")
_COPY_BYTES = 1 << 20


def _legacy_root(storage_root: Path) -> SafeRoot | None:
    folder = storage_root / layout.SERVICE_LEGACY_UPLOADS_DIR
    try:
        return SafeRoot(folder)
    except ValueError:  # no such folder: nothing of the old layout
        return None


def _folders(legacy: SafeRoot) -> list[str]:
    return sorted(
        parts[0]
        for parts in legacy.snapshot(())
        if len(parts) == 1 and _UPLOAD_ID.fullmatch(parts[0])
    )


def migrate_chunk_folders(storage_root: Path, store: BlobStore, records: list[UploadRecord]) -> int:
    """Move the chunk folders of unfinished uploads into their partial files (blocking).

    A chunk file counts when its name is an index below the upload's chunk count and
    its length is exactly that chunk's; it is copied to offset index x chunk size
    (1 MiB at a time) and recorded as present. Then the folder is removed. Folders of
    finished, cancelled or unknown uploads are left to the cleanup.

    Returns:
        How many folders were migrated.

    A folder that cannot be migrated (a chunk unreadable, the disk full...) is logged
    and kept, to be tried again at the next start.

    Raises:
        OSError, StorageError: the folder of old chunk folders cannot be listed.
    """
    legacy = _legacy_root(storage_root)
    if legacy is None:
        return 0
    by_id = {record.upload_id: record for record in records}
    migrated = 0
    with legacy:
        for upload_id in _folders(legacy):
            record = by_id.get(upload_id)
            if record is None or record.status not in UNFINISHED:
                continue
            try:
                chunks = _copy_chunks(legacy, store, record)
                legacy.remove_tree((upload_id,))
            except (OSError, StorageError) as exc:  # kept: tried again at the next start
                logger.error("upload {}: chunk folder not migrated: {}", upload_id, exc)
                continue
            migrated += 1
            logger.info("upload {}: {} chunk(s) moved into its partial file", upload_id, chunks)
        if not legacy.snapshot(()):
            Path(legacy.root).rmdir()
    return migrated


def _copy_chunks(legacy: SafeRoot, store: BlobStore, record: UploadRecord) -> int:
    partial = store.open_partial(
        record.upload_id, record.total_size, record.file_name, by_ranges=True
    )
    copied = 0
    with partial:
        for parts in legacy.walk_files((record.upload_id,)):
            name = parts[-1]
            if len(parts) != 1 or not name.isdigit() or int(name) >= record.total_chunks:
                continue
            index = int(name)
            start, length = index * record.chunk_size, record.chunk_length(index)
            with legacy.open_file((record.upload_id, name)) as chunk:
                offset = start
                while data := chunk.read(_COPY_BYTES):
                    if offset + len(data) > start + length:
                        break
                    partial.write_at(offset, data)
                    offset += len(data)
            if offset == start + length:
                partial.mark_present(start, offset)
                copied += 1
    return copied


def remove_chunk_folder(storage_root: Path, upload_id: str) -> None:
    """Remove the old chunk folder of ``upload_id``, if any (blocking)."""
    legacy = _legacy_root(storage_root)
    if legacy is None:
        return
    with legacy:
        legacy.remove_tree((upload_id,))


def remove_orphan_chunk_folders(storage_root: Path, known: set[str]) -> list[str]:
    """Remove old chunk folders whose upload is unknown (blocking).

    Returns:
        The upload ids of the folders removed.

    Raises:
        StorageError, OSError: a folder cannot be listed or removed.
    """
    legacy = _legacy_root(storage_root)
    if legacy is None:
        return []
    removed: list[str] = []
    with legacy:
        for upload_id in _folders(legacy):
            if upload_id in known:
                continue
            try:
                legacy.remove_tree((upload_id,))
            except StorageError as exc:
                logger.warning("cannot remove chunk folder {}: {}", upload_id, exc.detail)
                continue
            removed.append(upload_id)
    return removed
