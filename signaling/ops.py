"""Operations routes of the signaling server: ``GET /ready`` and ``GET /metrics``.

``GET /health`` (in :mod:`signaling.app`) says the process is alive; ``GET /ready`` says
whether it can serve: every readiness check registered on the app is run, at once, each
within ``ready_timeout_s`` seconds. Each check's answer is reused for ``ready_cache_s`` seconds
(and the storage figures of ``/metrics`` too), with one probe per check in flight:
requests arriving meanwhile await it, so a flood of ``/ready`` requests costs the
engines one probe each per ``ready_cache_s``, and a failure shows at most that late.

* 200 ``{"status": "ready", "checks": {"database": "ok", "blob_store": "ok"}}``
* 503 ``{"status": "unavailable", "unreachable": ["database"], "checks": {"database":
  "unreachable (OperationalError)", "blob_store": "ok"}}``: ``unreachable`` names every
  check that failed, sorted. The answer gives the error's type only; the detail goes to
  the log (at most one line per check per minute).

With no storage and no Redis there is nothing to check and the answer is 200 with
``"checks": {}``. ``/ready`` and ``/health`` need no key: they reveal no data.

The readiness-check API, for every part that depends on something outside the process::

    from signaling.ops import add_readiness_check

    add_readiness_check(app, "redis", registry.redis.ping)       # Redis: PING (app.py)
    add_readiness_check(app, "blob_store", store.backend.ping)   # S3: HeadBucket

A check is a coroutine function taking no argument. It passes when it returns anything
but ``False``; it fails when it returns ``False``, raises, or does not finish within
``ready_timeout_s`` (it is then cancelled). Register it while the app is built
(before it starts); a second check under the same name replaces the first. This module
registers ``database`` (a query of the storage database's migration table, on SQLite or
PostgreSQL) and ``blob_store`` (the storage folder takes a new file: created, written
and removed, by descriptor; the S3 backend answers ``HeadBucket``) when storage is on,
unless a check of that name is registered already. One probe of the folder runs at a
time: while a probe hangs (a dead NFS mount) the next ones fail at once instead of piling
threads up.

Source: the Kubernetes liveness and readiness probes
(https://kubernetes.io/docs/tasks/configure-pod-container/configure-liveness-readiness-startup-probes/).
"""

from __future__ import annotations

import asyncio
import functools
import os
import secrets
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web
from loguru import logger
from sqlalchemy import text

from signaling.bounds import LogLimiter
from signaling.config import SignalingSettings
from signaling.db_engine import Database
from signaling.metrics import PeerCounter, setup_metrics
from signaling.probe_cache import CachedProbe
from signaling.results_store import STORE_KEY
from signaling.uploads_api import UPLOADS_KEY

__all__ = ["CHECKS_KEY", "ReadinessCheck", "add_readiness_check", "readiness", "setup_ops"]

ReadinessCheck = Callable[[], Awaitable[object]]
"""A readiness check: a coroutine function; fails by raising or returning ``False``."""

CHECKS_KEY: web.AppKey[dict[str, ReadinessCheck]] = web.AppKey("readiness_checks", dict)
"""The app's readiness checks by name."""

_WARNINGS_KEY: web.AppKey[LogLimiter] = web.AppKey("readiness_warnings", LogLimiter)
_CACHES_KEY: web.AppKey[dict[str, CachedProbe[str]]] = web.AppKey("readiness_answers", dict)


def add_readiness_check(app: web.Application, name: str, check: ReadinessCheck) -> None:
    """Make ``GET /ready`` of ``app`` run ``check`` under ``name`` (see the module
    docstring); a check already registered under ``name`` is replaced.

    Raises:
        RuntimeError: the app has started (its state is frozen).
    """
    if CHECKS_KEY not in app:
        app[CHECKS_KEY] = {}
    app[CHECKS_KEY][name] = check


async def readiness(app: web.Application, timeout_s: float, cache_s: float = 0.0) -> dict[str, str]:
    """Run every readiness check of ``app`` at once; ``{name: "ok" | why it failed}``.

    Args:
        timeout_s: how long each check may take, seconds.
        cache_s: how long each check's answer is reused, seconds (after
            :func:`setup_ops`; one probe per check in flight, callers meanwhile await
            it), so a failure shows at most ``cache_s`` seconds late.
    """
    checks = app.get(CHECKS_KEY, {})
    warnings = app[_WARNINGS_KEY] if _WARNINGS_KEY in app else LogLimiter(60.0)
    caches = app.get(_CACHES_KEY, {})
    names = sorted(checks)

    def cached(name: str) -> Awaitable[str]:
        probe = caches.get(name)
        if probe is None or probe.ttl_s != cache_s:
            run = functools.partial(_run, name, checks[name], timeout_s, warnings)
            probe = caches[name] = CachedProbe(run, cache_s)
        return probe()

    results = await asyncio.gather(*(cached(name) for name in names))
    return dict(zip(names, results, strict=True))


