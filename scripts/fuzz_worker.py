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
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import io
import itertools
import json
import os
import random
import shutil
import socket
import string
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter, deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

Frame = str | bytes

#: Placeholders in generated frames, replaced when a frame is sent (so the sequence
#: depends on the seed only): the sentinel folder outside the root, the temporary folder.
OUTSIDE = "@OUTSIDE@"
TMPDIR = "@TMPDIR@"
#: Every file of the sentinel folder carries this in its name: a JOB_LOG line that
#: names one means the worker read outside its root.
MARKER = "SECRET-OUTSIDE"

WORKER_ID = "fuzz-worker"
PROBE_TIMEOUT_S = 10.0
BUSY_RETRY_S = 30.0
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
MAX_TEXT = 64 * 1024

# ---------------------------------------------------------------------- fixtures

#: The training package placed at ``inputs/package.zip`` (member name -> bytes).
PACKAGE: dict[str, bytes] = {
    "data/train.csv": b"id,value\n" + b"".join(b"%d,%d\n" % (i, i * i) for i in range(1500)),
    "config.json": b'{"epochs": 2, "lr": 0.001}\n',
    "README.md": b"# package\n\nfuzz fixture\n",
    "weights.bin": random.Random(11).randbytes(100_000),
}

#: The sentinel folder outside the root (relative name -> bytes).
OUTSIDE_FILES: dict[str, bytes] = {
    f"{MARKER}-a.txt": b"must never be read or written by the worker\n",
    f"sub/{MARKER}-nested.txt": b"nested sentinel\n",
}
OUTSIDE_ZIP = f"{MARKER}-package.zip"


