"""The Origin check of WebSocket upgrades: a page on another website cannot use ``/ws``.

A browser lets any page open a WebSocket to any address, ``ws://127.0.0.1:PORT/ws``
included, and sends the page's origin in the ``Origin`` header (RFC 6455 section 4.1,
item 8; RFC 6454). Without a check, any website a person visits could register with a
signaling server on their machine or network (where no token is set) and use its
workers. :func:`origin_refusal` allows an upgrade when:

* it carries no ``Origin`` header: not a browser (the Python worker and client), or
* its ``Origin`` is this server's own origin (the page served at ``/``): the same host
  and port as the request's ``Host`` header, or
* its ``Origin`` is in ``--allowed-origin`` (``RTC_SIGNALING_ALLOWED_ORIGINS``).

Any other origin, ``null`` (a sandboxed frame, a ``file:`` page) included, is refused
before the upgrade with HTTP 403 and an ``ORIGIN_NOT_ALLOWED`` error frame as the JSON
body (RFC 6455 section 4.2.2: "a 403 Forbidden ... if the origin is not acceptable").
The same list decides which pages may use the tus routes from a browser
(:mod:`signaling.tus_cors`).
"""

from __future__ import annotations

from collections.abc import Collection

from aiohttp import hdrs, web
from yarl import URL

from protocol.signaling import SignalingError, dump_frame

__all__ = ["ORIGIN_NOT_ALLOWED", "normalize_origin", "origin_refusal", "same_origin"]

ORIGIN_NOT_ALLOWED = "ORIGIN_NOT_ALLOWED"
"""Code of the HTTP 403 refusal of an upgrade from a foreign origin. It is an HTTP answer
only, never a frame on a socket (no socket is opened), so it is not one of
:class:`~protocol.signaling_errors.SignalingErrorCode`; the body has the shape of an
``error`` frame all the same."""

_DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}


def normalize_origin(value: str) -> str:
    """``scheme://host[:port]`` in lower case, without a default port or a trailing ``/``.

    Raises:
        ValueError: ``value`` is not an http(s) origin (a path, a query, no host).
    """
    try:
        url = URL(value.strip())
    except ValueError as exc:
        raise ValueError(f"{value[:80]!r} is not an origin: {exc}") from None
    if url.scheme not in ("http", "https") or not url.host or url.path not in ("", "/"):
        raise ValueError(f"{value[:80]!r} is not an origin: expected http(s)://HOST[:PORT]")
    if url.query_string or url.fragment or url.user is not None:
        raise ValueError(f"{value[:80]!r} is not an origin: expected http(s)://HOST[:PORT]")
    port = "" if url.explicit_port in (None, _DEFAULT_PORTS[url.scheme]) else f":{url.port}"
    host = f"[{url.host}]" if ":" in url.host else url.host
    return f"{url.scheme}://{host.lower()}{port}"


def same_origin(origin: str, host_header: str) -> bool:
    """True when ``origin`` (normalized) names the server reached with ``host_header``.

    The hosts must be equal; so must the ports, where ``Host`` has no port standing for
    the origin's default port (a TLS proxy in front of the server may forward ``Host``
    without one).
    """
    try:
        own = URL(f"http://{host_header.strip()}")
        theirs = URL(origin)
    except ValueError:
        return False
    if not own.host or not theirs.host or own.host.lower() != theirs.host.lower():
        return False
    if own.explicit_port is None:
        return theirs.explicit_port is None
    return own.explicit_port == theirs.port


def origin_refusal(request: web.Request, allowed: Collection[str]) -> web.Response | None:
    """The HTTP 403 refusal of a WebSocket upgrade from a foreign origin, or ``None``.

    Args:
        request: the upgrade request.
        allowed: normalized origins allowed besides the server's own
            (:func:`normalize_origin`).

    Returns:
        ``None`` when the upgrade may go on (no ``Origin``, the server's own origin, an
        allowed one); else a response with status 403 and an ``ORIGIN_NOT_ALLOWED``
        error frame as its JSON body, closing the TCP connection after it.
    """
    header = request.headers.get(hdrs.ORIGIN)
    if header is None:
        return None
    try:
        origin = normalize_origin(header)
    except ValueError:
        origin = None
    if origin is not None and (origin in allowed or same_origin(origin, request.host)):
        return None
    error = SignalingError(
        ORIGIN_NOT_ALLOWED,
        "WebSockets from this origin are refused: only the server's own page and the "
        "origins in --allowed-origin may connect",
    )
    response = web.Response(
        status=403, text=dump_frame(error.to_frame()), content_type="application/json"
    )
    response.force_close()
    return response
