"""The blob backend of the storage service: content by sha256, and partial uploads.

The storage service (:class:`~signaling.results_store.ResultsService`,
:class:`~signaling.upload_manager.UploadManager`, the cleanup, the download route)
reaches blobs only through these two interfaces, so where the bytes live is a
configuration choice (``storage_backend``):

* ``folder`` (the default): :class:`signaling.blobs_local.FolderBlobs`, the local
  folder of :class:`rtc_worker.storage.BlobStore` (``blobs/ab/<sha256>``, ``partial/``).
* ``s3``: :class:`signaling.blobs_s3.S3Blobs`, an S3-compatible bucket through
  aiobotocore (``blobs/<sha256>``; a partial upload is an S3 multipart upload).

The store is **content-addressed**: a blob is named by the sha256 of its bytes and is
never edited; committing content already held stores nothing new (dedupe). A
**partial upload** (:class:`BlobUpload`) holds the bytes of one content on their way
in: written in order (:meth:`BlobUpload.append`, an upload whose digest is not known
yet) or by ranges at any offset (:meth:`BlobUpload.write_range`, resumable uploads:
the chunk routes, tus), then verified (size, sha256) and committed under its sha256.
A keyed partial survives a restart of the service (resume); an anonymous one does not.

Units: sizes and offsets in bytes, a range is ``(start, end)`` with ``end`` excluded,
times in seconds (Unix time). Digests: 64 lowercase hex digits. Every method is a
coroutine unless noted; none blocks the event loop for long.

Errors (the same for every backend, so the service maps them once):

* ``ValueError``: a malformed digest or key, a write outside the announced size, a
  partial that is not complete at :meth:`BlobUpload.verify`, a closed partial.
* :class:`rtc_worker.storage.HashMismatchError` (a ``ValueError``): the content does not
  have the expected sha256; nothing is stored and the partial is removed.
* :class:`BlobNotFoundError` (a ``FileNotFoundError``): no such blob.
* :class:`rtc_worker.storage.PartialBusyError`: another writer holds the partial
  (folder backend; partials on S3 have no lock, writes of disjoint ranges are safe).
* ``OSError``: the disk or the store failed (:class:`BlobStoreError` for the S3
  backend, with the S3 error code; ``DiskFullError`` for a full disk).

Source: tusd's data store interfaces (``pkg/handler/datastore.go``: a store with
capabilities, an upload with ``WriteChunk``/``GetInfo``/``FinishUpload``/``Terminate``),
and git's object store (content by digest, written once).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from typing import Protocol, runtime_checkable

from rtc_worker.storage import FileMetadata
from signaling.config import SignalingSettings

__all__ = [
    "BlobBackend",
    "BlobNotFoundError",
    "BlobReader",
    "BlobStoreError",
    "BlobUpload",
    "Range",
    "make_backend",
]

Range = tuple[int, int]
"""A byte range ``(start, end)``, ``end`` excluded."""


class BlobNotFoundError(FileNotFoundError):
    """The blob (or the partial upload) is not in the store."""


class BlobStoreError(OSError):
    """The object store refused or failed a request.

    Attributes:
        code: the store's error code (S3: ``NoSuchBucket``, ``AccessDenied``,
            ``SlowDown``...; ``"connection"`` when it could not be reached).
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


@runtime_checkable
class BlobReader(Protocol):
    """One open read of a blob (see :meth:`BlobBackend.open_reader`).

    Attributes:
        size: the whole blob's size, bytes.
        start: first byte served.
        end: byte served last plus one (``end - start`` bytes are served).
    """

    size: int
    start: int
    end: int

    def chunks(self) -> AsyncIterator[bytes]:
        """The bytes ``[start, end)``, in pieces of at most 1 MiB.

        Raises:
            OSError: the store failed mid-read (fewer bytes were served).
        """
        ...

    async def close(self) -> None:
        """Release the read (idempotent)."""


