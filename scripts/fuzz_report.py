"""What a fuzz run counted (:class:`Stats`), how a check fails (:class:`CheckFailed`)
and the summary printed at the end (text, and JSON on the last line with ``--json``)."""

from __future__ import annotations

import json
import sys
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fuzz_runner import Fuzzer


class CheckFailed(Exception):
    """A check failed: the worker misbehaved."""

    def __init__(self, check: str, detail: str) -> None:
        super().__init__(f"{check}: {detail}")
        self.check = check
        self.detail = detail


@dataclass
class Stats:
    """What the run counted."""

    seed: int
    frames_text: int = 0
    frames_binary: int = 0
    batches: int = 0
    reconnections: int = 0
    drops_without_overloaded: int = 0
    replies: Counter[str] = field(default_factory=Counter)
    codes: Counter[str] = field(default_factory=Counter)
    checks_passed: Counter[str] = field(default_factory=Counter)
    checks_skipped: Counter[str] = field(default_factory=Counter)
    outside_writes: int = 0
    anomalies: list[dict[str, Any]] = field(default_factory=list)
    failure: dict[str, Any] | None = None
    elapsed_s: float = 0.0

    @property
    def frames_sent(self) -> int:
        return self.frames_text + self.frames_binary

    def summary(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "frames_sent": self.frames_sent,
            "text_frames": self.frames_text,
            "binary_frames": self.frames_binary,
            "batches": self.batches,
            "reconnections": self.reconnections,
            "drops_without_overloaded": self.drops_without_overloaded,
            "replies": dict(sorted(self.replies.items())),
            "codes": dict(sorted(self.codes.items())),
            "checks_passed": sum(self.checks_passed.values()),
            "checks_by_kind": dict(sorted(self.checks_passed.items())),
            "checks_skipped": dict(sorted(self.checks_skipped.items())),
            "checks_failed": 1 if self.failure else 0,
            "all_checks_passed": self.failure is None,
            "outside_writes": self.outside_writes,
            "anomalies": self.anomalies[:20],
            "anomaly_count": len(self.anomalies),
            "elapsed_s": round(self.elapsed_s, 1),
            "failure": self.failure,
            "ok": self.failure is None,
        }


def print_summary(stats: Stats, fuzzer: Fuzzer | None, *, as_json: bool) -> None:
    summary = stats.summary()
    out = sys.stdout
    print(
        f"frames sent: {stats.frames_sent} ({stats.frames_text} text, "
        f"{stats.frames_binary} binary), seed {stats.seed}",
        file=out,
    )
    print(f"batches: {stats.batches}", file=out)
    print(
        "replies by type: " + ", ".join(f"{k} {v}" for k, v in summary["replies"].items()), file=out
    )
    print(
        "replies by code: " + ", ".join(f"{k} {v}" for k, v in summary["codes"].items()), file=out
    )
    print(
        f"reconnections: {stats.reconnections} "
        f"(dropped without OVERLOADED: {stats.drops_without_overloaded})",
        file=out,
    )
    kinds = ", ".join(f"{k} {v}" for k, v in summary["checks_by_kind"].items())
    skipped = ", ".join(f"{k} {v}" for k, v in summary["checks_skipped"].items())
    print(
        f"checks passed: {summary['checks_passed']} ({kinds})"
        + (f"; skipped: {skipped}" if skipped else ""),
        file=out,
    )
    print(f"writes outside the root: {stats.outside_writes}", file=out)
    if stats.anomalies:
        print(f"anomalies: {len(stats.anomalies)}", file=out)
        for item in stats.anomalies[:10]:
            print(
                f"  batch {item['batch']}: {item['reply']} (after {item['last_frame']})", file=out
            )
    print(f"elapsed: {stats.elapsed_s:.1f} s", file=out)
    if stats.failure is not None:
        failure = stats.failure
        print(
            f"FAILED: {failure['check']}: {failure['detail']}\n"
            f"  seed {stats.seed}, batch {failure['batch']}, after frame {stats.frames_sent}\n"
            "  last frames sent (the last one preceded the failure):",
            file=out,
        )
        for frame in failure["last_frames"]:
            print(f"    {frame}", file=out)
        if failure.get("worker_log"):
            print("  worker log (tail):", file=out)
            for line in failure["worker_log"]:
                print(f"    {line}", file=out)
    else:
        print("result: OK", file=out)
    if as_json:
        print(json.dumps(summary, ensure_ascii=True), file=out)
    out.flush()
