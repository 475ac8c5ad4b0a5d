"""The browser page: the static files of ``signaling/page/`` served at ``/``.

The page is plain ES modules with no build step. Its files are read once from the
installed package (:mod:`importlib.resources`) when the app is built, and each is served
at its own exact route (``/`` is ``index.html``): there is no directory listing, no path
from the request ever reaches the filesystem, and a name that is not one of the files is
a 404. Every response carries a Content-Security-Policy that allows only the page's own
origin (scripts, styles, WebSocket), ``nosniff`` and no referrer, so the page runs no
code but its own and never leaks its URL.

The token the page uses travels only in the ``register`` frame over the WebSocket
(PROTOCOL.md section 5), never in a URL the server logs.

Source: W3C Content Security Policy Level 3 (``'self'`` also covers ``ws:``/``wss:`` to
the same host); aiohttp's static route (no listing by default).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Awaitable, Callable
from importlib.resources import files
from importlib.resources.abc import Traversable
from pathlib import Path
from types import MappingProxyType

from aiohttp import web

__all__ = ["CONTENT_SECURITY_POLICY", "CONTENT_TYPES", "page_files", "setup_page"]

#: Allows only this origin: scripts, styles, fetches and the WebSocket; images also from
#: ``blob:``/``data:``; no plugins, no framing, no ``<base>`` rewriting.
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)

#: Content type by file suffix; a page file with another suffix is not served.
CONTENT_TYPES = MappingProxyType(
    {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".png": "image/png",
        ".svg": "image/svg+xml",
    }
)

_HEADERS = MappingProxyType(
    {
        "Content-Security-Policy": CONTENT_SECURITY_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    }
)


def page_files(folder: Traversable | None = None) -> dict[str, tuple[bytes, str]]:
    """The page's files: ``{url path: (body bytes, content type)}``, ``/`` for index.html.

    Reads the regular files directly in ``folder`` (default: the package's ``page``
    folder; not below it) whose suffix is in :data:`CONTENT_TYPES`. A symbolic link is
    never followed (the file is opened with ``O_NOFOLLOW`` and checked to be regular
    through its descriptor), so a link placed in the folder cannot publish a file from
    elsewhere.

    Raises:
        FileNotFoundError: the folder has no ``index.html`` (a broken install).
    """
    folder = folder if folder is not None else files("signaling") / "page"
    found: dict[str, tuple[bytes, str]] = {}
    for entry in folder.iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if suffix in CONTENT_TYPES and not entry.name.startswith("."):
            body = _read_regular(entry)
            if body is not None:
                found[f"/{entry.name}"] = (body, CONTENT_TYPES[suffix])
    if "/index.html" not in found:
        raise FileNotFoundError("signaling/page/index.html is missing from the package")
    found["/"] = found["/index.html"]
    return found


def _read_regular(entry: Traversable) -> bytes | None:
    """The bytes of ``entry`` if it is a regular file and not a symbolic link, else None."""
    if not isinstance(entry, Path):  # inside a zip: no links there
        return entry.read_bytes() if entry.is_file() else None
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(entry, flags)
    except OSError:  # ELOOP (a link), gone, unreadable
        return None
    with os.fdopen(fd, "rb") as file:
        if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
            return None
        return file.read()


def setup_page(app: web.Application, folder: Traversable | None = None) -> None:
    """Add one ``GET`` route per page file to ``app`` (``/`` serves ``index.html``);
    ``folder`` as :func:`page_files`.

    Raises:
        FileNotFoundError: as :func:`page_files`.
    """
    for path, (body, content_type) in page_files(folder).items():
        app.router.add_get(path, _handler(body, content_type))


def _handler(body: bytes, content_type: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=body, headers={**_HEADERS, "Content-Type": content_type})

    return serve
