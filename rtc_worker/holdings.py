"""What each principal holds in a worker's blob store, and the bounds on it.

The worker's store is shared by every principal (a client's key fingerprint, or an
anonymous connection's own ``anon-...``), so three things are kept per principal:

* **Ownership**: which content a principal stored itself (it sent the bytes, or proved
  it holds them). Fingerprints are recorded on disk in the store
  (:class:`~rtc_worker.storage.OwnerBook`); any other principal only in the memory of
  its connection (:class:`~rtc_worker.transfer_io.TransferIO` keeps those).
* **Partial files**: each principal resumes only its own, under the key
  ``{tag}-{sha256}`` where ``tag`` is 32 hex digits naming the principal (a BLAKE2b of
  it, not of any content). An anonymous principal's partials cannot be resumed by
  anyone once its connection closes: they are removed then.
* **Bounds**: per principal, the announced sizes and the number of its partial files
  (:class:`Quota`; ``QUOTA_EXCEEDED``), and a free-space reserve on the store's disk
  checked when a transfer opens (``DISK_FULL`` before any byte) and before each 1 MiB
  batch is written (:func:`~rtc_worker.storage.ensure_room`).

A client's own store (:meth:`Holdings.single_owner`) has one principal: whatever is held
is its own, partials are keyed by sha256, nothing is bounded here.

Every method blocks (file system calls): asynchronous callers run them in a thread.
Source: PROTOCOL.md section 2.3 ("Proof of possession", "Partial files"); tusd's
per-upload expiry and S3's per-principal quotas for the idea.
"""

from __future__ import annotations

import errno
import hashlib
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from protocol.identity import is_anonymous, is_fingerprint
from protocol.proof import proof_digest
from protocol.transfer_messages import FileProofRequest
from rtc_worker.storage import (
    BlobStore,
    DiskFullError,
    OwnerBook,
    PartialFile,
    free_bytes_of,
    layout,
)

__all__ = [
    "DEFAULT_ANONYMOUS_QUOTA",
    "DEFAULT_QUOTA",
    "DEFAULT_RESERVE_BYTES",
    "MAX_REMEMBERED",
    "PARTIAL_TTL_S",
    "Holdings",
    "Mine",
    "Quota",
    "QuotaExceededError",
    "partial_key",
    "ranges_digest",
]

_TAG_PERSON = b"rtc-partial-key"
#: Most digests one connection remembers as its principal's own when they are not
#: recorded on disk (a principal that is not a fingerprint); the oldest go first.
MAX_REMEMBERED = 4096


@dataclass(frozen=True, slots=True)
class Quota:
    """What one principal's unfinished transfers may hold.

    Attributes:
        max_bytes: the sum of the announced sizes of its partial files, bytes.
        max_files: how many partial files it may have.
    """

    max_bytes: int
    max_files: int


GIB = 1024**3
#: A principal's bounds by default: two of the largest files (10 GiB), 8 partial files.
DEFAULT_QUOTA = Quota(max_bytes=20 * GIB, max_files=8)
#: An anonymous principal's (each anonymous connection is one): the smallest.
DEFAULT_ANONYMOUS_QUOTA = Quota(max_bytes=1 * GIB, max_files=2)
#: Free space every transfer leaves on the store's disk by default, bytes (1 GiB).
DEFAULT_RESERVE_BYTES = 1 * GIB
#: A worker's partial file untouched this long expires by default, seconds (24 h).
PARTIAL_TTL_S = 24 * 3600.0


class QuotaExceededError(Exception):
    """A transfer would take its principal over its :class:`Quota` (nothing was opened).

    Attributes:
        detail: what is over, for the TRANSFER_ERROR's detail (no path, no principal).
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def partial_key(principal: str, sha256: str) -> str:
    """The key of ``principal``'s partial file of ``sha256`` in a shared store:
    ``{tag}-{sha256}``, ``tag`` the 32-hex BLAKE2b of the principal's name (a name, not
    content: not the store's content hash)."""
    tag = hashlib.blake2b(principal.encode(), digest_size=16, person=_TAG_PERSON).hexdigest()
    return f"{tag}-{sha256}"


def ranges_digest(fd: int, request: FileProofRequest) -> str | None:
    """The proof digest (:func:`protocol.proof.proof_digest`) of ``request``'s ranges of
    the open file ``fd``, read with ``pread``; None when a range ends past the file.

    Raises:
        OSError: a read failed.
    """
    parts = []
    for offset, length in request.ranges:
        part = os.pread(fd, length, offset)
        if len(part) != length:
            return None
        parts.append(part)
    return proof_digest(request.nonce, parts)


