"""The worker's Prometheus metrics, served on an optional port.

Off by default. ``rtc-worker serve --metrics-port N`` (``RTC_METRICS_PORT``) serves
``GET /metrics`` on ``--metrics-host`` (``RTC_METRICS_HOST``, default ``127.0.0.1``:
only this machine; the port has no authentication, so expose it only to the scraper's
network). The names, one registry per worker:

===============================================  ==========  ================================
``rtc_worker_peer_connections``                  gauge       peer connections held now
                                                             (answered, not yet closed)
``rtc_worker_jobs_total{outcome}``               counter     jobs ended: ``completed``,
                                                             ``failed``, ``cancelled``
``rtc_worker_channel_bytes_total{direction}``    counter     file bytes over data channels:
                                                             ``received`` (chunks taken in),
                                                             ``sent`` (chunks put on a channel)
``rtc_worker_relay_road_bytes_total``            counter     ciphertext bytes fetched from
                                                             relay objects (the relay road)
``rtc_worker_transfers_in_progress``             gauge       files being received or sent now
===============================================  ==========  ================================

Instrumenting takes one call per place: :meth:`WorkerMetrics.job_ended` where a job
ends, :meth:`WorkerMetrics.channel_bytes` where chunks are taken in or sent,
:meth:`WorkerMetrics.relay_bytes` where relay objects are read. The gauges
are read at scrape time from the worker (:meth:`WorkerMetrics.serve`).

Source: https://prometheus.io/docs/practices/naming/, https://prometheus.github.io/client_python/.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine, Iterator
from typing import Literal

from aiohttp import web
from loguru import logger
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

__all__ = ["WorkerGauges", "WorkerMetrics"]

WorkerGauges = Callable[[], tuple[int, int]]
"""Returns ``(peer connections held, transfers in progress)`` now."""


class _GaugeCollector(Collector):
    """The gauges read from the worker at each scrape."""

    def __init__(self, read: WorkerGauges) -> None:
        self.read = read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        peers, transfers = self.read()
        yield GaugeMetricFamily(
            "rtc_worker_peer_connections", "Peer connections held now", value=peers
        )
        yield GaugeMetricFamily(
            "rtc_worker_transfers_in_progress", "Files being received or sent now", value=transfers
        )


class WorkerMetrics:
    """The counters of one worker and, once :meth:`serve` runs, its metrics port.

    Attributes:
        registry: the worker's collector registry.
        port: the bound port while served (``None`` when not served).
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.jobs = Counter(
            "rtc_worker_jobs", "Jobs ended, by outcome", ["outcome"], registry=registry
        )
        self.channel = Counter(
            "rtc_worker_channel_bytes",
            "File bytes over data channels, by direction",
            ["direction"],
            registry=registry,
        )
        self.relay = Counter(
            "rtc_worker_relay_road_bytes",
            "Ciphertext bytes fetched from relay objects",
            registry=registry,
        )
        self.port: int | None = None
        self._gauges: _GaugeCollector | None = None

    def job_ended(self, reason: str | None) -> None:
        """Count one job that ended: ``reason`` ``None`` when it completed, else its
        JOB_FAILED reason (``cancelled`` after a cancel)."""
        if reason is None:
            outcome = "completed"
        else:
            outcome = "cancelled" if reason == "cancelled" else "failed"
        self.jobs.labels(outcome).inc()

    def channel_bytes(self, direction: Literal["received", "sent"], count: int) -> None:
        """Count ``count`` file bytes taken in from, or put on, a data channel."""
        self.channel.labels(direction).inc(count)

    def relay_bytes(self, count: int) -> None:
        """Count ``count`` ciphertext bytes fetched from relay objects."""
        self.relay.inc(count)

    async def serve(
        self, gauges: WorkerGauges, host: str, port: int | None
    ) -> Coroutine[None, None, None]:
        """Bind ``GET /metrics`` on ``host:port``; run the returned coroutine (as a task)
        to hold it until that task is cancelled, which closes the port. With ``port``
        ``None`` nothing is bound and the coroutine returns at once.

        Args:
            gauges: read at each scrape.
            host: the address to bind (``127.0.0.1``: this machine only).
            port: the TCP port; 0 picks a free one (then see :attr:`port`).

        Raises:
            OSError: the address cannot be bound.
        """
        if port is None:
            return _nothing()
        if self._gauges is None:
            self._gauges = _GaugeCollector(gauges)
            self.registry.register(self._gauges)
        else:
            self._gauges.read = gauges

        async def scrape(request: web.Request) -> web.Response:
            return web.Response(
                body=generate_latest(self.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
            )

        app = web.Application()
        app.router.add_get("/metrics", scrape)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            await site.start()
            self.port = int(runner.addresses[0][1])
        except BaseException:
            await runner.cleanup()
            raise
        logger.info("worker metrics on http://{}:{}/metrics", host, self.port)

        async def hold() -> None:
            try:
                await asyncio.Event().wait()
            finally:
                self.port = None
                await runner.cleanup()

        return hold()


async def _nothing() -> None:
    """The metrics port is off: nothing to hold."""
