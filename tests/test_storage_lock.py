"""The store lock shared by instances on PostgreSQL is held for record changes only.

A completion copies its content into the content-addressed store (S3: ``CopyObject``,
possibly gigabytes) before it takes the lock, so a slow copy on one instance never
holds up a completion on another; a lock another session keeps is waited for a bounded
time, then the request is refused with 503 ``STORAGE_BUSY`` and nothing is recorded.

Real servers on loopback, a real PostgreSQL server and moto's S3 server
(:mod:`tests.engine_postgres`, :mod:`tests.engine_s3`); the slow copy is a delay put
into the one S3 request that copies the object.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

import signaling.db_engine
from signaling.db_engine import BLOB_LOCK, async_url
from signaling.results_api import STORE_KEY
from tests.conftest import StartService
from tests.test_uploads_api import CHUNK, Server, payload


def _require_postgresql(engines: tuple[str, str]) -> None:
    if engines[0] != "postgresql":
        pytest.skip("the lock is shared by instances through PostgreSQL; SQLite serves one")


async def test_a_completion_does_not_wait_for_a_slow_copy_on_another_instance(
    start_storage_service: StartService,
    storage_engines: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _require_postgresql(storage_engines)
    first, second = await asyncio.gather(
        start_storage_service(Server, upload_chunk_size=CHUNK),
        start_storage_service(Server, upload_chunk_size=CHUNK),
    )
    assert isinstance(first, Server) and isinstance(second, Server)
    calls = first.runner.app[STORE_KEY].backend.calls  # type: ignore[attr-defined]
    copying, release = asyncio.Event(), asyncio.Event()
    original = calls.copy

    async def slow_copy(*args: Any, **kwargs: Any) -> None:
        copying.set()  # a multi-gigabyte CopyObject, as far as the others can tell
        await release.wait()
        await original(*args, **kwargs)

    monkeypatch.setattr(calls, "copy", slow_copy)
    big, small = payload(3000, seed=1), payload(2000, seed=2)
    slow_id = await first.init(len(big), "big.bin")
    await first.send(slow_id, big)
    fast_id = await second.init(len(small), "small.bin")
    await second.send(fast_id, small)
    slow = asyncio.create_task(first.complete(slow_id))
    try:
        async with asyncio.timeout(10):
            await copying.wait()
        started = time.monotonic()
        async with asyncio.timeout(10):  # before the change: waits until the copy ends
            status, answer = await second.complete(fast_id)
        took = time.monotonic() - started
        assert status == 200, answer
        assert answer["sha256"] == hashlib.sha256(small).hexdigest()
        assert not slow.done()  # the copy on the first instance still runs
        assert took < 5.0
    finally:
        release.set()
    status, answer = await slow
    assert status == 200, answer
    assert answer["sha256"] == hashlib.sha256(big).hexdigest()
    for service in (first, second):
        for upload_id, content in ((slow_id, big), (fast_id, small)):
            got, record = await service.status(upload_id)
            assert (got, record["status"]) == (200, "completed")
            assert record["sha256"] == hashlib.sha256(content).hexdigest()


async def test_a_lock_held_elsewhere_is_waited_for_a_bounded_time_then_refused(
    start_storage_service: StartService,
    storage_engines: tuple[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another session keeps the store lock (a stuck instance): a completion answers
    503 STORAGE_BUSY after the lock timeout instead of hanging, records nothing, and
    works again once the lock is free."""
    _require_postgresql(storage_engines)
    monkeypatch.setattr(signaling.db_engine, "STORE_LOCK_TIMEOUT_S", 0.5)
    server = await start_storage_service(Server, upload_chunk_size=CHUNK)
    assert isinstance(server, Server)
    holder = create_async_engine(async_url(server.database_url))
    try:
        async with holder.connect() as conn:
            await conn.execute(text("SELECT pg_advisory_lock(:key)"), {"key": BLOB_LOCK})
            await conn.commit()
            content = payload(1500, seed=3)
            upload_id = await server.init(len(content), "held.bin")
            await server.send(upload_id, content)
            started = time.monotonic()
            status, answer = await server.complete(upload_id)
            assert time.monotonic() - started < 5.0
            assert (status, answer["error"]["code"]) == (503, "STORAGE_BUSY")
            got, record = await server.status(upload_id)
            assert got == 200 and record["status"] != "completed"
            await conn.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": BLOB_LOCK})
            await conn.commit()
        again = await server.resumable_upload(payload(1500, seed=4), "after.bin")
        assert again["status"] == "completed"
    finally:
        await holder.dispose()


async def test_a_request_cancelled_while_waiting_for_the_lock_leaves_no_lock_behind(
    postgres_engine: Any,
) -> None:
    """A client hangs up while its request waits for the store lock: the waiting
    session is ended, so no pooled connection keeps the lock once it is granted, and
    the next request takes it at once."""
    from signaling.db_engine import Database

    url = str(postgres_engine.emptied_database())
    waiting, holding = Database(url), Database(url)
    try:
        async with holding.exclusive():

            async def wait_for_it() -> None:
                async with waiting.exclusive(timeout_s=30):
                    pass

            waiter = asyncio.create_task(wait_for_it())
            await asyncio.sleep(0.5)  # it waits inside pg_advisory_lock
            waiter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiter
        async with asyncio.timeout(5), holding.exclusive(timeout_s=1):
            pass
        async with holding.read() as conn:
            held = await conn.execute(
                text("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted")
            )
            assert held.scalar_one() == 0
    finally:
        await waiting.close()
        await holding.close()
