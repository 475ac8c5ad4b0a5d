"""The client's choice of road for an input file: the shared path, the relay road or
the data channel.

:func:`plan_road` reads the roads a worker advertised at registration (its metadata's
``roads``; absent: an older worker, which serves the shared path and the channel),
probes the storage service when the relay road is possible (:meth:`RelayHttp.reachable`,
bounded 3 s) and lets :func:`protocol.roads.choose_road` decide. A forced road that is
impossible raises :class:`~rtc_worker.errors.RoadFailed` (``ROAD_UNAVAILABLE``).

Source: DESIGN.md, "Roads"; the issue's automatic road choice.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from protocol import LocalProtocolError
from protocol.roads import Road, choose_road
from rtc_worker.errors import RoadFailed
from rtc_worker.relay_http import RelayHttp

__all__ = ["OLDER_WORKER_ROADS", "RoadChange", "RoadPlan", "plan_road", "worker_roads"]

#: What a worker that advertises no roads serves (it predates the relay road).
OLDER_WORKER_ROADS = frozenset({Road.SHARED, Road.CHANNEL})


@dataclass(frozen=True)
class RoadPlan:
    """How an input goes to the worker.

    Attributes:
        road: the road chosen (or forced).
        fallback: the transfer may continue on the data channel when the relay road
            fails (an automatic choice); False when the road was forced.
        relay: the storage service's relay client, for the relay road.
        part_bytes: plaintext bytes per relay object (whole chunks).
        chunk_size: plaintext bytes per sealed chunk on the relay road.
    """

    road: Road
    fallback: bool = True
    relay: RelayHttp | None = None
    part_bytes: int = 64 * 1024 * 1024
    chunk_size: int = 1024 * 1024


@dataclass(frozen=True)
class RoadChange:
    """A road taken or left during a transfer, for the progress line.

    Attributes:
        road: the road now taken (``relay``, ``channel``...).
        previous: the road left, or None for the first road of a transfer.
        offset: plaintext bytes the receiver held when the road changed.
        code: why it changed (``RELAY_UNREACHABLE``...), or None.
    """

    road: str
    previous: str | None = None
    offset: int = 0
    code: str | None = None

    def __str__(self) -> str:
        if self.previous is None:
            return f"road: {self.road}"
        why = f": {self.code}" if self.code else ""
        return f"{self.previous} -> {self.road} at {self.offset / 1e6:.1f} MB{why}"


#: Called with each road taken (the first, then each change).
OnRoad = Callable[[RoadChange], None]


def worker_roads(metadata: Mapping[str, Any]) -> frozenset[Road]:
    """The roads a worker's registration metadata advertises (``"roads": [...]``);
    unknown names are ignored; no list at all: :data:`OLDER_WORKER_ROADS`."""
    listed = metadata.get("roads")
    if not isinstance(listed, list):
        return OLDER_WORKER_ROADS
    known = {road.value: road for road in Road}
    return frozenset(known[name] for name in listed if isinstance(name, str) and name in known)


async def plan_road(
    *,
    forced: Road | None,
    metadata: Mapping[str, Any],
    relay: RelayHttp | None,
    shared_input: bool,
    part_bytes: int,
    chunk_size: int,
) -> RoadPlan:
    """The road of one input.

    Args:
        forced: the road given with ``--road``; None chooses.
        metadata: the worker's registration metadata (``roads``).
        relay: the storage service's relay client, or None when the client has no
            storage service configured.
        shared_input: the job names a path on the shared storage.
        part_bytes / chunk_size: the relay road's part and chunk sizes, bytes.

    Raises:
        RoadFailed: ``ROAD_UNAVAILABLE``: the forced road is impossible (the reason
            says why).
    """
    roads = worker_roads(metadata)
    probe = relay is not None and Road.RELAY in roads and forced in (None, Road.RELAY)
    reaches = probe and relay is not None and await relay.reachable()
    try:
        road = choose_road(
            forced=forced,
            worker_roads=roads,
            client_reaches_storage=reaches,
            shared_input=shared_input,
        )
    except LocalProtocolError as exc:
        raise RoadFailed(str(exc.code), exc.detail, road=forced) from None
    return RoadPlan(
        road,
        fallback=forced is None,
        relay=relay if road is Road.RELAY else None,
        part_bytes=part_bytes,
        chunk_size=chunk_size,
    )
