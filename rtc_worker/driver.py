"""The loop that runs one :class:`~protocol.connection.Connection` over one data channel.

Frames are read in arrival order and given to the connection; its outputs are taken
from its one flat queue and performed in order, one at a time: a ``Send`` goes to the
channel, anything else to the role's ``perform`` callback (which may report outcomes,
queuing more outputs for the same loop). Background work (a job, a stream, an upload)
reports from its own task and then calls :meth:`ChannelDriver.drain` or
:meth:`ChannelDriver.kick`; a lock keeps the outputs in order whoever drains.

Source: DESIGN.md, "One path for every frame"; aioquic drains its events the same way.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from loguru import logger

from protocol.connection import Connection
from protocol.errors import ErrorCode
from protocol.events import Send
from protocol.routes import Role
from rtc_worker.rtc import ChannelClosed, FrameChannel

__all__ = ["ChannelDriver"]


class ChannelDriver:
    """Reads frames into a connection and performs its outputs.

    Args:
        conn: the connection.
        channel: the data channel.
        perform: performs one non-Send output (an action or an event).
        name: for logs (the peer's id).
        observe: called with each message sent (a client's download progress bar
            follows the FILE_PROGRESS it sends).
    """

    def __init__(
        self,
        conn: Connection,
        channel: FrameChannel,
        perform: Callable[[object], Awaitable[None]],
        *,
        name: str = "?",
        observe: Callable[[Send], None] | None = None,
    ) -> None:
        self.conn = conn
        self.observe = observe
        self.channel = channel
        self.perform = perform
        self.name = name
        self._lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._kicked = False

    async def run(self) -> None:
        """Serve the channel until it closes; then close the connection. Never raises
        (a failure on one frame is answered INTERNAL_ERROR and the loop goes on)."""
        try:
            while True:
                frame = await self.channel.recv()
                try:
                    self.conn.receive(frame, time.monotonic())
                    await self.drain()
                except Exception:  # a bug: log it (a worker answers), keep serving
                    logger.exception("frame from {} failed", self.name)
                    if self.conn.role is Role.WORKER:
                        self.conn.refuse(ErrorCode.INTERNAL_ERROR, "the worker failed on it")
                        await self.drain()
        except ChannelClosed:
            logger.info("data channel with {} closed", self.name)
        finally:  # also when cancelled: the connection keeps partial files for a resume
            self.conn.close()
            with contextlib.suppress(Exception):
                await asyncio.shield(self.drain())

    async def drain(self) -> None:
        """Perform every queued output, in order (one drainer at a time)."""
        async with self._lock:
            self._kicked = False
            while (output := self.conn.next_output()) is not None:
                if isinstance(output, Send):
                    self.channel.send_frame(output.frame)
                    if self.observe is not None:
                        self.observe(output)
                else:
                    try:
                        await self.perform(output)
                    except Exception:
                        logger.exception(
                            "performing {} for {} failed", type(output).__name__, self.name
                        )

    def kick(self) -> None:
        """Drain soon, from a synchronous callback (a job's log line, a slot change)."""
        if not self._kicked:
            self._kicked = True
            self.spawn(self.drain())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, kept until it ends (errors are logged)."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)
        return task

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.opt(exception=task.exception()).error("background work for {} failed", self.name)

    async def report(self, outcome: object) -> None:
        """Report an outcome from background work, then drain."""
        self.conn.report(outcome, time.monotonic())
        await self.drain()

    async def cancel_tasks(self) -> None:
        """Cancel every background task and wait for them."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
