"""Command lines: ``rtc-worker`` (serve, id, demo) and ``rtc-client`` (workers, submit,
download, id).

The parsers are generated from the models of :mod:`rtc_worker.settings`; this module
only parses and calls into the program. Flags override environment variables; every
flag's help names its variables. Exit codes of ``rtc-client submit``: 0 job complete,
1 job failed or path refused, 2 usage error, 3 signaling or connection failure, 4
worker busy or protocol error, 5 the road forced with ``--road`` is unavailable or
failed.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Coroutine, Sequence
from typing import Any, TypeVar

from loguru import logger
from pydantic import ValidationError
from pydantic_settings import SettingsError

from rtc_worker import __version__
from rtc_worker.client_settings import (
    ClientCli,
    ClientIdCommand,
    DownloadCommand,
    SubmitCommand,
    WorkersCommand,
)
from rtc_worker.settings import (
    DemoCommand,
    WorkerCli,
    WorkerIdCommand,
    WorkerSettings,
)
from rtc_worker.settings_sources import CommandLine

__all__ = ["client_main", "configure_logging", "main", "protect_process", "run_async"]

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_CONNECTION, EXIT_PROTOCOL = 0, 1, 2, 3, 4
EXIT_ROAD = 5

P = TypeVar("P", WorkerCli, ClientCli)


def configure_logging(level: str) -> None:
    """Send loguru's records to stderr at ``level`` (DEBUG, INFO, WARNING, ERROR).

    Tracebacks are plain (``diagnose=False``, ``backtrace=False``): loguru's default
    would print the value of every variable of every frame, secrets included.
    """
    logger.remove()
    logger.add(
        sys.stderr,
        level=level.upper(),
        format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}",
        diagnose=False,
        backtrace=False,
    )


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on uvloop when it is installed (the ``uvloop`` extra), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _parse(line: CommandLine[P], argv: Sequence[str] | None) -> P | int:
    """The parsed command line, or the exit status after an invalid value (2) or ``--version``.

    Usage errors and ``--help`` exit from the parser (2 and 0).
    """
    try:
        parsed = line.parse(argv)
    except (ValidationError, SettingsError) as exc:
        print(f"{line.parser.prog}: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    if parsed.version:
        print(f"{line.parser.prog} {__version__}")
        return EXIT_OK
    return parsed


# ---------------------------------------------------------------------- rtc-worker


def _print_identity(command: WorkerIdCommand | ClientIdCommand) -> int:
    """``rtc-worker id`` / ``rtc-client id``: the fingerprint, then the key file (created)."""
    from rtc_worker.identity import Identity, IdentityError

    try:
        identity = Identity.load_or_create(command.identity_file)
    except IdentityError as exc:
        print(f"{exc}", file=sys.stderr)
        return EXIT_USAGE
    print(identity.fingerprint)
    print(f"key file: {identity.path}")
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtc-worker``: ``serve``, ``id`` or ``demo`` (see :class:`WorkerCli`)."""
    line = CommandLine(WorkerCli, "rtc-worker")
    parsed = _parse(line, argv)
    if isinstance(parsed, int):
        return parsed
    command = line.command(parsed)
    if isinstance(command, WorkerIdCommand):
        return _print_identity(command)
    if isinstance(command, DemoCommand):
        from rtc_worker.demo import run_demo

        return run_demo(
            keep=command.keep,
            size_mb=command.size_mb,
            timeout=command.timeout,
            serve=command.serve,
        )
    if not isinstance(command, WorkerSettings):
        raise TypeError(f"rtc-worker has no command {command!r}")
    configure_logging(command.log_level)
    if not protect_process():
        logger.warning("could not make the worker process non-dumpable")
    return run_async(_serve(command))


def protect_process() -> bool:
    """Make this process non-dumpable (Linux ``prctl(PR_SET_DUMPABLE, 0)``).

    Other processes of the same user, the worker's own jobs included, then cannot read
    its environment, memory or open files through ``/proc/PID`` or ptrace (only a process
    with ``CAP_SYS_PTRACE`` can), and no core dump holds its secrets. A job's ``exec``
    makes the job dumpable again; it is not affected otherwise. ``/proc/PID/cmdline``
    stays readable by everyone: a secret given as a flag is not protected.

    Returns:
        Whether it took effect (False off Linux).
    """
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return bool(libc.prctl(4, 0, 0, 0, 0) == 0)  # PR_SET_DUMPABLE = 4
    except (OSError, AttributeError):
        return False


async def _serve(settings: WorkerSettings) -> int:
    import signal

    from protocol.signaling import SignalingError
    from rtc_worker.identity import IdentityError
    from rtc_worker.worker import RTCWorkerClient

    try:
        worker = RTCWorkerClient(settings)
    except (ValueError, IdentityError) as exc:
        logger.error("{}", exc)
        return EXIT_USAGE
    logger.info("worker key {} ({})", worker.identity.fingerprint, settings.identity_file)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: asyncio.ensure_future(worker.stop()))
    logger.info("worker {} serving via {}", settings.peer_id, settings.signaling_url)
    try:
        await worker.run()
    except SignalingError as exc:
        logger.error("signaling refused this worker: {} {}", exc.code, exc.message)
        return EXIT_CONNECTION
    return EXIT_OK


