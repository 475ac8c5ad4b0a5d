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
import re
import shlex
import signal
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from rtc_worker.archive import (
    ArchiveError,
    ArchiveErrorKind,
    ZipLimits,
    extract_zip,
    looks_like_zip,
)
from rtc_worker.storage import (
    DiskFullError,
    FileMetadata,
    FilesystemAdapter,
    MetadataBuilder,
    PathErrorKind,
    StoragePathError,
)

__all__ = [
    "DISK_FULL_REASON",
    "JOBS_DIR_NAME",
    "MANIFEST_NAME",
    "JobError",
    "JobOutcome",
    "JobRunner",
    "JobSpec",
    "build_argv",
    "build_results_zip",
]

DISK_FULL_REASON = "Disk space exhausted on shared storage"
#: Folder under the storage root holding job folders (outputs of jobs without a
#: shared output path, and result ZIPs).
JOBS_DIR_NAME = ".rtc-jobs"
CANCELLED_REASON = "cancelled"
MANIFEST_NAME = "manifest.json"
#: Longest JOB_LOG line sent, in characters; longer lines are cut with a marker.
MAX_LOG_LINE_CHARS = 8192
_PLACEHOLDER_RE = re.compile(r"\{(?:input|workdir|output)\}")
#: A failed command leaves less free space than this on the output's filesystem:
#: the failure is reported as disk exhaustion. Bytes.
_DISK_FULL_THRESHOLD = 1 << 20


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job: ids and paths relative to the storage root.

    Attributes:
        input_path: the shared input as the client sent it, or a received file's
            stored path.
        output_path: the output folder (shared, or the worker's job folder).
        input_name: the sender's name of a received input (for the manifest).
    """

    job_id: str
    input_path: str
    output_path: str
    input_name: str | None = None


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
    # One pass per argument, so a substituted path is never substituted again.
    return [_PLACEHOLDER_RE.sub(lambda m: values[m.group(0)], part) for part in parts]


class JobRunner:
    """Runs jobs for one worker on its storage root (the shared root, else the data dir).

    Args:
        fs: the storage root's adapter; every file the runner touches goes through it.
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
            cancel: set it to terminate the job (also stops extraction and hashing
                within one chunk).

        Returns:
            The counts of the output folder and the timings.

        Raises:
            JobError: the input vanished or was swapped (``path_error``), the input is
                corrupted, the command failed or the job was cancelled (reason
                ``cancelled``), or the disk filled up (what the job added to the output
                folder is removed).
        """
        before = await asyncio.to_thread(self._snapshot, spec.output_path)
        workdir_rel = f"{self.work_dir_name}/{spec.job_id}-{os.urandom(3).hex()}"
        stop = threading.Event()
        watcher = asyncio.create_task(cancel.wait())
        watcher.add_done_callback(lambda _: stop.set())
        try:
            return await self._run(spec, workdir_rel, on_log, cancel, stop)
        except DiskFullError as exc:
            logger.error("job {}: disk full: {}", spec.job_id, exc)
            await asyncio.to_thread(self._remove_new_results, spec.output_path, before)
            raise JobError(DISK_FULL_REASON) from None
        except JobError as exc:
            if exc.reason == DISK_FULL_REASON:
                await asyncio.to_thread(self._remove_new_results, spec.output_path, before)
            raise
        finally:
            watcher.cancel()
            if not self.keep_workdir:
                await asyncio.to_thread(self._remove_workdir, workdir_rel)

    async def _run(
        self,
        spec: JobSpec,
        workdir_rel: str,
        on_log: Callable[[str], None],
        cancel: asyncio.Event,
        stop: threading.Event,
    ) -> JobOutcome:
        t0 = time.perf_counter()
        workdir = await asyncio.to_thread(self.fs.makedirs, workdir_rel)
        files, access_ms = await asyncio.to_thread(self._prepare_input, spec, workdir_rel, stop)
        if cancel.is_set():
            raise JobError(CANCELLED_REASON)
        if self.command is None:
            await asyncio.to_thread(
                self._manifest_job, spec, files, on_log, stop, asyncio.get_running_loop()
            )
            if stop.is_set():
                raise JobError(CANCELLED_REASON)
        else:
            argv = build_argv(
                self.command,
                input_path=self.fs.to_absolute(spec.input_path),
                workdir=workdir,
                output=self.fs.to_absolute(spec.output_path),
            )
            await self._command_job(spec, argv, workdir, on_log, cancel)
        run_s = time.perf_counter() - t0 - access_ms / 1000
        count, total = await asyncio.to_thread(self.fs.fsync_tree, spec.output_path)
        return JobOutcome(count, total, access_ms, run_s)

    # ------------------------------------------------------------------ input

    def _prepare_input(
        self, spec: JobSpec, workdir_rel: str, stop: threading.Event
    ) -> tuple[list[tuple[str, str]], float]:
        """Open the input again (at-use check) and extract it when it is a ZIP.

        Returns the files the job works on as (name shown in the manifest, path
        relative to the storage root), and the file access time in milliseconds.
        """
        t0 = time.perf_counter()
        try:
            resolved = self.fs.validate_input(spec.input_path)
            if resolved.is_dir():
                files = self._list_files(spec.input_path)
                return files, (time.perf_counter() - t0) * 1000
            with self.fs.open_file(spec.input_path) as handle:
                head = handle.read(8)
                handle.seek(0)
                access_ms = (time.perf_counter() - t0) * 1000
                name = spec.input_name or resolved.name
                if not looks_like_zip(name, head):
                    return [(name, spec.input_path)], access_ms
                workdir = self.fs.to_absolute(workdir_rel)
                names = extract_zip(handle, workdir, self.zip_limits, stop)
        except StoragePathError as exc:
            logger.warning("job {}: input refused at use: {}", spec.job_id, exc.detail)
            kind = PathErrorKind.VANISHED if exc.kind is PathErrorKind.NOT_FOUND else exc.kind
            reason = StoragePathError(kind, spec.input_path, exc.detail).reason
            raise JobError(reason, path_error=True) from None
        except ArchiveError as exc:
            if exc.kind is ArchiveErrorKind.CANCELLED:
                raise JobError(CANCELLED_REASON) from None
            logger.warning("job {}: archive refused: {}", spec.job_id, exc)
            reason = StoragePathError(PathErrorKind.CORRUPTED, spec.input_path, str(exc)).reason
            raise JobError(reason) from None
        return [(name, f"{workdir_rel}/{name}") for name in names], access_ms

    def _list_files(self, folder_rel: str) -> list[tuple[str, str]]:
        """Regular files under ``folder_rel``, walked without following symlinks."""
        base = self.fs.validate(folder_rel)
        prefix = folder_rel.rstrip("/")
        files = []
        for dirpath, dirnames, filenames, dirfd in os.fwalk(base, follow_symlinks=False):
            dirnames.sort()
            sub = Path(dirpath).relative_to(base)
            for filename in sorted(filenames):
                st = os.stat(filename, dir_fd=dirfd, follow_symlinks=False)
                if stat.S_ISREG(st.st_mode):
                    name = (sub / filename).as_posix()
                    files.append((name, f"{prefix}/{name}"))
        return files

    # ------------------------------------------------------------------ built-in job

    def _manifest_job(
        self,
        spec: JobSpec,
        files: list[tuple[str, str]],
        on_log: Callable[[str], None],
        stop: threading.Event,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Write manifest.json (runs in a thread; every file opened through the adapter)."""

        def log(line: str) -> None:
            loop.call_soon_threadsafe(on_log, line)

        log(f"manifest: {len(files)} file(s) from {spec.input_name or spec.input_path}")
        entries = []
        total = 0
        for name, rel in files:
            meta = self._metadata(rel, stop)
            if meta is None:
                return
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
            "input": spec.input_name or spec.input_path,
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "file_count": len(entries),
            "total_bytes": total,
            "files": entries,
        }
        body = json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
        self.fs.atomic_write(f"{spec.output_path.rstrip('/')}/{MANIFEST_NAME}", body)
        log(f"wrote {MANIFEST_NAME}: {len(entries)} entries, {total} bytes described")

    def _metadata(self, rel: str, stop: threading.Event) -> FileMetadata | None:
        """Size, sha256 and MIME type of one file, or None when ``stop`` was set.

        Raises:
            JobError: the file was swapped or vanished since it was listed.
        """
        builder = MetadataBuilder()
        try:
            with self.fs.open_file(rel) as handle:
                while block := handle.read(1 << 20):
                    if stop.is_set():
                        return None
                    builder.update(block)
        except StoragePathError as exc:
            logger.warning("file refused while building the manifest: {}", exc.detail)
            raise JobError(f"{exc.kind.value}: {rel.rsplit('/', 1)[-1]}") from None
        return builder.finish()

    # ------------------------------------------------------------------ command job

    async def _command_job(
        self,
        spec: JobSpec,
        argv: list[str],
        workdir: Path,
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
            )
        except OSError as exc:
            logger.error("job {}: cannot start {}: {}", spec.job_id, argv[0], exc)
            raise JobError(f"Job command could not start: {Path(argv[0]).name}") from None
        try:
            code, cancelled = await self._supervise(proc, on_log, cancel)
        finally:
            # Whatever happened (normal exit, cancel, our own task cancelled), no
            # process of the job's group outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if cancelled:
            raise JobError(CANCELLED_REASON)
        if code != 0:
            output = self.fs.to_absolute(spec.output_path)
            free = await asyncio.to_thread(_free_bytes, output)
            if free is not None and free < _DISK_FULL_THRESHOLD:
                raise JobError(DISK_FULL_REASON)
            raise JobError(f"Job command exited with code {code}")

    async def _supervise(
        self,
        proc: asyncio.subprocess.Process,
        on_log: Callable[[str], None],
        cancel: asyncio.Event,
    ) -> tuple[int, bool]:
        """Stream the job's output as log lines until it exits or is cancelled.

        The job ends when its main process exits: what it left running in its
        process group is killed then (a leftover daemon holding stdout open would
        otherwise keep the job, and the worker's one job slot, forever).
        """
        assert proc.stdout is not None
        reader = asyncio.create_task(_pump_lines(proc.stdout, on_log))
        canceller = asyncio.create_task(cancel.wait())
        leader = asyncio.create_task(_process_exit(proc))
        try:
            await asyncio.wait({leader, canceller}, return_when=asyncio.FIRST_COMPLETED)
            cancelled = not leader.done()
            if cancelled:
                logger.info("cancelling job process {}", proc.pid)
                await self._terminate(proc, leader)
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)  # leftovers of the job's group
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(reader), timeout=5.0)
            with contextlib.suppress(TimeoutError):  # reap; pipes are closed by now
                await asyncio.wait_for(proc.wait(), timeout=5.0)
            code = proc.returncode
            return (code if code is not None else -1), cancelled
        finally:
            for task in (reader, canceller, leader):
                task.cancel()

    async def _terminate(
        self, proc: asyncio.subprocess.Process, leader: asyncio.Task[None]
    ) -> None:
        """SIGTERM the job's process group, then SIGKILL after the grace period."""
        for sig, grace in ((signal.SIGTERM, self.cancel_grace_s), (signal.SIGKILL, 10.0)):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, sig)
            try:
                await asyncio.wait_for(asyncio.shield(leader), timeout=grace)
                return
            except TimeoutError:
                continue

    # ------------------------------------------------------------------ housekeeping

    def _snapshot(self, output_rel: str) -> set[str]:
        """Relative paths of everything already in the output folder (kept on failure)."""
        base = self.fs.validate(output_rel)
        seen: set[str] = set()
        for dirpath, dirnames, filenames, _ in os.fwalk(base, follow_symlinks=False):
            sub = Path(dirpath).relative_to(base)
            seen.update((sub / name).as_posix() for name in (*dirnames, *filenames))
        return seen

    def _remove_new_results(self, output_rel: str, before: set[str]) -> None:
        """Remove what the failed job added to the output folder; keep what was there.

        Walks with directory descriptors and never follows a symlink, so nothing
        outside the folder can be removed.
        """
        base = self.fs.validate(output_rel)
        for dirpath, dirnames, filenames, dirfd in os.fwalk(
            base, topdown=False, follow_symlinks=False
        ):
            sub = Path(dirpath).relative_to(base)
            for name in filenames:
                if (sub / name).as_posix() not in before:
                    with contextlib.suppress(OSError):
                        os.unlink(name, dir_fd=dirfd)
            for name in dirnames:
                if (sub / name).as_posix() not in before:
                    with contextlib.suppress(OSError):
                        os.rmdir(name, dir_fd=dirfd)
        logger.info("removed partial results from {}", output_rel)

    def _remove_workdir(self, workdir_rel: str) -> None:
        try:
            self.fs.remove_tree(workdir_rel)
        except (OSError, StoragePathError) as exc:
            logger.warning("could not remove working directory {}: {}", workdir_rel, exc)


