"""Proof of possession before dedupe: the challenge a receiver sends and the digest that
answers it (sans-IO).

A receiver that holds content under a sha256 must not take the sha256 alone as proof
that the sender holds that content: anyone who saw a digest could then run jobs on
someone else's file. Unless the sender's principal stored that content itself, the
receiver sends ``FILE_PROOF_REQUEST::{nonce}::{ranges}``: a fresh nonce and a few byte
ranges of the announced file, chosen at random. The sender answers
``FILE_PROOF::{digest}`` with :func:`proof_digest` over those ranges of its file; the
receiver computes the same over its stored copy and compares. A digest-only peer cannot
answer, and the request is sent whether or not the content is held, so it tells nothing.

Randomness: :func:`new_challenge` draws the nonce and the offsets from :mod:`secrets`
(the operating system's CSPRNG) unless a ``source`` is passed in (tests pass a seeded
one). A receiver takes its challenge function as an attribute, so a replay can set the
recorded one.

Source: PROTOCOL.md section 2.3 ("Proof of possession"); the idea of proofs of
retrievability by spot checks (Juels and Kaliski, CCS 2007), simplified to one round.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Protocol

from protocol.limits import Limits
from protocol.transfer_messages import FileProofRequest, ProofRange

__all__ = [
    "NONCE_BYTES",
    "AwaitProof",
    "Challenge",
    "FileRanges",
    "ProofCheck",
    "ProofStep",
    "ProofTimedOut",
    "RandomSource",
    "ReadFileRanges",
    "ReadStoredRanges",
    "RecordOwnership",
    "StoredRanges",
    "new_challenge",
    "proof_digest",
    "proof_matches",
]

#: Bytes of a proof nonce (32 hexadecimal digits on the wire).
NONCE_BYTES = 16


class RandomSource(Protocol):
    """Where a challenge's randomness comes from: :mod:`secrets` has this shape."""

    def token_bytes(self, nbytes: int) -> bytes:
        """``nbytes`` random bytes."""
        ...

    def randbelow(self, exclusive_upper_bound: int) -> int:
        """A random integer in ``[0, exclusive_upper_bound)``."""
        ...


#: Makes the FILE_PROOF_REQUEST for a file of ``size`` bytes (``size`` >= 1) under
#: ``limits``: :func:`new_challenge` by default.
Challenge = Callable[[int, Limits], FileProofRequest]


def new_challenge(
    size: int, limits: Limits, source: RandomSource | None = None
) -> FileProofRequest:
    """A fresh challenge for a file of ``size`` bytes.

    A file no longer than ``limits.proof_ranges * limits.proof_range_bytes`` is asked
    whole, in consecutive ranges of ``limits.proof_range_bytes``; a longer one as
    ``limits.proof_ranges`` ranges of ``limits.proof_range_bytes`` bytes at uniformly
    random offsets (sorted; they may overlap). Every range lies within the file.

    Args:
        size: the announced size, bytes (at least 1).
        limits: ``proof_ranges`` and ``proof_range_bytes``.
        source: randomness; :mod:`secrets` when None.

    Raises:
        ValueError: ``size`` < 1.
    """
    if size < 1:
        raise ValueError("an empty file has nothing to prove")
    rng: RandomSource = secrets if source is None else source
    nonce = rng.token_bytes(NONCE_BYTES).hex()
    count, length = limits.proof_ranges, limits.proof_range_bytes
    if size <= count * length:
        return FileProofRequest(nonce, _cover(size, length))
    offsets = sorted(rng.randbelow(size - length + 1) for _ in range(count))
    return FileProofRequest(nonce, tuple((offset, length) for offset in offsets))


def _cover(size: int, length: int) -> tuple[ProofRange, ...]:
    """The whole of a short file in consecutive ranges of at most ``length`` bytes."""
    return tuple((start, min(length, size - start)) for start in range(0, size, length))


def proof_digest(nonce: str, parts: Sequence[bytes]) -> str:
    """The answer to a challenge: ``sha256(nonce bytes || part_1 || ... || part_n)``,
    lowercase hex, where ``nonce`` is the request's 32 hexadecimal digits (16 bytes)
    and ``parts`` are the asked ranges' bytes, in the request's order.

    Raises:
        ValueError: ``nonce`` is not hexadecimal.
    """
    hasher = hashlib.sha256(bytes.fromhex(nonce))
    for part in parts:
        hasher.update(part)
    return hasher.hexdigest()


