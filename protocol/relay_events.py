"""What crosses between a :class:`~protocol.connection.Connection` and its adapter on
the relay road (the rest is in :mod:`protocol.events`).

Receiver actions: :class:`FetchRelayPart`, :class:`HaltRelay`, :class:`DeleteRelayObject`;
their reports: :class:`RelayWritten`, :class:`RelayFetched`, :class:`RelayFailed`.
Sender action: :class:`RelayFrom`; sender event: :class:`RoadChanged`.

Reports carry the transfer's serial number, as the channel's do: one about an earlier
transfer is dropped. Nothing here performs I/O; sizes are bytes. No repr shows a key or
a token.

Source: PROTOCOL.md section 2.6.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol.errors import RelayEndCode
from protocol.relay_messages import RelayPart
from protocol.roads import Road
from protocol.transfer_messages import FileMeta

__all__ = [
    "DeleteRelayObject",
    "FetchRelayPart",
    "HaltRelay",
    "RelayFailed",
    "RelayFetched",
    "RelayFrom",
    "RelayWritten",
    "RoadChanged",
]

# ===================================================================== receiver


@dataclass(frozen=True, slots=True)
class FetchRelayPart:
    """Receiver: fetch plaintext ``[start, part.end)`` of ``meta``'s file from relay
    object ``part.upload_id`` and append it to the open partial file.

    The adapter asks its own storage service (never a URL from the peer) for the
    ciphertext of chunks ``start // part.chunk_size`` to the part's last
    (:meth:`~protocol.relay_crypto.ChunkCipher.cipher_span` with ``first_index =
    part.offset // part.chunk_size``), opens each chunk with
    :class:`~protocol.relay_crypto.ChunkCipher` and appends only authenticated
    plaintext. ``start`` is the verified offset, within the part: a chunk boundary,
    except for the first part after a resume that left the partial inside a chunk;
    that chunk is opened whole and only its bytes from ``start`` are appended.

    Report :class:`RelayWritten` as batches reach the disk (throttling is the
    connection's), then :class:`RelayFetched` at the part's end, or
    :class:`RelayFailed`.
    """

    transfer: int
    part: RelayPart
    meta: FileMeta
    start: int


@dataclass(frozen=True, slots=True)
class HaltRelay:
    """Receiver: stop the fetch in progress (RELAY_STOP or FILE_CANCEL came); report
    :class:`RelayFailed` with ``STOPPED`` (and the bytes on disk) once it stopped."""

    transfer: int


@dataclass(frozen=True, slots=True)
class DeleteRelayObject:
    """Receiver: the part is verified and on disk: delete relay object ``upload_id``
    with ``token`` (best effort, in the background; it never blocks the transfer and
    reports nothing). ``token`` is secret: hidden in the repr."""

    upload_id: str
    token: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class RelayWritten:
    """FetchRelayPart: ``on_disk`` bytes of the file are written and verified (resumed
    prefix included; a multiple of the chunk size, or the size)."""

    transfer: int
    on_disk: int


@dataclass(frozen=True, slots=True)
class RelayFetched:
    """FetchRelayPart: the whole part is written; ``on_disk`` is its end."""

    transfer: int
    on_disk: int


@dataclass(frozen=True, slots=True)
class RelayFailed:
    """FetchRelayPart failed, or stopped after HaltRelay.

    Attributes:
        on_disk: bytes written and verified (chunk aligned): the transfer goes on
            from there.
        code: why (:class:`~protocol.errors.RelayEndCode`; STOPPED after HaltRelay).
        detail: one line for the peer: no URL, key or token.
    """

    transfer: int
    on_disk: int
    code: RelayEndCode
    detail: str = ""


# ===================================================================== sender


@dataclass(frozen=True, slots=True)
class RelayFrom:
    """Sender: the receiver is ready from ``offset`` and the transfer takes the relay
    road: seal and upload the file from ``offset`` part by part, and announce each with
    :meth:`Connection.relay_part` (or give up with :meth:`Connection.relay_stop`)."""

    offset: int
    meta: FileMeta


@dataclass(frozen=True, slots=True)
class RoadChanged:
    """Sender: the transfer left road ``from_road`` for ``to_road`` at ``offset`` bytes
    verified, because of ``code`` (a :class:`~protocol.errors.RelayEndCode` value). A
    :class:`~protocol.events.StreamFrom` from ``offset`` follows."""

    from_road: Road
    to_road: Road
    offset: int
    code: str
