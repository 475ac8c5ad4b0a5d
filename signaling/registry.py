"""The registry of the peers a signaling server knows: one interface, two implementations.

:class:`PeerRegistry` is the table of the peers connected to *this* process (their
sockets). :class:`SignalingRegistry` is what a session asks: register, unregister, find,
list and relay. It has two implementations, picked at startup from the settings:

* :class:`MemoryRegistry` (here): one process; the local table is the whole registry.
* :class:`signaling.registry_redis.RedisRegistry` (``--redis-url``): any number of
  processes share one Redis (registrations, presence with expiry, relayed frames).

A relayed frame carries ``from`` and ``fingerprint`` as the server knows the sender
(:func:`relayed_frame`), never as the sender says; an ``offer`` carries ``ice_servers``
made for the receiving peer where it is delivered.

Source: PROTOCOL.md section 5; DESIGN.md ("Scale-out").
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from protocol.signaling import (
    Answer,
    Candidate,
    IceServer,
    Offer,
    PeerInfo,
    RelayedAnswer,
    RelayedCandidate,
    RelayedOffer,
    Role,
    SignalingError,
    SignalingErrorCode,
    dump_frame,
)

__all__ = [
    "ClientRelay",
    "IceServersFor",
    "MemoryRegistry",
    "PeerEntry",
    "PeerRegistry",
    "RegistryUnavailable",
    "SendText",
    "ServerRelay",
    "SignalingRegistry",
    "peer_id_taken",
    "relayed_frame",
]

ConnT = TypeVar("ConnT")

ClientRelay = Offer | Answer | Candidate
"""A frame a peer asks the server to relay."""

ServerRelay = RelayedOffer | RelayedAnswer | RelayedCandidate
"""A relayed frame as the receiving peer gets it."""

SendText = Callable[[ConnT, str], Awaitable[bool]]
"""Send one text frame on a connection; ``False`` when the connection is gone."""

IceServersFor = Callable[[str], tuple[IceServer, ...]]
"""The ``ice_servers`` of a frame for a peer id (fresh TURN credentials, or none)."""


@dataclass(frozen=True, slots=True, eq=False)
class PeerEntry(Generic[ConnT]):
    """One registered peer: its id, role, metadata, the connection it lives on, and the
    fingerprint of the key it proved (None for an anonymous client)."""

    peer_id: str
    role: Role
    metadata: dict[str, Any] = field(default_factory=dict)
    conn: ConnT | None = None
    fingerprint: str | None = None

    def info(self) -> PeerInfo:
        """Return the public view of this peer, as listed in a ``peers`` frame."""
        return PeerInfo(
            peer_id=self.peer_id,
            role=self.role,
            fingerprint=self.fingerprint,
            metadata=self.metadata,
        )


class PeerRegistry(Generic[ConnT]):
    """Map of peer id to :class:`PeerEntry`; no I/O, one event loop, no locking needed.

    ``ConnT`` is the connection type (a WebSocket on the server); the registry only
    compares connections by identity.
    """

    def __init__(self) -> None:
        self._peers: dict[str, PeerEntry[ConnT]] = {}

    def add(
        self,
        peer_id: str,
        role: Role,
        metadata: dict[str, Any],
        conn: ConnT,
        fingerprint: str | None = None,
    ) -> PeerEntry[ConnT]:
        """Register ``peer_id`` on ``conn`` (proven by the key of ``fingerprint``, or
        anonymous) and return the new entry.

        Raises:
            SignalingError: ``PEER_ID_TAKEN`` when the id is registered already.
        """
        if peer_id in self._peers:
            raise peer_id_taken(peer_id)
        entry = PeerEntry(
            peer_id=peer_id,
            role=role,
            metadata=dict(metadata),
            conn=conn,
            fingerprint=fingerprint,
        )
        self._peers[peer_id] = entry
        return entry

    def remove(self, peer_id: str, conn: ConnT) -> bool:
        """Drop ``peer_id`` if its entry still belongs to ``conn``; return whether it did."""
        entry = self._peers.get(peer_id)
        if entry is None or entry.conn is not conn:
            return False
        del self._peers[peer_id]
        return True

    def get(self, peer_id: str) -> PeerEntry[ConnT] | None:
        """Return the entry of ``peer_id``, or ``None`` when it is not registered."""
        return self._peers.get(peer_id)

    def entries(self) -> list[PeerEntry[ConnT]]:
        """Return every entry, sorted by peer id."""
        return [self._peers[key] for key in sorted(self._peers)]

    def infos(self) -> tuple[PeerInfo, ...]:
        """Return the public view of every peer, sorted by peer id."""
        return tuple(entry.info() for entry in self.entries())

    def count(self, role: Role | None = None) -> int:
        """Return how many peers are registered, optionally only those with ``role``."""
        if role is None:
            return len(self._peers)
        return sum(1 for entry in self._peers.values() if entry.role == role)

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, peer_id: object) -> bool:
        return peer_id in self._peers


class RegistryUnavailable(Exception):
    """The registry's store (Redis) cannot be reached or failed; nothing was changed
    that the caller can rely on. The session answers ``SERVER_ERROR``."""


def relayed_frame(
    frame: ClientRelay, sender: str, fingerprint: str | None, ice_servers: IceServersFor
) -> ServerRelay:
    """The frame ``frame.to`` receives: ``from`` = ``sender`` (its registered id),
    ``fingerprint`` = the key it proved (None: anonymous), and for an offer the
    ``ice_servers`` of the receiving peer (PROTOCOL.md section 5)."""
    if isinstance(frame, Offer):
        return RelayedOffer(
            from_=sender,
            fingerprint=fingerprint,
            to=frame.to,
            sdp=frame.sdp,
            ice_servers=ice_servers(frame.to),
        )
    if isinstance(frame, Answer):
        return RelayedAnswer(from_=sender, fingerprint=fingerprint, to=frame.to, sdp=frame.sdp)
    return RelayedCandidate(
        from_=sender, fingerprint=fingerprint, to=frame.to, candidate=frame.candidate
    )


def peer_id_taken(peer_id: str) -> SignalingError:
    """The ``PEER_ID_TAKEN`` refusal of a ``register`` for a live id."""
    return SignalingError(
        SignalingErrorCode.PEER_ID_TAKEN, f"peer id {peer_id!r} is already in use", "register"
    )


def peer_not_found(to: str, ref_type: str, gone: bool = False) -> SignalingError:
    """The ``PEER_NOT_FOUND`` refusal of a relay to ``to`` (``gone``: it has just left)."""
    text = f"peer {to!r} has disconnected" if gone else f"no registered peer {to!r}"
    return SignalingError(SignalingErrorCode.PEER_NOT_FOUND, text, ref_type)


class SignalingRegistry(Protocol[ConnT]):
    """What a signaling session asks of the registry; every method may raise
    :class:`RegistryUnavailable` when the shared store cannot be reached.

    Attributes:
        local: the peers connected to this process.
    """

    local: PeerRegistry[ConnT]

    async def start(self) -> None:
        """Begin serving (connect, heartbeat, read the inbox); called once at startup."""
        ...

    async def close(self) -> None:
        """Stop serving and forget this process's peers; called once at shutdown."""
        ...

    async def add(
        self,
        peer_id: str,
        role: Role,
        metadata: dict[str, Any],
        conn: ConnT,
        fingerprint: str | None = None,
    ) -> PeerEntry[ConnT]:
        """Register ``peer_id`` on ``conn`` for every process, atomically.

        Raises:
            SignalingError: ``PEER_ID_TAKEN`` when a live peer holds the id anywhere.
            RegistryUnavailable: the shared store failed.
        """
        ...

    async def remove(self, peer_id: str, conn: ConnT) -> bool:
        """Unregister ``peer_id`` if it is still registered on ``conn``; return whether
        it was. Never raises: a shared entry that cannot be removed expires."""
        ...

    async def find(self, peer_id: str) -> PeerInfo | None:
        """The live peer ``peer_id`` on any process, or None."""
        ...

    async def infos(self) -> tuple[PeerInfo, ...]:
        """Every live peer on every process, sorted by peer id."""
        ...

    async def relay(self, sender: str, fingerprint: str | None, frame: ClientRelay) -> None:
        """Deliver ``frame`` from the registered ``sender`` (proven by the key of
        ``fingerprint``) to ``frame.to``, after the frames it sent before.

        Raises:
            SignalingError: ``PEER_NOT_FOUND`` when ``frame.to`` is not registered (a
                receiver that leaves while the frame is on its way gets it later, as
                an ``error`` frame on the sender's socket).
            RegistryUnavailable: the shared store failed.
        """
        ...

    async def ping(self) -> None:
        """Return when the shared store answers (readiness); raise
        :class:`RegistryUnavailable` otherwise."""
        ...


