"""The file layer: shared-storage path safety, atomic writes and file metadata.

Imports only the standard library, loguru and python-magic, so the signaling server and
the worker can both use it without loading the WebRTC stack.
"""

from rtc_worker.storage.cas import (
    SHA256_HEX,
    ContentStore,
    HashMismatchError,
    PartialBusyError,
    PartialFile,
    resolve_store_root,
)
from rtc_worker.storage.metadata import (
    MIME_SNIFF_BYTES,
    FileMetadata,
    MetadataBuilder,
    detect_mime,
    file_metadata,
    format_timestamp,
    sha256_file,
)
from rtc_worker.storage.paths import (
    DISK_FULL_ERRNOS,
    MAX_COMPONENT_BYTES,
    MAX_PATH_BYTES,
    DiskFullError,
    FilesystemAdapter,
    PathErrorKind,
    StoragePathError,
    fsync_directory,
    split_user_path,
    validate_path_in_root,
)

__all__ = [
    "DISK_FULL_ERRNOS",
    "MAX_COMPONENT_BYTES",
    "MAX_PATH_BYTES",
    "MIME_SNIFF_BYTES",
    "SHA256_HEX",
    "ContentStore",
    "DiskFullError",
    "FileMetadata",
    "FilesystemAdapter",
    "HashMismatchError",
    "MetadataBuilder",
    "PartialBusyError",
    "PartialFile",
    "PathErrorKind",
    "StoragePathError",
    "detect_mime",
    "file_metadata",
    "format_timestamp",
    "fsync_directory",
    "resolve_store_root",
    "sha256_file",
    "split_user_path",
    "validate_path_in_root",
]
