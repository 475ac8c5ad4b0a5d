"""Road choice: shared, then relay, then channel; a forced road wins or is refused with
ROAD_UNAVAILABLE and why (every combination of the inputs)."""

from __future__ import annotations

import itertools

import pytest

from protocol.errors import ErrorCode, LocalProtocolError
from protocol.roads import Road, choose_road

ALL = frozenset(Road)


def test_the_automatic_order_is_shared_relay_channel() -> None:
    assert (
        choose_road(forced=None, worker_roads=ALL, client_reaches_storage=True, shared_input=True)
        is Road.SHARED
    )
    assert (
        choose_road(forced=None, worker_roads=ALL, client_reaches_storage=True, shared_input=False)
        is Road.RELAY
    )
    assert (
        choose_road(forced=None, worker_roads=ALL, client_reaches_storage=False, shared_input=False)
        is Road.CHANNEL
    )
    relay_only = frozenset({Road.RELAY, Road.CHANNEL})
    assert (
        choose_road(
            forced=None, worker_roads=relay_only, client_reaches_storage=True, shared_input=True
        )
        is Road.RELAY
    )
    assert (
        choose_road(
            forced=None, worker_roads=frozenset(), client_reaches_storage=True, shared_input=True
        )
        is Road.CHANNEL
    )


@pytest.mark.parametrize(
    ("forced", "roads", "reach", "shared", "why"),
    [
        (Road.SHARED, ALL, True, False, "the job names no shared path"),
        (Road.SHARED, frozenset({Road.RELAY}), True, True, "the worker has no shared storage"),
        (Road.RELAY, frozenset({Road.SHARED, Road.CHANNEL}), True, False, "does not offer it"),
        (Road.RELAY, ALL, False, False, "storage service is not reachable"),
    ],
)
def test_an_impossible_forced_road_is_refused_with_why(
    forced: Road, roads: frozenset[Road], reach: bool, shared: bool, why: str
) -> None:
    with pytest.raises(LocalProtocolError) as info:
        choose_road(
            forced=forced, worker_roads=roads, client_reaches_storage=reach, shared_input=shared
        )
    assert info.value.code == ErrorCode.ROAD_UNAVAILABLE
    assert why in info.value.detail


def test_every_combination_is_a_possible_road() -> None:
    subsets = [frozenset(c) for n in range(4) for c in itertools.combinations(Road, n)]
    for roads, reach, shared, forced in itertools.product(
        subsets, (True, False), (True, False), (None, *Road)
    ):
        possible = {
            Road.SHARED: shared and Road.SHARED in roads,
            Road.RELAY: reach and Road.RELAY in roads,
            Road.CHANNEL: True,
        }
        try:
            road = choose_road(
                forced=forced, worker_roads=roads, client_reaches_storage=reach, shared_input=shared
            )
        except LocalProtocolError:
            assert forced is not None and not possible[forced]
            continue
        assert possible[road]
        assert road is (forced or next(r for r in Road if possible[r]))
    assert [r.value for r in Road] == ["shared", "relay", "channel"]
