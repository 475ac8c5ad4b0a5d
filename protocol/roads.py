"""Which road a file takes to a worker: the shared path, the relay road or the channel.

Pure and sans-IO: the client calls :func:`choose_road` with what the worker advertised
at registration (``roads``) and what it can reach itself.

Source: PROTOCOL.md section 2.6 (roads); DESIGN.md, "Roads".
"""

from __future__ import annotations

from enum import StrEnum

from protocol.errors import ErrorCode, LocalProtocolError

__all__ = ["Road", "choose_road"]


class Road(StrEnum):
    """A road for a job's input (the value is the registration's and JOB_METRICS' word)."""

    #: The worker reads the client's path on storage both see: no byte is moved.
    SHARED = "shared"
    #: Encrypted chunks through the storage service (tus upload, ranged download).
    RELAY = "relay"
    #: Binary chunks on the data channel (every worker serves it).
    CHANNEL = "channel"


def choose_road(
    *,
    forced: Road | None,
    worker_roads: frozenset[Road],
    client_reaches_storage: bool,
    shared_input: bool,
) -> Road:
    """The road for one job's input, in the order shared, relay, channel.

    Args:
        forced: the road the user asked for (``--road``), or None for the automatic
            choice.
        worker_roads: the roads the worker advertises (its registration's ``roads``);
            the channel is always served, named or not.
        client_reaches_storage: the client has the storage service configured and
            reached it.
        shared_input: the job names an input on shared storage.

    Returns:
        SHARED when the job names a shared path and the worker serves it; else RELAY
        when the worker offers it and the client reaches the storage service; else
        CHANNEL. ``forced`` wins when it is possible.

    Raises:
        LocalProtocolError: ROAD_UNAVAILABLE, with why, when ``forced`` is impossible.
    """
    possible = {
        Road.SHARED: shared_input and Road.SHARED in worker_roads,
        Road.RELAY: Road.RELAY in worker_roads and client_reaches_storage,
        Road.CHANNEL: True,
    }
    if forced is None:
        return next(road for road in Road if possible[road])
    if possible[forced]:
        return forced
    if forced is Road.SHARED:
        why = "the worker has no shared storage" if shared_input else "the job names no shared path"
        detail = f"the shared road is unavailable: {why}"
    elif Road.RELAY not in worker_roads:
        detail = "the relay road is unavailable: the worker does not offer it"
    else:
        detail = "the relay road is unavailable: the storage service is not reachable"
    raise LocalProtocolError(ErrorCode.ROAD_UNAVAILABLE, detail)
