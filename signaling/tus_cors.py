"""CORS for the tus routes at ``/files/``: a browser tus client (tus-js-client, Uppy) on
a page of another origin may upload when the operator allows that origin.

A page's ``fetch``/XHR to another origin is sent only after a preflight ``OPTIONS``
(its ``PATCH``, its ``Tus-Resumable`` and ``Authorization`` headers are not "simple"),
and its script sees an answer's status and headers only when the answer allows its
origin. :func:`cors_headers` gives these headers for an ``Origin`` that is in
``--allowed-origin`` (``RTC_SIGNALING_ALLOWED_ORIGINS``, normalized by
:func:`signaling.origin.normalize_origin`) or is the server's own origin:

* ``Access-Control-Allow-Origin: <that origin>`` (never ``*``) and ``Vary: Origin``;
* on a preflight, ``Access-Control-Allow-Methods``, ``Access-Control-Allow-Headers``
  (:data:`ALLOW_HEADERS`) and ``Access-Control-Max-Age``;
* on every other answer, ``Access-Control-Expose-Headers`` (:data:`EXPOSE_HEADERS`), so
  the script can read ``Upload-Offset``, ``Location`` and the rest.

Any other origin (``null`` included) gets no CORS header and the browser keeps the
answer from the page. No ``Access-Control-Allow-Credentials`` is sent: the tus routes
authenticate by the ``Authorization`` or ``X-API-Key`` header, never by a cookie, so a
page can use a key only when it has one.

Source: the Fetch standard, section 3.2 "CORS protocol"
(https://fetch.spec.whatwg.org/#http-cors-protocol); tusd ``pkg/handler/config.go``
(its default allowed and exposed headers).
"""

from __future__ import annotations

from collections.abc import Collection

from aiohttp import hdrs, web

from signaling.origin import normalize_origin, same_origin

__all__ = [
    "ALLOW_HEADERS",
    "ALLOW_METHODS",
    "EXPOSE_HEADERS",
    "MAX_AGE_S",
    "allowed_origin",
    "cors_headers",
    "is_preflight",
]

ALLOW_METHODS = "POST, HEAD, PATCH, DELETE, OPTIONS"
"""The methods of the tus routes, for ``Access-Control-Allow-Methods``."""

ALLOW_HEADERS = (
    "Authorization, X-API-Key, Content-Type, Tus-Resumable, Upload-Length, Upload-Offset, "
    "Upload-Metadata, Upload-Checksum, Upload-Defer-Length, Upload-Concat, "
    "X-HTTP-Method-Override, X-Requested-With"
)
"""The request headers a tus client sends, for ``Access-Control-Allow-Headers``."""

EXPOSE_HEADERS = (
    "Upload-Offset, Location, Upload-Length, Tus-Version, Tus-Resumable, Tus-Max-Size, "
    "Tus-Extension, Tus-Checksum-Algorithm, Upload-Metadata, Upload-Defer-Length, "
    "Upload-Concat, Upload-Expires, Upload-Download-Url, Upload-Download-Token, "
    "Upload-Download-Expires, Upload-Relay-Url, Upload-Relay-Token, Upload-Relay-Expires, "
    "Upload-Relay-Sha256"
)
"""The answer headers a page's script may read, for ``Access-Control-Expose-Headers``."""

MAX_AGE_S = 86400
"""How long a browser may keep a preflight's answer, seconds (``Access-Control-Max-Age``;
browsers cap it, Chromium at 2 h)."""


def is_preflight(request: web.Request) -> bool:
    """True when ``request`` is a CORS preflight: an ``OPTIONS`` with ``Origin`` and
    ``Access-Control-Request-Method``."""
    return (
        request.method == hdrs.METH_OPTIONS
        and hdrs.ORIGIN in request.headers
        and hdrs.ACCESS_CONTROL_REQUEST_METHOD in request.headers
    )


def allowed_origin(request: web.Request, allowed: Collection[str]) -> str | None:
    """The request's normalized ``Origin`` when CORS allows it, else ``None`` (no
    ``Origin``, a malformed or ``null`` one, or one neither in ``allowed`` nor the
    server's own)."""
    header = request.headers.get(hdrs.ORIGIN)
    if header is None:
        return None
    try:
        origin = normalize_origin(header)
    except ValueError:
        return None
    if origin in allowed or same_origin(origin, request.host):
        return origin
    return None


def cors_headers(request: web.Request, allowed: Collection[str]) -> dict[str, str]:
    """The CORS headers of the answer to ``request`` (see the module docstring).

    Args:
        request: a request to a tus route.
        allowed: normalized origins allowed besides the server's own.

    Returns:
        ``{"Vary": "Origin"}`` alone when the origin is not allowed (or absent);
        else also the allow headers (a preflight) or the expose header (any other).
    """
    headers: dict[str, str] = {hdrs.VARY: "Origin"}
    origin = allowed_origin(request, allowed)
    if origin is None:
        return headers
    headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = origin
    if is_preflight(request):
        headers[hdrs.ACCESS_CONTROL_ALLOW_METHODS] = ALLOW_METHODS
        headers[hdrs.ACCESS_CONTROL_ALLOW_HEADERS] = ALLOW_HEADERS
        headers[hdrs.ACCESS_CONTROL_MAX_AGE] = str(MAX_AGE_S)
    else:
        headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = EXPOSE_HEADERS
    return headers
