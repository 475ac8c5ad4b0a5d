"""Job runners: turn a validated input on shared storage into results in the output folder.

A job runs in place on shared storage, on the input opened at validation (never on
its path again). A ZIP input (a training package) is first extracted safely, from that
descriptor, into a working directory under the shared root; then either the operator's
command runs (``--job-command``, a template with ``{input}``, ``{workdir}`` and
``{output}``, run as an argument list without a shell, with the workdir as cwd, a
minimal environment and the worker's umask), or the built-in job writes
``manifest.json``. ``{input}`` is ``/dev/fd/N``, the input's open file inherited by the
command, or for a directory input a private read-only copy of it in the workdir (see
:mod:`rtc_worker.job_input`). Finally every result is fsynced and counted for
``JOB_COMPLETE``, walking the output folder by descriptor.

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
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from loguru import logger

from protocol import PathReason
from rtc_worker.archive import (
    ArchiveError,
    ArchiveErrorKind,
    ZipLimits,
    extract_zip,
    looks_like_zip,
)
from rtc_worker.job_input import (
    JobFiles,
    child_descriptor,
    count_files,
    describe_files,
    descriptor_path,
    job_environment,
    single_file,
    tree_files,
)
from rtc_worker.job_process import supervise
from rtc_worker.paths import path_reason
from rtc_worker.storage import (
    DiskFullError,
    InputHandle,
    SafeRoot,
    StorageError,
    StorageErrorKind,
    layout,
)
from rtc_worker.storage.copies import CopyLimitError, copy_tree

__all__ = [
    "DISK_FULL_REASON",
    "MANIFEST_NAME",
    "JobOutcome",
    "JobRunError",
    "JobRunner",
    "JobSpec",
    "build_argv",
]

DISK_FULL_REASON = "Disk space exhausted on shared storage"
CANCELLED_REASON = "cancelled"
MANIFEST_NAME = "manifest.json"
_PLACEHOLDER_RE = re.compile(r"\{(?:input|workdir|output)\}")
#: A failed command leaves less free space than this on the output's filesystem:
#: the failure is reported as disk exhaustion. Bytes.
_DISK_FULL_THRESHOLD = 1 << 20

Parts = tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Prepared:
    """The input, ready for the job: the files it works on, the time spent opening it
    (milliseconds), and ``{input}`` for a command (None: the input's descriptor)."""

    files: JobFiles
    access_ms: float
    argument: Path | None


@dataclass(frozen=True, slots=True)
class JobSpec:
    """One job.

    Attributes:
        job_id: the job's id.
        input: the input, opened at validation (a shared path, or a received file in
            the blob store); the job reads this descriptor.
        input_path: the input as the client sent it (or the stored file's relative
            path), for messages.
        output: the output folder's components under the runner's root (shared, or
            the worker's job folder).
        output_path: the output folder as the client sent it, for messages.
        input_name: the sender's name of a received input (for the manifest).
    """

    job_id: str
    input: InputHandle
    input_path: str
    output: Parts
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


class JobRunError(Exception):
    """A job failed; ``reason`` is safe to send to the client (no worker paths).

    Attributes:
        reason: the text of ``JOB_FAILED::{job_id}::{reason}``.
        path_reason: the input vanished or was swapped between validation and use: the
            reason is also sent as a ``PATH_ERROR`` of this kind.
    """

    def __init__(self, reason: str, *, path_reason: PathReason | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path_reason = path_reason


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
        root: the storage root; every file the runner touches goes through it.
        command: the operator's command template, or None for the built-in
            manifest job.
        zip_limits: caps applied when extracting a ZIP input.
        work_dir_name: folder under the root holding per-job working directories.
        keep_workdir: keep a job's working directory after it ends.
        cancel_grace_s: seconds between SIGTERM and SIGKILL on cancel.
        env_allow: variables a command inherits besides PATH, HOME, LANG, LC_* and TZ
            (names or shell-style patterns; see :func:`~rtc_worker.job_input.job_environment`).

    A command inherits the worker's umask (which the worker sets from its settings).

    A directory input of a command is copied into the workdir under the caps of
    ``zip_limits`` (total bytes, member count).
    """

    def __init__(
        self,
        root: SafeRoot,
        *,
        command: str | None = None,
        zip_limits: ZipLimits | None = None,
        work_dir_name: str = layout.WORK_DIR,
        keep_workdir: bool = False,
        cancel_grace_s: float = 5.0,
        env_allow: Sequence[str] = (),
    ) -> None:
        if command is not None:
            build_argv(command, input_path=Path(), workdir=Path(), output=Path())
        self.root = root
        self.command = command
        self.zip_limits = zip_limits or ZipLimits()
        self.work_dir_name = work_dir_name
        self.keep_workdir = keep_workdir
        self.cancel_grace_s = cancel_grace_s
        self.env_allow = tuple(env_allow)

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
            JobRunError: the input vanished or was swapped (``path_error``), the input
                is corrupted, the command failed or the job was cancelled (reason
                ``cancelled``), or the disk filled up (what the job added to the output
                folder is removed).
        """
        before = await asyncio.to_thread(self._snapshot, spec.output)
        work = layout.work_dir(spec.job_id, os.urandom(3).hex(), self.work_dir_name)
        stop = threading.Event()
        watcher = asyncio.create_task(cancel.wait())
        watcher.add_done_callback(lambda _: stop.set())
        try:
            return await self._run(spec, work, on_log, cancel, stop)
        except DiskFullError as exc:
            logger.error("job {}: disk full: {}", spec.job_id, exc)
            await asyncio.to_thread(self._remove_new_results, spec.output, before)
            raise JobRunError(DISK_FULL_REASON) from None
        except JobRunError as exc:
            if exc.reason == DISK_FULL_REASON:
                await asyncio.to_thread(self._remove_new_results, spec.output, before)
            raise
        finally:
            watcher.cancel()
            if not self.keep_workdir:
                await asyncio.to_thread(self._remove_workdir, work)

    async def _run(
        self,
        spec: JobSpec,
        work: Parts,
        on_log: Callable[[str], None],
        cancel: asyncio.Event,
        stop: threading.Event,
    ) -> JobOutcome:
        t0 = time.perf_counter()
        workdir = await asyncio.to_thread(self.root.subroot, work, create=True)
        with contextlib.ExitStack() as held:
            held.callback(workdir.close)
            prepared = await asyncio.to_thread(self._prepare_input, spec, workdir, stop, held)
            if cancel.is_set():
                raise JobRunError(CANCELLED_REASON)
            if self.command is None:
                await asyncio.to_thread(
                    self._manifest_job,
                    spec,
                    prepared.files,
                    on_log,
                    stop,
                    asyncio.get_running_loop(),
                )
                if stop.is_set():
                    raise JobRunError(CANCELLED_REASON)
            else:
                await self._command_job(spec, prepared.argument, workdir.root, on_log, cancel)
        run_s = time.perf_counter() - t0 - prepared.access_ms / 1000
        count, total = await asyncio.to_thread(self.root.fsync_tree, spec.output)
        return JobOutcome(count, total, prepared.access_ms, run_s)

    # ------------------------------------------------------------------ input

    def _prepare_input(
        self, spec: JobSpec, workdir: SafeRoot, stop: threading.Event, held: contextlib.ExitStack
    ) -> _Prepared:
        """Check the opened input again (at use); extract it when it is a ZIP (from its
        descriptor), copy it into the workdir when it is a directory a command reads.

        A directory input's root is closed by ``held``.
        """
        t0 = time.perf_counter()
        handle = spec.input
        try:
            handle.verify()
            if handle.kind == "dir":
                tree = held.enter_context(handle.subroot())
                access_ms = (time.perf_counter() - t0) * 1000
                if self.command is None:
                    return _Prepared(tree_files(tree), access_ms, None)
                self._copy_input(spec, tree, workdir, stop)
                return _Prepared(tree_files(workdir), access_ms, workdir.root)
            head = os.pread(handle.fd, 8, 0)
            access_ms = (time.perf_counter() - t0) * 1000
            name = spec.input_name or handle.name
            if not looks_like_zip(name, head):
                return _Prepared(single_file(name, handle), access_ms, None)
            with handle.reader() as archive:
                extract_zip(archive, workdir, self.zip_limits, stop)
        except StorageError as exc:
            logger.warning("job {}: input refused at use: {}", spec.job_id, exc.detail)
            if exc.kind is StorageErrorKind.NOT_FOUND:
                exc = StorageError(StorageErrorKind.VANISHED, exc.parts, exc.detail)
            raise JobRunError(
                path_reason(exc, spec.input_path), path_reason=PathReason[exc.kind.name]
            ) from None
        except ArchiveError as exc:
            if exc.kind is ArchiveErrorKind.CANCELLED:
                raise JobRunError(CANCELLED_REASON) from None
            logger.warning("job {}: archive refused: {}", spec.job_id, exc)
            corrupted = StorageError(StorageErrorKind.CORRUPTED, (), str(exc))
            raise JobRunError(path_reason(corrupted, spec.input_path)) from None
        return _Prepared(tree_files(workdir), access_ms, None)

    def _copy_input(
        self, spec: JobSpec, tree: SafeRoot, workdir: SafeRoot, stop: threading.Event
    ) -> None:
        """Copy a directory input into the workdir: the command's private snapshot.

        Raises:
            JobRunError: over the caps of ``zip_limits``, or cancelled.
            StorageError, DiskFullError: as :func:`~rtc_worker.storage.copies.copy_tree`.
        """
        limits = self.zip_limits
        try:
            files, size = copy_tree(
                tree,
                workdir,
                max_bytes=limits.max_total_bytes,
                max_files=limits.max_members,
                stop=stop,
            )
        except CopyLimitError as exc:
            logger.warning("job {}: input folder refused: {}", spec.job_id, exc)
            raise JobRunError(
                f"Input folder over the copy limits ({limits.max_members} files, "
                f"{limits.max_total_bytes} bytes): {spec.input_path}"
            ) from None
        if stop.is_set():
            raise JobRunError(CANCELLED_REASON)
        logger.info("job {}: input folder copied ({} files, {} bytes)", spec.job_id, files, size)

    # ------------------------------------------------------------------ built-in job

    def _manifest_job(
        self,
        spec: JobSpec,
        files: JobFiles,
        on_log: Callable[[str], None],
        stop: threading.Event,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        """Write manifest.json (runs in a thread; every file opened by descriptor).

        Raises:
            JobRunError: a folder of the input vanished or became unreadable meanwhile.
        """

        def log(line: str) -> None:
            loop.call_soon_threadsafe(on_log, line)

        log(f"manifest: {count_files(files)} file(s) from {spec.input_name or spec.input_path}")
        try:
            described = describe_files(files, stop, log)
        except StorageError as exc:
            logger.warning("file refused while building the manifest: {}", exc.detail)
            raise JobRunError(path_reason(exc, "/".join(exc.parts) or ".")) from None
        if described is None:
            return
        entries, total = described
        manifest = {
            "job_id": spec.job_id,
            "input": spec.input_name or spec.input_path,
            "created_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "file_count": len(entries),
            "total_bytes": total,
            "files": entries,
        }
        body = json.dumps(manifest, indent=2, ensure_ascii=False).encode("utf-8") + b"\n"
        self.root.write_atomic((*spec.output, MANIFEST_NAME), body)
        log(f"wrote {MANIFEST_NAME}: {len(entries)} entries, {total} bytes described")

    # ------------------------------------------------------------------ command job

    async def _command_job(
        self,
        spec: JobSpec,
        argument: Path | None,
        workdir: Path,
        on_log: Callable[[str], None],
        cancel: asyncio.Event,
    ) -> None:
        """Run the operator's command: ``{input}`` is ``argument``, else the input's
        open file as an inherited ``/dev/fd/N``; minimal environment."""
        assert self.command is not None
        inherited: tuple[int, ...] = ()
        if argument is None:
            inherited = (await asyncio.to_thread(child_descriptor, spec.input),)
            argument = descriptor_path(inherited[0])
        argv = build_argv(
            self.command,
            input_path=argument,
            workdir=workdir,
            output=self.root.absolute(spec.output),
        )
        logger.info("job {}: running {}", spec.job_id, argv)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                cwd=workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                env=job_environment(self.env_allow),
                pass_fds=inherited,
            )
        except OSError as exc:
            logger.error("job {}: cannot start {}: {}", spec.job_id, argv[0], exc)
            raise JobRunError(f"Job command could not start: {Path(argv[0]).name}") from None
        finally:
            for fd in inherited:  # the job holds its own copy now
                os.close(fd)
        try:
            code, cancelled = await supervise(proc, on_log, cancel, self.cancel_grace_s)
        finally:
            # Whatever happened (normal exit, cancel, our own task cancelled), no
            # process of the job's group outlives it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
        if cancelled:
            raise JobRunError(CANCELLED_REASON)
        if code != 0:
            free = await asyncio.to_thread(self._free_bytes, spec.output)
            if free is not None and free < _DISK_FULL_THRESHOLD:
                raise JobRunError(DISK_FULL_REASON)
            raise JobRunError(f"Job command exited with code {code}")

    # ------------------------------------------------------------------ housekeeping

    def _snapshot(self, output: Parts) -> set[Parts]:
        """Everything already in the output folder (kept if the job fails)."""
        try:
            return self.root.snapshot(output)
        except StorageError as exc:
            logger.warning("cannot list the output folder {}: {}", output, exc.detail)
            return set()

    def _remove_new_results(self, output: Parts, before: set[Parts]) -> None:
        """Remove what the failed job added to the output folder; keep what was there
        (by descriptor, never following a symlink: nothing outside can be removed)."""
        try:
            self.root.prune(output, before)
        except StorageError as exc:
            logger.warning("cannot clean the output folder {}: {}", output, exc.detail)
            return
        logger.info("removed partial results from {}", "/".join(output))

    def _remove_workdir(self, work: Parts) -> None:
        try:
            self.root.remove_tree(work)
        except (OSError, StorageError) as exc:
            logger.warning("could not remove working directory {}: {}", "/".join(work), exc)

    def _free_bytes(self, output: Parts) -> int | None:
        """Free bytes on the output folder's filesystem, or None when unknown."""
        try:
            fd = self.root.open_dir(output)
        except (OSError, StorageError):
            return None
        try:
            stats = os.fstatvfs(fd)
        except OSError:
            return None
        finally:
            os.close(fd)
        return stats.f_bavail * stats.f_frsize