# ---------------------------------------------------------------------- rtc-client


def client_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtc-client``: ``workers``, ``submit``, ``download`` or ``id``.

    See :class:`ClientCli` for the exit codes.
    """
    line = CommandLine(ClientCli, "rtc-client")
    parsed = _parse(line, argv)
    if isinstance(parsed, int):
        return parsed
    command = line.command(parsed)
    if isinstance(command, ClientIdCommand):
        return _print_identity(command)
    if isinstance(command, DownloadCommand):
        configure_logging(command.log_level)
        return run_async(_download(command))
    if not isinstance(command, WorkersCommand | SubmitCommand):
        raise TypeError(f"rtc-client has no command {command!r}")
    if isinstance(command, SubmitCommand):
        shared, channel = command.input is not None, command.download is not None
        if (
            shared == channel
            or (shared and command.output is None)
            or (channel and command.file is None)
        ):
            print(
                "rtc-client submit: give --input and --output (shared storage), or --file "
                "and --download (no shared storage)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    configure_logging(command.log_level)
    return run_async(_client(command))


async def _download(command: DownloadCommand) -> int:
    """``rtc-client download``: fetch, verify and save a results ZIP."""
    import aiohttp

    from rtc_worker.results_client import ResultsServiceError as StorageError
    from rtc_worker.results_client import download_results

    try:
        got = await download_results(
            command.storage_url,
            command.job_id,
            command.output,
            api_key=command.storage_api_key_value,
            sha256=command.sha256,
            keep=command.keep,
            token=command.token_value,
        )
    except StorageError as exc:
        print(f"download failed: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED if exc.status is None else EXIT_PROTOCOL
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"connection failed: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_CONNECTION
    print(f"saved {got.path} ({got.size:,} bytes, sha256 {got.sha256})")
    return EXIT_OK


async def _client(command: WorkersCommand | SubmitCommand) -> int:
    """``rtc-client workers`` and ``rtc-client submit``: talk to signaling and a worker."""
    from protocol import LocalProtocolError
    from rtc_worker.cli_output import Progress, print_trace
    from rtc_worker.client import (
        JobFailedError,
        PathRefusedError,
        RTCClient,
        SignalingError,
        TransferFailedError,
        WorkerProtocolError,
    )
    from rtc_worker.errors import RoadFailed, WorkerKeyChanged
    from rtc_worker.identity import IdentityError
    from rtc_worker.rtc import ChannelClosed, IceSetupError
    from rtc_worker.trust import TrustFileError

    submit = command if isinstance(command, SubmitCommand) else None
    trace = print_trace if submit is not None and submit.trace else None
    try:
        client = RTCClient(
            command.signaling_url,
            command.token_value,
            ice_servers=command.ice_servers,
            ice_transport_policy=command.ice_transport_policy,
            reply_timeout=command.reply_timeout_s,
            connect_timeout=command.connect_timeout_s,
            trace=trace,
            cache_dir=command.cache_dir,
            max_file_size=command.max_file_size,
            anonymous=command.anonymous,
            key_file=command.identity_file,
            worker_keys=(
                {command.worker: command.worker_key}
                if isinstance(command, SubmitCommand) and command.worker_key
                else None
            ),
            known_workers=command.known_workers_path,
            storage_url=None if submit is None else submit.storage_url,
            storage_api_key=None if submit is None else submit.storage_api_key_value,
            relay_part_mb=64 if submit is None else submit.relay_part_mb,
            relay_chunk_bytes=None if submit is None else submit.relay_chunk_bytes,
        )
    except IdentityError as exc:
        print(f"{exc}", file=sys.stderr)
        return EXIT_USAGE
    try:
        async with client:
            if isinstance(command, WorkersCommand):
                workers = await client.workers()
                if command.json_output:
                    print(json.dumps([w.model_dump() for w in workers], indent=2))
                elif not workers:
                    print("no workers registered")
                for w in [] if command.json_output else workers:
                    fingerprint = w.fingerprint or "anonymous"
                    print(f"{w.peer_id}\t{fingerprint}\t{json.dumps(w.metadata, sort_keys=True)}")
                return EXIT_OK
            if command.wait > 0:
                await client.wait_for_worker(command.worker, command.wait)
            on_log = None if command.json_output or trace else (lambda line: print(f"  | {line}"))
            bars = Progress(disabled=not command.progress or command.json_output)
            download = None
            try:
                if command.input is not None and command.output is not None:
                    result = await client.submit_shared(
                        command.worker,
                        command.input,
                        command.output,
                        job_id=command.job_id,
                        on_log=on_log,
                        job_timeout=command.job_timeout,
                        local_copy=command.file,
                        on_progress=bars.callback("upload"),
                        via_storage=command.via_storage,
                        road=command.road,
                        on_road=bars.road_callback("upload"),
                    )
                elif command.file is not None and command.download is not None:
                    submitted = await client.submit_file(
                        command.worker,
                        command.file,
                        command.download,
                        job_id=command.job_id,
                        on_log=on_log,
                        on_upload_progress=bars.callback("upload"),
                        on_download_progress=bars.callback("results"),
                        job_timeout=command.job_timeout,
                        via_storage=command.via_storage,
                        road=command.road,
                        on_road=bars.road_callback("upload"),
                    )
                    result, download = submitted.job, submitted
                    sent_name = command.file.name
                else:  # client_main checked that one of the two is complete
                    return EXIT_USAGE
            finally:
                bars.close()
    except RoadFailed as exc:
        print(f"road {exc.road} failed: {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_ROAD
    except TransferFailedError as exc:
        print(f"transfer failed: {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except PathRefusedError as exc:
        print(f"path refused: {exc.reason}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except JobFailedError as exc:
        print(f"job {exc.job_id} failed: {exc.reason}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except WorkerKeyChanged as exc:
        print(
            f"WORKER KEY CHANGED: {exc.detail}. Someone may be impersonating the worker. If "
            f"its operator really replaced its key, remove its line from "
            f"{command.known_workers_path} (or give --worker-key).",
            file=sys.stderr,
        )
        return EXIT_PROTOCOL
    except WorkerProtocolError as exc:
        print(f"worker refused: {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_PROTOCOL
    except TrustFileError as exc:
        print(f"{exc}", file=sys.stderr)
        return EXIT_USAGE
    except LocalProtocolError as exc:
        print(f"invalid request: {exc.detail}", file=sys.stderr)
        return EXIT_USAGE
    except SignalingError as exc:
        print(f"signaling: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_CONNECTION
    except IceSetupError as exc:  # relay-only: NO_TURN_SERVER, NO_RELAY_CANDIDATE
        print(f"connection failed: {exc}", file=sys.stderr)
        return EXIT_CONNECTION
    except (OSError, TimeoutError, ChannelClosed) as exc:
        print(f"connection failed: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_CONNECTION
    summary: dict[str, Any] = {
        "job_id": result.job_id,
        "output_path": result.output_path,
        "file_count": result.file_count,
        "total_mb": result.total_mb,
        "metrics": result.metrics,
        "road": result.road,
        "stored_path": result.stored_path,
        "stored_sha256": result.stored_sha256,
        "stored_size": result.stored_size,
        "download_token": result.download_token,
    }
    if download is not None:
        upload = download.upload
        summary |= {
            "upload": {
                "status": upload.outcome.status,
                "size": upload.size,
                "bytes_sent": upload.bytes_sent,
                "offset": upload.outcome.offset,
                "mb_per_s": round(upload.mb_per_s, 2),
                "road": upload.road,
                "bytes_relayed": upload.bytes_relayed,
                "roads": [str(change) for change in upload.roads],
                "sha256": upload.outcome.sha256,
            },
            "results_zip": str(download.results_zip),
            "results_dir": str(download.results_dir),
            "results_sha256": download.download.sha256,
            "results_bytes_received": download.download.bytes_received,
        }
    if command.json_output:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    if download is not None:
        upload = download.upload
        relayed = upload.bytes_relayed
        print(
            f"input {sent_name}: {upload.outcome.status}, {upload.bytes_moved:,} of "
            f"{upload.size:,} bytes sent "
            + ("(the worker holds the content)" if upload.road == "stored" else f"by {upload.road}")
            + (f" ({relayed:,} relayed)" if upload.bytes_sent and relayed else "")
            + (f" from offset {upload.outcome.offset:,}" if upload.outcome.offset else "")
            + f", {upload.mb_per_s:.2f} MB/s"
        )
    print(
        f"JOB_COMPLETE::{result.job_id}::{result.output_path}::{result.file_count}"
        f"::{result.total_mb:.2f}"
    )
    print("metrics: " + ", ".join(f"{k}={v}" for k, v in result.metrics.items()))
    if result.road is not None:
        print(f"road (the worker's JOB_METRICS): {result.road}")
    if result.stored_path is not None:
        print(
            f"results stored: {result.stored_path} ({result.stored_size} bytes, sha256 "
            f"{result.stored_sha256}); fetch them with: RTC_DOWNLOAD_TOKEN=... rtc-client "
            f"download --job-id {result.job_id} --sha256 {result.stored_sha256} ..."
        )
        print(f"download token (a capability: keep it private): {result.download_token}")
    if download is not None:
        print(
            f"results: {download.results_zip} (sha256 verified, "
            f"{download.download.bytes_received:,} bytes received), extracted to "
            f"{download.results_dir}"
        )
    return EXIT_OK
