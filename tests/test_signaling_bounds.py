"""The signaling server's bounds (signaling.bounds): connection caps, the log limiters,
and the descriptor limit."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import resource
import subprocess
import sys
from collections.abc import Iterator

import pytest

from signaling.bounds import (
    ACCEPT_ERROR_PREFIX,
    AcceptErrorFilter,
    ConnectionCaps,
    LogLimiter,
    install_accept_error_filter,
    usable_descriptors,
)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_log_limiter_lets_one_line_per_kind_and_interval_through() -> None:
    clock = Clock()
    limiter = LogLimiter(10.0, clock)
    assert limiter.allow("cap") == 0
    assert [limiter.allow("cap") for _ in range(5)] == [None] * 5
    assert limiter.allow("token") == 0  # kinds are counted apart
    clock.now += 10
    assert limiter.allow("cap") == 5  # and it says how many it held back
    assert limiter.allow("cap") is None


def test_connection_caps_per_address_and_in_total() -> None:
    caps = ConnectionCaps(per_address=2, total=3)
    assert caps.acquire("10.0.0.1") is None
    assert caps.acquire("10.0.0.1") is None
    refused = caps.acquire("10.0.0.1")
    assert refused is not None and refused.status == 429
    assert json.loads(refused.text or "")["code"] == "TOO_MANY_CONNECTIONS"
    assert refused.headers["Retry-After"] == "10"
    assert caps.acquire("10.0.0.2") is None
    full = caps.acquire("10.0.0.3")
    assert full is not None and full.status == 503
    assert caps.open == 3
    caps.release("10.0.0.1")
    assert caps.acquire("10.0.0.3") is None
    for address in ("10.0.0.1", "10.0.0.2", "10.0.0.3", "10.0.0.3"):
        caps.release(address)
    assert caps.open == 0


@pytest.fixture
def asyncio_records() -> Iterator[list[logging.LogRecord]]:
    """What the ``asyncio`` logger writes while the test runs (filters applied)."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            self.format(record)
            records.append(record)

    log = logging.getLogger("asyncio")
    handler = Keep()
    log.addHandler(handler)
    filters = list(log.filters)
    try:
        yield records
    finally:
        log.removeHandler(handler)
        log.filters[:] = filters


async def test_accept_errors_from_the_event_loop_are_rate_limited(
    asyncio_records: list[logging.LogRecord],
) -> None:
    """The loop's own handler logs each failed accept with a traceback; the filter lets
    one short line through per interval and counts the rest."""
    installed = install_accept_error_filter(interval_s=60.0)
    assert install_accept_error_filter() is installed  # once
    loop = asyncio.get_running_loop()
    for _ in range(500):
        try:
            raise OSError(errno.EMFILE, "Too many open files")
        except OSError as exc:
            loop.default_exception_handler({"message": ACCEPT_ERROR_PREFIX, "exception": exc})
    loop.default_exception_handler({"message": "something else broke"})
    messages = [record.getMessage() for record in asyncio_records]
    assert messages == [
        f"{ACCEPT_ERROR_PREFIX}: [Errno 24] Too many open files",
        "something else broke",
    ]
    assert asyncio_records[0].exc_info is None  # no traceback
    installed.limiter._state["accept"] = (-1e9, 499)  # the interval has passed
    loop.default_exception_handler({"message": ACCEPT_ERROR_PREFIX})
    assert asyncio_records[-1].getMessage() == (
        f"{ACCEPT_ERROR_PREFIX} (499 more in the last 60 s)"
    )


def test_accept_error_filter_leaves_other_records_alone() -> None:
    record = logging.LogRecord("asyncio", logging.ERROR, __file__, 1, "boom %s", ("x",), None)
    assert AcceptErrorFilter().filter(record) is True
    assert record.getMessage() == "boom x"


def test_usable_descriptors_keep_a_reserve() -> None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    usable = usable_descriptors()
    assert 1 <= usable <= soft - 32


def test_the_soft_descriptor_limit_is_raised_to_the_hard_limit() -> None:
    """In a process started with a low soft limit (its hard limit unchanged)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard limit ({hard}) leaves nothing to raise")
    code = (
        "import resource\n"
        "from signaling.bounds import raise_descriptor_limit\n"
        "print(*raise_descriptor_limit(), resource.getrlimit(resource.RLIMIT_NOFILE)[0])\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
        capture_output=True,
        text=True,
        check=True,
    )
    before, after, now = (int(value) for value in done.stdout.split())
    assert before == 256
    assert after == now == (min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20)
    assert resource.getrlimit(resource.RLIMIT_NOFILE)[0] == soft  # this process: untouched
