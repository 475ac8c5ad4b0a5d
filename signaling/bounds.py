"""What one peer can make the signaling server hold: connection caps, quiet logs, descriptors.

* :class:`ConnectionCaps` counts open WebSockets per remote address and in total; an
  upgrade over either cap is refused before it happens, with an HTTP status and a
  ``TOO_MANY_CONNECTIONS`` error frame as the body (:func:`refusal`), and the TCP
  connection is closed.
* :class:`LogLimiter` lets one line per kind through per interval and counts the
  others, so a flood of refusals writes a few lines, not one per attempt.
* :class:`AcceptErrorFilter` does the same for asyncio's "socket.accept() out of system
  resource" error, which the event loop logs (with a traceback) each time it retries
  accepting while the process has no descriptor left.
* :func:`raise_descriptor_limit` raises the soft ``RLIMIT_NOFILE`` to the hard limit at
  start, and :func:`usable_descriptors` is what the total cap may use of it.

Source: issue "bounded per peer"; asyncio ``BaseSelectorEventLoop._accept_connection``;
RFC 6585 section 4 (429) and RFC 9110 section 15.6.4 (503).
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web

from protocol.signaling import SignalingError, SignalingErrorCode, dump_frame

__all__ = [
    "ACCEPT_ERROR_PREFIX",
    "AcceptErrorFilter",
    "ConnectionCaps",
    "LogLimiter",
    "install_accept_error_filter",
    "raise_descriptor_limit",
    "refusal",
    "usable_descriptors",
]

ACCEPT_ERROR_PREFIX = "socket.accept() out of system resource"
"""How asyncio's event loop starts the message it logs when ``accept`` fails with
EMFILE, ENFILE, ENOBUFS or ENOMEM."""

_MAX_NOFILE = 1 << 20  # Linux's default fs.nr_open: the most a soft limit can be raised to
_RETRY_AFTER_S = 10


class LogLimiter:
    """At most one log line per kind per ``interval_s`` seconds; counts the lines held back.

    Kinds are a small fixed set chosen by the caller (never a peer's address), so the
    limiter's memory is bounded.
    """

    def __init__(
        self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.interval_s = interval_s
        self._clock = clock
        self._state: dict[str, tuple[float, int]] = {}

    def allow(self, kind: str) -> int | None:
        """None: hold this line back. Else log it, with the count held back since the last."""
        now = self._clock()
        last, held = self._state.get(kind, (-math.inf, 0))
        if now - last >= self.interval_s:
            self._state[kind] = (now, 0)
            return held
        self._state[kind] = (last, held + 1)
        return None


class AcceptErrorFilter(logging.Filter):
    """Lets one ``socket.accept() out of system resource`` record through per interval.

    The record let through has no traceback and says how many were held back; every
    other record passes unchanged.
    """

    def __init__(self, interval_s: float = 10.0, clock: Callable[[], float] = time.monotonic):
        super().__init__()
        self.limiter = LogLimiter(interval_s, clock)

    def filter(self, record: logging.LogRecord) -> bool:
        """False to drop ``record``; True to log it (rewritten when it is an accept error)."""
        message = record.getMessage()
        if not message.startswith(ACCEPT_ERROR_PREFIX):
            return True
        held = self.limiter.allow("accept")
        if held is None:
            return False
        error = record.exc_info[1] if record.exc_info else None
        summary = message.splitlines()[0] + (f": {error}" if error is not None else "")
        if held:
            summary += f" ({held} more in the last {self.limiter.interval_s:g} s)"
        record.msg, record.args = summary, ()
        record.exc_info, record.exc_text = None, None
        return True


def install_accept_error_filter(interval_s: float = 10.0) -> AcceptErrorFilter:
    """Add an :class:`AcceptErrorFilter` to the ``asyncio`` logger (once) and return it."""
    log = logging.getLogger("asyncio")
    for existing in log.filters:
        if isinstance(existing, AcceptErrorFilter):
            return existing
    installed = AcceptErrorFilter(interval_s)
    log.addFilter(installed)
    return installed


def raise_descriptor_limit() -> tuple[int, int]:
    """Raise the soft ``RLIMIT_NOFILE`` to the hard limit (at most 2^20).

    Returns:
        The soft limit before and after (equal when it could not be raised).
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = _MAX_NOFILE if hard == resource.RLIM_INFINITY else min(hard, _MAX_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            return soft, soft
        return soft, target
    return soft, soft


def usable_descriptors() -> int:
    """Descriptors the WebSockets may use: the soft limit less a reserve (1/8, at least 32)
    for the listening socket, the database, logs and the refusals in flight; at least 1."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        soft = _MAX_NOFILE
    return max(1, soft - max(32, soft // 8))


@dataclass
class ConnectionCaps:
    """Open WebSockets per remote address and in total, against their caps.

    Attributes:
        per_address: most open sockets from one address.
        total: most open sockets in all.
    """

    per_address: int
    total: int

    def __post_init__(self) -> None:
        self._by_address: dict[str, int] = {}
        self._open = 0

    @property
    def open(self) -> int:
        """Sockets open now."""
        return self._open

    def acquire(self, address: str) -> web.Response | None:
        """Count one more socket from ``address``, or the refusal to send when over a cap.

        A socket counted here must be :meth:`release`-d exactly once.
        """
        if self._open >= self.total:
            return refusal(503, "the server has too many connections; try again later")
        count = self._by_address.get(address, 0)
        if count >= self.per_address:
            return refusal(429, f"too many connections from {address}; close some first")
        self._by_address[address] = count + 1
        self._open += 1
        return None

    def release(self, address: str) -> None:
        """Forget one socket from ``address``."""
        count = self._by_address.get(address, 0)
        if count <= 1:
            self._by_address.pop(address, None)
        else:
            self._by_address[address] = count - 1
        self._open = max(0, self._open - 1)


def refusal(status: int, message: str) -> web.Response:
    """An HTTP refusal of a WebSocket upgrade: ``status`` with a ``TOO_MANY_CONNECTIONS``
    error frame as its JSON body, ``Retry-After``, and the TCP connection closed after it."""
    error = SignalingError(SignalingErrorCode.TOO_MANY_CONNECTIONS, message)
    response = web.Response(
        status=status,
        text=dump_frame(error.to_frame()),
        content_type="application/json",
        headers={"Retry-After": str(_RETRY_AFTER_S)},
    )
    response.force_close()
    return response
