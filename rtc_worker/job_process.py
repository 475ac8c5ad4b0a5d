"""The job command's process: when it has exited, its output as log lines, its end.

Used by :class:`~rtc_worker.jobs.JobRunner` to supervise an operator's command.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Callable

from loguru import logger

__all__ = ["MAX_LOG_LINE_CHARS", "process_exit", "pump_lines", "supervise"]

#: Longest JOB_LOG line sent, in characters; longer lines are cut with a marker.
MAX_LOG_LINE_CHARS = 8192


async def process_exit(proc: asyncio.subprocess.Process) -> None:
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


async def pump_lines(stream: asyncio.StreamReader, on_log: Callable[[str], None]) -> None:
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


async def supervise(
    proc: asyncio.subprocess.Process,
    on_log: Callable[[str], None],
    cancel: asyncio.Event,
    grace_s: float,
) -> tuple[int, bool]:
    """Stream the job's output as log lines until it exits or is cancelled.

    The job ends when its main process exits: what it left running in its process
    group is killed then (a leftover daemon holding stdout open would otherwise keep
    the job, and the worker's one job slot, forever). On cancel the group gets SIGTERM,
    then SIGKILL after ``grace_s`` seconds.

    Returns:
        ``(exit code, cancelled)``; the code is -1 when it is unknown.
    """
    assert proc.stdout is not None
    reader = asyncio.create_task(pump_lines(proc.stdout, on_log))
    canceller = asyncio.create_task(cancel.wait())
    leader = asyncio.create_task(process_exit(proc))
    try:
        await asyncio.wait({leader, canceller}, return_when=asyncio.FIRST_COMPLETED)
        cancelled = not leader.done()
        if cancelled:
            logger.info("cancelling job process {}", proc.pid)
            await _terminate(proc, leader, grace_s)
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
    proc: asyncio.subprocess.Process, leader: asyncio.Task[None], grace_s: float
) -> None:
    """SIGTERM the job's process group, then SIGKILL after the grace period."""
    for sig, grace in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 10.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            await asyncio.wait_for(asyncio.shield(leader), timeout=grace)
            return
        except TimeoutError:
            continue
