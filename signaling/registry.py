"""In-memory registry of the peers connected to one signaling server process."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from protocol.signaling import PeerInfo, Role, SignalingError, SignalingErrorCode

__all__ = ["PeerEntry", "PeerRegistry"]

ConnT = TypeVar("ConnT")


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
            raise SignalingError(
                SignalingErrorCode.PEER_ID_TAKEN,
                f"peer id {peer_id!r} is already in use",
                "register",
            )
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
