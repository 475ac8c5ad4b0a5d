"""Command lines: ``rtc-worker`` (serve, demo) and ``rtc-client`` (workers, submit).

Flags override environment variables; every flag's help names its variable.
Exit codes of ``rtc-client submit``: 0 job complete, 1 job failed or path refused,
2 usage error, 3 signaling or connection failure, 4 worker busy or protocol error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

from loguru import logger
from pydantic import ValidationError

from rtc_worker import __version__

__all__ = ["client_main", "configure_logging", "main", "run_async"]

EXIT_OK, EXIT_JOB_FAILED, EXIT_USAGE, EXIT_CONNECTION, EXIT_PROTOCOL = 0, 1, 2, 3, 4


def configure_logging(level: str) -> None:
    """Send loguru's records to stderr at ``level`` (DEBUG, INFO, WARNING, ERROR)."""
    logger.remove()
    logger.add(
        sys.stderr,
        level=level.upper(),
        format="<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> {message}",
    )


def run_async(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` on uvloop when it is installed (the ``uvloop`` extra), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(coro)


def _given(args: argparse.Namespace, *names: str) -> dict[str, Any]:
    """The flags the user actually passed (so the environment fills the rest)."""
    return {name: getattr(args, name) for name in names if getattr(args, name) is not None}


def _connection_flags(log_default: str) -> argparse.ArgumentParser:
    """Flags shared by the worker and the client: signaling, token, ICE servers, logs."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument(
        "--signaling-url",
        dest="signaling_url",
        help="signaling WebSocket URL [env RTC_SIGNALING_URL; default ws://127.0.0.1:8765/ws]",
    )
    flags.add_argument("--token", help="signaling token [env RTC_SIGNALING_TOKEN]")
    flags.add_argument(
        "--ice-server",
        dest="ice_servers",
        action="append",
        help="STUN/TURN URL, repeatable [env RTC_ICE_SERVERS, comma-separated; default none]",
    )
    flags.add_argument(
        "--log-level",
        dest="log_level",
        help=f"DEBUG, INFO, WARNING, ERROR [env RTC_LOG_LEVEL; default {log_default}]",
    )
    return flags


# ---------------------------------------------------------------------- rtc-worker


def _worker_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtc-worker",
        description="WebRTC peer worker for shared-storage jobs.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve", parents=[_connection_flags("INFO")], help="register with signaling and serve jobs"
    )
    serve.add_argument(
        "--peer-id",
        dest="peer_id",
        help="id to register under [env RTC_WORKER_ID; default worker-1]",
    )
    serve.add_argument(
        "--shared-root",
        dest="shared_root",
        help="shared storage root [env SHARED_STORAGE_ROOT; default: first "
        "existing of RTC_SHARED_ROOT_CANDIDATES]",
    )
    serve.add_argument(
        "--job-command",
        dest="job_command",
        help="job command template with {input} {workdir} {output}, run without a shell "
        "[env RTC_JOB_COMMAND; default: built-in manifest job]",
    )

    serve.add_argument(
        "--storage-url",
        dest="storage_url",
        help="storage service base URL, e.g. http://127.0.0.1:8765 [env RTC_STORAGE_URL; "
        "default: none, results are never uploaded]",
    )
    serve.add_argument(
        "--storage-api-key",
        dest="storage_api_key",
        help="key of the storage service [env STORAGE_API_KEY]",
    )

    demo = sub.add_parser("demo", help="run signaling, a worker and a client on loopback")
    demo.add_argument(
        "--keep", action="store_true", help="keep the temporary shared root and logs for inspection"
    )
    demo.add_argument(
        "--size-mb",
        type=float,
        default=8.0,
        help="approximate size of the training package, MB (default 8)",
    )
    demo.add_argument(
        "--timeout", type=float, default=60.0, help="give up after this many seconds (default 60)"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtc-worker``."""
    args = _worker_parser().parse_args(argv)
    if args.command == "demo":
        from rtc_worker.demo import run_demo

        return run_demo(keep=args.keep, size_mb=args.size_mb, timeout=args.timeout)

    from rtc_worker.config import WorkerSettings

    try:
        settings = WorkerSettings(
            **_given(
                args,
                "signaling_url",
                "peer_id",
                "token",
                "shared_root",
                "job_command",
                "ice_servers",
                "log_level",
                "storage_url",
                "storage_api_key",
            )
        )
    except ValidationError as exc:
        print(f"rtc-worker: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level)
    return run_async(_serve(settings))


async def _serve(settings: Any) -> int:
    import signal

    from protocol.signaling import SignalingError
    from rtc_worker.worker import RTCWorkerClient

    try:
        worker = RTCWorkerClient(settings)
    except ValueError as exc:
        logger.error("{}", exc)
        return EXIT_USAGE
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


def _client_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rtc-client",
        description="Reference client: list workers and submit shared-storage jobs.",
        epilog="exit codes: 0 complete, 1 job failed, path refused or transfer failed, 2 usage, "
        "3 signaling/connection failure, 4 worker busy or protocol error",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    common = _connection_flags("WARNING")
    common.add_argument("--json", action="store_true", help="print JSON instead of text")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("workers", parents=[common], help="list registered workers")
    submit = sub.add_parser(
        "submit",
        parents=[common],
        help="run a job: on shared storage (--input/--output) or on a local file sent "
        "over the data channel (--file/--download)",
        description="Shared storage: --input REL --output REL (add --file LOCAL to send a "
        "local copy when the worker cannot read the shared input). No shared storage: "
        "--file LOCAL --download DIR sends the file, runs the job and saves the verified "
        "results ZIP (extracted next to it).",
    )
    submit.add_argument("--worker", required=True, help="the worker's peer id")
    submit.add_argument("--input", help="input path relative to the shared root")
    submit.add_argument("--output", help="output folder relative to the shared root (created)")
    submit.add_argument("--file", type=Path, help="a local input file to send over the channel")
    submit.add_argument(
        "--download", type=Path, help="folder where the results of a --file job are saved"
    )
    submit.add_argument(
        "--no-progress", action="store_true", help="no progress bar during transfers"
    )
    submit.add_argument("--job-id", dest="job_id", help="job id [A-Za-z0-9._-]{1,64}")
    submit.add_argument(
        "--wait",
        type=float,
        default=0.0,
        help="wait up to this many seconds for the worker to register",
    )
    submit.add_argument(
        "--job-timeout",
        type=float,
        default=None,
        help="cancel the job after this many seconds (default: no limit)",
    )
    submit.add_argument(
        "--trace", action="store_true", help="print every data-channel frame sent and received"
    )
    submit.add_argument(
        "--via-storage",
        dest="via_storage",
        action="store_true",
        help="have the worker upload the results ZIP to the storage service "
        "(fetch it with rtc-client download)",
    )
    download = sub.add_parser(
        "download",
        help="fetch a results ZIP from the storage service and verify its sha256",
    )
    download.add_argument("--job-id", dest="job_id", required=True, help="the job's id")
    download.add_argument(
        "--storage-url", dest="storage_url", required=True, help="storage service base URL"
    )
    download.add_argument(
        "--storage-api-key",
        dest="storage_api_key",
        default=None,
        help="key of the storage service [env STORAGE_API_KEY]",
    )
    download.add_argument(
        "--output", type=Path, required=True, help="folder where results-{job_id}.zip is saved"
    )
    download.add_argument("--sha256", default=None, help="expected sha256 (hex)")
    download.add_argument(
        "--keep",
        action="store_true",
        help="ask the service to keep the file after this download",
    )
    download.add_argument(
        "--log-level", dest="log_level", default="WARNING", help="log level (default WARNING)"
    )
    return parser


def client_main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rtc-client``."""
    args = _client_parser().parse_args(argv)
    if args.command == "download":
        configure_logging(args.log_level)
        return run_async(_download(args))
    from rtc_worker.config import ClientSettings

    try:
        settings = ClientSettings(
            **_given(args, "signaling_url", "token", "ice_servers", "log_level")
        )
    except ValidationError as exc:
        print(f"rtc-client: invalid configuration:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_level)
    return run_async(_client(args, settings))


async def _download(args: argparse.Namespace) -> int:
    """``rtc-client download``: fetch, verify and save a results ZIP."""
    import os

    import aiohttp

    from rtc_worker.results_client import StorageServiceError as StorageError
    from rtc_worker.results_client import download_results

    api_key = args.storage_api_key or os.environ.get("STORAGE_API_KEY") or None
    try:
        got = await download_results(
            args.storage_url,
            args.job_id,
            args.output,
            api_key=api_key,
            sha256=args.sha256,
            keep=args.keep,
        )
    except StorageError as exc:
        print(f"download failed: {exc}", file=sys.stderr)
        return EXIT_JOB_FAILED if exc.status is None else EXIT_PROTOCOL
    except (aiohttp.ClientError, OSError, TimeoutError) as exc:
        print(f"connection failed: {exc or type(exc).__name__}", file=sys.stderr)
        return EXIT_CONNECTION
    print(f"saved {got.path} ({got.size:,} bytes, sha256 {got.sha256})")
    return EXIT_OK


def _print_trace(direction: str, frame: str | bytes) -> None:
    arrow = "->" if direction == "send" else "<-"
    shown = frame if isinstance(frame, str) else f"<binary {len(frame)} bytes>"
    print(f"  {arrow} {shown}", flush=True)


async def _client(args: argparse.Namespace, settings: Any) -> int:
    from protocol import LocalProtocolError
    from rtc_worker.channel import ChannelClosed
    from rtc_worker.client import (
        JobFailedError,
        PathRejected,
        RTCClient,
        SignalingError,
        TransferFailedError,
        WorkerProtocolError,
    )

    if args.command == "submit":
        shared, channel = args.input is not None, args.download is not None
        if shared == channel or (shared and args.output is None) or (channel and args.file is None):
            print(
                "rtc-client submit: give --input and --output (shared storage), or --file "
                "and --download (no shared storage)",
                file=sys.stderr,
            )
            return EXIT_USAGE
    trace = _print_trace if getattr(args, "trace", False) else None
    client = RTCClient(
        settings.signaling_url,
        settings.token,
        ice_servers=settings.ice_servers,
        reply_timeout=settings.reply_timeout_s,
        connect_timeout=settings.connect_timeout_s,
        trace=trace,
        cache_dir=settings.cache_dir,
        max_file_size=settings.max_file_size,
    )
    try:
        async with client:
            if args.command == "workers":
                workers = await client.workers()
                if args.json:
                    print(json.dumps([w.model_dump() for w in workers], indent=2))
                elif not workers:
                    print("no workers registered")
                for w in [] if args.json else workers:
                    print(f"{w.peer_id}\t{json.dumps(w.metadata, sort_keys=True)}")
                return EXIT_OK
            if args.wait > 0:
                await client.wait_for_worker(args.worker, args.wait)
            on_log = None if args.json or trace else (lambda line: print(f"  | {line}"))
            bars = _Progress(disabled=args.no_progress or args.json)
            download = None
            try:
                if args.input is not None:
                    result = await client.submit_shared(
                        args.worker,
                        args.input,
                        args.output,
                        job_id=args.job_id,
                        on_log=on_log,
                        job_timeout=args.job_timeout,
                        local_copy=args.file,
                        on_progress=bars.callback("upload"),
                        via_storage=args.via_storage,
                    )
                else:
                    submitted = await client.submit_file(
                        args.worker,
                        args.file,
                        args.download,
                        job_id=args.job_id,
                        on_log=on_log,
                        on_upload_progress=bars.callback("upload"),
                        on_download_progress=bars.callback("results"),
                        job_timeout=args.job_timeout,
                        via_storage=args.via_storage,
                    )
                    result, download = submitted.job, submitted
            finally:
                bars.close()
    except TransferFailedError as exc:
        print(f"transfer failed: {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except PathRejected as exc:
        print(f"path refused: {exc.reason}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except JobFailedError as exc:
        print(f"job {exc.job_id} failed: {exc.reason}", file=sys.stderr)
        return EXIT_JOB_FAILED
    except WorkerProtocolError as exc:
        print(f"worker refused: {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_PROTOCOL
    except LocalProtocolError as exc:
        print(f"invalid request: {exc.detail}", file=sys.stderr)
        return EXIT_USAGE
    except SignalingError as exc:
        print(f"signaling: {exc.code}: {exc.message}", file=sys.stderr)
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
        "stored_path": result.stored_path,
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
                "sha256": upload.outcome.sha256,
            },
            "results_zip": str(download.results_zip),
            "results_dir": str(download.results_dir),
            "results_sha256": download.download.sha256,
            "results_bytes_received": download.download.bytes_received,
        }
    if args.json:
        print(json.dumps(summary, indent=2))
        return EXIT_OK
    if download is not None:
        upload = download.upload
        print(
            f"input {args.file.name}: {upload.outcome.status}, {upload.bytes_sent:,} of "
            f"{upload.size:,} bytes sent over the channel"
            + (f" from offset {upload.outcome.offset:,}" if upload.outcome.offset else "")
            + f", {upload.mb_per_s:.2f} MB/s"
        )
    print(
        f"JOB_COMPLETE::{result.job_id}::{result.output_path}::{result.file_count}"
        f"::{result.total_mb:.2f}"
    )
    print("metrics: " + ", ".join(f"{k}={v}" for k, v in result.metrics.items()))
    if result.stored_path is not None:
        print(f"RESULTS_STORED::{result.job_id}::{result.stored_path}")
    if download is not None:
        print(
            f"results: {download.results_zip} (sha256 verified, "
            f"{download.download.bytes_received:,} bytes received), extracted to "
            f"{download.results_dir}"
        )
    return EXIT_OK


class _Progress:
    """tqdm progress bars fed by FILE_PROGRESS (bytes, MB/s and ETA), one per transfer."""

    def __init__(self, *, disabled: bool) -> None:
        self.disabled = disabled
        self._bars: dict[str, Any] = {}

    def callback(self, label: str) -> Any:
        if self.disabled:
            return None

        def update(received: int, size: int) -> None:
            from tqdm import tqdm

            bar = self._bars.get(label)
            if bar is None:
                bar = self._bars[label] = tqdm(
                    total=size,
                    initial=received,
                    desc=label,
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1000,
                    file=sys.stderr,
                    dynamic_ncols=True,
                )
            bar.update(received - bar.n)

        return update

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
