"""Prometheus metrics of one signaling app, served at ``GET /metrics``.

Each app has its own :class:`prometheus_client.CollectorRegistry` (two apps in one
process, as in the tests, never share a series). The names:

=====================================  ==========  ==========================================
``rtc_connected_peers{role}``          gauge       peers registered on this process, by role
                                                   (``worker``, ``client``); read at scrape
``rtc_relayed_frames_total{type}``     counter     offers, answers and ICE candidates relayed
                                                   (``type``: ``offer``, ``answer``,
                                                   ``candidate``)
``rtc_relay_latency_seconds{type}``    histogram   from receiving a frame to handing the
                                                   relayed frame to the receiver's socket
                                                   (on Redis: to Redis), seconds
``rtc_errors_total{source,code}``      counter     ``source="signaling"``: error frames sent,
                                                   by code; ``source="storage"``: JSON error
                                                   answers of the storage routes (tus too)
``rtc_uploads_in_progress``            gauge       unfinished, unexpired resumable uploads
                                                   (tus included) in the storage database
``rtc_stored_bytes``                   gauge       bytes of the distinct contents (by
                                                   sha256) that live results and completed
                                                   uploads use, in bytes
=====================================  ==========  ==========================================

The two storage gauges are read from the database at scrape (within
``ready_timeout_s``; ``NaN`` when it does not answer). They count what the database
holds, so every instance sharing one database reports the same figure: aggregate them
with ``max``, not ``sum``. The other series are per process: scrape every process.

Instrumenting takes one call per place, from inside a request of the app (the
middleware :func:`bind_metrics` makes the app's metrics the current ones for the task
serving the request; outside a request, such as a Redis reader task, nothing is
counted): :func:`relayed` where a relay completes, :func:`error_frame` where an error
frame is sent, :func:`api_error` where a storage error answer is made.

Access: ``/metrics`` answers anyone who can reach the port unless ``metrics_token`` is
set, then only ``Authorization: Bearer <token>`` (compared in constant time); or bind
the server to an address only the scraper reaches. Counts, never a peer id, key or path.

Source: https://prometheus.io/docs/practices/naming/ (units in names, ``_total``),
https://prometheus.github.io/client_python/.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import hmac
import math
import time
import typing
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from aiohttp import web
from aiohttp.typedefs import Handler
from loguru import logger
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from sqlalchemy import func, select, union

from protocol.signaling import Role
from rtc_worker.storage import format_timestamp
from signaling.bounds import LogLimiter
from signaling.db_engine import DATABASE_ERRORS, Database
from signaling.db_schema import UNFINISHED, files, uploads
from signaling.probe_cache import CachedProbe

__all__ = [
    "LATENCY_BUCKETS_S",
    "METRICS_KEY",
    "PeerCounter",
    "SignalingMetrics",
    "api_error",
    "bind_metrics",
    "error_frame",
    "now",
    "relayed",
    "setup_metrics",
]

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
"""Bucket bounds of the relay latency histogram, seconds."""

ROLES: tuple[Role, ...] = typing.get_args(Role)
"""The roles ``rtc_connected_peers`` is reported for."""


class PeerCounter(typing.Protocol):
    """What the peers gauge reads: the registry of this process's sockets."""

    def count(self, role: Role | None = None) -> int:
        """Registered peers, only those of ``role`` when given."""
        ...


class SignalingMetrics:
    """The metrics of one app (see the module docstring for the names).

    Attributes:
        registry: the app's own collector registry (what ``/metrics`` serves).
    """

    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry(auto_describe=True)
        self.peers = Gauge(
            "rtc_connected_peers",
            "Peers registered on this signaling process, by role",
            ["role"],
            registry=registry,
        )
        self.relayed_frames = Counter(
            "rtc_relayed_frames",
            "Offers, answers and ICE candidates relayed, by frame type",
            ["type"],
            registry=registry,
        )
        self.relay_latency = Histogram(
            "rtc_relay_latency_seconds",
            "From receiving a frame to handing the relayed frame to the receiver's socket",
            ["type"],
            buckets=LATENCY_BUCKETS_S,
            registry=registry,
        )
        self.errors = Counter(
            "rtc_errors",
            "Signaling error frames sent and storage error answers, by code",
            ["source", "code"],
            registry=registry,
        )
        self.uploads_in_progress = Gauge(
            "rtc_uploads_in_progress",
            "Unfinished, unexpired resumable uploads in the storage database",
            registry=registry,
        )
        self.stored_bytes = Gauge(
            "rtc_stored_bytes",
            "Bytes of the distinct contents live results and completed uploads use",
            registry=registry,
        )


METRICS_KEY: web.AppKey[SignalingMetrics] = web.AppKey("metrics", SignalingMetrics)
"""The app's :class:`SignalingMetrics`."""

_CURRENT: contextvars.ContextVar[SignalingMetrics | None] = contextvars.ContextVar(
    "rtc_signaling_metrics", default=None
)