def build_zip(members: dict[str, bytes]) -> bytes:
    """A deterministic ZIP (fixed timestamps) of ``members``."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def package_entries(zip_bytes: bytes) -> dict[str, tuple[int, str]]:
    """Member name -> (size, sha256) of every file in a ZIP."""
    entries = {}
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        for info in archive.infolist():
            if not info.is_dir():
                data = archive.read(info)
                entries[info.filename] = (len(data), hashlib.sha256(data).hexdigest())
    return entries


@dataclass
class Fixtures:
    """What was placed for the run (to check against and to remove afterwards)."""

    tmp: Path
    outside: Path
    root: Path | None
    expected: dict[str, tuple[int, str]] | None = None
    created: list[Path] = field(default_factory=list)

    def remove_created(self) -> None:
        for path in reversed(self.created):
            with contextlib.suppress(OSError):
                if path.is_symlink() or path.is_file():
                    path.unlink()
                elif path.is_dir():
                    shutil.rmtree(path)


def make_fixtures(tmp: Path, root: Path | None, *, own_root: bool) -> Fixtures:
    """The sentinel folder in ``tmp/outside`` and, with a root, the package and symlinks."""
    outside = tmp / "outside"
    for rel, data in OUTSIDE_FILES.items():
        (outside / rel).parent.mkdir(parents=True, exist_ok=True)
        (outside / rel).write_bytes(data)
    (outside / OUTSIDE_ZIP).write_bytes(build_zip({f"{MARKER}-member.txt": b"secret\n"}))
    fixtures = Fixtures(tmp, outside, root)
    if root is None:
        return fixtures
    root.mkdir(parents=True, exist_ok=True)

    def place(rel: str, data: bytes | None = None, link: str | None = None) -> None:
        path = root / rel
        if path.exists() or path.is_symlink():
            return  # never overwrite what a caller's root holds
        path.parent.mkdir(parents=True, exist_ok=True)
        if link is not None:
            path.symlink_to(link)
        elif data is not None:
            path.write_bytes(data)
        else:
            path.mkdir()
        fixtures.created.append(path)

    for folder in ("inputs", "outputs"):
        place(folder)
    place("inputs/package.zip", build_zip(PACKAGE))
    place("inputs/plain.txt", b"a plain text input\n")
    place("inputs/corrupt.zip", b"PK\x03\x04" + random.Random(5).randbytes(300))
    place("link-out", link=str(outside))
    place("tmp-link", link=str(tmp))
    place("inputs/rel-out", link=os.path.relpath(outside, root / "inputs"))
    place("inputs/secret-link.zip", link=str(outside / OUTSIDE_ZIP))
    place("inputs/dangling", link=str(outside / "nothing-here"))
    place("outputs/escape", link=str(outside / "sub"))
    place("outputs/loop", link="loop")
    if own_root:
        fixtures.expected = package_entries(build_zip(PACKAGE))
    else:
        package = root / "inputs" / "package.zip"
        with contextlib.suppress(OSError, zipfile.BadZipFile):
            fixtures.expected = package_entries(package.read_bytes())
    return fixtures


def snapshot(tmp: Path, excluded: set[str]) -> dict[str, tuple[Any, ...]]:
    """Every entry under ``tmp`` except the excluded top-level names, walked without
    following symlinks: relative path -> (kind, size, mtime_ns, sha256 or link target)."""
    entries: dict[str, tuple[Any, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(tmp, followlinks=False):
        base = Path(dirpath)
        if base == tmp:
            dirnames[:] = [name for name in dirnames if name not in excluded]
            filenames = [name for name in filenames if name not in excluded]
        for name in [*dirnames, *filenames]:
            path = base / name
            rel = path.relative_to(tmp).as_posix()
            try:
                st = path.lstat()
                if path.is_symlink():
                    entries[rel] = ("link", os.readlink(path))
                elif path.is_dir():
                    entries[rel] = ("dir", st.st_mtime_ns, st.st_mode)
                else:
                    digest = hashlib.sha256(path.read_bytes()).hexdigest()
                    entries[rel] = ("file", st.st_size, st.st_mtime_ns, st.st_mode, digest)
            except OSError as exc:
                entries[rel] = ("error", str(exc))
    return entries


def diff_snapshots(before: dict[str, Any], after: dict[str, Any]) -> list[str]:
    """Human-readable differences between two snapshots."""
    changes = [f"new: {rel}" for rel in sorted(after.keys() - before.keys())]
    changes += [f"removed: {rel}" for rel in sorted(before.keys() - after.keys())]
    changes += [
        f"changed: {rel}"
        for rel in sorted(before.keys() & after.keys())
        if before[rel] != after[rel]
    ]
    return changes


# ---------------------------------------------------------------------- frames

_ID_CHARS = string.ascii_letters + string.digits + "._-"
_JUNK = [
    "\x00", "\x01", "\x07", "\x1b", "\x7f", "\n", "\r", "\t", "\u0085", "\u2028",
    "\u200b", "\u202e", "\ufeff", "\uffff", "\U0010ffff", "\uff0f", "\u2215", "\u2044",
    "\uff0e", "\u2025", "\uff3c", "\u00e9", "e\u0301", "\U0001f600", ":", "::", "/",
    "\\", "..", "%2e", "%00", "~", "$HOME", "*", "?", '"', "'", " ", "\u00a0", "{}",
]  # fmt: skip
_SEGMENTS = [
    "..", ".", "", "inputs", "outputs", "link-out", "escape", "rel-out", "tmp-link",
    "loop", "package.zip", "\u2025", "\uff0e\uff0e", "..\\..", "...", "sub", "outside",
]  # fmt: skip
_ESCAPES = [
    "..", "../", "../outside", f"../outside/{MARKER}-a.txt", "inputs/../..",
    f"inputs/../../outside/{MARKER}-a.txt", "./../outside", "outputs/../../outside/new-dir",
    "inputs/./../../outside", "inputs//..//..//outside", "inputs/package.zip/../../..",
    f"inputs/rel-out/{MARKER}-a.txt", "inputs/rel-out", "inputs/rel-out/new-dir",
    "link-out", f"link-out/{MARKER}-a.txt", f"link-out/{OUTSIDE_ZIP}", "link-out/new-dir",
    "link-out/sub/deeper", "tmp-link", "tmp-link/escaped-dir", "tmp-link/outside",
    "outputs/escape", "outputs/escape/new-dir", "outputs/escape/a/b/c",
    "inputs/secret-link.zip", "inputs/dangling", "inputs/dangling/x", "outputs/loop",
    "outputs/loop/x", OUTSIDE, f"{OUTSIDE}/", f"{OUTSIDE}/{MARKER}-a.txt",
    f"{OUTSIDE}/{OUTSIDE_ZIP}", f"{OUTSIDE}/new-dir", f"{OUTSIDE}/sub/new-dir",
    f"{TMPDIR}/escaped-dir", f"{TMPDIR}/outside", "/", "/etc/passwd", "/tmp",
    "//server/share", "\\\\server\\share\\x", "C:\\Windows", "C:/x", "c:x",
    "..\\..\\outside", "inputs\\..\\..\\outside", "inputs/\x00package.zip",
    "inputs/package.zip\x00", "\x00", "inputs/pack\nage.zip", "inputs/\x1b[31mred",
    "outputs/new\rline", "outputs/tab\there", "~/x", "~root", "$HOME/x",
    "%2e%2e/%2e%2e/outside", "\uff0e\uff0e/outside", "\uff0e\uff0e\uff0f\uff0e\uff0e",
    "inputs\uff0f..\uff0f..\uff0foutside", "\u2025/outside", "..\u2215..\u2215outside",
    "..\u2044outside", "\u202e..", ".\u200b./outside", "..\u00a0/outside", " ..", ".. ",
    "file:///etc/passwd", "\\..\\..", "inputs/../inputs/../../outside",
]  # fmt: skip
_INPUTS = [
    "inputs/package.zip", "inputs/plain.txt", "inputs", "inputs/corrupt.zip",
    "inputs/missing.zip", "inputs/package.zip/", "./inputs/package.zip",
    "inputs//package.zip", "inputs/./package.zip", "inputs/package.zip::x", "outputs",
    "", " ", ".", "./", ".rtc-store", ".rtc-store/objects", ".rtc-jobs", ".rtc-work",
    "INPUTS/PACKAGE.ZIP", "inputs/package.zip ",
]  # fmt: skip
_OUTPUTS = [
    "outputs/fz-{k}", "outputs/fz-{k}/sub/deeper", "outputs", "inputs", "inputs/package.zip",
    "inputs/plain.txt/sub", ".", "./", "", ".rtc-store", ".rtc-store/fz", ".rtc-jobs/fz-{k}",
    ".rtc-work/fz-{k}", "new-top-{k}", "outputs/fz-{k}/", "outputs/fz \u00e9 {k}",
    "outputs/" + "d/" * 200 + "fz-{k}", "outputs/fz-{k}::x",
]  # fmt: skip
_BAD_NAMES = [
    "../evil.bin", "..", ".", "a/b.bin", "/abs.bin", f"{OUTSIDE}/planted.bin", "C:evil.bin",
    "c:", "\\\\server\\x.bin", "dir\\evil.bin", "x\x00y.bin", "x\ny.bin", "tab\t.bin",
    "\u2215etc\u2215passwd", "\uff0e\uff0e", "\uff0e\uff0e\uff0fx.bin", "a\uff3cb.bin",
    "\u2025", "a::b.bin", "", " ", "n" * 300, "CON", "nul", "\u202egnp.exe",
    "\U0001f600.bin", "\x7f", ".hidden", "ok.bin",
]  # fmt: skip
_VALID = [
    "JOB_START", "SHARED_STORAGE_JOB::start", "JOB_CANCEL", "END_OF_FILE", "FILE_CANCEL",
    "FILE_READY::0", "FILE_READY::{n}", "FILE_EXISTS::{sha}", "FILE_RECEIVED::{sha}",
    "FILE_PROGRESS::{n}::{n}", "TRANSFER_ERROR::CANCELLED::fuzz", "TRANSFER_ERROR::HASH_MISMATCH",
    "JOB_ID::fz-{k}", "PATH_VALIDATED::input", "PATH_VALIDATED::output", "PATH_ERROR::nope",
    "JOB_LOG::hello", 'JOB_METRICS::{"validation_ms":1,"file_access_ms":1,"run_s":1,"total_s":1}',
    "JOB_COMPLETE::fz-{k}::outputs/fz-{k}::1::0.00", "JOB_FAILED::fz-{k}::reason",
    "PROTOCOL_ERROR::UNKNOWN_MESSAGE::x", "RESULTS_REQUEST::fz-{k}",
    "SHARED_INPUT_PATH::inputs/package.zip", "SHARED_OUTPUT_PATH::outputs/fz-{k}",
    "FILE_META::fz.bin::{n}::{sha}::65536", "FILE_META::fz.bin:{n}:gui",
    "FILE_PROOF::{sha}", "FILE_PROOF_REQUEST::{nonce}::0+1", "FILE_PROOF_REQUEST::{nonce}::5+4096",
]  # fmt: skip
_BROKEN = [
    "JOB_ID", "JOB_ID::", "JOB_ID::" + "a" * 65, "JOB_ID::a b", "JOB_ID::\u00fc", "JOB_ID::a::b",
    "JOB_ID::../x", "JOB_ID::\x00", "JOB_START::now", "JOB_START::", "JOB_CANCEL::x",
    "SHARED_STORAGE_JOB", "SHARED_STORAGE_JOB::stop", "SHARED_STORAGE_JOB::START",
    "SHARED_STORAGE_JOB::start::x", "SHARED_INPUT_PATH", "SHARED_INPUT_PATH::",
    "SHARED_OUTPUT_PATH", "SHARED_OUTPUT_PATH::", "FILE_READY", "FILE_READY::-1",
    "FILE_READY::abc", "FILE_READY::1e9", "FILE_READY::" + "9" * 20, "FILE_READY::0::0",
    "FILE_EXISTS::xyz", "FILE_EXISTS", "FILE_RECEIVED::" + "a" * 63, "FILE_PROGRESS::1",
    "FILE_PROGRESS::a::b", "FILE_PROGRESS::-1::2", "TRANSFER_ERROR", "TRANSFER_ERROR::",
    "TRANSFER_ERROR::lower::x", "TRANSFER_ERROR::" + "A" * 70, "END_OF_FILE::x",
    "FILE_CANCEL::x", "RESULTS_REQUEST", "RESULTS_REQUEST::", "RESULTS_REQUEST::bad id!",
    "RESULTS_REQUEST::" + "r" * 65, "JOB_METRICS::{not json", 'JOB_METRICS::{"a":1}',
    "JOB_METRICS::[]", "JOB_METRICS::NaN", "JOB_COMPLETE::x::y::z::w", "JOB_COMPLETE",
    "JOB_FAILED::x", "PATH_VALIDATED::sideways", "PATH_VALIDATED", "PATH_ERROR",
    "JOB_LOG", "PROTOCOL_ERROR", "FILE_META", "FILE_META::", "FILE_META::x",
    "FILE_META::x::1::2::3", "FILE_META::::1::" + "0" * 64 + "::1", "FILE_META:x:1:g",
    "FILE_PROOF", "FILE_PROOF::xyz", "FILE_PROOF::" + "a" * 63, "FILE_PROOF_REQUEST",
    "FILE_PROOF_REQUEST::" + "0" * 32, "FILE_PROOF_REQUEST::" + "0" * 32 + "::0+0",
    "FILE_PROOF_REQUEST::" + "0" * 32 + "::0+65537", "FILE_PROOF_REQUEST::zz::0+1",
    "FILE_PROOF_REQUEST::" + "0" * 32 + "::" + ",".join(["0+1"] * 17),
    "FILE_PROOF_REQUEST::" + "0" * 32 + "::-1+1", "FILE_PROOF_REQUEST::" + "0" * 32 + "::0+1,",
]  # fmt: skip
_UNKNOWN = [
    "", "::", ":::::", "PING", "ping", "job_start", "Job_Start", "JOB_START ", " JOB_START",
    "\ufeffJOB_START", "JOB_START\x00", "JOB-START", "JOBSTART", "FILE_METADATA::x",
    '{"type":"offer","sdp":"x"}', "GET / HTTP/1.1", "\x00\x00\x00", "HELLO::world",
    "X" * 40 + "::y", "SHARED_INPUT_PATH\n::x", "JOB_ID\t::a", "null", "0", "-",
]  # fmt: skip


def _rand_text(rng: random.Random, length: int) -> str:
    """Text mixing letters with control characters, separators and look-alikes."""
    parts = []
    for _ in range(length):
        roll = rng.random()
        if roll < 0.6:
            parts.append(rng.choice(string.ascii_letters + string.digits))
        elif roll < 0.9:
            parts.append(rng.choice(_JUNK))
        else:  # any code point but surrogates (they cannot be sent as UTF-8)
            code = rng.randrange(0x20, 0x2FFFF)
            parts.append(chr(code) if not 0xD800 <= code <= 0xDFFF else "?")
    return "".join(parts)


class FrameGenerator:
    """The fuzz frames of one seed. Everything depends on ``random.Random(seed)`` only."""

    def __init__(self, seed: int) -> None:
        self.rng = random.Random(seed)
        self.seed = seed
        self.jobs = 0
        self.kinds: list[tuple[Callable[[], list[Frame]], int]] = [
            (self.unknown, 7),
            (self.broken, 10),
            (self.binary_garbage, 7),
            (self.oversize, 3),
            (self.path, 18),
            (self.out_of_order, 8),
            (self.bad_file_meta, 8),
            (self.legacy_meta, 4),
            (self.stray_chunks, 5),
            (self.results_request, 4),
            (self.cancel, 4),
            (self.job_exchange, 4),
            (self.transfer_exchange, 3),
            (self.mutated, 8),
        ]
        self._funcs = [kind for kind, _ in self.kinds]
        self._weights = [weight for _, weight in self.kinds]

    def __iter__(self) -> Iterator[Frame]:
        while True:
            yield from self.rng.choices(self._funcs, self._weights)[0]()

    # -------------------------------------------------------------- helpers

    def _job_id(self) -> str:
        """An id of an earlier fuzz job (or the next one)."""
        k = self.rng.randint(max(0, self.jobs - 5), self.jobs)
        return f"fz-{self.seed}-{k}"

    def _sha(self) -> str:
        return self.rng.randbytes(32).hex()

    def _fill(self, template: str) -> str:
        return (
            template.replace("{k}", self._job_id().removeprefix("fz-"))
            .replace("{sha}", self._sha())
            .replace("{nonce}", self._sha()[:32])
            .replace("{n}", str(self.rng.choice([0, 1, 100, self.rng.randrange(10**9)])))
        )

    def _any_path(self) -> str:
        roll = self.rng.random()
        if roll < 0.45:
            return self.rng.choice(_ESCAPES)
        if roll < 0.6:
            return self.rng.choice(_INPUTS)
        if roll < 0.7:
            return self._fill(self.rng.choice(_OUTPUTS))
        if roll < 0.9:
            count = self.rng.randint(1, 6)
            return "/".join(self.rng.choice(_SEGMENTS) for _ in range(count))
        return self.rng.choice(_INPUTS) + _rand_text(self.rng, self.rng.randint(1, 8))

    # -------------------------------------------------------------- kinds

    def unknown(self) -> list[Frame]:
        if self.rng.random() < 0.5:
            return [self.rng.choice(_UNKNOWN)]
        word = "".join(
            self.rng.choice(string.ascii_uppercase + "_") for _ in range(self.rng.randint(1, 40))
        )
        tail = (
            "::" + _rand_text(self.rng, self.rng.randint(0, 60)) if self.rng.random() < 0.5 else ""
        )
        if self.rng.random() < 0.2:
            return [_rand_text(self.rng, self.rng.randint(1, 200))]
        return [word + tail]

    def broken(self) -> list[Frame]:
        return [self.rng.choice(_BROKEN)]

    def binary_garbage(self) -> list[Frame]:
        size = self.rng.choice(
            [0, 1, 8, self.rng.randint(2, 4096), self.rng.randint(4096, 70 * 1024)]
        )
        return [self.rng.randbytes(size)]

    def oversize(self) -> list[Frame]:
        roll = self.rng.random()
        prefix = self.rng.choice(
            ["SHARED_INPUT_PATH::", "SHARED_OUTPUT_PATH::", "JOB_LOG::", "FILE_META::", "X::", ""]
        )
        if roll < 0.4:  # over the 64 KiB text bound
            size = self.rng.randint(MAX_TEXT + 1, 70 * 1024)
            return [prefix + "A" * (size - len(prefix))]
        if roll < 0.55:  # over it in bytes, not in characters
            return [prefix + "\u00e9" * self.rng.randint(MAX_TEXT // 2 + 1, 35_000)]
        if roll < 0.65:  # exactly at the bound
            return [prefix + "B" * (MAX_TEXT - len(prefix))]
        # a path over the 4096-byte bound, under the frame bound
        which = self.rng.choice(["SHARED_INPUT_PATH::", "SHARED_OUTPUT_PATH::"])
        unit = self.rng.choice(["a", "../", "outputs/", "\u00e9", "x/"])
        return [which + unit * (self.rng.randint(4097, 20_000) // len(unit.encode()) + 1)]

    def path(self) -> list[Frame]:
        which = self.rng.choice(["SHARED_INPUT_PATH::", "SHARED_OUTPUT_PATH::"])
        frames: list[Frame] = [which + self._any_path()]
        if self.rng.random() < 0.15:
            frames.append(self.rng.choice(["JOB_START", "SHARED_STORAGE_JOB::start"]))
        return frames

    def out_of_order(self) -> list[Frame]:
        return [self._fill(self.rng.choice(_VALID)) for _ in range(self.rng.randint(1, 3))]

    def bad_file_meta(self) -> list[Frame]:
        rng = self.rng
        name = rng.choice([*_BAD_NAMES, "ok.bin", "data.zip"])
        size = rng.choice([0, 1, 1000, 10 * 1024**3 + 1, 10**18 - 1, 10**18, -1])
        sha = rng.choice(
            [
                self._sha(),
                self._sha().upper(),
                "a" * 63,
                "b" * 65,
                "g" * 64,
                "",
                hashlib.sha256(b"").hexdigest(),
            ]
        )
        chunk = rng.choice([0, 1, 1024, 65536, 262144, 262145, 10**17, "x", ""])
        frames: list[Frame] = [f"FILE_META::{name}::{size}::{sha}::{chunk}"]
        if rng.random() < 0.4:
            frames += [rng.randbytes(rng.randint(0, 2048)) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.5:
            frames.append(rng.choice(["END_OF_FILE", "FILE_CANCEL", "JOB_START"]))
        return frames

    def legacy_meta(self) -> list[Frame]:
        rng = self.rng
        name = rng.choice(["legacy.bin", "legacy.zip", "../up.bin", "a/b.bin", "x\x00.bin", ".."])
        size = rng.choice([0, 10, rng.randint(1, 5000), 10 * 1024**3 + 1])
        gui = rng.choice(["", "gui", "web", "x y"])
        frames: list[Frame] = [f"FILE_META::{name}:{size}:{gui}"]
        for _ in range(rng.randint(0, 3)):
            frames.append(
                rng.randbytes(rng.choice([size // 2, size, rng.randint(0, 3000)]) % 65536)
            )
        if rng.random() < 0.5:
            frames.append("END_OF_FILE")
        if rng.random() < 0.3:
            frames.append("JOB_START")
        return frames

    def stray_chunks(self) -> list[Frame]:
        return [
            self.rng.randbytes(self.rng.randint(0, 4096)) for _ in range(self.rng.randint(1, 3))
        ]

    def results_request(self) -> list[Frame]:
        roll = self.rng.random()
        if roll < 0.4:
            job = self._job_id()
        elif roll < 0.7:
            job = "job-" + self.rng.randbytes(6).hex()
        else:
            job = "".join(self.rng.choice(_ID_CHARS) for _ in range(self.rng.randint(1, 64)))
        frames: list[Frame] = [f"RESULTS_REQUEST::{job}"]
        if self.rng.random() < 0.4:
            frames.append(self.rng.choice(["FILE_READY::0", "FILE_CANCEL", "FILE_READY::5"]))
        return frames

    def cancel(self) -> list[Frame]:
        return [self.rng.choice(["JOB_CANCEL", "FILE_CANCEL"])]

    def job_exchange(self) -> list[Frame]:
        """A valid shared-storage job (sometimes cancelled at once or with a bad input)."""
        rng = self.rng
        self.jobs += 1
        job = f"fz-{self.seed}-{self.jobs}"
        source = rng.choice(
            ["inputs/package.zip"] * 4 + ["inputs/plain.txt", "inputs", "inputs/corrupt.zip"]
        )
        frames: list[Frame] = []
        if rng.random() < 0.8:
            frames.append(f"JOB_ID::{job}")
        # "outputs" holds a symlink out of the root: its results ZIP must not follow it
        output = rng.choice([f"outputs/{job}"] * 5 + ["outputs", "inputs"])
        frames += [f"SHARED_INPUT_PATH::{source}", f"SHARED_OUTPUT_PATH::{output}"]
        frames.append(rng.choice(["JOB_START", "JOB_START", "SHARED_STORAGE_JOB::start"]))
        roll = rng.random()
        if roll < 0.2:
            frames.append("JOB_CANCEL")
        elif roll < 0.4:
            frames.append(f"RESULTS_REQUEST::{job}")
            if rng.random() < 0.5:
                if rng.random() < 0.5:  # as a receiver, ask the worker to prove its ZIP
                    frames.append(self._fill("FILE_PROOF_REQUEST::{nonce}::0+1"))
                frames.append("FILE_READY::0")
        return frames

    def transfer_exchange(self) -> list[Frame]:
        """A transfer over the channel: valid, or with a wrong digest, size or chunk."""
        rng = self.rng
        self.jobs += 1
        job = f"fz-{self.seed}-{self.jobs}"
        if rng.random() < 0.5:
            data = build_zip({f"f{i}.txt": rng.randbytes(rng.randint(0, 3000)) for i in range(3)})
        else:
            data = rng.randbytes(rng.choice([0, 1, rng.randint(2, 40_000)]))
        chunk_size = rng.choice([1024, 8192, 65536])
        sha = hashlib.sha256(data).hexdigest()
        size = len(data)
        fault = rng.choice(["none"] * 4 + ["sha", "short", "long", "big-chunk", "no-eof", "cancel"])
        if fault == "sha":
            sha = self._sha()
        elif fault == "short":
            size += rng.randint(1, 100)
        elif fault == "long":
            size = max(0, size - rng.randint(1, 100))
        frames: list[Frame] = [f"JOB_ID::{job}"]
        name = rng.choice(["pkg.zip", "input.bin", "a::b.zip"])
        frames.append(f"FILE_META::{name}::{size}::{sha}::{chunk_size}")
        if size and rng.random() < 0.9:  # the worker asks a proof of possession: a wrong
            frames.append(f"FILE_PROOF::{self._sha()}")  # one gets FILE_READY::0
        step = chunk_size * 2 if fault == "big-chunk" else chunk_size
        chunks = [data[i : i + step] for i in range(0, len(data), step)]
        if fault == "cancel" and chunks:
            chunks = chunks[: len(chunks) // 2]
        frames += chunks[:60]
        if fault == "cancel":
            frames.append("FILE_CANCEL")
        elif fault != "no-eof":
            frames.append("END_OF_FILE")
        frames.append("JOB_START")
        if rng.random() < 0.5:
            frames.append(f"RESULTS_REQUEST::{job}")
            if rng.random() < 0.5:
                frames.append("FILE_READY::0")
        return frames

    def mutated(self) -> list[Frame]:
        """A valid frame, mutated a few times (or sent as a binary frame)."""
        rng = self.rng
        frame = self._fill(rng.choice(_VALID))
        if rng.random() < 0.1:
            return [frame.encode()]
        for _ in range(rng.randint(1, 3)):
            pos = rng.randint(0, len(frame))
            op = rng.randrange(7)
            if op == 0:
                frame = frame[:pos] + _rand_text(rng, rng.randint(1, 4)) + frame[pos:]
            elif op == 1:
                frame = frame[:pos] + frame[pos + rng.randint(1, 8) :]
            elif op == 2:
                frame = frame[:pos] + "::" + frame[pos:]
            elif op == 3:
                frame = frame[:pos]
            elif op == 4:
                frame = frame.swapcase()
            elif op == 5:
                frame = frame[:pos] + str(rng.choice([-1, 10**19, 2**64])) + frame[pos:]
            else:
                frame = frame + frame[pos:]
        return [frame]


def iter_frames(seed: int) -> Iterator[Frame]:
    """The endless fuzz-frame sequence of ``seed`` (placeholders not yet replaced)."""
    return iter(FrameGenerator(seed))


def generate_frames(seed: int, count: int) -> list[Frame]:
    """The first ``count`` frames of ``seed``: the same list for the same seed."""
    return list(itertools.islice(iter_frames(seed), count))


def materialize(frame: Frame, outside: Path, tmp: Path) -> Frame:
    """Replace the placeholders of a text frame with this run's folders."""
    if isinstance(frame, str) and "@" in frame:
        return frame.replace(OUTSIDE, str(outside)).replace(TMPDIR, str(tmp))
    return frame


