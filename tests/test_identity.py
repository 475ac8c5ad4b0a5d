"""Identities: fingerprints and signed payloads (protocol/identity.py), key files on disk
(rtc_worker/identity.py), and the handshake frames' field checks."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import stat
from pathlib import Path

import pytest

from protocol.auth_messages import AuthChallenge, AuthHello, AuthOk, AuthResponse
from protocol.connection import Connection
from protocol.errors import ErrorCode, LocalProtocolError
from protocol.events import FileToSend, Violation
from protocol.handshake import AuthConfig, Handshake
from protocol.identity import (
    anonymous_principal,
    b64decode,
    b64encode,
    fingerprint,
    is_anonymous,
    is_fingerprint,
    is_weak_public_key,
    normalise_dtls,
    registration_payload,
    verify,
)
from protocol.routes import Role
from protocol.testing.keys import SeedSigner, client_auth, worker_auth
from rtc_worker.identity import Identity, IdentityError

KEY = SeedSigner.numbered(1)


def test_a_fingerprint_is_the_sha256_of_the_raw_key() -> None:
    assert fingerprint(KEY.public_key) == hashlib.sha256(KEY.public_key).hexdigest()
    assert is_fingerprint(KEY.fingerprint) and not is_fingerprint(KEY.fingerprint.upper())
    with pytest.raises(ValueError, match="32 bytes"):
        fingerprint(b"short")


def test_anonymous_principals_are_fresh_and_recognisable() -> None:
    first, second = anonymous_principal(), anonymous_principal()
    assert first != second and is_anonymous(first) and not is_anonymous(KEY.fingerprint)
    assert not is_fingerprint(first)


def test_base64_fields_have_an_exact_size() -> None:
    assert b64decode(b64encode(b"abc"), 3) == b"abc"
    with pytest.raises(ValueError, match="not base64"):
        b64decode("a:b", 3)
    with pytest.raises(ValueError, match="not base64"):
        b64decode("é", 3)
    with pytest.raises(ValueError, match="expected 4 bytes"):
        b64decode(b64encode(b"abc"), 4)


def test_the_registration_payload_binds_nonce_id_role_and_key() -> None:
    payload = registration_payload(b"n" * 32, "gpu-1", "worker", KEY.public_key)
    assert payload.startswith(b"rtc-worker/signaling-register/v1\x00\x20" + b"n" * 32)
    assert payload != registration_payload(b"n" * 32, "gpu-1", "client", KEY.public_key)
    assert payload != registration_payload(b"n" * 32, "gpu-2", "worker", KEY.public_key)
    # lengths are prefixed: moving bytes between fields changes the payload
    assert registration_payload(b"ab", "c", "worker", b"") != registration_payload(
        b"a", "bc", "worker", b""
    )
    with pytest.raises(ValueError, match="65535"):
        registration_payload(b"n" * 70000, "gpu-1", "worker", KEY.public_key)
    assert verify(KEY.public_key, KEY.sign(payload), payload)
    assert not verify(KEY.public_key, KEY.sign(payload), payload + b"x")
    assert not verify(KEY.public_key, b"\x00" * 10, payload)  # not a signature


def test_dtls_fingerprints_have_one_form() -> None:
    assert normalise_dtls(" SHA-256  ab:cd ") == "sha-256 AB:CD"
    for bad in ("sha-256", "sha-256 ab cd", "sha-256 é"):
        with pytest.raises(ValueError, match="algorithm"):
            normalise_dtls(bad)


def test_weak_keys_are_small_order_or_non_canonical() -> None:
    p = 2**255 - 19
    for y in (0, 1, p - 1, p, p + 1, 2**255 - 1):
        key = y.to_bytes(32, "little")
        assert is_weak_public_key(key), y
        # the sign bit does not make a weak key strong
        assert is_weak_public_key(key[:-1] + bytes([key[-1] | 0x80]))
    assert is_weak_public_key(b"short")
    assert not is_weak_public_key(KEY.public_key)


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: AuthHello(b"k" * 31, b"n" * 32), "public_key"),
        (lambda: AuthHello(b"k" * 32, b"n" * 33), "nonce"),
        (lambda: AuthChallenge(b"k" * 32, b"n" * 32, b"s" * 63), "signature"),
        (lambda: AuthResponse("s" * 64), "signature"),  # type: ignore[arg-type]
        (lambda: AuthOk("AB" * 32), "fingerprint"),
    ],
)
def test_handshake_frames_check_their_fields(build: object, field: str) -> None:
    with pytest.raises(LocalProtocolError) as info:
        build()  # type: ignore[operator]
    assert info.value.code == ErrorCode.MALFORMED_FRAME and field in info.value.detail


def test_a_worker_handshake_needs_a_key() -> None:
    with pytest.raises(LocalProtocolError):
        Handshake(worker=True, config=AuthConfig(None))


def test_a_connection_without_a_handshake_cannot_start_one() -> None:
    with pytest.raises(LocalProtocolError):
        Connection(Role.CLIENT).start_handshake()


def test_a_missing_dtls_fingerprint_is_an_adapter_bug() -> None:
    broken = dataclasses.replace(client_auth(), offer_dtls="")
    client = Connection(Role.CLIENT, auth=broken)
    client.start_handshake()
    worker = Connection(Role.WORKER, auth=worker_auth())
    worker.receive(client.drain()[0].frame, 0.0)  # type: ignore[attr-defined]
    client.receive(worker.drain()[0].frame, 0.0)  # type: ignore[attr-defined]
    (violation,) = [out for out in client.drain() if isinstance(out, Violation)]
    assert violation.code == ErrorCode.INTERNAL_ERROR and "transcript" in violation.detail


def test_a_client_cannot_send_a_file_before_the_handshake() -> None:
    client = Connection(Role.CLIENT, auth=client_auth())
    with pytest.raises(LocalProtocolError) as info:
        client.send_file(FileToSend("a.bin", 3, "0" * 64))
    assert info.value.code == ErrorCode.AUTH_REQUIRED


# ===================================================================== key files


def test_a_key_file_is_created_once_with_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "peer" / "identity.key"
    first = Identity.load_or_create(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    again = Identity.load_or_create(path)
    assert again.fingerprint == first.fingerprint == fingerprint(first.public_key)
    assert repr(first) == f"Identity(fingerprint={first.fingerprint!r})"
    assert verify(first.public_key, first.sign(b"payload"), b"payload")


def test_a_key_file_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    Identity.load_or_create(path)
    path.chmod(0o644)
    with pytest.raises(IdentityError) as info:
        Identity.load_or_create(path)
    assert info.value.code == "KEY_PERMISSIONS" and "chmod 600" in str(info.value)


def test_a_symlinked_key_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real.key"
    Identity.load_or_create(real)
    link = tmp_path / "identity.key"
    link.symlink_to(real)
    with pytest.raises(IdentityError) as info:
        Identity.load_or_create(link)
    assert info.value.code == "KEY_PERMISSIONS"


def test_a_key_file_that_is_not_a_key_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "identity.key"
    path.write_bytes(b"not a key")
    path.chmod(0o600)
    with pytest.raises(IdentityError) as info:
        Identity.load_or_create(path)
    assert info.value.code == "KEY_INVALID"
    folder = tmp_path / "dir.key"
    folder.mkdir(mode=0o700)
    with pytest.raises(IdentityError) as dir_info:
        Identity.load_or_create(folder)
    assert dir_info.value.code in ("KEY_PERMISSIONS", "KEY_UNREADABLE")


def test_another_kind_of_key_is_refused(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    path = tmp_path / "identity.key"
    pem = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    os.write(fd, pem)
    os.close(fd)
    with pytest.raises(IdentityError) as info:
        Identity.load_or_create(path)
    assert info.value.code == "KEY_INVALID" and "Ed25519" in str(info.value)


def test_an_impossible_key_folder_gives_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("a file, not a folder")
    with pytest.raises(IdentityError) as info:
        Identity.load_or_create(tmp_path / "file" / "identity.key")
    assert info.value.code == "KEY_UNREADABLE"


def test_generated_identities_differ() -> None:
    assert Identity.generate().fingerprint != Identity.generate().fingerprint