def proof_matches(expected: str | None, answered: str) -> bool:
    """Whether a sender's answer equals the digest of the held copy (None: the content is
    not held, nothing matches). Compared in constant time."""
    return expected is not None and hmac.compare_digest(expected, answered)


class ProofStep(StrEnum):
    """What a receiver concluded about proof of possession (events of its table)."""

    #: The peer's principal neither stored this content nor holds a partial of it (and
    #: the file is not empty): a proof is asked, whether or not anyone holds the content.
    ASK = "proof asked"
    #: The sender's FILE_PROOF equals the digest of the held copy: FILE_EXISTS.
    MATCH = "proof matches"
    #: A wrong FILE_PROOF, or the content is not held: FILE_READY::0.
    MISMATCH = "proof fails"


class ProofCheck:
    """One receiver's proof of possession: its open challenge and the sender's answer.

    At most one per transfer: :meth:`ask` once, then :meth:`answered`, then
    :meth:`verdict`; :meth:`reset` when the transfer ends.

    Attributes:
        challenge: makes each request (:func:`new_challenge` by default).
    """

    def __init__(self) -> None:
        self.challenge: Challenge = new_challenge
        self.request: FileProofRequest | None = None
        self.answer: str | None = None

    def ask(self, size: int, limits: Limits) -> FileProofRequest:
        """The FILE_PROOF_REQUEST for a file of ``size`` bytes (now the open one)."""
        self.request = self.challenge(size, limits)
        return self.request

    def answered(self, digest: str) -> FileProofRequest:
        """The sender's FILE_PROOF arrived: the request it answers (whose ranges of the
        held copy are read next). Raises AssertionError when none is open."""
        assert self.request is not None and self.answer is None
        self.answer = digest
        return self.request

    def verdict(self, held_digest: str | None) -> ProofStep | None:
        """MATCH or MISMATCH for the digest of the held copy (None: not held); None when
        no answer awaits a verdict."""
        if self.answer is None:
            return None
        return ProofStep.MATCH if proof_matches(held_digest, self.answer) else ProofStep.MISMATCH

    def reset(self) -> None:
        """The transfer ended: forget the challenge."""
        self.request = self.answer = None


# ===================================================================== actions and reports
# (re-exported by protocol.events, with the other actions and reports)


@dataclass(frozen=True, slots=True)
class AwaitProof:
    """Receiver: report :class:`ProofTimedOut` for ``transfer`` after ``timeout_s``
    seconds (a report that comes after the proof is dropped by the connection)."""

    transfer: int
    timeout_s: float


@dataclass(frozen=True, slots=True)
class ReadStoredRanges:
    """Receiver: read ``request``'s ranges of the stored content ``sha256`` (when it is
    held with ``size`` bytes) and report :class:`StoredRanges` with their
    :func:`proof_digest`, or None (not held, another size, unreadable)."""

    transfer: int
    sha256: str
    size: int
    request: FileProofRequest


@dataclass(frozen=True, slots=True)
class ReadFileRanges:
    """Sender: read ``request``'s ranges of the file being sent and report
    :class:`FileRanges` with their :func:`proof_digest`, or None (it cannot be read)."""

    transfer: int
    request: FileProofRequest


@dataclass(frozen=True, slots=True)
class RecordOwnership:
    """Receiver: the peer's principal holds ``sha256`` now (it sent the bytes, or proved
    possession): record it, so its next FILE_META of that content is FILE_EXISTS."""

    transfer: int
    sha256: str


@dataclass(frozen=True, slots=True)
class StoredRanges:
    """ReadStoredRanges: the proof digest of the held copy, or None when not held."""

    transfer: int
    digest: str | None


@dataclass(frozen=True, slots=True)
class FileRanges:
    """ReadFileRanges: the proof digest of our file, or None when it cannot be read."""

    transfer: int
    digest: str | None


@dataclass(frozen=True, slots=True)
class ProofTimedOut:
    """AwaitProof: the deadline passed."""

    transfer: int
