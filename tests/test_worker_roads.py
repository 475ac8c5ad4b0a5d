"""The roads a worker offers (settings, registration metadata) and the road each received
file took (JOB_METRICS ``road`` and ``transfer_mb_s``, the log line)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from protocol.events import FileHeld
from rtc_worker.roads_taken import MAX_REMEMBERED, RoadLog, RoadTaken
from rtc_worker.settings import WorkerCli, WorkerSettings
from rtc_worker.settings_sources import CommandLine
from rtc_worker.worker import RTCWorkerClient


def settings(tmp_path: Path, **values: Any) -> WorkerSettings:
    base: dict[str, Any] = {
        "shared_root_candidates": [],
        "data_dir": tmp_path / "data",
        "signaling_url": "ws://127.0.0.1:1/ws",
    }
    return WorkerSettings(**{**base, **values})


@pytest.mark.parametrize(
    ("values", "offered"),
    [
        ({}, False),
        ({"storage_url": "http://127.0.0.1:9"}, False),  # no key: nothing to fetch with
        ({"storage_api_key": "k"}, False),  # no service
        ({"storage_url": "http://127.0.0.1:9", "storage_api_key": "k"}, True),
        ({"storage_url": "http://127.0.0.1:9", "storage_api_key": "k", "relay_road": False}, False),
    ],
)
def test_the_relay_road_is_offered_only_with_a_storage_service_and_its_key(
    tmp_path: Path, values: dict[str, Any], offered: bool
) -> None:
    configured = settings(tmp_path, **values)
    assert configured.relay_road_offered is offered
    worker = RTCWorkerClient(configured)
    assert (worker.resources.relay_road is not None) is offered
    roads = ["relay", "channel"] if offered else ["channel"]
    assert worker.metadata["roads"] == roads


def test_a_worker_with_a_shared_root_and_the_relay_road_offers_all_three(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    worker = RTCWorkerClient(
        settings(
            tmp_path, shared_root=shared, storage_url="http://127.0.0.1:9", storage_api_key="k"
        )
    )
    assert worker.metadata["roads"] == ["shared", "relay", "channel"]


def test_the_relay_road_is_switched_off_from_the_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for variable in ("RTC_RELAY_ROAD", "RTC_RELAY_FETCH_TIMEOUT_S", "RTC_RELAY_FETCH_RETRIES"):
        monkeypatch.delenv(variable, raising=False)
    line = CommandLine(WorkerCli, "rtc-worker")
    default = line.command(line.parse(["serve"]))
    assert isinstance(default, WorkerSettings)
    assert (default.relay_road, default.relay_fetch_timeout_s, default.relay_fetch_retries) == (
        True,
        30.0,
        5,
    )
    off = line.command(
        line.parse(
            [
                "serve",
                "--no-relay-road",
                "--relay-fetch-timeout-s",
                "4",
                "--relay-fetch-retries",
                "2",
            ]
        )
    )
    assert isinstance(off, WorkerSettings)
    assert (off.relay_road, off.relay_fetch_timeout_s, off.relay_fetch_retries) == (False, 4.0, 2)
    monkeypatch.setenv("RTC_RELAY_ROAD", "false")
    assert WorkerSettings().relay_road is False


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def held(sha: str, moved: int, road: str, existed: bool = False) -> FileHeld:
    return FileHeld(sha, f"{sha[:4]}.bin", moved, existed, moved, road)


def test_each_road_is_named_with_its_speed() -> None:
    clock = Clock()
    log = RoadLog(clock)
    lines: list[str] = []
    sink = logger.add(lambda message: lines.append(str(message)), level="INFO")
    try:
        log.action(1)
        clock.now += 0.5
        taken = log.held(held("a" * 64, 10_000_000, "channel"))
        assert taken == RoadTaken("channel", 10_000_000, 0.5)
        assert taken.mb_s == pytest.approx(20.0)

        log.action(2)
        clock.now += 0.25
        both = log.held(held("b" * 64, 50_000_000, "relay+channel"))
        assert (both.road, both.mb_s) == ("relay+channel", pytest.approx(200.0))

        log.action(4)  # the proof of possession's action, then FILE_EXISTS
        stored = log.held(FileHeld("d" * 64, "d.bin", 7, True, 0, "stored"))
        assert (stored.road, stored.moved, stored.mb_s) == ("stored", 0, 0.0)
    finally:
        logger.remove(sink)
    assert log.road_of("b" * 64).road == "relay+channel"
    assert log.road_of("e" * 64) == RoadTaken("stored", 0, 0.0)
    assert any("by the relay+channel road" in line and "200.0 MB/s" in line for line in lines)


def test_the_same_transfer_keeps_its_clock_and_a_new_one_restarts_it() -> None:
    clock = Clock()
    log = RoadLog(clock)
    log.action(7)
    clock.now += 1.0
    log.action(7)  # CheckStore after the proof: still transfer 7
    clock.now += 1.0
    assert log.held(held("a" * 64, 1_000_000, "relay")).seconds == pytest.approx(2.0)
    log.action(8)  # transfer 8 ends without a file (cancelled)
    clock.now += 5.0
    log.action(9)
    clock.now += 1.0
    assert log.held(held("b" * 64, 1_000_000, "channel")).seconds == pytest.approx(1.0)


def test_a_connection_remembers_a_bounded_number_of_roads() -> None:
    log = RoadLog()
    for n in range(MAX_REMEMBERED + 5):
        log.action(n)
        log.held(held(f"{n:064x}", 1, "channel"))
    assert log.road_of(f"{0:064x}").road == "stored"  # forgotten: the oldest went first
    assert log.road_of(f"{MAX_REMEMBERED + 4:064x}").road == "channel"