async def _run(name: str, check: ReadinessCheck, timeout_s: float, warnings: LogLimiter) -> str:
    try:
        async with asyncio.timeout(timeout_s):
            passed = await check()
    except TimeoutError:
        why, detail = f"no answer within {timeout_s:g} s", "timed out"
    except Exception as exc:
        why, detail = f"unreachable ({type(exc).__name__})", f"{type(exc).__name__}: {exc}"
    else:
        if passed is not False:
            return "ok"
        why = detail = "not ready"
    if warnings.allow(name) is not None:
        logger.warning("readiness check {} failed: {}", name, detail)
    return why


def setup_ops(app: web.Application, settings: SignalingSettings, peers: PeerCounter) -> None:
    """Add ``GET /ready`` with the storage checks and ``GET /metrics`` to ``app``.

    Call last in :func:`signaling.app.create_app`, after storage is set up.

    Args:
        peers: the registry of this process's sockets (``rtc_connected_peers``).
    """
    app[_WARNINGS_KEY] = LogLimiter(60.0)
    app[_CACHES_KEY] = {}
    if CHECKS_KEY not in app:
        app[CHECKS_KEY] = {}
    checks = app[CHECKS_KEY]
    if STORE_KEY in app:
        store = app[STORE_KEY]
        checks.setdefault("database", lambda: database_answers(store.db))
        backend = store.backend  # the folder takes a file; S3 answers HeadBucket
        probe = FolderProbe(store.root) if backend.local_disk else backend.ping
        checks.setdefault("blob_store", probe)

    async def ready(request: web.Request) -> web.Response:
        """``GET /ready``: 200 when every check passes, else 503 naming the failed ones."""
        results = await readiness(app, settings.ready_timeout_s, settings.ready_cache_s)
        failed = sorted(name for name, result in results.items() if result != "ok")
        headers = {"Cache-Control": "no-store"}
        if failed:
            body = {"status": "unavailable", "unreachable": failed, "checks": results}
            return web.json_response(body, status=503, headers=headers)
        return web.json_response({"status": "ready", "checks": results}, headers=headers)

    app.router.add_get("/ready", ready)

    def storage() -> tuple[Database, float] | None:
        if STORE_KEY not in app or UPLOADS_KEY not in app:
            return None
        return app[STORE_KEY].db, app[UPLOADS_KEY].ttl_s

    token = settings.metrics_token
    setup_metrics(
        app,
        peers,
        token=None if token is None else token.get_secret_value(),
        timeout_s=settings.ready_timeout_s,
        storage=storage,
        cache_s=settings.ready_cache_s,
    )


async def database_answers(db: Database) -> None:
    """Read the storage database's migration table (on SQLite, ``SELECT 1`` would not
    touch the file).

    Raises:
        sqlalchemy.exc.SQLAlchemyError: the database cannot be reached or read.
    """
    async with db.read() as conn:
        await conn.execute(text("SELECT version_num FROM alembic_version"))


class FolderProbe:
    """A readiness check that the folder ``root`` takes a new file (one probe at a time).

    Each call creates ``.ready-<random>`` in ``root`` (opened by descriptor, exclusive,
    never through a link), writes one byte to it and removes it, in a thread.

    Raises (each call):
        OSError: the folder is missing, read-only or full, or a probe still hangs.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self._pending: asyncio.Future[None] | None = None

    async def __call__(self) -> None:
        if self._pending is not None and not self._pending.done():
            raise OSError(f"the previous probe of {self.root} has not returned")
        pending = self._pending = asyncio.ensure_future(asyncio.to_thread(self._probe))
        # a probe outliving its caller's timeout still has its outcome consumed
        pending.add_done_callback(lambda done: done.cancelled() or done.exception())
        await asyncio.shield(pending)

    def _probe(self) -> None:
        folder = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            name = f".ready-{secrets.token_hex(8)}"
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(name, flags, 0o600, dir_fd=folder)
            try:
                os.write(fd, b"\n")
            finally:
                os.close(fd)
                os.unlink(name, dir_fd=folder)
        finally:
            os.close(folder)
