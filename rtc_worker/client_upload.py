"""The client's sending half: one input file to the worker, on the road its
:class:`~rtc_worker.roads_client.RoadPlan` names.

:class:`Uploader` announces the file (FILE_META) through the client's
``Connection`` and performs what the connection then asks: ``StreamFrom`` streams it
on the data channel (:class:`~rtc_worker.transfer_io.TransferIO`), ``RelayFrom``
uploads it part by part on the relay road (:class:`~rtc_worker.relay_send.RelaySender`),
``RoadChanged`` leaves the relay road for the channel at the receiver's verified offset.
``SendProgress`` (the worker's FILE_PROGRESS) feeds the caller's progress callback and
paces the relay parts. The transfer's end is the connection's ``SendEnded``.

Source: PROTOCOL.md section 2 (transfers); DESIGN.md, "Roads".
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from loguru import logger

from protocol import RelayEndCode, TransferErrorCode
from protocol import events as ev
from protocol.connection import Connection
from protocol.relay_events import RelayFrom, RoadChanged
from protocol.roads import Road
from rtc_worker.client_results import SendResult
from rtc_worker.driver import ChannelDriver
from rtc_worker.errors import RoadFailed, transfer_ended
from rtc_worker.relay_send import RelaySender
from rtc_worker.roads_client import OnRoad, RoadChange, RoadPlan
from rtc_worker.transfer_io import Opener, TransferIO, file_to_send, path_opener

__all__ = ["CHANNEL_PLAN", "Uploader", "call_safely"]

Progress = Callable[[int, int], None]
#: The data channel, as every client before the relay road sent.
CHANNEL_PLAN = RoadPlan(Road.CHANNEL, fallback=False)


class Uploader:
    """Sends the client's files on one connection, one at a time.

    Args:
        conn: the client's connection; ``io`` its transfer I/O (the channel's stream);
        driver: drains the connection; ``next_event`` the caller's next event (the
            connection's events in order; raises ChannelClosed / TimeoutError).
    """

    def __init__(
        self,
        conn: Connection,
        io: TransferIO,
        driver: ChannelDriver,
        next_event: Callable[[float | None], Awaitable[object]],
    ) -> None:
        self.conn, self.io, self.driver = conn, io, driver
        self._next_event = next_event
        self._on_progress: Progress | None = None
        self._on_road: OnRoad | None = None
        self._relay: RelaySender | None = None
        self._roads: list[RoadChange] = []

    def perform(self, output: object) -> bool:
        """Perform a sender's output; False when it is not one."""
        match output:
            case ev.StreamFrom():
                if not self._roads:
                    self._took(RoadChange(Road.CHANNEL.value, offset=output.offset))
                self.io.stream(output)
            case RelayFrom(offset=offset):
                relay = self._relay
                if relay is None:
                    raise RuntimeError("RelayFrom without a relay plan")
                self._took(RoadChange(Road.RELAY.value, offset=offset))
                relay.start(offset)
            case RoadChanged(from_road=left, to_road=taken, offset=offset, code=code):
                relay = self._relay
                if relay is not None:
                    self.driver.spawn(relay.stop())
                    if code == RelayEndCode.STOPPED and relay.failure:
                        code = relay.failure  # we stopped it: say why
                self._took(RoadChange(taken.value, left.value, offset, code or None))
            case ev.SendProgress(received=received, size=size):
                if self._relay is not None:
                    self._relay.fetched(received)
                if self._on_progress is not None:
                    call_safely(self._on_progress, received, size)
            case _:
                return False
        return True

    def _took(self, change: RoadChange) -> None:
        self._roads.append(change)
        logger.info("{}", change)
        if self._on_road is not None:
            call_safely(self._on_road, change)

    async def upload(
        self,
        path: Path,
        on_progress: Progress | None,
        plan: RoadPlan = CHANNEL_PLAN,
        on_road: OnRoad | None = None,
    ) -> SendResult:
        """Send ``path`` (resumed, or skipped when the worker holds it) on ``plan``'s road.

        Raises:
            TransferFailedError or WorkerProtocolError (per code); RoadFailed (the relay
            road was forced and failed: its code); ChannelClosed, OSError.
        """
        result = await self._send_once(path, on_progress, plan, on_road)
        if result.outcome.code == TransferErrorCode.HASH_MISMATCH and result.outcome.offset > 0:
            # The worker's partial was damaged (it discarded it): send it all once more.
            logger.warning("{}: resumed bytes did not verify; sending from the start", path.name)
            result = await self._send_once(path, on_progress, plan, on_road)
        if not result.ok:
            code, detail = result.outcome.code, result.outcome.detail
            if plan.road is Road.RELAY and not plan.fallback and result.relay_failure:
                raise RoadFailed(result.relay_failure, detail, road=Road.RELAY.value)
            raise transfer_ended(code, detail)
        logger.info(
            "sent {} ({}, {}): {} of {} bytes, {:.2f} MB/s",
            path.name, result.outcome.status, result.road, result.bytes_moved, result.size,
            result.mb_per_s,
        )  # fmt: skip
        return result

    async def _send_once(
        self, path: Path, on_progress: Progress | None, plan: RoadPlan, on_road: OnRoad | None
    ) -> SendResult:
        opener = path_opener(path)
        file = await file_to_send(opener, path.name)
        started, sent_before = time.monotonic(), self.io.bytes_sent
        self.io.offer(opener)
        self._on_progress, self._on_road, self._roads = on_progress, on_road, []
        relay = self._relay = self._relay_sender(plan, opener, file)
        try:
            if relay is None:
                self.conn.send_file(file)
            else:
                self.conn.send_file(file, road=plan.road, fallback=plan.fallback)
            serial = self.conn.sender.serial
            await self.driver.drain()
            ended = await self._wait_sent(serial)
            seconds = time.monotonic() - started  # the deletes below are not the transfer's
        except asyncio.CancelledError:
            self.conn.cancel_send()  # the worker keeps its partial; the channel stays usable
            self.driver.kick()
            raise
        finally:
            self._on_progress = self._on_road = None
            self._relay = None
            if relay is not None:
                await asyncio.shield(relay.discard())
        return SendResult(
            ended,
            file.size,
            self.io.bytes_sent - sent_before,
            seconds,
            bytes_relayed=self._relayed(relay, ended, file.size),
            roads=tuple(self._roads),
            relay_failure=None if relay is None else relay.failure or _relay_code(ended),
        )

    def _relayed(self, relay: RelaySender | None, ended: ev.SendEnded, size: int) -> int:
        """Plaintext bytes the worker verified from the relay road."""
        if relay is None or relay.start_offset is None:
            return 0
        left = [change.offset for change in self._roads if change.previous == Road.RELAY.value]
        end = left[0] if left else size if ended.status == "received" else relay.received
        return max(0, end - relay.start_offset)

    def _relay_sender(
        self, plan: RoadPlan, opener: Opener, file: ev.FileToSend
    ) -> RelaySender | None:
        """The relay road's sender, or None for the channel (an empty file has no chunk
        and always takes the channel)."""
        if plan.road is not Road.RELAY or plan.relay is None or file.size == 0:
            return None
        return RelaySender(
            self.conn,
            plan.relay,
            opener,
            file.sha256,
            file.size,
            chunk_size=plan.chunk_size,
            part_bytes=plan.part_bytes,
            wake=self.driver.drain,
        )

    async def _wait_sent(self, serial: int) -> ev.SendEnded:
        while True:
            event = await self._next_event(None)
            if isinstance(event, ev.SendEnded) and event.transfer == serial:
                return event
            if isinstance(event, ev.Refused):  # the answer to our FILE_META (SendEnded follows)
                continue
            logger.debug("ignoring {} while sending", event)


def _relay_code(ended: ev.SendEnded) -> str | None:
    """The RELAY_ENDED code a forced relay transfer failed with, or None."""
    relay_codes = {code.value for code in RelayEndCode}
    return ended.code if ended.status == "failed" and ended.code in relay_codes else None


def call_safely(callback: Callable[..., object], *args: object) -> None:
    """Run a caller's callback; its exception is logged, never raised into the transfer."""
    try:
        callback(*args)
    except Exception:
        logger.exception("callback {} failed", getattr(callback, "__name__", callback))
