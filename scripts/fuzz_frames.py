"""The worker fuzzer's frame sequence: :class:`FrameGenerator` draws frames of every
kind from the attack catalogue with ``random.Random(seed)`` only, so one seed always
gives the same sequence."""

from __future__ import annotations

import hashlib
import itertools
import random
import string
from collections.abc import Callable, Iterator
from pathlib import Path

from fuzz_catalogue import (
    BAD_NAMES,
    BROKEN,
    ESCAPES,
    ID_CHARS,
    INPUTS,
    OUTPUTS,
    SEGMENTS,
    UNKNOWN,
    VALID,
    rand_text,
)
from fuzz_fixtures import OUTSIDE, TMPDIR, build_zip

Frame = str | bytes

#: The worker's bound on a text frame (bytes): oversize frames go over it or sit at it.
MAX_TEXT = 64 * 1024


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
            return self.rng.choice(ESCAPES)
        if roll < 0.6:
            return self.rng.choice(INPUTS)
        if roll < 0.7:
            return self._fill(self.rng.choice(OUTPUTS))
        if roll < 0.9:
            count = self.rng.randint(1, 6)
            return "/".join(self.rng.choice(SEGMENTS) for _ in range(count))
        return self.rng.choice(INPUTS) + rand_text(self.rng, self.rng.randint(1, 8))

    # -------------------------------------------------------------- kinds

    def unknown(self) -> list[Frame]:
        if self.rng.random() < 0.5:
            return [self.rng.choice(UNKNOWN)]
        word = "".join(
            self.rng.choice(string.ascii_uppercase + "_") for _ in range(self.rng.randint(1, 40))
        )
        tail = (
            "::" + rand_text(self.rng, self.rng.randint(0, 60)) if self.rng.random() < 0.5 else ""
        )
        if self.rng.random() < 0.2:
            return [rand_text(self.rng, self.rng.randint(1, 200))]
        return [word + tail]

    def broken(self) -> list[Frame]:
        return [self.rng.choice(BROKEN)]

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
        return [self._fill(self.rng.choice(VALID)) for _ in range(self.rng.randint(1, 3))]

    def bad_file_meta(self) -> list[Frame]:
        rng = self.rng
        name = rng.choice([*BAD_NAMES, "ok.bin", "data.zip"])
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
            job = "".join(self.rng.choice(ID_CHARS) for _ in range(self.rng.randint(1, 64)))
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
        frame = self._fill(rng.choice(VALID))
        if rng.random() < 0.1:
            return [frame.encode()]
        for _ in range(rng.randint(1, 3)):
            pos = rng.randint(0, len(frame))
            op = rng.randrange(7)
            if op == 0:
                frame = frame[:pos] + rand_text(rng, rng.randint(1, 4)) + frame[pos:]
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