class MemoryRegistry(Generic[ConnT]):
    """:class:`SignalingRegistry` of one process: the local table is the registry.

    Args:
        send: sends a text frame on a connection (``False`` when it is gone).
        ice_servers: the ``ice_servers`` of an offer for a receiving peer id.
    """

    def __init__(self, send: SendText[ConnT], ice_servers: IceServersFor) -> None:
        self.local: PeerRegistry[ConnT] = PeerRegistry()
        self._send = send
        self._ice_servers = ice_servers

    async def start(self) -> None:
        """Nothing to start."""

    async def close(self) -> None:
        """Nothing to stop."""

    async def add(
        self,
        peer_id: str,
        role: Role,
        metadata: dict[str, Any],
        conn: ConnT,
        fingerprint: str | None = None,
    ) -> PeerEntry[ConnT]:
        """See :meth:`SignalingRegistry.add` (:meth:`PeerRegistry.add`)."""
        return self.local.add(peer_id, role, metadata, conn, fingerprint)

    async def remove(self, peer_id: str, conn: ConnT) -> bool:
        """See :meth:`SignalingRegistry.remove`."""
        return self.local.remove(peer_id, conn)

    async def find(self, peer_id: str) -> PeerInfo | None:
        """See :meth:`SignalingRegistry.find`."""
        entry = self.local.get(peer_id)
        return None if entry is None else entry.info()

    async def infos(self) -> tuple[PeerInfo, ...]:
        """See :meth:`SignalingRegistry.infos`."""
        return self.local.infos()

    async def relay(self, sender: str, fingerprint: str | None, frame: ClientRelay) -> None:
        """See :meth:`SignalingRegistry.relay`; the frame is sent before this returns."""
        target = self.local.get(frame.to)
        if target is None or target.conn is None:
            raise peer_not_found(frame.to, frame.type)
        text = dump_frame(relayed_frame(frame, sender, fingerprint, self._ice_servers))
        if not await self._send(target.conn, text):
            raise peer_not_found(frame.to, frame.type, gone=True)

    async def ping(self) -> None:
        """Always ready."""