class Holdings:
    """Ownership, partial files and their bounds for the principals of one store.

    Args:
        store: the blob store.
        owners: the ownership records (None: nobody's ownership is persisted).
        quota: a principal's bounds; ``anonymous_quota`` an anonymous one's.
        reserve_bytes: free space every transfer leaves on the store's disk, bytes.
        shared: the store serves several principals (a worker). False: a client's own
            store (see :meth:`single_owner`).
    """

    def __init__(
        self,
        store: BlobStore,
        owners: OwnerBook | None,
        *,
        quota: Quota,
        anonymous_quota: Quota,
        reserve_bytes: int,
        shared: bool = True,
    ) -> None:
        self.store = store
        self.owners = owners
        self.quota = quota
        self.anonymous_quota = anonymous_quota
        self.reserve_bytes = reserve_bytes
        self.shared = shared
        self._lock = threading.Lock()  # quota checks see the opens they allowed
        self._opening: dict[str, int] = {}  # key -> size, allowed and still opening

    @classmethod
    def single_owner(cls, store: BlobStore) -> Holdings:
        """A client's own store: everything held is its own; no bounds."""
        unbounded = Quota(max_bytes=2**63, max_files=2**31)
        return cls(
            store, None, quota=unbounded, anonymous_quota=unbounded, reserve_bytes=0, shared=False
        )

    @classmethod
    def for_worker(
        cls, store: BlobStore, *, quota: Quota, anonymous_quota: Quota, reserve_bytes: int
    ) -> Holdings:
        """A worker's shared store, its ownership records in ``owners/`` beside it."""
        owners = OwnerBook(store.root / layout.OWNERS_DIR)
        return cls(
            store,
            owners,
            quota=quota,
            anonymous_quota=anonymous_quota,
            reserve_bytes=reserve_bytes,
        )

    # ------------------------------------------------------------------ principals

    def persists(self, principal: str) -> bool:
        """Whether ``principal``'s ownership is recorded on disk (a fingerprint)."""
        return self.shared and self.owners is not None and is_fingerprint(principal)

    def resumable(self, principal: str) -> bool:
        """Whether ``principal``'s partial files may be resumed by a later connection
        (not an anonymous one's: each anonymous connection is a new principal)."""
        return not (self.shared and is_anonymous(principal))

    def quota_of(self, principal: str) -> Quota:
        """The bounds of ``principal``'s partial files."""
        return self.anonymous_quota if is_anonymous(principal) else self.quota

    def partial_key(self, principal: str, sha256: str) -> str:
        """The key of ``principal``'s partial file of ``sha256`` (:func:`partial_key`;
        the digest itself in a client's own store)."""
        return partial_key(principal, sha256) if self.shared else sha256

    # ------------------------------------------------------------------ content

    def held(self, sha256: str, size: int) -> bool:
        """Whether the store holds ``sha256`` with ``size`` bytes."""
        return self.store.size(sha256) == size

    def owns(self, principal: str, sha256: str, size: int) -> bool:
        """Whether ``principal`` stored ``sha256`` itself, as recorded on disk, and it is
        still held with ``size`` bytes (in a client's own store: whether it is held)."""
        if not self.held(sha256, size):
            return False
        if not self.shared:
            return True
        return (
            self.persists(principal)
            and self.owners is not None
            and (self.owners.owns(principal, sha256))
        )

    def record(self, principal: str, sha256: str) -> bool:
        """Record on disk that ``principal`` stored ``sha256``; False when its ownership
        is not persisted (the caller keeps it in memory for the connection).

        Raises:
            DiskFullError, OSError: the record cannot be written.
        """
        if not self.persists(principal) or self.owners is None:
            return False
        self.owners.record(principal, sha256)
        return True

    def stored_digest(self, sha256: str, size: int, request: FileProofRequest) -> str | None:
        """The proof digest of ``request``'s ranges of the stored ``sha256``; None when it
        is not held with ``size`` bytes, or cannot be read."""
        try:
            with self.store.open_object(sha256) as handle:
                fd = handle.fileno()
                if os.fstat(fd).st_size != size:
                    return None
                return ranges_digest(fd, request)
        except (OSError, ValueError):
            return None

    # ------------------------------------------------------------------ partial files

    def open_partial(
        self, principal: str, sha256: str, size: int, name: str, *, pending: int = 0
    ) -> PartialFile:
        """Open (create or resume) ``principal``'s own partial file of ``sha256``.

        Args:
            pending: bytes still due to the other transfers open on this disk.

        Raises:
            QuotaExceededError: it would take the principal over its quota.
            DiskFullError: its remaining bytes would eat into the free-space reserve.
            PartialBusyError, OSError, ValueError: as :meth:`BlobStore.open_partial`.
        """
        key = self.partial_key(principal, sha256)
        if self.shared:
            with self._lock:  # the check and its reservation together; not the open
                self._check_quota(principal, key, size)
                held = self.store.partial_size(key, size, sha256=sha256)
                self._check_room(size - held + pending, name)
                self._opening[key] = size
        try:  # a resumed partial is re-hashed here: other principals' opens go on meanwhile
            partial = self.store.open_partial(key, size, name, sha256=sha256)
        finally:
            with self._lock:
                self._opening.pop(key, None)
        partial.reserve_bytes = self.reserve_bytes
        return partial

    def open_anonymous(self, name: str, size: int, *, pending: int = 0) -> PartialFile:
        """A partial for a legacy transfer (no digest, no resume), within the reserve.

        Raises:
            DiskFullError: ``size`` bytes would eat into the free-space reserve. OSError.
        """
        if self.shared:
            self._check_room(size + pending, name)
        partial = self.store.open_anonymous(name, size)
        partial.reserve_bytes = self.reserve_bytes
        return partial

    def _check_quota(self, principal: str, key: str, size: int) -> None:
        quota = self.quota_of(principal)
        prefix = key.split("-", 1)[0] + "-"
        keys = {*self.store.partial_keys(), *self._opening}
        others = [k for k in keys if k.startswith(prefix) and k != key]
        announced = sum(self._opening.get(k) or self._announced(k) for k in others)
        if len(others) + 1 > quota.max_files:
            raise QuotaExceededError(
                f"{len(others)} unfinished transfers already; at most {quota.max_files}"
            )
        if announced + size > quota.max_bytes:
            raise QuotaExceededError(
                f"{announced} bytes of unfinished transfers and {size} more are above "
                f"{quota.max_bytes} bytes"
            )

    def _announced(self, key: str) -> int:
        """The size a partial's sidecar announces (its length when there is none)."""
        sidecar = self.store.read_sidecar(key) or {}
        size = sidecar.get("size")
        if isinstance(size, int) and not isinstance(size, bool) and size >= 0:
            return size
        return sum(end - start for start, end in self.store.partial_ranges(key))

    def _check_room(self, incoming: int, name: str) -> None:
        if self.reserve_bytes and free_bytes_of(self.store.root) - incoming < self.reserve_bytes:
            code = errno.ENOSPC
            raise DiskFullError(code, f"{os.strerror(code)} (free-space reserve)", name)

    def remove_partial(self, principal: str, sha256: str) -> bool:
        """Remove ``principal``'s partial of ``sha256`` unless a writer holds it."""
        return self.store.remove_partial_if_idle(self.partial_key(principal, sha256))

    def mine(self, principal: Callable[[], str]) -> Mine:
        """One connection's view: what its principal (read when asked) owns."""
        return Mine(self, principal)


