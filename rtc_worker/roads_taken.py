"""Which road each file a connection received took, and how fast (JOB_METRICS, the log).

A receive starts with the first action of a new transfer (the proof of possession's or
CheckStore, right after FILE_META) and ends when the file is held (FILE_RECEIVED or
FILE_EXISTS: :class:`~protocol.events.FileHeld`, where the connection names the road,
``channel``, ``relay``, ``relay+channel`` after a failover or ``stored`` when dedupe
moved nothing, and the plaintext bytes that moved, a resumed prefix not counted). Its
speed is those MB (10^6 bytes) divided by the seconds from its start to its end. One
line per receive goes to the log; neither key nor token is known here.

Source: issue 14 (JOB_METRICS ``road`` and ``transfer_mb_s``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from loguru import logger

from protocol.events import FileHeld

__all__ = ["MAX_REMEMBERED", "RoadLog", "RoadTaken"]

#: Received files whose road a connection remembers (the oldest go first).
MAX_REMEMBERED = 64


@dataclass(frozen=True, slots=True)
class RoadTaken:
    """How one file arrived.

    Attributes:
        road: ``channel``, ``relay``, ``relay+channel`` or ``stored``.
        moved: plaintext bytes that crossed a road this time.
        seconds: from the receive's first action to the file being held, seconds.
    """

    road: str
    moved: int
    seconds: float

    @property
    def mb_s(self) -> float:
        """Plaintext MB (10^6 bytes) moved per second; 0 when nothing moved."""
        if not self.moved or self.seconds <= 0:
            return 0.0
        return self.moved / 1e6 / self.seconds


class RoadLog:
    """The roads of one connection's receives (one at a time, as the protocol has it).

    Args:
        clock: a monotonic clock, seconds.
    """

    def __init__(self, clock: Callable[[], float] = time.perf_counter) -> None:
        self._clock = clock
        self._serial: int | None = None
        self._started = 0.0
        self._taken: OrderedDict[str, RoadTaken] = OrderedDict()

    def action(self, serial: int) -> None:
        """A receiver action of transfer ``serial``: a new transfer starts the clock."""
        if serial != self._serial:
            self._serial, self._started = serial, self._clock()

    def held(self, event: FileHeld) -> RoadTaken:
        """The open receive ended with the file held (the connection names its road and
        the bytes that moved): logged, and remembered under its sha256 for
        :meth:`road_of`."""
        seconds = self._clock() - self._started if self._serial is not None else 0.0
        moved = 0 if event.existed else event.bytes_received
        taken = RoadTaken(event.road, moved, seconds)
        self._serial = None
        self._taken[event.sha256] = taken
        self._taken.move_to_end(event.sha256)
        while len(self._taken) > MAX_REMEMBERED:
            self._taken.popitem(last=False)
        logger.info(
            "received {} ({} bytes) by the {} road: {} bytes moved in {:.2f} s, {:.1f} MB/s",
            event.name,
            event.size,
            taken.road,
            moved,
            seconds,
            taken.mb_s,
        )
        return taken

    def road_of(self, sha256: str) -> RoadTaken:
        """How ``sha256`` arrived on this connection; ``stored`` (nothing moved) when it
        did not arrive here (it was held before)."""
        return self._taken.get(sha256) or RoadTaken("stored", 0, 0.0)