def now() -> float:
    """The clock of :func:`relayed` (:func:`time.perf_counter`), seconds."""
    return time.perf_counter()


def relayed(frame_type: str, started: float) -> None:
    """Count one relayed frame of ``frame_type`` and observe its latency.

    Args:
        frame_type: ``offer``, ``answer`` or ``candidate``.
        started: :func:`now` when the frame was received, seconds.
    """
    metrics = _CURRENT.get()
    if metrics is not None:
        metrics.relayed_frames.labels(frame_type).inc()
        metrics.relay_latency.labels(frame_type).observe(time.perf_counter() - started)


def error_frame(code: str) -> None:
    """Count one signaling ``error`` frame sent with ``code``."""
    metrics = _CURRENT.get()
    if metrics is not None:
        metrics.errors.labels("signaling", str(code)).inc()


def api_error(code: str) -> None:
    """Count one JSON error answer of the storage routes with ``code``."""
    metrics = _CURRENT.get()
    if metrics is not None:
        metrics.errors.labels("storage", str(code)).inc()


@web.middleware
async def bind_metrics(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Make the app's metrics the current ones while it serves ``request`` (its task)."""
    token = _CURRENT.set(request.app[METRICS_KEY])
    try:
        return await handler(request)
    finally:
        _CURRENT.reset(token)


def setup_metrics(
    app: web.Application,
    peers: PeerCounter,
    *,
    token: str | None,
    timeout_s: float,
    storage: Callable[[], tuple[Database, float] | None] | None = None,
    cache_s: float = 0.0,
) -> SignalingMetrics:
    """Add the metrics, their middleware (outermost) and ``GET /metrics`` to ``app``.

    Args:
        peers: the registry whose peers ``rtc_connected_peers`` counts.
        token: the bearer token ``/metrics`` requires, or ``None`` for none.
        timeout_s: how long a scrape waits for the storage database, seconds.
        cache_s: how long the storage figures are reused, seconds (one query in
            flight; scrapes meanwhile await it).
        storage: returns ``(the storage database, the upload TTL in seconds)``, or
            ``None`` (no storage gauges).

    Returns:
        The app's metrics (also ``app[METRICS_KEY]``).
    """
    app[METRICS_KEY] = metrics = SignalingMetrics()
    app.middlewares.insert(0, bind_metrics)
    expected = None if token is None else token.encode("utf-8")
    warnings = LogLimiter(60.0)
    figures: CachedProbe[tuple[float, float]] | None = None

    async def scrape(request: web.Request) -> web.Response:
        """``GET /metrics``: the Prometheus text format (401 without the token when set)."""
        nonlocal figures
        if expected is not None and not _bearer_matches(request, expected):
            return web.Response(
                status=401,
                text="a metrics token is required\n",
                headers={"WWW-Authenticate": 'Bearer realm="metrics"'},
            )
        for role in ROLES:
            metrics.peers.labels(role).set(peers.count(role))
        found = None if storage is None else storage()
        if found is not None:
            if figures is None:
                figures = CachedProbe(
                    functools.partial(
                        _read_storage, *found, timeout_s=timeout_s, warnings=warnings
                    ),
                    cache_s,
                )
            count, total = await figures()
            metrics.uploads_in_progress.set(count)
            metrics.stored_bytes.set(total)
        return web.Response(
            body=generate_latest(metrics.registry), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    app.router.add_get("/metrics", scrape)
    return metrics


def _bearer_matches(request: web.Request, expected: bytes) -> bool:
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8"), expected)


async def _read_storage(
    db: Database,
    ttl_s: float,
    *,
    timeout_s: float,
    warnings: LogLimiter,
) -> tuple[float, float]:
    """The storage figures ``(uploads in progress, bytes stored)`` from the database
    (``NaN`` each when it does not answer)."""
    cutoff = format_timestamp(datetime.now(UTC) - timedelta(seconds=ttl_s))
    in_progress = select(func.count()).where(
        uploads.c.status.in_(UNFINISHED), uploads.c.updated_at >= cutoff
    )
    contents = union(  # one row per distinct (sha256, size): each content counted once
        select(files.c.sha256, files.c.file_size.label("size")).where(files.c.deleted == 0),
        select(uploads.c.sha256, uploads.c.total_size.label("size")).where(
            uploads.c.deleted == 0,
            uploads.c.status == "completed",
            uploads.c.sha256.is_not(None),
        ),
    ).subquery()
    stored = select(func.coalesce(func.sum(contents.c.size), 0))
    try:
        async with asyncio.timeout(timeout_s), db.read() as conn:
            count = int((await conn.execute(in_progress)).scalar_one())
            total = int((await conn.execute(stored)).scalar_one())
    except (TimeoutError, OSError, *DATABASE_ERRORS) as exc:
        if warnings.allow("storage") is not None:
            logger.warning("metrics: the storage database did not answer ({})", type(exc).__name__)
        return math.nan, math.nan
    return float(count), float(total)
