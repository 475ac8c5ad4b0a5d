"""Proof of possession on its own (protocol.proof): the challenges a receiver draws stay
within the file and the bounds, the digest is the one PROTOCOL.md defines (its test
vector), and answers compare in constant time."""

from __future__ import annotations

import hashlib
import re
import secrets
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.codec import decode, encode
from protocol.limits import DEFAULT_LIMITS, MAX_PROOF_RANGE_BYTES, MAX_PROOF_RANGES, Limits
from protocol.proof import (
    NONCE_BYTES,
    ProofCheck,
    ProofStep,
    new_challenge,
    proof_digest,
    proof_matches,
)
from protocol.testing import SeededSource, seeded_challenge
from protocol.transfer_messages import FileProofRequest

PROTOCOL_MD = Path(__file__).resolve().parent.parent / "PROTOCOL.md"
VECTOR_FILE = b"hello world\n" * 1000
VECTOR_NONCE = "000102030405060708090a0b0c0d0e0f"
VECTOR_RANGES = ((0, 4096), (5000, 4096), (7904, 4096))
VECTOR_DIGEST = "a88907181c30267e9e7291f0c90c709e8a0a5842c99dd779bb5671b4b0f7bde0"
WHOLE_DIGEST = "bb41270a1670051c3ee5cffd89352c9f759da29acf508a36c1764f5c977b1638"

limits_strategy = st.builds(
    Limits,
    proof_ranges=st.integers(1, MAX_PROOF_RANGES),
    proof_range_bytes=st.integers(1, MAX_PROOF_RANGE_BYTES),
)


@given(size=st.integers(1, 10**18 - 1), limits=limits_strategy, seed=st.integers(0, 2**32))
def test_a_challenge_stays_within_the_file_and_the_bounds(
    size: int, limits: Limits, seed: int
) -> None:
    request = new_challenge(size, limits, SeededSource(seed))
    assert re.fullmatch(r"[0-9a-f]{32}", request.nonce)
    assert 1 <= len(request.ranges) <= limits.proof_ranges
    assert all(1 <= n <= limits.proof_range_bytes for _, n in request.ranges)
    assert request.end <= size
    assert decode(encode(request)) == request  # it always fits the grammar
    if size <= limits.proof_ranges * limits.proof_range_bytes:  # short: asked whole
        starts = [o for o, _ in request.ranges]
        assert starts == list(range(0, size, limits.proof_range_bytes))
        assert sum(n for _, n in request.ranges) == size
    else:
        assert all(n == limits.proof_range_bytes for _, n in request.ranges)
        assert [o for o, _ in request.ranges] == sorted(o for o, _ in request.ranges)


def test_challenges_are_fresh_from_secrets_unless_a_source_is_given() -> None:
    drawn = {new_challenge(10**9, DEFAULT_LIMITS) for _ in range(50)}
    assert len({r.nonce for r in drawn}) == 50  # 128 bits each
    assert len({r.ranges for r in drawn}) == 50
    assert len(bytes.fromhex(next(iter(drawn)).nonce)) == NONCE_BYTES
    same = [seeded_challenge(7)(10**9, DEFAULT_LIMITS) for _ in range(2)]
    assert same[0] == same[1]
    assert secrets.token_bytes and secrets.randbelow  # the module the default draws from
    with pytest.raises(ValueError, match="nothing to prove"):
        new_challenge(0, DEFAULT_LIMITS)


def test_the_digest_is_protocol_md_s_test_vector() -> None:
    text = PROTOCOL_MD.read_text("utf-8")
    request = FileProofRequest(VECTOR_NONCE, VECTOR_RANGES)
    parts = [VECTOR_FILE[o : o + n] for o, n in VECTOR_RANGES]
    assert proof_digest(VECTOR_NONCE, parts) == VECTOR_DIGEST
    expected = hashlib.sha256(bytes.fromhex(VECTOR_NONCE) + b"".join(parts)).hexdigest()
    assert expected == VECTOR_DIGEST  # sha256(nonce bytes || range bytes...)
    whole = new_challenge(len(VECTOR_FILE), DEFAULT_LIMITS)  # a short file: asked whole
    assert whole.ranges == ((0, 4096), (4096, 4096), (8192, 3808))
    assert proof_digest(VECTOR_NONCE, [VECTOR_FILE]) == WHOLE_DIGEST
    for shown in (
        f"<- {encode(request)}",
        f"-> FILE_PROOF::{VECTOR_DIGEST}",
        hashlib.sha256(VECTOR_FILE).hexdigest(),
        "`0+4096,4096+4096,8192+3808`",
        WHOLE_DIGEST,
    ):
        assert shown in text, shown


def test_answers_compare_in_constant_time_and_nothing_matches_content_not_held() -> None:
    digest = proof_digest(VECTOR_NONCE, [b"x"])
    assert proof_matches(digest, digest)
    assert not proof_matches(digest, proof_digest(VECTOR_NONCE, [b"y"]))
    assert not proof_matches(None, digest)
    assert proof_digest("ff" * 16, [b"x"]) != digest  # the nonce counts


def test_a_proof_check_takes_one_answer_per_challenge() -> None:
    check = ProofCheck()
    check.challenge = lambda size, limits: FileProofRequest(VECTOR_NONCE, ((0, size),))
    assert check.verdict("0" * 64) is None  # nothing asked, nothing to judge
    request = check.ask(5, DEFAULT_LIMITS)
    assert check.answered("a" * 64) is request
    with pytest.raises(AssertionError):
        check.answered("b" * 64)
    assert check.verdict("a" * 64) is ProofStep.MATCH
    assert check.verdict(None) is ProofStep.MISMATCH
    check.reset()
    assert (check.request, check.answer) == (None, None)
