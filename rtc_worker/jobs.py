"""Job runners: turn a validated input on shared storage into results in the output folder.

A job runs in place on shared storage. A ZIP input (a training package) is first
extracted safely into a working directory under the shared root; then either the
operator's command runs (``--job-command``, a template with ``{input}``,
``{workdir}`` and ``{output}``, run as an argument list without a shell, with the
workdir as cwd), or the built-in job writes ``manifest.json``. Finally every
result is fsynced and counted for ``JOB_COMPLETE``.

The client never chooses what runs: only the operator's template does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from rtc_worker.archive import ArchiveError, ZipLimits, extract_zip, looks_like_zip
from rtc_worker.storage import (
    DiskFullError,
    FilesystemAdapter,
    PathErrorKind,
    StoragePathError,
    file_metadata,
)

__all__ = [
    "DISK_FULL_REASON",
    "MANIFEST_NAME",
    "JobError",
    "JobOutcome",
    "JobRunner",
    "JobSpec",
    "build_argv",
]

DISK_FULL_REASON = "Disk space exhausted on shared storage"
CANCELLED_REASON = "cancelled"
MANIFEST_NAME = "manifest.json"
#: Longest JOB_LOG line sent, in characters; longer lines are cut with a marker.
MAX_LOG_LINE_CHARS = 8192
_PLACEHOLDERS = ("{input}", "{workdir}", "{output}")
#: A failed command leaves less free space than this on the output's filesystem:
#: the failure is reported as disk exhaustion. Bytes.
_DISK_FULL_THRESHOLD = 1 << 20


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job: ids and paths as the client sent them (relative to the shared root)."""

    job_id: str
    input_path: str
    output_path: str


@dataclass(frozen=True, slots=True)
class JobOutcome:
    """What a finished job produced.

    Attributes:
        file_count: regular files in the output folder after the job.
        total_bytes: their total size, bytes.
        file_access_ms: time spent opening the input at start, milliseconds.
        run_s: extraction plus the job itself, seconds.
    """

    file_count: int
    total_bytes: int
    file_access_ms: float
    run_s: float


