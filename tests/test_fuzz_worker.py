"""The worker fuzzer (scripts/fuzz_worker.py): a bounded run against a live worker
process over a real data channel, and the reproducibility of its frame sequence."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parent.parent
SCRIPT = REPO / "scripts" / "fuzz_worker.py"


def load_fuzzer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_worker", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("fuzz_worker", module)
    spec.loader.exec_module(module)
    return module


def test_same_seed_gives_the_same_frames() -> None:
    fuzz = load_fuzzer()
    first = fuzz.generate_frames(5, 500)
    assert first == fuzz.generate_frames(5, 500)
    assert len(first) == 500
    assert first != fuzz.generate_frames(6, 500)
    # a prefix of a longer run is the shorter run: batches do not change the sequence
    assert fuzz.generate_frames(5, 800)[:500] == first
    assert any(isinstance(frame, bytes) for frame in first)
    assert any(isinstance(frame, str) and ".." in frame for frame in first)
    assert any(isinstance(frame, str) and len(frame.encode()) > 64 * 1024 for frame in first)
    assert all(len(frame) <= 70 * 1024 for frame in first if isinstance(frame, bytes))


def test_frames_are_sendable() -> None:
    """Every text frame encodes as UTF-8 (no lone surrogates) and fits a channel message."""
    fuzz = load_fuzzer()
    for frame in fuzz.generate_frames(9, 2000):
        data = frame.encode("utf-8") if isinstance(frame, str) else frame
        assert len(data) <= 256 * 1024


def test_bounded_fuzz_run_against_a_live_worker() -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--frames", "300", "--seed", "1", "--json"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-3000:]
    detail = proc.stdout[-4000:] + proc.stderr[-3000:]
    assert proc.returncode == 0, detail
    summary = json.loads(lines[-1])
    assert summary["ok"] is True, detail
    assert summary["frames_sent"] == 300
    assert summary["text_frames"] + summary["binary_frames"] == 300
    assert summary["binary_frames"] > 0
    for kind in ("PROTOCOL_ERROR", "TRANSFER_ERROR", "PATH_ERROR"):
        assert summary["replies"].get(kind, 0) > 0, summary["replies"]
    assert summary["codes"].get("PATH_ERROR:Path outside shared storage", 0) > 0
    assert summary["all_checks_passed"] is True
    assert summary["checks_failed"] == 0
    assert summary["batches"] == 6
    # alive, job, outside and process after each of the 6 batches
    assert summary["checks_by_kind"] == {"alive": 6, "job": 6, "outside": 6, "process": 6}
    assert summary["checks_skipped"] == {}
    assert summary["outside_writes"] == 0


@pytest.mark.parametrize(
    "argv", [["--frames", "1"], ["--frames", "1", "--seed", "1", "--batch", "0"]]
)
def test_usage_errors(argv: list[str]) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), *argv], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 2


def test_outside_check_sees_writes(tmp_path: Path) -> None:
    """The snapshot comparison behind the outside-write check notices a new file, a
    changed file and a touched mtime in the sentinel folder, and ignores the root."""
    fuzz = load_fuzzer()
    fixtures = fuzz.make_fixtures(tmp_path, tmp_path / "root", own_root=True)
    assert (tmp_path / "root" / "link-out").resolve() == fixtures.outside.resolve()
    excluded = {"root"}
    before = fuzz.snapshot(tmp_path, excluded)
    (tmp_path / "root" / "inputs" / "new.txt").write_bytes(b"inside is fine")
    assert fuzz.diff_snapshots(before, fuzz.snapshot(tmp_path, excluded)) == []
    sentinel = next(fixtures.outside.glob("*.txt"))
    stat = sentinel.stat()
    os.utime(sentinel, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1000))
    (fixtures.outside / "planted").write_bytes(b"x")
    changes = fuzz.diff_snapshots(before, fuzz.snapshot(tmp_path, excluded))
    assert "new: outside/planted" in changes
    assert f"changed: outside/{sentinel.name}" in changes
    assert "changed: outside" in changes  # the folder's own mtime


def test_two_runs_in_one_home_both_register(tmp_path: Path) -> None:
    # Each run's worker has a new key: a peer-id binding the first run's signaling server
    # kept in the user's data folder would refuse the second run's worker (PEER_ID_BOUND),
    # and a pin the first run's client kept would refuse it too (WORKER_KEY_CHANGED).
    env = {**os.environ, "HOME": str(tmp_path), "XDG_DATA_HOME": str(tmp_path / "data")}
    for run in (1, 2):
        proc = subprocess.run(
            [sys.executable, str(SCRIPT), "--frames", "10", "--seed", str(run), "--json"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert proc.returncode == 0, f"run {run}: " + proc.stdout[-2000:] + proc.stderr[-2000:]
    # nothing of a run (bindings, the client's key, its pins) is left in the home
    assert not [path for path in tmp_path.rglob("*") if path.is_file()]
