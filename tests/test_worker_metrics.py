"""The worker's metrics port, end to end: a real worker and a real aiortc client through a
real signaling server on loopback, a real job with its input and results over the data
channel, both /metrics scraped over HTTP."""

from __future__ import annotations

import socket
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from rtc_worker.client import RTCClient
from rtc_worker.settings import WorkerCli, WorkerSettings
from rtc_worker.settings_sources import CommandLine
from tests.conftest import PACKAGE, Signaling, make_zip
from tests.test_ops import scrape

pytestmark = pytest.mark.live


async def test_worker_metrics_port_counts_a_real_job(
    signaling: Signaling, start_worker: Any, tmp_path: Path
) -> None:
    worker = await start_worker(metrics_port=0)
    port = worker.resources.metrics.port
    assert port is not None
    metrics_url = f"http://127.0.0.1:{port}/metrics"
    package = make_zip(tmp_path / "client" / "package.zip", PACKAGE)
    async with aiohttp.ClientSession() as http:
        before = await scrape(http, metrics_url)
        assert before["rtc_worker_peer_connections"] == 0
        assert "rtc_worker_jobs_total{outcome=completed}" not in before
        async with RTCClient(signaling.url, reply_timeout=20, connect_timeout=20) as client:
            outcome = await client.submit_file(
                "worker-1", package, tmp_path / "downloads", job_id="metered"
            )
            during = await scrape(http, metrics_url)
        assert outcome.job.job_id == "metered"
        assert during["rtc_worker_peer_connections"] == 1
        assert during["rtc_worker_transfers_in_progress"] == 0
        assert during["rtc_worker_jobs_total{outcome=completed}"] == 1
        assert during["rtc_worker_channel_bytes_total{direction=received}"] == len(
            package.read_bytes()
        )
        with zipfile.ZipFile(outcome.results_zip) as results:
            assert results.namelist()
        sent = during["rtc_worker_channel_bytes_total{direction=sent}"]
        assert sent == outcome.results_zip.stat().st_size
        # the signaling server relayed the real offer and answer of that connection
        base = signaling.url.replace("ws://", "http://").removesuffix("/ws")
        relays = await scrape(http, base + "/metrics")
        assert relays["rtc_relayed_frames_total{type=offer}"] >= 1
        assert relays["rtc_relayed_frames_total{type=answer}"] >= 1
    await worker.stop()


async def test_worker_metrics_port_is_off_by_default(start_worker: Any) -> None:
    assert WorkerSettings.model_fields["metrics_port"].default is None
    assert WorkerSettings.model_fields["metrics_host"].default == "127.0.0.1"
    worker = await start_worker()
    assert worker.settings.metrics_port is None
    assert worker.resources.metrics.port is None


def test_metrics_port_and_host_from_flags_and_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("RTC_METRICS_PORT", raising=False)
    monkeypatch.delenv("RTC_METRICS_HOST", raising=False)
    line = CommandLine(WorkerCli, "rtc-worker")
    serve = line.command(line.parse(["serve", "--metrics-port", "9464"]))
    assert isinstance(serve, WorkerSettings)
    assert (serve.metrics_port, serve.metrics_host) == (9464, "127.0.0.1")
    monkeypatch.setenv("RTC_METRICS_PORT", "9465")
    monkeypatch.setenv("RTC_METRICS_HOST", "10.0.0.5")
    settings = WorkerSettings()
    assert (settings.metrics_port, settings.metrics_host) == (9465, "10.0.0.5")


async def test_a_taken_metrics_port_stops_the_worker_with_an_error(
    start_worker: Any, signaling: Signaling, tmp_path: Path
) -> None:
    from rtc_worker.worker import RTCWorkerClient

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        worker = RTCWorkerClient(
            WorkerSettings(
                signaling_url=signaling.url,
                shared_root_candidates=[],
                data_dir=tmp_path / "data",
                metrics_port=busy,
            )
        )
        with pytest.raises(OSError):
            await worker.run()
