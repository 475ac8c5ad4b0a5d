"""What ``rtc-client submit`` prints while it works: the ``--trace`` lines (secrets
hidden) and the progress bars, which name the road and its MB/s and say when the road
changes."""

from __future__ import annotations

import sys
from typing import Any

from protocol.relay_messages import redact
from rtc_worker.roads_client import RoadChange

__all__ = ["Progress", "print_trace", "shown_frame"]


def shown_frame(frame: str | bytes) -> str:
    """A frame as ``--trace`` prints it: binary frames by length, a RELAY_PART without
    its key, nonce prefix, upload id and token (:func:`protocol.relay_messages.redact`:
    ``RELAY_PART::{sha256}::{offset}::{length}::...<hidden>``)."""
    if isinstance(frame, bytes):
        return f"<binary {len(frame)} bytes>"
    return str(redact(frame))


def print_trace(direction: str, frame: str | bytes) -> None:
    """The ``--trace`` callback: one line per text frame, ``->`` sent, ``<-`` received."""
    arrow = "->" if direction == "send" else "<-"
    print(f"  {arrow} {shown_frame(frame)}", flush=True)


class Progress:
    """tqdm progress bars fed by FILE_PROGRESS (bytes, MB/s and ETA), one per transfer;
    the upload's bar names its road (``upload relay``) and a road change is printed
    above it (``relay -> channel at 48.0 MB: RELAY_UNREACHABLE``)."""

    def __init__(self, *, disabled: bool) -> None:
        self.disabled = disabled
        self._bars: dict[str, Any] = {}
        self._roads: dict[str, str] = {}

    def callback(self, label: str) -> Any:
        """The ``(received, size)`` callback of the bar ``label`` (None when disabled)."""
        if self.disabled:
            return None

        def update(received: int, size: int) -> None:
            from tqdm import tqdm

            bar = self._bars.get(label)
            if bar is None:
                bar = self._bars[label] = tqdm(
                    total=size,
                    initial=received,
                    desc=self._describe(label),
                    unit="B",
                    unit_scale=True,
                    unit_divisor=1000,
                    file=sys.stderr,
                    dynamic_ncols=True,
                )
            bar.update(received - bar.n)

        return update

    def road_callback(self, label: str) -> Any:
        """The ``on_road`` callback of the bar ``label``: its road, and each change."""
        if self.disabled:
            return None

        def took(change: RoadChange) -> None:
            self._roads[label] = change.road
            bar = self._bars.get(label)
            if change.previous is not None:
                from tqdm import tqdm

                tqdm.write(f"{label}: {change}", file=sys.stderr)
            if bar is not None:  # the rate (MB/s) shown from now on is the new road's
                bar.reset(total=bar.total)
                bar.initial = bar.n = bar.last_print_n = change.offset
                bar.set_description(self._describe(label))

        return took

    def _describe(self, label: str) -> str:
        road = self._roads.get(label)
        return f"{label} {road}" if road else label

    def close(self) -> None:
        """Close every bar."""
        for bar in self._bars.values():
            bar.close()