def show(frame: Frame, limit: int = 160) -> str:
    """A short printable form of a frame."""
    if isinstance(frame, bytes):
        return f"<binary {len(frame)} bytes {frame[:12].hex()}{'…' if len(frame) > 12 else ''}>"
    text = repr(frame)
    if len(text) > limit:
        text = f"{text[:limit]}… ({len(frame)} chars)"
    return text


# ---------------------------------------------------------------------- the run


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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _clean_env() -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    for name in ("SHARED_STORAGE_ROOT", "RTC_JOB_COMMAND", "RTC_SIGNALING_TOKEN"):
        env.pop(name, None)
    return env


def spawn(argv: list[str], env: dict[str, str], log_path: Path) -> subprocess.Popen[bytes]:
    """Start a child process of this repository, its output going to ``log_path``."""
    with log_path.open("wb") as out:
        return subprocess.Popen(argv, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen[bytes]) -> None:
    """Terminate, then kill after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


class Fuzzer:
    """One fuzz run against one worker."""

    def __init__(self, args: argparse.Namespace, tmp: Path, stats: Stats) -> None:
        self.args = args
        self.tmp = tmp
        self.stats = stats
        self.worker_id: str = args.worker
        self.url: str = args.signaling_url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.fixtures: Fixtures | None = None
        self.baseline: dict[str, Any] | None = None
        self.excluded = {"root", "data", "client-cache", "logs"}
        self.client: Any = None
        self.conn: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.last_frames: deque[str] = deque(maxlen=8)
        self.batch = 0
        self.overloaded = False
        self.leaks: list[str] = []
        self.probe: tuple[str, asyncio.Future[None]] | None = None

    # -------------------------------------------------------------- set-up

    async def start_processes(self) -> None:
        logs = self.tmp / "logs"
        logs.mkdir()
        port = free_port()
        self.url = f"ws://127.0.0.1:{port}/ws"
        env = _clean_env()
        self.processes["signaling"] = spawn(
            [sys.executable, "-m", "signaling", "--port", str(port), "--log-level", "WARNING"],
            env,
            logs / "signaling.log",
        )
        deadline = time.monotonic() + 30
        while True:
            if self.processes["signaling"].poll() is not None:
                raise RuntimeError("the signaling server exited at start (see logs/signaling.log)")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the signaling server did not listen within 30 s")
            await asyncio.sleep(0.1)
        env["RTC_DATA_DIR"] = str(self.tmp / "data")
        argv = [sys.executable, "-m", "rtc_worker", "serve", "--signaling-url", self.url]
        argv += ["--peer-id", self.worker_id, "--shared-root", str(self.tmp / "root")]
        self.processes["worker"] = spawn([*argv, "--log-level", "INFO"], env, logs / "worker.log")

    def new_client(self) -> Any:
        from rtc_worker.client import RTCClient

        return RTCClient(
            self.url,
            self.args.token,
            reply_timeout=30.0,
            connect_timeout=30.0,
            cache_dir=self.tmp / "client-cache",
        )

    async def setup(self) -> None:
        own = self.args.signaling_url is None
        root = self.tmp / "root" if own else self.args.shared_root
        (self.tmp / "data").mkdir()
        (self.tmp / "client-cache").mkdir()
        self.fixtures = make_fixtures(self.tmp, root, own_root=own)
        if own:
            await self.start_processes()
        self.baseline = snapshot(self.tmp, self.excluded)
        self.client = self.new_client()
        try:
            await self.client.wait_for_worker(self.worker_id, 60)
        except TimeoutError:
            raise RuntimeError(f"worker {self.worker_id} did not register within 60 s") from None
        await self.reconnect(count=False)

    async def reconnect(self, *, count: bool = True) -> None:
        old = self.conn
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        if why := self.exited():
            raise CheckFailed("process", why)
        self.conn = await self.client.connect(self.worker_id, raw=True)
        self.overloaded = False
        self.reader = asyncio.create_task(self.read_loop(self.conn))
        if count:
            self.stats.reconnections += 1

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 15)

    def stop_processes(self) -> None:
        for name in ("worker", "signaling"):
            proc = self.processes.get(name)
            if proc is not None:
                with contextlib.suppress(Exception):
                    stop_process(proc)

    # -------------------------------------------------------------- replies

    def anomaly(self, what: str) -> None:
        self.stats.anomalies.append(
            {
                "batch": self.batch,
                "reply": what,
                "last_frame": self.last_frames[-1] if self.last_frames else None,
            }
        )

    async def read_loop(self, conn: Any) -> None:
        from protocol import (
            Chunk,
            JobComplete,
            JobFailed,
            JobLog,
            PathError,
            ProtocolErrorFrame,
            TransferError,
        )
        from rtc_worker.client import WorkerProtocolError
        from rtc_worker.rtc import ChannelClosed

        while True:
            try:
                message = await conn.recv()
            except ChannelClosed:
                if not self.overloaded:
                    self.stats.drops_without_overloaded += 1
                return
            except WorkerProtocolError as exc:
                self.stats.replies["UNDECODABLE"] += 1
                self.anomaly(f"undecodable reply: {exc}")
                continue
            if isinstance(message, ProtocolErrorFrame):
                probe = self.probe
                if (
                    probe is not None
                    and message.code == "UNKNOWN_MESSAGE"
                    and f"'{probe[0]}'" in message.detail
                ):
                    if not probe[1].done():
                        probe[1].set_result(None)
                    continue
                self.stats.codes[f"PROTOCOL_ERROR:{message.code}"] += 1
                if message.code == "OVERLOADED":
                    self.overloaded = True
                if message.code == "INTERNAL_ERROR":
                    self.anomaly(f"PROTOCOL_ERROR::INTERNAL_ERROR::{message.detail}")
            elif isinstance(message, TransferError):
                self.stats.codes[f"TRANSFER_ERROR:{message.code}"] += 1
            elif isinstance(message, PathError):
                self.stats.codes[f"PATH_ERROR:{message.reason.split(':', 1)[0]}"] += 1
            elif isinstance(message, JobFailed):
                self.stats.codes[f"JOB_FAILED:{message.reason.split(':', 1)[0][:40]}"] += 1
                if "internal" in message.reason:
                    self.anomaly(f"JOB_FAILED::{message.job_id}::{message.reason}")
            elif isinstance(message, JobLog | JobComplete):
                text = message.line if isinstance(message, JobLog) else message.output_path
                if MARKER in text:
                    self.leaks.append(text[:200])
            elif isinstance(message, Chunk) and MARKER.encode() in message.data:
                # ZIP member names are stored as they are: a results ZIP packed a file
                # that only exists outside the root
                self.leaks.append(f"a results chunk names {MARKER}*")
            kind = "BINARY" if isinstance(message, Chunk) else message.TYPE
            self.stats.replies[kind] += 1

    # -------------------------------------------------------------- sending

    async def send(self, frame: Frame) -> None:
        """Send one frame, paced on the channel's buffer; reopen a dropped connection."""
        from rtc_worker.rtc import ChannelClosed

        assert self.fixtures is not None
        wire = materialize(frame, self.fixtures.outside, self.tmp)
        for attempt in range(2):
            if not self.conn.channel.is_open:
                await self.reconnect()
            try:
                self.conn.send(wire)
                break
            except ChannelClosed:
                if attempt:
                    raise
        if isinstance(wire, bytes):
            self.stats.frames_binary += 1
        else:
            self.stats.frames_text += 1
        self.last_frames.append(show(wire))
        await asyncio.sleep(0)
        channel = self.conn.channel.channel
        if channel.bufferedAmount > HIGH_WATER:
            deadline = time.monotonic() + 30
            while True:
                if channel.bufferedAmount <= LOW_WATER or channel.readyState != "open":
                    break
                if time.monotonic() > deadline:
                    raise CheckFailed("alive", "the send buffer did not drain within 30 s")
                await asyncio.sleep(0.01)

    # -------------------------------------------------------------- checks

    async def check_alive(self) -> None:
        """PING-{batch} must be answered UNKNOWN_MESSAGE within the probe timeout."""
        for attempt in range(2):
            token = f"PING-{self.batch}-{attempt}"
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.probe = (token, future)
            try:
                if not self.conn.channel.is_open:
                    await self.reconnect()
                self.conn.send(token)
                waiter = asyncio.ensure_future(future)
                assert self.reader is not None
                done, _ = await asyncio.wait(
                    {waiter, self.reader},
                    timeout=self.args.probe_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if waiter in done:
                    self.stats.checks_passed["alive"] += 1
                    return
                waiter.cancel()
                if not done:
                    raise CheckFailed(
                        "alive",
                        f"no answer to {token} within {self.args.probe_timeout:.0f} s",
                    )
                # the connection dropped while we waited: reopen it and probe again
            finally:
                self.probe = None
        raise CheckFailed("alive", "the connection dropped twice while probing")

    async def check_job(self) -> None:
        """A valid shared-storage job completes on a fresh connection, with the right manifest."""
        from rtc_worker.client import ClientError, WorkerBusy
        from rtc_worker.rtc import ChannelClosed

        output = f"outputs/check-{self.batch}"
        deadline = time.monotonic() + BUSY_RETRY_S
        client = self.new_client()
        try:
            while True:
                try:
                    result = await client.submit_shared(
                        self.worker_id, "inputs/package.zip", output, job_timeout=60
                    )
                    break
                except WorkerBusy as exc:
                    if time.monotonic() > deadline:
                        raise CheckFailed(
                            "job", f"WORKER_BUSY for over {BUSY_RETRY_S:.0f} s: {exc.detail}"
                        ) from None
                    with contextlib.suppress(ChannelClosed, AttributeError):
                        self.conn.send("JOB_CANCEL")
                    await asyncio.sleep(1)
                except (ClientError, ChannelClosed, TimeoutError) as exc:
                    raise CheckFailed("job", f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 15)
        if result.file_count != 1 or result.output_path != output:
            raise CheckFailed(
                "job", f"JOB_COMPLETE named {result.output_path} with {result.file_count} file(s)"
            )
        assert self.fixtures is not None
        if self.fixtures.root is None or self.fixtures.expected is None:
            self.stats.checks_skipped["manifest"] += 1
        else:
            manifest_path = self.fixtures.root / output / "manifest.json"
            try:
                manifest = json.loads(manifest_path.read_text("utf-8"))
                listed = {e["path"]: (e["size"], e["sha256"]) for e in manifest["files"]}
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckFailed("job", f"{output}/manifest.json unreadable: {exc}") from None
            if listed != self.fixtures.expected:
                raise CheckFailed(
                    "job",
                    f"manifest lists {sorted(listed)}, expected {sorted(self.fixtures.expected)}"
                    " (or a sha256/size differs)",
                )
            shutil.rmtree(self.fixtures.root / output, ignore_errors=True)
        self.stats.checks_passed["job"] += 1

    def check_outside(self) -> None:
        """Nothing outside the root changed; no JOB_LOG named a file from outside."""
        assert self.fixtures is not None and self.baseline is not None
        if self.fixtures.root is None:
            self.stats.checks_skipped["outside"] += 1
            return
        changes = diff_snapshots(self.baseline, snapshot(self.tmp, self.excluded))
        if changes:
            self.stats.outside_writes += len(changes)
            raise CheckFailed("outside", "changed outside the root: " + "; ".join(changes[:10]))
        if self.leaks:
            raise CheckFailed("outside", f"a job read outside the root: {self.leaks[0]!r}")
        self.stats.checks_passed["outside"] += 1

    def exited(self) -> str | None:
        """Which started process exited, if any."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                return f"the {name} exited with code {proc.returncode}"
        return None

    async def guarded(self, check: Coroutine[Any, Any, None]) -> None:
        """Run a check; a started process that exits meanwhile fails it at once."""
        task = asyncio.ensure_future(check)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if not task.done() and (why := self.exited()):
                    raise CheckFailed("process", why)
            task.result()
        except CheckFailed as exc:
            why = self.exited()
            if why and exc.check != "process":
                raise CheckFailed("process", f"{why} ({exc.check}: {exc.detail})") from None
            raise
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def check_process(self) -> None:
        """The worker process is alive (or, remote, still registered)."""
        if self.processes:
            if why := self.exited():
                raise CheckFailed("process", why)
        else:
            peers = await self.client.workers()
            if not any(peer.peer_id == self.worker_id for peer in peers):
                raise CheckFailed("process", f"worker {self.worker_id} is no longer registered")
        self.stats.checks_passed["process"] += 1

    # -------------------------------------------------------------- main loop

    async def run(self) -> None:
        await self.setup()
        frames = iter_frames(self.args.seed)
        remaining = self.args.frames
        while remaining > 0:
            self.batch += 1
            size = min(self.args.batch, remaining)
            for frame in itertools.islice(frames, size):
                await self.send(frame)
            remaining -= size
            self.stats.batches = self.batch
            await self.guarded(self.check_alive())
            await self.guarded(self.check_job())
            self.check_outside()
            await self.check_process()
            if not self.args.json and self.batch % 20 == 0:
                print(
                    f"  batch {self.batch}: {self.stats.frames_sent} frames, "
                    f"{sum(self.stats.replies.values())} replies",
                    file=sys.stderr,
                    flush=True,
                )

    def worker_log_tail(self, lines: int = 25) -> list[str]:
        path = self.tmp / "logs" / "worker.log"
        with contextlib.suppress(OSError):
            return path.read_text("utf-8", "replace").splitlines()[-lines:]
        return []


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