@runtime_checkable
class BlobUpload(Protocol):
    """A partial upload: the bytes of one content on their way into the store.

    Made by :meth:`BlobBackend.new_anonymous` (in order, digest unknown, not
    resumable) or :meth:`BlobBackend.open_upload` (keyed, by ranges, resumable). One
    object may serve several concurrent writes of disjoint ranges. States: open ->
    committed | discarded | closed; after :meth:`verify` only :meth:`commit`,
    :meth:`close` and :meth:`discard` remain.

    Attributes:
        key: its key in the store (``[A-Za-z0-9][A-Za-z0-9_-]{0,127}``; anonymous
            ones start with ``anon-``).
        size: the announced total size in bytes, or ``None`` (anonymous).
        name: the file's name as announced (recorded; for messages).
    """

    key: str
    size: int | None
    name: str

    @property
    def closed(self) -> bool:
        """Whether it was committed, discarded or closed (nothing more can be done)."""
        ...

    @property
    def offset(self) -> int:
        """In order: bytes appended so far. By ranges: the end of the held range that
        starts at 0 (0 when none): where a resume in order continues."""
        ...

    async def append(self, data: bytes | bytearray | memoryview) -> None:
        """Add ``data`` after the bytes appended so far (in order), hashing them.

        Buffered: bytes become durable in batches (folder: 1 MiB; S3: one part, at
        least 5 MiB) and at :meth:`verify`.

        Raises:
            ValueError: past the announced size, or the partial is not open.
            DiskFullError, OSError: a batch could not be written (the partial is
                failed: only :meth:`discard` or :meth:`close` remain).
        """

    async def write_range(
        self, start: int, chunks: AsyncIterator[bytes], *, atomic: bool = False
    ) -> int:
        """Write the bytes of ``chunks`` at ``start`` and record them as held.

        Bytes already held at those offsets are replaced (folder, and S3 pieces and
        whole parts; S3 refuses to rewrite part of a part it has sent: ValueError).
        When ``chunks`` ends normally, ``[start, start + n)`` is durable and recorded
        (:meth:`ranges`) before this returns. When ``chunks`` (or a write) raises, the
        exception propagates and nothing of this call is recorded, except that without
        ``atomic`` the S3 backend keeps the whole parts it has already sent (each one a
        run of received bytes): call :meth:`ranges` to know what is held. ``atomic``
        costs S3 one copy inside the bucket per part (the folder is atomic anyway).

        Returns:
            ``n``, the bytes written.

        Raises:
            ValueError: a negative ``start``, bytes past the announced size, a partial
                not open or written in order.
            DiskFullError, OSError: a write failed (nothing more recorded).
        """
        ...

    async def ranges(self) -> list[Range]:
        """The byte ranges held (sorted, merged), from the store's durable record."""
        ...

    async def verify(self, expected_sha256: str | None = None) -> FileMetadata:
        """Check that every byte of the announced size is held and the sha256 matches
        ``expected_sha256`` (when given); nothing can be written afterwards.

        Bytes hashed on the way in order are not read again; any other bytes are read
        back from the store once (folder: the partial file; S3: the assembled object).

        Returns:
            size, sha256, MIME type (libmagic on the first bytes) and time.

        Raises:
            ValueError: not complete (the partial stays open and usable), or not open.
            HashMismatchError: another digest; the partial is removed (nothing stored).
            OSError: the store failed.
        """
        ...

    async def commit(self, expected_sha256: str | None = None) -> FileMetadata:
        """:meth:`verify`, then publish the content as the blob of its sha256 (dedupe:
        when that blob exists already nothing new is stored) and remove the partial.
        Committing again returns the same metadata.

        Raises:
            As :meth:`verify`; OSError: publishing failed (the verified bytes are kept
            where the backend can keep them: close() it for a later resume).
        """
        ...

    async def close(self) -> None:
        """Stop writing and keep what is held for a resume (idempotent). An anonymous
        partial cannot be resumed: closing it discards it.

        Raises:
            OSError: the last bytes could not be made durable (what was durable is kept).
        """

    async def discard(self) -> None:
        """Remove the partial and everything it holds (idempotent; nothing after
        :meth:`commit`).

        Raises:
            OSError: it could not be removed (the cleanup will).
        """


