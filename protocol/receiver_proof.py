"""Proof of possession on the receiving side (:class:`protocol.transfer.Receiver`).

A receiver made with ``prove_possession`` (the worker's) has a store shared by every
principal, so FILE_EXISTS is the answer only when the store reports that the peer's
principal stored that content itself (StoreHas). When the principal has no partial of
it either (StoreOffset 0) and the file is not empty, the receiver asks a proof
(:mod:`protocol.proof`) whether or not anyone holds the content, so the question tells
nothing: a matching FILE_PROOF gets FILE_EXISTS, a wrong one, or none within
``Limits.proof_timeout_s``, gets FILE_READY::0. One proof per transfer: a FILE_PROOF
after the deadline is refused like any other misplaced frame.

Source: PROTOCOL.md sections 2.3 and 4.4.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from protocol.events import Discard, FileHeld, StoreOffset
from protocol.proof import AwaitProof, ProofStep, ReadStoredRanges, RecordOwnership, StoredRanges
from protocol.transfer_messages import FileExists, FileMeta, FileMetaLegacy, FileReady
from protocol.transfer_states import ReceiverState

if TYPE_CHECKING:
    from protocol.transfer import Receiver

__all__ = ["answered", "key", "owned", "step"]


def key(receiver: Receiver, event: object) -> type | ProofStep | None:
    """The table event a report stands for: a proof step (None: no verdict yet), or
    its type."""
    if isinstance(event, StoredRanges):
        return receiver.proof.verdict(event.digest)
    meta = receiver.meta
    if (
        isinstance(event, StoreOffset)
        and receiver.prove_possession
        and isinstance(meta, FileMeta)
        and event.offset == 0
        and meta.size > 0
    ):
        return ProofStep.ASK
    return type(event)


def answered(receiver: Receiver, digest: str, next_state: ReceiverState) -> list[object]:
    """FILE_PROOF came: the same ranges of the held copy are read (ReadStoredRanges)."""
    meta, request = receiver.meta, receiver.proof.answered(digest)
    assert isinstance(meta, FileMeta)
    receiver.state = next_state
    return [ReadStoredRanges(receiver.serial, meta.sha256, meta.size, request)]


def step(
    receiver: Receiver,
    proof_step: ProofStep,
    meta: FileMeta | FileMetaLegacy,
    next_state: ReceiverState,
) -> list[object]:
    """Ask the proof, or take its verdict (FILE_READY::0, or FILE_EXISTS on a match)."""
    assert isinstance(meta, FileMeta)
    serial = receiver.serial
    if proof_step is ProofStep.ASK:
        receiver.received = receiver.on_disk = 0
        request = receiver.proof.ask(meta.size, receiver.limits)
        receiver.state = next_state
        return [AwaitProof(serial, receiver.limits.proof_timeout_s), request]
    if proof_step is ProofStep.MISMATCH:
        receiver.state = next_state
        return [FileReady(0)]
    receiver.reset(next_state)  # MATCH: the empty partial opened for this transfer goes
    held = FileHeld(meta.sha256, meta.name, meta.size, True, 0, "stored")
    return [
        Discard(serial, keep=False),
        *owned(receiver, serial, meta.sha256),
        held,
        FileExists(meta.sha256),
    ]


def owned(receiver: Receiver, serial: int, sha256: str) -> list[object]:
    """RecordOwnership of what the peer's principal now holds (a proving receiver)."""
    return [RecordOwnership(serial, sha256)] if receiver.prove_possession else []
