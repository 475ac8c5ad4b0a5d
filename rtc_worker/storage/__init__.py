"""The file layer: one safe root, one atomic writer, one blob store, one hasher.

A leaf package: it imports only the standard library, loguru and python-magic, so the
signaling server and the worker both use it without loading the WebRTC stack.

* :class:`SafeRoot` (:mod:`~rtc_worker.storage.saferoot`): every open, create, list and
  remove under a root, by descriptor, never leaving the root through a symlink.
* :mod:`~rtc_worker.storage.atomic`: the one temporary-file-fsync-rename writer.
* :class:`BlobStore` and :class:`PartialFile`: content by SHA-256, filled by partial
  files in order or by ranges.
* :class:`ContentHasher` and :func:`hash_file`: the one SHA-256 of file content.
* :class:`OwnerBook`: which principals stored which content; :mod:`~rtc_worker.storage.space`:
  free space and the reserve a writer leaves.
* :mod:`~rtc_worker.storage.layout`: the worker's folder names.
"""

from rtc_worker.storage import layout
from rtc_worker.storage.atomic import AtomicFile, atomic_file, fsync_dir, publish, write_atomic
from rtc_worker.storage.blobs import DEFAULT_PARTIAL_TTL_S, SHA256_HEX, BlobStore
from rtc_worker.storage.errors import (
    DISK_FULL_ERRNOS,
    DiskFullError,
    HashMismatchError,
    PartialBusyError,
    StorageError,
    StorageErrorKind,
    as_disk_full,
)
from rtc_worker.storage.metadata import (
    MIME_SNIFF_BYTES,
    ContentHasher,
    FileMetadata,
    detect_mime,
    format_timestamp,
    hash_file,
    parse_timestamp,
)
from rtc_worker.storage.owners import OwnerBook
from rtc_worker.storage.partials import WRITE_BATCH_BYTES, Batch, PartialFile
from rtc_worker.storage.saferoot import InputHandle, SafeRoot
from rtc_worker.storage.space import ensure_room, free_bytes, free_bytes_of

__all__ = [
    "DEFAULT_PARTIAL_TTL_S",
    "DISK_FULL_ERRNOS",
    "MIME_SNIFF_BYTES",
    "SHA256_HEX",
    "WRITE_BATCH_BYTES",
    "AtomicFile",
    "Batch",
    "BlobStore",
    "ContentHasher",
    "DiskFullError",
    "FileMetadata",
    "HashMismatchError",
    "InputHandle",
    "OwnerBook",
    "PartialBusyError",
    "PartialFile",
    "SafeRoot",
    "StorageError",
    "StorageErrorKind",
    "as_disk_full",
    "atomic_file",
    "detect_mime",
    "ensure_room",
    "format_timestamp",
    "free_bytes",
    "free_bytes_of",
    "fsync_dir",
    "hash_file",
    "layout",
    "parse_timestamp",
    "publish",
    "write_atomic",
]
