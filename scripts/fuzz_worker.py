#!/usr/bin/env python3
"""Fuzz a live worker over a real data channel.

Usage::

    .venv/bin/python scripts/fuzz_worker.py --frames 10000 --seed 7
    .venv/bin/python scripts/fuzz_worker.py --frames 300 --seed 1 --json
    .venv/bin/python scripts/fuzz_worker.py --frames 2000 --seed 3 \\
        --signaling-url ws://127.0.0.1:8765/ws --worker gpu-1 --shared-root /mnt/shared

Without ``--signaling-url`` the script starts a signaling server and a worker
(``python -m rtc_worker serve``, built-in manifest job) as separate processes, with a
temporary shared root holding a training-package ZIP at ``inputs/package.zip``,
symlinks that lead out of the root, and a sentinel folder outside the root. With
``--signaling-url`` it fuzzes the given worker; ``--shared-root`` (the worker's root,
as seen from here) enables the manifest and outside-write checks: the fixtures are
then created in that root and removed afterwards.

Frames come from :func:`iter_frames`, a generator driven by ``random.Random(seed)``
only, so one seed always gives the same frame sequence: unknown types, broken
fields, binary garbage, oversize frames, traversal paths (``..``, absolute, NUL,
control characters, Unicode look-alikes, symlinks out of the root), valid frames out
of order, FILE_META with bad names, sizes and digests, legacy FILE_META, chunks out
of place, RESULTS_REQUEST for random ids, JOB_CANCEL/FILE_CANCEL at random, and valid
job and transfer exchanges (some cut short or corrupted).

The frames go out in batches over one raw connection (``RTCClient.connect(worker,
raw=True)``) while a reader task counts every reply by type. After each batch:

1. alive: an unknown frame ``PING-{batch}`` is answered ``PROTOCOL_ERROR::UNKNOWN_MESSAGE``
   within the probe timeout (every earlier frame of the batch was handled by then);
2. job: on a fresh client connection a shared-storage job on ``inputs/package.zip``
   completes with one file whose ``manifest.json`` lists exactly the package's
   members with their sha256 (WORKER_BUSY is retried for 30 s after a JOB_CANCEL);
3. outside: nothing outside the root changed (the sentinel folder's listing, contents
   and mtimes; no new entry in the temporary folder), and no JOB_LOG line named a
   file that only exists outside the root;
4. process: the worker process is alive (or still registered, for a remote worker).

A dropped fuzz connection (the worker closes a peer that floods its inbox) is
reopened and counted. The summary gives the frames sent, the replies by type and
code, the batches, the reconnections, the checks passed and the elapsed time; a
failure also gives the seed, the batch and the last frames sent, and the exit
status is 1. ``--json`` prints the summary as JSON on the last line.

This script is the command line; the parts live beside it: ``fuzz_catalogue.py`` (the
attack catalogue), ``fuzz_frames.py`` (the frame sequence of a seed),
``fuzz_fixtures.py`` (the files in and outside the root, and their snapshots),
``fuzz_processes.py`` (the signaling and worker processes), ``fuzz_runner.py`` (one
run and its checks) and ``fuzz_report.py`` (the counts and the summary).
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# the fuzz_* modules beside this script (also when it is loaded from a file path)
sys.path.insert(0, str(Path(__file__).resolve().parent))

from fuzz_fixtures import (  # noqa: E402
    MARKER,
    OUTSIDE,
    TMPDIR,
    Fixtures,
    diff_snapshots,
    make_fixtures,
    snapshot,
)
from fuzz_frames import (  # noqa: E402
    Frame,
    FrameGenerator,
    generate_frames,
    iter_frames,
    materialize,
    show,
)
from fuzz_report import CheckFailed, Stats, print_summary  # noqa: E402
from fuzz_runner import Fuzzer  # noqa: E402

#: the names other code imports from this script (the frame sequence, the fixtures and
#: their snapshots, the run and its report live in the fuzz_* modules beside it)
__all__ = [
    "MARKER",
    "OUTSIDE",
    "TMPDIR",
    "CheckFailed",
    "Fixtures",
    "Frame",
    "FrameGenerator",
    "Fuzzer",
    "Stats",
    "amain",
    "diff_snapshots",
    "generate_frames",
    "iter_frames",
    "main",
    "make_fixtures",
    "materialize",
    "parse_args",
    "print_summary",
    "show",
    "snapshot",
]

WORKER_ID = "fuzz-worker"
PROBE_TIMEOUT_S = 10.0


async def amain(args: argparse.Namespace) -> int:
    from loguru import logger

    logger.remove()
    logger.add(sys.stderr, level=args.log_level, diagnose=False)
    stats = Stats(seed=args.seed)
    started = time.monotonic()
    tmp = Path(tempfile.mkdtemp(prefix="fuzz-worker-"))
    fuzzer = Fuzzer(args, tmp, stats)
    try:
        try:
            await fuzzer.run()
        except CheckFailed as exc:
            stats.failure = {"check": exc.check, "detail": exc.detail}
        except Exception as exc:
            stats.failure = {"check": "run", "detail": f"{type(exc).__name__}: {exc}"}
            traceback.print_exc(file=sys.stderr)
        if stats.failure is not None:
            stats.failure.update(
                batch=fuzzer.batch,
                frames_sent=stats.frames_sent,
                last_frames=list(fuzzer.last_frames),
                worker_log=fuzzer.worker_log_tail(),
            )
    finally:
        await fuzzer.close()
        fuzzer.stop_processes()
        if fuzzer.fixtures is not None and args.signaling_url is not None:
            fuzzer.fixtures.remove_created()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    stats.elapsed_s = time.monotonic() - started
    print_summary(stats, fuzzer, as_json=args.json)
    return 0 if stats.failure is None else 1


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Fuzz a live worker over a real data channel (see the module docstring)."
    )
    parser.add_argument("--frames", type=int, required=True, help="frames to send")
    parser.add_argument("--seed", type=int, required=True, help="seed of the frame sequence")
    parser.add_argument("--batch", type=int, default=50, help="frames between checks (50)")
    parser.add_argument(
        "--signaling-url", default=None, help="fuzz this server's worker (default: start both)"
    )
    parser.add_argument("--worker", default=WORKER_ID, help=f"worker peer id ({WORKER_ID})")
    parser.add_argument("--token", default=None, help="signaling token of --signaling-url")
    parser.add_argument(
        "--shared-root",
        type=Path,
        default=None,
        help="the remote worker's shared root as seen here (enables the file checks)",
    )
    parser.add_argument(
        "--probe-timeout", type=float, default=PROBE_TIMEOUT_S, help="seconds per probe (10)"
    )
    parser.add_argument("--json", action="store_true", help="print a JSON summary last")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder")
    parser.add_argument("--log-level", default="ERROR", help="this process's log level (ERROR)")
    args = parser.parse_args(argv)
    if args.frames < 0 or args.batch < 1:
        parser.error("--frames must be >= 0 and --batch >= 1")
    if args.signaling_url is None and args.shared_root is not None:
        parser.error("--shared-root goes with --signaling-url (otherwise a temporary root is used)")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        return asyncio.run(amain(args))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
