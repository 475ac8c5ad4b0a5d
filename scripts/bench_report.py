"""The report of ``bench_transfer.py``: the runs of a road at a size and their median,
the table rows, the goals, and the summary lines printed after the table.

Sizes in bytes, MB = 10^6 bytes, rates in MB/s, memory in KiB (printed in MiB).
"""

from __future__ import annotations

import argparse
from typing import Any

from bench_common import MB, Goal, print_table, size_label


class Runs:
    """The runs of one road at one size; figures from the median run."""

    def __init__(self, size: int, time_key: str = "seconds") -> None:
        self.size, self.time_key, self.runs = size, time_key, list[dict[str, Any]]()

    def add(self, run: dict[str, Any]) -> float:
        """Record a run; its MB/s."""
        self.runs.append(run)
        return self.size / MB / run[self.time_key]

    @property
    def mid(self) -> dict[str, Any] | None:
        """The median run (by time), None without runs."""
        if not self.runs:
            return None
        return sorted(self.runs, key=lambda r: r[self.time_key])[len(self.runs) // 2]

    @property
    def mb_s(self) -> float | None:
        mid = self.mid
        return None if mid is None else self.size / MB / mid[self.time_key]

    def rounds(self) -> list[float]:
        return [round(self.size / MB / r[self.time_key], 2) for r in self.runs]


def fmt_rate(runs: Runs | None, why: str | None) -> str:
    if runs is None or runs.mb_s is None:
        return f"not available: {why}" if why else "-"
    return f"{runs.mb_s:.2f}"


def fmt_resume(run: dict[str, Any] | None, size: int) -> str:
    if run is None:
        return "-"
    total = run["total_sent"]
    return f"{total / MB:.1f} MB ({(total - size) / size * 100:+.1f}%)"


def fmt_rss(run: dict[str, Any] | None) -> tuple[str, str]:
    if run is None:
        return "-", "-"
    return (
        f"{run['worker_peak_kib'] / 1024:.0f} MiB (idle {run['worker_idle_kib'] / 1024:.0f})",
        f"{run['peak_kib'] / 1024:.0f} MiB (idle {run['idle_kib'] / 1024:.0f})",
    )


def report_size(
    result: dict[str, Any], args: argparse.Namespace, why: dict[str, str]
) -> tuple[list[list[str]], list[Goal]]:
    """The table rows and goals of one size."""
    size, runs, resumes = result["size"], result["_runs"], result["resume"]
    label = f"{size_label(size)}"
    roads = set(args.roads)
    rows: list[list[str]] = []
    names = {
        "http": "(h) raw aiohttp stream-to-disk (ceiling)",
        "raw": "(a) raw aiortc channel",
        "channel": "(b) project channel",
        "turn": "(e) project channel through TURN",
        "relay": "(r) relay road (encrypt, tus, ranged GET, decrypt, verify)",
    }
    for road, name in names.items():
        if road not in roads:
            continue
        mid = runs[road].mid if road in ("channel", "relay") else None
        worker, client = fmt_rss(mid)
        resume = fmt_resume(resumes.get(road), size) if road in resumes else ""
        if resumes.get(road) is None and f"{road} resume" in why:
            resume = "not available: the run failed"
        rows.append([name, label, fmt_rate(runs[road], why.get(road)), resume, worker, client])
    goals = []
    channel, raw, relay = runs["channel"].mb_s, runs["raw"].mb_s, runs["relay"].mb_s
    if "relay" in roads and "channel" in roads:
        value = None if relay is None or not channel else relay / channel
        goals.append(Goal(f"{label}: relay road / channel", value, ">=", 5, "x"))
    if "raw" in roads and "channel" in roads:
        value = None if channel is None or not raw else channel / raw
        goals.append(Goal(f"{label}: channel / raw aiortc", value, ">=", 0.9, "x"))
    return rows, goals


def print_report(
    results: list[dict[str, Any]], args: argparse.Namespace, why: dict[str, str]
) -> list[Goal]:
    """Print the table of every size's results, their rounds and the peak RSS lines;
    drop each result's ``_runs`` (not JSON) and return the goals."""
    rows: list[list[str]] = []
    goals: list[Goal] = []
    for result in results:
        more_rows, more_goals = report_size(result, args, why)
        rows += more_rows
        goals += more_goals
    print()
    print_table(
        [
            "road",
            "size",
            "MB/s",
            f"resume bytes (cut at {args.cut_at:.0%})" if args.cut_at else "resume bytes",
            "peak RSS worker",
            "peak RSS client",
        ],
        rows,
    )
    for result in results:
        print(
            f"{size_label(result['size'])} rounds, MB/s: "
            + "; ".join(f"{road} {v}" for road, v in result["rounds_mb_s"].items() if v)
        )
    for road in ("channel", "relay"):
        mids = [r["_runs"][road].mid for r in sorted(results, key=lambda r: r["size"])]
        mids = [mid for mid in mids if mid is not None]
        if len(mids) > 1:
            worker = round((mids[-1]["worker_peak_kib"] - mids[0]["worker_peak_kib"]) / 1024)
            client = round((mids[-1]["peak_kib"] - mids[0]["peak_kib"]) / 1024)
            print(
                f"peak RSS, largest vs smallest file ({road}): worker {worker:+d} MiB, "
                f"client {client:+d} MiB"
            )
    for result in results:
        del result["_runs"]
    return goals