class Mine:
    """What one connection's principal owns: on disk for a fingerprint, in this object's
    memory (at most :data:`MAX_REMEMBERED` digests) for any other principal, which
    lives as long as its connection.

    Args:
        holdings: the store's holdings.
        principal: returns the connection's principal (it may be learnt after the
            channel opened).
    """

    def __init__(self, holdings: Holdings, principal: Callable[[], str]) -> None:
        self.holdings = holdings
        self.principal = principal
        self._remembered: dict[tuple[str, str], None] = {}

    def owns(self, sha256: str, size: int) -> bool:
        """Whether the principal stored ``sha256`` itself and it is held with ``size``
        bytes (blocking)."""
        principal = self.principal()
        if (principal, sha256) in self._remembered:
            return self.holdings.held(sha256, size)
        return self.holdings.owns(principal, sha256, size)

    def record(self, sha256: str) -> None:
        """The principal holds ``sha256`` now (blocking). A record that cannot be written
        (a full disk) is logged: the principal proves possession again next time."""
        principal = self.principal()
        try:
            if self.holdings.record(principal, sha256):
                return
        except OSError as exc:
            logger.warning("ownership of {} not recorded: {}", sha256[:12], exc)
            return
        self._remembered[(principal, sha256)] = None
        while len(self._remembered) > MAX_REMEMBERED:
            del self._remembered[next(iter(self._remembered))]