class JobError(Exception):
    """A job failed; ``reason`` is safe to send to the client (no worker paths).

    Attributes:
        reason: the text of ``JOB_FAILED::{job_id}::{reason}``.
        path_error: True when the reason is also a ``PATH_ERROR`` (the input vanished
            or was swapped between validation and use).
    """

    def __init__(self, reason: str, *, path_error: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path_error = path_error


def build_argv(template: str, *, input_path: Path, workdir: Path, output: Path) -> list[str]:
    """Split an operator's command template and fill its placeholders.

    The template is split like a POSIX shell would (``shlex.split``) *before*
    substitution, so a path with spaces or quotes stays one argument and nothing
    the client sent is ever interpreted by a shell.

    Raises:
        ValueError: the template is empty or cannot be split.
    """
    parts = shlex.split(template)
    if not parts:
        raise ValueError("job command template is empty")
    values = {"{input}": str(input_path), "{workdir}": str(workdir), "{output}": str(output)}
    argv = []
    for part in parts:
        for placeholder in _PLACEHOLDERS:
            part = part.replace(placeholder, values[placeholder])
        argv.append(part)
    return argv


class JobRunner:
    """Runs jobs for one worker on its shared storage.

    Args:
        fs: the shared root's adapter.
        command: the operator's command template, or None for the built-in
            manifest job.
        zip_limits: caps applied when extracting a ZIP input.
        work_dir_name: folder under the root holding per-job working directories.
        keep_workdir: keep a job's working directory after it ends.
        cancel_grace_s: seconds between SIGTERM and SIGKILL on cancel.
    """

    def __init__(
        self,
        fs: FilesystemAdapter,
        *,
        command: str | None = None,
        zip_limits: ZipLimits | None = None,
        work_dir_name: str = ".rtc-work",
        keep_workdir: bool = False,
        cancel_grace_s: float = 5.0,
    ) -> None:
        if command is not None:
            build_argv(command, input_path=Path(), workdir=Path(), output=Path())
        self.fs = fs
        self.command = command
        self.zip_limits = zip_limits or ZipLimits()
        self.work_dir_name = work_dir_name
        self.keep_workdir = keep_workdir
        self.cancel_grace_s = cancel_grace_s

    async def run(
        self,
        spec: JobSpec,
        on_log: Callable[[str], None],
        cancel: asyncio.Event,
    ) -> JobOutcome:
        """Run one job to durable results.

        Args:
            spec: the job.
            on_log: called with each line the job prints (no line break).
            cancel: set it to terminate the job.

        Returns:
            The counts of the output folder and the timings.

        Raises:
            JobError: the input vanished or was swapped (``path_error``), the input is
                corrupted, the command failed or the job was cancelled (reason
                ``cancelled``), or the disk filled up (partial results removed).
        """
        before = await asyncio.to_thread(self._snapshot, spec.output_path)
        workdir_rel = f"{self.work_dir_name}/{spec.job_id}-{os.urandom(3).hex()}"
        try:
            return await self._run(spec, workdir_rel, on_log, cancel)
        except DiskFullError as exc:
            logger.error("job {}: disk full: {}", spec.job_id, exc)
            await asyncio.to_thread(self._remove_new_results, spec.output_path, before)
            raise JobError(DISK_FULL_REASON) from None
        except JobError as exc:
            if exc.reason == DISK_FULL_REASON:
                await asyncio.to_thread(self._remove_new_results, spec.output_path, before)
            raise
        finally:
            if not self.keep_workdir:
                await asyncio.to_thread(self._remove_workdir, workdir_rel)

    async def _run(
        self,
        spec: JobSpec,
        workdir_rel: str,
        on_log: Callable[[str], None],
        cancel: asyncio.Event,
    ) -> JobOutcome:
        t0 = time.perf_counter()
        workdir = await asyncio.to_thread(self.fs.makedirs, workdir_rel)
        files, access_ms = await asyncio.to_thread(self._prepare_input, spec, workdir)
        output = self.fs.to_absolute(spec.output_path)
        input_abs = self.fs.to_absolute(spec.input_path)
        if cancel.is_set():
            raise JobError(CANCELLED_REASON)
        if self.command is None:
            await self._manifest_job(spec, workdir, input_abs, files, on_log, cancel)
        else:
            argv = build_argv(self.command, input_path=input_abs, workdir=workdir, output=output)
            await self._command_job(spec, argv, workdir, output, on_log, cancel)
        run_s = time.perf_counter() - t0 - access_ms / 1000
        count, total = await asyncio.to_thread(self.fs.fsync_tree, spec.output_path)
        return JobOutcome(count, total, access_ms, run_s)

    # ------------------------------------------------------------------ input

    def _prepare_input(self, spec: JobSpec, workdir: Path) -> tuple[list[tuple[str, Path]], float]:
        """Open the input again (at-use check) and extract it when it is a ZIP.

        Returns the files the job works on as (name shown in the manifest, absolute
        path), and the file access time in milliseconds.
        """
        t0 = time.perf_counter()
        try:
            resolved = self.fs.validate_input(spec.input_path)
            if resolved.is_dir():
                files = [
                    (path.relative_to(resolved).as_posix(), path)
                    for path in sorted(resolved.rglob("*"))
                    if path.is_file() and not path.is_symlink()
                ]
                return files, (time.perf_counter() - t0) * 1000
            with self.fs.open_file(spec.input_path) as handle:
                head = handle.read(8)
                handle.seek(0)
                access_ms = (time.perf_counter() - t0) * 1000
                if not looks_like_zip(resolved.name, head):
                    return [(resolved.name, resolved)], access_ms
                names = extract_zip(handle, workdir, self.zip_limits)
        except StoragePathError as exc:
            logger.warning("job {}: input refused at use: {}", spec.job_id, exc.detail)
            kind = PathErrorKind.VANISHED if exc.kind is PathErrorKind.NOT_FOUND else exc.kind
            reason = StoragePathError(kind, spec.input_path, exc.detail).reason
            raise JobError(reason, path_error=True) from None
        except ArchiveError as exc:
            logger.warning("job {}: archive refused: {}", spec.job_id, exc)
            reason = StoragePathError(PathErrorKind.CORRUPTED, spec.input_path, str(exc)).reason
            raise JobError(reason) from None
        return [(name, workdir / name) for name in names], access_ms

    # ------------------------------------------------------------------ built-in job

    async def _manifest_job(
        self,
        spec: JobSpec,
        workdir: Path,
        input_abs: Path,
        files: list[tuple[str, Path]],
        on_log: Callable[[str], None],
        cancel: asyncio.Event,
    ) -> None:
        stop = threading.Event()
        loop = asyncio.get_running_loop()

        def log(line: str) -> None:
            loop.call_soon_threadsafe(on_log, line)

        def build() -> None:
            log(f"manifest: {len(files)} file(s) from {spec.input_path}")
            entries = []
            total = 0
            for name, path in files:
                if stop.is_set():
                    return
                meta = file_metadata(path)
                total += meta.size
                entries.append(
                    {
                        "path": name,
                        "size": meta.size,
                        "sha256": meta.sha256,
                        "mime_type": meta.mime_type,
                    }
                )
                log(f"{name}  {meta.size} bytes  {meta.mime_type}  sha256={meta.sha256[:16]}…")
            manifest = {
                "job_id": spec.job_id,
                "input": spec.input_path,
                "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "file_count": len(entries),
                "total_bytes": total,
                "files": entries,
            }
            body = json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
            self.fs.atomic_write(f"{spec.output_path.rstrip('/')}/{MANIFEST_NAME}", body)
            log(f"wrote {MANIFEST_NAME}: {len(entries)} entries, {total} bytes described")

        worker = asyncio.ensure_future(asyncio.to_thread(build))
        canceller = asyncio.ensure_future(cancel.wait())
        await asyncio.wait({worker, canceller}, return_when=asyncio.FIRST_COMPLETED)
        if not worker.done():
            stop.set()
        canceller.cancel()
        await worker  # re-raises DiskFullError and friends
        if stop.is_set():
            raise JobError(CANCELLED_REASON)

    # ------------------------------------------------------------------ command job

    async def _command_job(
        self,
        spec: JobSpec,
        argv: list[str],
        workdir: Path,
        output: Path,
        on_log: Callable[[str], None],
        cancel: asyncio.Event,
    ) -> None:
        logger.info("job {}: running {}", spec.job_id, argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                limit=1 << 20,
            )
        except OSError as exc:
            logger.error("job {}: cannot start {}: {}", spec.job_id, argv[0], exc)
            raise JobError(f"Job command could not start: {Path(argv[0]).name}") from None
        assert proc.stdout is not None

        async def pump() -> None:
            assert proc.stdout is not None
            while True:
                try:
                    raw = await proc.stdout.readline()
                except ValueError:  # a line over the reader's limit: take what is there
                    raw = await proc.stdout.read(1 << 20)
                if not raw:
                    return
                line = raw.decode("utf-8", "replace").rstrip("\r\n").replace("\r", " ")
                if len(line) > MAX_LOG_LINE_CHARS:
                    line = line[:MAX_LOG_LINE_CHARS] + " …[truncated]"
                on_log(line)

        reader = asyncio.create_task(pump())
        canceller = asyncio.create_task(cancel.wait())
        waiter = asyncio.create_task(proc.wait())
        await asyncio.wait({waiter, canceller}, return_when=asyncio.FIRST_COMPLETED)
        cancelled = not waiter.done()
        if cancelled:
            logger.info("job {}: cancelling (pid {})", spec.job_id, proc.pid)
            await self._terminate(proc, waiter)
        canceller.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(reader, timeout=5.0)
        code = await waiter
        if cancelled:
            raise JobError(CANCELLED_REASON)
        if code != 0:
            free = await asyncio.to_thread(_free_bytes, output)
            if free is not None and free < _DISK_FULL_THRESHOLD:
                raise JobError(DISK_FULL_REASON)
            raise JobError(f"Job command exited with code {code}")

    async def _terminate(self, proc: asyncio.subprocess.Process, waiter: asyncio.Task[int]) -> None:
        """SIGTERM the job's process group, then SIGKILL after the grace period."""
        for sig, grace in ((signal.SIGTERM, self.cancel_grace_s), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(asyncio.shield(waiter), timeout=grace)
                return
            except TimeoutError:
                continue

    # ------------------------------------------------------------------ housekeeping

    def _snapshot(self, output_rel: str) -> set[str]:
        """Relative paths of everything already in the output folder (kept on failure)."""
        root = self.fs.to_absolute(output_rel)
        return {str(p.relative_to(root)) for p in root.rglob("*")}

    def _remove_new_results(self, output_rel: str, before: set[str]) -> None:
        """Remove what the failed job added to the output folder, keep what was there."""
        root = self.fs.to_absolute(output_rel)
        for path in sorted(root.rglob("*"), key=lambda p: len(p.parts), reverse=True):
            if str(path.relative_to(root)) in before:
                continue
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    path.rmdir()
                else:
                    path.unlink()
        logger.info("removed partial results from {}", output_rel)

    def _remove_workdir(self, workdir_rel: str) -> None:
        try:
            self.fs.remove_tree(workdir_rel)
        except (OSError, StoragePathError) as exc:
            logger.warning("could not remove working directory {}: {}", workdir_rel, exc)


def _free_bytes(path: Path) -> int | None:
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize
