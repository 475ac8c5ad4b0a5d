"""Registration with proof of possession (protocol.signaling_proof): the test vector of
PROTOCOL.md section 5.3, the signatures of its worked example, and every refusal."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.identity import b64decode, b64encode, fingerprint, registration_payload
from protocol.signaling import Challenge, Register, SignalingError, SignalingErrorCode
from protocol.signaling_proof import (
    challenge_nonce,
    new_challenge,
    signed_register,
    verify_register,
)
from rtc_worker.identity import Identity

PROTOCOL_MD = Path(__file__).resolve().parent.parent / "PROTOCOL.md"
CODE = SignalingErrorCode

SEED = bytes(range(32))
NONCE = bytes(range(0x20, 0x40))
VECTOR = {
    "public key (hex)": "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8",
    "public key (base64)": "A6EHv/POEL4dcN0Y50vAmWfk1jCbpQ1fHdyGZBJVMbg=",
    "fingerprint": "56475aa75463474c0285df5dbf2bcab73da651358839e9b77481b2eab107708c",
    "nonce (base64, the challenge)": "ICEiIyQlJicoKSorLC0uLzAxMjM0NTY3ODk6Ozw9Pj8=",
    "payload (115 bytes, hex)": (
        "7274632d776f726b65722f7369676e616c696e672d72656769737465722f76310020202122232425"
        "262728292a2b2c2d2e2f303132333435363738393a3b3c3d3e3f00056770752d310006776f726b65"
        "72002003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8"
    ),
    "signature (hex)": (
        "768cb184d25fa64ada101af89656e0f0e5e7ee67f491753afb1e00b4b9bae7a8f0c3b4d73b87d5f2"
        "1c424b4229ace69f127ab6b269abc5ecedae6366a3ac1a0a"
    ),
    "signature (base64)": (
        "doyxhNJfpkraEBr4llbg8OXn7mf0kXU6+x4AtLm656jww7TXO4fV8hxCS0IprOafEnq2smmrxeztrmNmo6waCg=="
    ),
}


def vector_identity() -> Identity:
    return Identity(Ed25519PrivateKey.from_private_bytes(SEED))


def documented_vector() -> dict[str, str]:
    """The rows of the test-vector table of PROTOCOL.md section 5.3."""
    text = PROTOCOL_MD.read_text("utf-8")
    section = text[text.index("**Test vector.**") : text.index("## 6. Worked exchanges")]
    rows = re.findall(r"^\| ([^|`]+?) \| `([^`]+)` \|$", section, re.M)
    return dict(rows)


def test_the_documented_vector_is_what_the_code_computes() -> None:
    identity = vector_identity()
    payload = registration_payload(NONCE, "gpu-1", "worker", identity.public_key)
    signature = identity.sign(payload)
    computed = {
        "public key (hex)": identity.public_key.hex(),
        "public key (base64)": b64encode(identity.public_key),
        "fingerprint": identity.fingerprint,
        "nonce (base64, the challenge)": b64encode(NONCE),
        "payload (115 bytes, hex)": payload.hex(),
        "signature (hex)": signature.hex(),
        "signature (base64)": b64encode(signature),
    }
    assert len(payload) == 115
    assert computed == VECTOR
    assert documented_vector() == VECTOR
    text = PROTOCOL_MD.read_text("utf-8")
    assert SEED.hex() in text and NONCE.hex() in text


def test_the_vector_verifies_as_a_register_frame() -> None:
    frame = Register(
        peer_id="gpu-1",
        role="worker",
        public_key=VECTOR["public key (base64)"],
        signature=VECTOR["signature (base64)"],
    )
    assert verify_register(frame, NONCE, allow_anonymous_clients=False) == VECTOR["fingerprint"]


def _signaling_blocks() -> list[list[str]]:
    text = PROTOCOL_MD.read_text("utf-8")
    return [block.splitlines() for block in re.findall(r"```signaling\n(.*?)```", text, re.S)]


def test_every_registration_in_the_worked_exchanges_is_what_the_server_answered() -> None:
    """Each documented ``register`` is checked against its socket's challenge: those
    answered ``registered`` prove the fingerprint shown, those answered BAD_SIGNATURE
    do not verify."""
    checked = set()
    nonces: dict[str, bytes] = {}  # the error block goes on with the sockets of the first
    for lines in _signaling_blocks():
        pending: dict[str, Register] = {}
        for line in lines:
            match = re.fullmatch(r"(\S+) (->|<-) (\{.*\})", line)
            if not match:
                continue
            peer, direction, frame = match[1], match[2], json.loads(match[3])
            if direction == "<-" and frame["type"] == "challenge":
                nonces[peer] = b64decode(frame["nonce"], 32)
            elif direction == "->" and frame["type"] == "register" and "public_key" in frame:
                pending[peer] = Register.model_validate(frame)
            elif direction == "<-" and peer in pending:
                register = pending.pop(peer)
                if frame["type"] == "registered":
                    proven = verify_register(register, nonces[peer], allow_anonymous_clients=False)
                    assert proven == frame["fingerprint"], line
                    checked.add("registered")
                elif frame.get("code") == CODE.BAD_SIGNATURE:
                    with pytest.raises(SignalingError):
                        verify_register(register, nonces[peer], allow_anonymous_clients=False)
                    checked.add("bad signature")
                else:  # refused later (bound, taken, token): the proof itself is good
                    assert verify_register(register, nonces[peer], allow_anonymous_clients=False)
    assert checked == {"registered", "bad signature"}


# --------------------------------------------------------------------------- the checks


def test_a_signed_register_verifies_and_names_the_key() -> None:
    challenge, nonce = new_challenge()
    assert challenge_nonce(challenge) == nonce and len(nonce) == 32
    identity = Identity.generate()
    frame = signed_register(
        challenge,
        peer_id="gpu-1",
        role="worker",
        public_key=identity.public_key,
        sign=identity.sign,
        token="t",
        metadata={"gpu": "a100"},
    )
    assert (frame.token, frame.metadata) == ("t", {"gpu": "a100"})
    assert frame.public_key is not None
    assert fingerprint(b64decode(frame.public_key, 32)) == identity.fingerprint
    assert verify_register(frame, nonce, allow_anonymous_clients=False) == identity.fingerprint


def _refused(frame: Register, nonce: bytes, *, anonymous: bool = False) -> str:
    with pytest.raises(SignalingError) as info:
        verify_register(frame, nonce, allow_anonymous_clients=anonymous)
    assert info.value.ref_type == "register"
    return str(info.value.code)


def test_a_signature_over_another_nonce_is_refused() -> None:
    identity = Identity.generate()
    first, _ = new_challenge()
    _, other_nonce = new_challenge()
    frame = signed_register(
        first, peer_id="c1", role="client", public_key=identity.public_key, sign=identity.sign
    )
    assert _refused(frame, other_nonce) == CODE.BAD_SIGNATURE


def test_a_signature_by_another_key_is_refused() -> None:
    """The attacker shows the victim's public key but can only sign with its own."""
    victim, attacker = Identity.generate(), Identity.generate()
    challenge, nonce = new_challenge()
    frame = signed_register(
        challenge, peer_id="gpu-1", role="worker", public_key=victim.public_key, sign=attacker.sign
    )
    assert _refused(frame, nonce) == CODE.BAD_SIGNATURE


def test_a_signature_for_another_id_or_role_is_refused() -> None:
    identity = Identity.generate()
    challenge, nonce = new_challenge()
    frame = signed_register(
        challenge, peer_id="c1", role="client", public_key=identity.public_key, sign=identity.sign
    )
    assert _refused(frame.model_copy(update={"peer_id": "gpu-1"}), nonce) == CODE.BAD_SIGNATURE
    assert _refused(frame.model_copy(update={"role": "worker"}), nonce) == CODE.BAD_SIGNATURE


def test_a_signature_of_zeros_is_refused() -> None:
    identity = Identity.generate()
    _, nonce = new_challenge()
    frame = Register(
        peer_id="w",
        role="worker",
        public_key=b64encode(identity.public_key),
        signature=b64encode(bytes(64)),
    )
    assert _refused(frame, nonce) == CODE.BAD_SIGNATURE


def test_without_a_key_workers_are_refused_and_clients_only_when_allowed() -> None:
    _, nonce = new_challenge()
    worker = Register(peer_id="w", role="worker")
    client = Register(peer_id="c", role="client")
    assert _refused(worker, nonce) == CODE.KEY_REQUIRED
    assert _refused(worker, nonce, anonymous=True) == CODE.KEY_REQUIRED
    assert _refused(client, nonce) == CODE.KEY_REQUIRED
    assert verify_register(client, nonce, allow_anonymous_clients=True) is None


def test_the_challenge_frame_carries_32_bytes() -> None:
    challenge, nonce = new_challenge()
    assert Challenge.model_validate_json(challenge.model_dump_json()) == challenge
    with pytest.raises(ValueError):
        Challenge(nonce=b64encode(bytes(16)))
    assert challenge != new_challenge()[0]  # fresh every time
    assert len(nonce) == 32