async def _process_exit(proc: asyncio.subprocess.Process) -> None:
    """Return when the process itself has exited, whether or not its pipes are closed.

    asyncio's ``Process.wait()`` also waits for every pipe to close, which a
    grandchild that inherited stdout can delay forever. A pidfd (Linux 5.3+) becomes
    readable at exit; elsewhere the exit status is polled every 0.1 s.
    """
    try:
        fd = os.pidfd_open(proc.pid)
    except (AttributeError, OSError):
        while proc.returncode is None:
            with contextlib.suppress(ChildProcessError, OSError):
                # WNOHANG: never blocks
                if os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):  # noqa: ASYNC222
                    return
            await asyncio.sleep(0.1)
        return
    loop = asyncio.get_running_loop()
    exited: asyncio.Future[None] = loop.create_future()

    def on_readable() -> None:
        if not exited.done():
            exited.set_result(None)

    loop.add_reader(fd, on_readable)
    try:
        await exited
    finally:
        loop.remove_reader(fd)
        os.close(fd)


async def _pump_lines(stream: asyncio.StreamReader, on_log: Callable[[str], None]) -> None:
    """Turn a process's output into log lines, whatever its line lengths.

    Reads blocks (not lines, so an endless line cannot overrun a buffer), splits on
    line breaks, cuts lines above :data:`MAX_LOG_LINE_CHARS`, and never dies on a
    callback error (a dead reader would block the process on a full pipe).
    """
    pending = b""
    while True:
        block = await stream.read(1 << 16)
        if not block:
            break
        pending += block
        *lines, pending = pending.split(b"\n")
        if len(pending) > MAX_LOG_LINE_CHARS * 4:  # an endless line: emit what we have
            lines.append(pending)
            pending = b""
        for raw in lines:
            _emit(raw, on_log)
    if pending:
        _emit(pending, on_log)


