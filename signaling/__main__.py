"""Command line of the signaling server: ``rtc-signaling`` or ``python -m signaling``.

The parser is generated from :class:`signaling.config.SignalingCli`; flags override
the environment, which overrides the defaults (see :mod:`signaling.config`). Logs go
to stderr; stdout carries a single ``listening on ws://HOST:PORT/ws`` line.

``rtc-signaling keys ...`` manages the storage service's API keys (see
:mod:`signaling.keys_cli`); ``rtc-signaling db upgrade|current`` migrates the storage
service's database or shows its revision (:mod:`signaling.db_cli`).

``--cleanup-once`` (with ``--storage-path``) runs one cleanup pass of the result store
instead (see :func:`signaling.uploads.cleanup`), prints what it removed as one JSON
object on stdout and exits; no API key is needed for it.

``rtc-signaling bindings list|release PEER_ID`` shows and releases the peer-id bindings
(:mod:`signaling.bindings_cli`).

At start the server raises its soft descriptor limit to the hard limit and rate-limits
asyncio's accept errors in the log (:mod:`signaling.bounds`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
from collections.abc import Sequence
from importlib.metadata import version

from loguru import logger
from pydantic import ValidationError
from pydantic_settings import SettingsError

from rtc_worker.settings_sources import CommandLine
from signaling.app import start_server
from signaling.bounds import install_accept_error_filter, raise_descriptor_limit
from signaling.config import SignalingCli, SignalingSettings
from signaling.db_engine import DATABASE_ERRORS, SETUP_ERRORS
from signaling.results_api import ResultsService
from signaling.store_cleanup import CleanupReport
from signaling.uploads_api import cleanup

__all__ = ["command_line", "help_text", "main", "settings_from_args"]


def command_line() -> CommandLine[SignalingCli]:
    """The command line of ``rtc-signaling``, generated from :class:`SignalingCli`."""
    return CommandLine(SignalingCli, "rtc-signaling")


def help_text() -> str:
    """What ``rtc-signaling --help`` prints."""
    return command_line().parser.format_help()


def settings_from_args(argv: Sequence[str] | None = None) -> SignalingCli:
    """Parse ``argv`` and build settings from the flags given plus the environment.

    Raises:
        SystemExit: on bad command-line syntax (2) or ``--help`` (0).
        pydantic.ValidationError: when a flag or environment value is invalid.
        pydantic_settings.SettingsError: when a flag value cannot be parsed.
    """
    return command_line().parse(argv)


def _cleanup_once(settings: SignalingSettings) -> int:
    """Run one cleanup pass and print its report; return the exit status."""
    if settings.storage_path is None:
        print("rtc-signaling: --cleanup-once needs --storage-path", file=sys.stderr)
        return 2
    try:
        report = asyncio.run(_cleanup_pass(settings))
    except SETUP_ERRORS as exc:
        logger.error("cleanup of {} failed: {}", settings.storage_path, exc)
        return 1
    print(json.dumps({"removed": report.as_dict(), "total": report.total}), flush=True)
    return 0


async def _cleanup_pass(settings: SignalingSettings) -> CleanupReport:
    store = ResultsService(settings)
    try:
        await asyncio.to_thread(store.root.mkdir, parents=True, exist_ok=True)
        await store.backend.open()
        await store.db.migrate()
        return await cleanup(store, settings.upload_ttl_s, relay_ttl_s=settings.relay_ttl_s)
    finally:
        await store.close()


def _ws_url(host: str, port: int) -> str:
    shown = f"[{host}]" if ":" in host else host
    return f"ws://{shown}:{port}/ws"


async def _serve(settings: SignalingSettings) -> None:
    """Run the server until SIGINT or SIGTERM."""
    install_accept_error_filter()
    before, after = raise_descriptor_limit()
    if after != before:
        logger.info("descriptor limit raised from {} to {}", before, after)
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


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtc-signaling``; returns the process exit status.

    Returns 0 after a clean shutdown (SIGINT/SIGTERM), 1 when the address cannot be
    bound or the result store cannot be opened, 2 on invalid settings (including a
    storage path without an API key). The parser exits with 2 on bad syntax.
    With ``--cleanup-once``: 0 after the pass, 1 when the store cannot be cleaned.
    """
    args = sys.argv[1:] if argv is None else list(argv)
    if args[:1] == ["bindings"]:
        from signaling.bindings_cli import bindings_main

        return bindings_main(args[1:])
    if args[:1] == ["db"]:
        from signaling.db_cli import db_main

        return db_main(args[1:])
    if args[:1] == ["keys"]:
        from signaling.keys_cli import keys_main

        return keys_main(args[1:])
    try:
        settings = settings_from_args(args)
    except (ValidationError, SettingsError) as exc:
        print(f"rtc-signaling: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    if settings.version:
        print(f"rtc-signaling {version('rtc-worker')}")
        return 0
    logger.remove()  # plain tracebacks: loguru's diagnose would print every variable
    logger.add(sys.stderr, level=settings.log_level, diagnose=False, backtrace=False)
    if settings.cleanup_once:
        return _cleanup_once(settings)
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        logger.error("cannot listen on {}:{}: {}", settings.host, settings.port, exc)
        return 1
    except DATABASE_ERRORS as exc:
        logger.error("cannot open the result store's database: {}", exc)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