@runtime_checkable
class BlobBackend(Protocol):
    """A content-addressed blob store with partial uploads (see the module docstring).

    Attributes:
        kind: ``"folder"`` or ``"s3"`` (the ``storage_backend`` setting).
        local_disk: whether uploads take room on this server's own disk; the service
            applies its disk reserve (DISK_FULL) only then.
    """

    kind: str
    local_disk: bool

    async def open(self) -> None:
        """Prepare the store (folders, bucket check); call once before anything else.

        Raises:
            BlobStoreError: the bucket is missing or not reachable with these credentials.
            OSError: the folders cannot be created.
        """

    async def close(self) -> None:
        """Release connections (idempotent)."""

    async def ping(self) -> None:
        """Check that the store is reachable now (for a readiness probe).

        Raises:
            OSError: it is not (BlobStoreError for S3, with the store's error code).
        """

    def location(self, sha256: str) -> str:
        """Where the blob of ``sha256`` lives, relative to the store, as recorded in the
        database (``blobs/ab/<sha256>`` for the folder, ``blobs/<sha256>`` on S3).
        Not blocking. Raises ValueError for a malformed digest."""
        ...

    async def has(self, sha256: str) -> bool:
        """Whether the blob of ``sha256`` is stored. Raises ValueError, OSError."""
        ...

    async def size(self, sha256: str) -> int | None:
        """The blob's size in bytes, or ``None`` when not stored."""
        ...

    async def open_reader(self, sha256: str, start: int = 0, end: int | None = None) -> BlobReader:
        """Open bytes ``[start, end)`` of the blob for reading (``end`` defaults to the
        size; S3 sends a ``Range`` request, RFC 9110 section 14).

        Raises:
            ValueError: a malformed digest, or ``start > end`` / ``end > size``.
            BlobNotFoundError: not stored. OSError: the store failed.
        """
        ...

    async def remove(self, sha256: str) -> bool:
        """Remove the blob; whether it existed. Raises ValueError, OSError."""
        ...

    async def hashes(self) -> list[str]:
        """The digest of every stored blob that may be swept when nothing references
        it (S3: blobs written in the last ``sweep_grace_s`` seconds are left out, so a
        blob another instance has just committed is not swept before its record)."""
        ...

    async def new_anonymous(self, name: str) -> BlobUpload:
        """A new partial for content of unknown size and digest, written in order.

        Raises:
            OSError: it cannot be created.
        """
        ...

    async def open_upload(self, key: str, size: int, name: str, *, align: int = 1) -> BlobUpload:
        """Open (create, or resume after a restart) the keyed partial ``key`` for
        content of ``size`` bytes, written by ranges.

        Args:
            key: the partial's key (an upload id).
            size: the total size, bytes.
            name: the file's name (recorded).
            align: writes start at multiples of this many bytes (the chunk size); the
                S3 backend makes its parts a multiple of it. Fixed at creation.

        Raises:
            ValueError: a bad key or size. PartialBusyError: held by another writer
                (folder). OSError: the store failed.
        """
        ...

    async def upload_ranges(self, key: str) -> list[Range]:
        """The ranges held by the partial ``key`` without opening it (``[]`` when none)."""
        ...

    async def remove_upload(self, key: str) -> bool:
        """Remove the partial ``key`` and all it holds, unless a writer holds it
        (folder). Returns whether something was removed."""
        ...

    async def upload_keys(self) -> list[str]:
        """The key of every partial present (anonymous ones included)."""
        ...

    async def partial_bytes(self) -> int:
        """Bytes held by all partials together (for the disk reserve)."""
        ...

    async def drop_orphans(self) -> int:
        """At start: remove anonymous partials left by a crash that no writer holds
        (S3: those older than the sweep grace). Returns how many."""
        ...

    async def cleanup(self, now: float | None = None) -> int:
        """Remove partials untouched for the partial TTL and stray temporaries (S3:
        multipart uploads with no partial record, aborted). Returns how many partials."""
        ...


def make_backend(
    settings: SignalingSettings, *, room_check: Callable[[int], None] | None = None
) -> BlobBackend:
    """The blob backend ``settings.storage_backend`` names (not yet opened).

    Args:
        settings: the server's settings (``storage_path`` set).
        room_check: the folder backend asks it before each write (the disk reserve).

    Raises:
        ValueError: storage is not enabled in ``settings``.
    """
    if settings.storage_path is None:
        raise ValueError("storage is not enabled in these settings")
    partial_ttl_s = 2 * settings.upload_ttl_s  # past the record's expiry: a safety net
    if settings.storage_backend == "s3":
        from signaling.blobs_s3 import S3Blobs

        assert settings.s3_bucket is not None  # checked by the settings
        return S3Blobs(
            settings.s3_bucket,
            settings.s3_endpoint_url,
            partial_ttl_s=partial_ttl_s,
            max_file_size=settings.storage_max_file_size,
        )
    from signaling.blobs_local import FolderBlobs

    if room_check is None:
        return FolderBlobs(settings.storage_path, partial_ttl_s=partial_ttl_s)
    return FolderBlobs(settings.storage_path, partial_ttl_s=partial_ttl_s, room_check=room_check)