def _emit(raw: bytes, on_log: Callable[[str], None]) -> None:
    line = raw.decode("utf-8", "replace").rstrip("\r").replace("\r", " ")
    if len(line) > MAX_LOG_LINE_CHARS:
        line = line[:MAX_LOG_LINE_CHARS] + " …[truncated]"
    try:
        on_log(line)
    except Exception:
        logger.exception("log callback failed")


def _free_bytes(path: Path) -> int | None:
    try:
        stats = os.statvfs(path)
    except OSError:
        return None
    return stats.f_bavail * stats.f_frsize


def build_results_zip(fs: FilesystemAdapter, output_rel: str, zip_rel: str) -> Path:
    """Pack the output folder into one ZIP at ``zip_rel`` (both relative to ``fs.root``).

    Regular files only (symlinks are skipped, so nothing outside the folder is
    packed), names relative to the folder, DEFLATE. Written to a temporary file,
    fsynced and renamed: a reader never sees half a ZIP. Blocking: run it in a thread.

    Returns:
        The ZIP's absolute path.

    Raises:
        StoragePathError: a path is outside the root.
        DiskFullError / OSError: writing failed (the temporary file is removed).
    """
    import zipfile

    from rtc_worker.storage import fsync_directory

    source = fs.validate(output_rel)
    target = fs.to_absolute(zip_rel)
    fs.makedirs(str(Path(zip_rel).parent))
    tmp = target.with_name(f".{target.name}.{os.urandom(4).hex()}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(source.rglob("*")):
                if path.is_file() and not path.is_symlink():
                    archive.write(path, path.relative_to(source).as_posix())
        with tmp.open("rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, target)
        fsync_directory(target.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return target
