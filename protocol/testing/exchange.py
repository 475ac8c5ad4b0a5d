"""Hypothesis strategy for whole valid exchanges, from two connections pumped together.

Each exchange is what a CLIENT and a WORKER :class:`~protocol.connection.Connection`
actually say to each other (:class:`~protocol.testing.pair.ConnectionPair`) while a drawn
client program runs and the worker's outcomes (a path refused, a job failed, the disk
full...) are drawn too. The frames are never scripted by hand, so they cannot drift
from the tables. The ``error`` and ``legacy`` kinds also put raw frames on the channel
that a conforming client never sends (a misplaced JOB_START, a stray chunk, the
earlier FILE_META form), to show the worker's refusals.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import TypeVar

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from protocol.codec import encode
from protocol.events import FileToSend
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import (
    JobCancel,
    JobId,
    JobStart,
    ResultsRequest,
    SharedInputPath,
    SharedOutputPath,
)
from protocol.testing.pair import ConnectionPair, Exchange, SimulatedWorld
from protocol.testing.text import (
    MAX_COUNT,
    file_names,
    job_ids,
    paths,
    sha256_hex,
    sha256_of,
    worker_job_ids,
)
from protocol.transfer_messages import Chunk, EndOfFile, FileCancel, FileMeta, FileMetaLegacy

__all__ = ["EXCHANGE_KINDS", "exchanges"]

#: The kinds :func:`exchanges` can generate.
EXCHANGE_KINDS: tuple[str, ...] = (
    "shared_job",
    "transfer",
    "resume",
    "dedupe",
    "results",
    "cancel",
    "error",
    "legacy",
)

T = TypeVar("T")
_OUTSIDE_PATHS = ("../secret", "/etc/passwd", "a/../../b", "C:\\x", "..", "a/..")
_BAD_NAMES = ("../x", "a/b", "a\\b", "..", ".", "C:x", "a\nb", "．．", "x／y")


class _Program:
    """One drawn client program running on one pair."""

    def __init__(self, draw: st.DrawFn, pair: ConnectionPair, max_file_bytes: int) -> None:
        self.draw = draw
        self.pair = pair
        self.max_file_bytes = max_file_bytes
        self.refusing = False
        pair.world.decide = self.decide

    def decide(self, name: str, options: Sequence[T]) -> T:
        """Happy outcomes, unless this part shows refusals."""
        if not self.refusing:
            return options[0]
        return self.draw(st.sampled_from(list(options)))

    def name_job(self) -> None:
        if self.draw(st.booleans()):
            self.pair.send(JobId(self.draw(job_ids())))

    def path(self) -> str:
        return self.draw(paths(max_bytes=120))

    def file(self, min_size: int = 0) -> bytes:
        return self.draw(st.binary(min_size=min_size, max_size=max(min_size, self.max_file_bytes)))

    def validate_paths(self) -> None:
        steps = [SharedInputPath(self.path()), SharedOutputPath(self.path())]
        if self.draw(st.integers(0, 3)) == 0:
            steps.reverse()
        for step in steps:
            self.pair.send(step)

    def run_job(self, *, cancel: bool = False, complete: bool = False) -> None:
        self.pair.world.job_wait = True
        self.pair.send(JobStart(legacy=self.draw(st.booleans())))
        if cancel:
            self.pair.send(JobCancel())
        elif complete:
            self.pair.finish_job("complete")
        else:
            self.pair.finish_job(self.draw(st.sampled_from(["complete"] * 9 + ["failed"])))

    def shared_job(self, *, cancel: bool = False) -> None:
        self.name_job()
        self.validate_paths()
        self.run_job(cancel=cancel)

    def upload(self, kind: str) -> None:
        data = self.file(min_size=1 if kind == "resume" else 0)
        name = self.draw(file_names(max_bytes=80))
        sha = sha256_of(data)
        store = self.pair.world.store
        if kind == "dedupe":
            store.objects[sha] = data
            if self.draw(st.booleans()):  # it stored this content itself before: no proof
                store.owned.add(sha)
        elif kind == "resume" and self.draw(st.booleans()):
            # This connection continues what an earlier one left on the worker.
            store.partials[sha] = data[: self.draw(st.integers(1, len(data)))]
        elif kind == "resume":
            size = self.pair.client.limits.chunk_bytes
            self.pair.cut_upload(
                data, name, self.draw(st.integers(0, len(data) - 1)) // size * size
            )
        self.pair.upload(data, name)

    def results(self) -> None:
        self.name_job()
        self.upload(self.draw(st.sampled_from(["transfer", "dedupe"])))
        self.run_job(complete=True)
        self.pair.send(ResultsRequest(list(self.pair.world.jobs)[-1]))

    def cancel(self) -> None:
        if self.draw(st.booleans()):
            self.shared_job(cancel=True)
            return
        data = self.file(min_size=1)
        size = self.pair.client.limits.chunk_bytes
        at = self.draw(st.integers(0, len(data))) // size * size
        self.pair.cut_upload(data, self.draw(file_names(max_bytes=80)), at)

    def error(self, max_file_size: int) -> None:
        which = self.draw(
            st.sampled_from(
                [
                    "input",
                    "output",
                    "early_start",
                    "cancel_idle",
                    "second_start",
                    "stray_chunk",
                    "invalid_name",
                    "too_large",
                    "hash_mismatch",
                    "size_mismatch",
                    "disk_full",
                    "wrong_proof",
                    "proof_deadline",
                ]
            )
        )
        pair = self.pair
        self.refusing = which in ("input", "output")
        if which == "input":
            path = self.draw(st.one_of(st.sampled_from(_OUTSIDE_PATHS), paths(max_bytes=120)))
            pair.send(SharedInputPath(path))
            self.refusing = False
            if self.draw(st.booleans()):  # the client tries again with a good path
                self.shared_job()
        elif which == "output":
            pair.send(SharedOutputPath(self.path()))
        elif which in ("early_start", "cancel_idle"):
            if pair.worker.job in ("HAVE_FILE", "READY"):  # a held file: forget it first
                pair.send(SharedInputPath(self.draw(st.sampled_from(_OUTSIDE_PATHS))))
            if self.draw(st.booleans()):  # only one of the two paths
                pair.send(SharedInputPath(self.path()))
            pair.inject(encode(JobStart() if which == "early_start" else JobCancel()))
        elif which == "second_start":
            self.name_job()
            self.validate_paths()
            pair.world.job_wait = True
            pair.send(JobStart())
            pair.inject(encode(JobStart()))
            pair.finish_job("complete")
        elif which == "stray_chunk":
            pair.inject(self.draw(st.binary(min_size=1, max_size=64)))
        elif which == "invalid_name":
            data = self.file()
            pair.upload(data, self.draw(st.sampled_from(_BAD_NAMES)))
        elif which == "too_large":
            size = self.draw(st.integers(max_file_size + 1, max(max_file_size + 1, MAX_COUNT)))
            pair.client.send_file(
                FileToSend(self.draw(file_names(max_bytes=40)), size, self.draw(sha256_hex()))
            )
            pair.pump()
        elif which == "hash_mismatch":
            data = self.file()
            pair.upload(
                data,
                self.draw(file_names(max_bytes=40)),
                sha256=sha256_of(data + b"!"),
            )
        elif which == "size_mismatch":
            data = self.file(min_size=1)
            size = pair.client.limits.chunk_bytes
            stop = self.draw(st.integers(0, len(data) - 1)) // size * size
            pair.upload(data, self.draw(file_names(max_bytes=40)), stop_at=stop)
        elif which == "wrong_proof":
            # a peer that knows a held digest but not its bytes: the proof fails, the
            # bytes it sends instead do not verify
            data = self.file(min_size=1)
            held = self.file(min_size=1)
            if held == data:
                held += b"!"
            pair.world.store.objects[sha256_of(held)] = held
            pair.upload(data, self.draw(file_names(max_bytes=40)), sha256=sha256_of(held))
        elif which == "proof_deadline":
            # a peer that never answers the proof: FILE_READY::0 once the deadline passed
            data = self.file(min_size=1)
            size = pair.client.limits.chunk_bytes
            meta = FileMeta(self.draw(file_names(max_bytes=40)), len(data), sha256_of(data), size)
            pair.inject(encode(meta))
            pair.expire_proof()
            pair.inject(encode(FileCancel()))
        else:  # disk_full: the worker's disk fills up mid-transfer; the partial is kept
            data = self.file(min_size=2)
            pair.world.store.full_after = self.draw(st.integers(0, len(data) - 1))
            pair.upload(data, self.draw(file_names(max_bytes=40)))
            pair.world.store.full_after = None
        self.refusing = False

    def legacy(self) -> None:
        data = self.file(min_size=1)
        name = self.draw(file_names(max_bytes=60).filter(lambda n: "::" not in n))
        meta = FileMetaLegacy(name, len(data), self.draw(st.sampled_from(["", "gui", "1"])))
        self.pair.inject(encode(meta))
        size = self.pair.client.limits.chunk_bytes
        for start in range(0, len(data), size):
            self.pair.inject(encode(Chunk(data[start : start + size])))
        if self.draw(st.booleans()):  # earlier senders may or may not end with END_OF_FILE
            self.pair.inject(encode(EndOfFile()))


def exchanges(
    *,
    kinds: tuple[str, ...] = EXCHANGE_KINDS,
    limits: Limits = DEFAULT_LIMITS,
    max_file_bytes: int = 2048,
    max_chunks: int = 24,
    max_file_size: int = 10 * 1024**3,
    max_parts: int = 3,
) -> SearchStrategy[Exchange]:
    """Whole valid exchanges: lists of ``(direction, frame)``, direction ``"C->W"`` or
    ``"W->C"``, in the order the frames cross the channel. One to ``max_parts`` of these
    parts, one after another on one channel:

    * ``shared_job``: JOB_ID?, both paths validated (sometimes output first), JOB_START,
      JOB_LOG*, JOB_METRICS and JOB_COMPLETE (or JOB_FAILED).
    * ``transfer``: FILE_META, FILE_PROOF_REQUEST and FILE_PROOF (new content: the proof
      finds no held copy), FILE_READY::0, chunks (at most ``max_file_bytes``, at most
      ``max_chunks`` chunks), FILE_PROGRESS*, END_OF_FILE, FILE_RECEIVED.
    * ``resume``: FILE_READY with the offset an earlier connection reached, or a
      FILE_CANCEL mid-transfer and a second FILE_META answered with the offset kept.
    * ``dedupe``: FILE_META answered FILE_EXISTS, no chunks: at once (content this peer
      stored itself) or after a FILE_PROOF that matches the held copy.
    * ``results``: a file sent (or held), the job, RESULTS_REQUEST and the worker's
      transfer of ``results-{job_id}.zip``.
    * ``cancel``: JOB_CANCEL of a running job, or the sender's FILE_CANCEL.
    * ``error``: PATH_ERROR (input or output), PROTOCOL_ERROR (JOB_START or JOB_CANCEL
      too early, a second JOB_START), TRANSFER_ERROR (a stray chunk, an invalid name, a
      file above ``max_file_size``, a hash or size mismatch, the disk full), a wrong
      proof of possession (a digest without its bytes), a proof never answered
      (FILE_READY::0 after the deadline).
    * ``legacy``: the earlier ``FILE_META::{name}:{size}:{gui}``, chunks at once,
      FILE_RECEIVED, and maybe a trailing END_OF_FILE.

    Raises:
        ValueError: an unknown kind (or none).
    """
    unknown = set(kinds) - set(EXCHANGE_KINDS)
    if unknown or not kinds:
        raise ValueError(f"kinds must be taken from {EXCHANGE_KINDS}, got {kinds}")

    @st.composite
    def build(draw: st.DrawFn) -> Exchange:
        lower = max(1, -(-max_file_bytes // max_chunks))
        chunk = draw(st.integers(lower, max(lower, min(limits.max_binary_frame_bytes, 1024))))
        pair_limits = dataclasses.replace(limits, chunk_bytes=chunk, max_file_bytes=max_file_size)
        ids = iter(draw(st.lists(worker_job_ids(), min_size=8, max_size=8, unique=True)))
        pair = ConnectionPair(
            SimulatedWorld(), limits=pair_limits, job_id_factory=lambda: next(ids)
        )
        program = _Program(draw, pair, max_file_bytes)
        for kind in draw(st.lists(st.sampled_from(kinds), min_size=1, max_size=max_parts)):
            if kind == "shared_job":
                program.shared_job()
            elif kind in ("transfer", "resume", "dedupe"):
                program.upload(kind)
            elif kind == "results":
                program.results()
            elif kind == "cancel":
                program.cancel()
            elif kind == "error":
                program.error(max_file_size)
            else:
                program.legacy()
        return pair.frames

    return build()
