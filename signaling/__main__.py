"""Command line of the signaling server: ``rtc-signaling`` or ``python -m signaling``.

Flags override the environment (see :mod:`signaling.config`); anything not given on
the command line comes from ``RTC_SIGNALING_*`` / ``RTC_LOG_LEVEL`` (and ``PORT``,
``STORAGE_*``, ``DATABASE_PATH``, ``AUTO_DELETE`` for the result store) or the defaults.
Logs go to stderr; stdout carries a single ``listening on ws://HOST:PORT/ws`` line.

``--cleanup-once`` (with ``--storage-path``) runs one cleanup pass of the result store
instead (see :func:`signaling.uploads.cleanup`), prints what it removed as one JSON
object on stdout and exits; no API key is needed for it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sqlite3
import sys
from collections.abc import Sequence

from loguru import logger
from pydantic import ValidationError

from signaling.app import start_server
from signaling.config import LOG_LEVELS, SignalingSettings
from signaling.results_api import ResultsService as ResultStore
from signaling.uploads_api import cleanup

__all__ = ["build_parser", "main", "settings_from_args"]


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser; every flag defaults to ``None`` (meaning: not given)."""
    parser = argparse.ArgumentParser(
        prog="rtc-signaling",
        description="WebSocket signaling server for WebRTC peers (GET /health, WS /ws).",
    )
    parser.add_argument(
        "--host", default=None, help="interface to bind (env RTC_SIGNALING_HOST; default 127.0.0.1)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=None,
        help="TCP port, 0 for any free port (env RTC_SIGNALING_PORT; default 8765)",
    )
    parser.add_argument(
        "--token",
        default=None,
        help="shared token peers must send when registering "
        "(env RTC_SIGNALING_TOKEN; default: no authentication)",
    )
    parser.add_argument(
        "--max-frame-bytes",
        type=int,
        default=None,
        help="soft limit on one text frame in bytes "
        "(env RTC_SIGNALING_MAX_FRAME_BYTES; default 262144)",
    )
    parser.add_argument(
        "--log-level",
        default=None,
        choices=[level.lower() for level in LOG_LEVELS] + list(LOG_LEVELS),
        metavar="LEVEL",
        help="log level: " + ", ".join(LOG_LEVELS) + " (env RTC_LOG_LEVEL; default INFO)",
    )
    storage = parser.add_argument_group(
        "result store", "HTTP upload/download of results; enabled by a storage path"
    )
    storage.add_argument(
        "--storage-path",
        default=None,
        help="folder of the result store; enables it (env STORAGE_PATH; default: off)",
    )
    storage.add_argument(
        "--storage-api-key",
        default=None,
        help="key the storage routes require as X-API-Key or Authorization: Bearer; "
        "mandatory with a storage path (env STORAGE_API_KEY)",
    )
    storage.add_argument(
        "--database-path",
        default=None,
        help="SQLite file of the store (env DATABASE_PATH; default <storage-path>/storage.db)",
    )
    storage.add_argument(
        "--auto-delete",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="delete a result after its first complete download unless ?keep=true "
        "(env AUTO_DELETE; default true)",
    )
    storage.add_argument(
        "--storage-max-file-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="largest upload in bytes (env STORAGE_MAX_FILE_SIZE; default 10 GiB)",
    )
    storage.add_argument(
        "--upload-chunk-size",
        type=int,
        default=None,
        metavar="BYTES",
        help="chunk size of resumable uploads (env UPLOAD_CHUNK_SIZE; default 8 MiB)",
    )
    storage.add_argument(
        "--upload-ttl-s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="age after which unfinished uploads and deleted records are removed "
        "(env UPLOAD_TTL_S; default 86400)",
    )
    storage.add_argument(
        "--cleanup-interval-s",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between two cleanup passes (env CLEANUP_INTERVAL_S; default 3600)",
    )
    storage.add_argument(
        "--cleanup-once",
        action="store_true",
        default=None,
        help="run one cleanup pass of the store at --storage-path, print it and exit",
    )
    return parser


def settings_from_args(argv: Sequence[str] | None = None) -> SignalingSettings:
    """Parse ``argv`` and build settings from the flags given plus the environment.

    Raises:
        SystemExit: on bad command-line syntax or ``--help`` (from argparse).
        pydantic.ValidationError: when a flag or environment value is invalid.
    """
    return _settings(build_parser().parse_args(argv))


def _settings(args: argparse.Namespace) -> SignalingSettings:
    given = {name: value for name, value in vars(args).items() if value is not None}
    if given.pop("cleanup_once", False) and "storage_api_key" not in given:
        # A cleanup pass serves nothing, so it needs no key; the settings demand one
        # whenever storage is on, so give them a throwaway value.
        given["storage_api_key"] = secrets.token_hex(16)
    return SignalingSettings(**given)


def _cleanup_once(settings: SignalingSettings) -> int:
    """Run one cleanup pass and print its report; return the exit status."""
    if settings.storage_path is None:
        print("rtc-signaling: --cleanup-once needs --storage-path", file=sys.stderr)
        return 2
    try:
        store = ResultStore(settings)
        store.blobs.mkdir(parents=True, exist_ok=True)
        store.db.migrate()
        report = cleanup(store, settings.upload_ttl_s)
    except (OSError, sqlite3.Error) as exc:
        logger.error("cleanup of {} failed: {}", settings.storage_path, exc)
        return 1
    print(json.dumps({"removed": report.as_dict(), "total": report.total}), flush=True)
    return 0


def _ws_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"ws://{shown}:{port}/ws"


async def _serve(settings: SignalingSettings) -> None:
    """Run the server until SIGINT or SIGTERM."""
    runner, port = await start_server(settings, settings.host, settings.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    url = _ws_url(settings.host, port)
    try:
        if settings.token is None:
            logger.warning("no token configured: any peer may register")
        if settings.storage_enabled:
            logger.info("result store enabled at {}", settings.storage_path)
        logger.info("signaling server listening on {}", url)
        print(f"listening on {url}", flush=True)
        await stop.wait()
        logger.info("shutting down")
    finally:
        await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``rtc-signaling``; returns the process exit status.

    Returns 0 after a clean shutdown (SIGINT/SIGTERM), 1 when the address cannot be
    bound or the result store cannot be opened, 2 on invalid settings (including a
    storage path without an API key). argparse exits with 2 on bad syntax.
    With ``--cleanup-once``: 0 after the pass, 1 when the store cannot be cleaned.
    """
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ValidationError as exc:
        print(f"rtc-signaling: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    logger.remove()
    logger.add(sys.stderr, level=settings.log_level)
    if args.cleanup_once:
        return _cleanup_once(settings)
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        logger.error("cannot listen on {}:{}: {}", settings.host, settings.port, exc)
        return 1
    except sqlite3.Error as exc:
        logger.error("cannot open the result store database {}: {}", settings.database_file, exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
