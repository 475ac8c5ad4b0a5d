"""The channel handshake (PROTOCOL.md section 2.5), sans-IO: two Connections with keys.

Each attack is written as the attacker's steps against real Connection objects; the
end-to-end versions with aiortc peers are in tests/test_attacks_identity.py.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import re
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from hypothesis import given
from hypothesis import strategies as st

from protocol import events as ev
from protocol.auth_messages import AuthChallenge, AuthHello, AuthOk, AuthResponse
from protocol.codec import encode
from protocol.connection import Connection
from protocol.errors import ErrorCode, LocalProtocolError, TransferErrorCode
from protocol.handshake import Authenticated, AuthFailed, AuthState
from protocol.identity import (
    fingerprint,
    is_anonymous,
    is_weak_public_key,
    sdp_dtls_fingerprint,
    transcript,
)
from protocol.messages import JobId, JobStart, ProtocolErrorFrame, SharedInputPath
from protocol.routes import Role
from protocol.testing import malformed_frames, messages
from protocol.testing.keys import CLIENT_DTLS, WORKER_DTLS, SeedSigner, client_auth, worker_auth
from protocol.transfer_messages import TransferError
from tests.protocol_helpers import (
    PEER,
    authenticated_pair,
    deliver,
    feed,
    of_type,
    one,
    sends,
    violations,
)

CLIENT, WORKER, MALLORY = SeedSigner.numbered(1), SeedSigner.numbered(2), SeedSigner.numbered(9)
DOC = Path(__file__).resolve().parents[1] / "PROTOCOL.md"


def worker_conn(**kw: object) -> Connection:
    return Connection(Role.WORKER, peer=PEER, auth=worker_auth(**kw))  # type: ignore[arg-type]


def client_conn(**kw: object) -> Connection:
    return Connection(Role.CLIENT, auth=client_auth(**kw))  # type: ignore[arg-type]


def hello(c: Connection) -> list[object]:
    c.start_handshake()
    return c.drain()


# ===================================================================== the honest run


def test_both_sides_learn_each_others_fingerprint() -> None:
    c, w = authenticated_pair()
    assert c.principal == WORKER.fingerprint and w.principal == CLIENT.fingerprint
    assert c.handshake is not None and c.handshake.state is AuthState.AUTHENTICATED
    assert w.handshake is not None and w.handshake.state is AuthState.AUTHENTICATED
    # now job frames flow
    c.send(JobId("run-1"))
    assert not violations(deliver(c.drain(), w))
    assert w.worker is not None and w.worker.job_id == "run-1"


def test_the_frames_and_events_of_a_handshake() -> None:
    c, w = client_conn(), worker_conn()
    out = hello(c)
    assert [type(m) for m in sends(out)] == [AuthHello]
    back = deliver(out, w)
    assert [type(m) for m in sends(back)] == [AuthChallenge]
    out = deliver(back, c)
    assert [type(m) for m in sends(out)] == [AuthResponse]
    back = deliver(out, w)
    assert sends(back) == [AuthOk(CLIENT.fingerprint)]
    assert one(back, Authenticated) == Authenticated(CLIENT.fingerprint, CLIENT.public_key)
    done = deliver(back, c)
    assert one(done, Authenticated) == Authenticated(WORKER.fingerprint, WORKER.public_key)
    assert sends(done) == []


def test_the_pinned_worker_key_is_accepted() -> None:
    c, w = client_conn(pinned=WORKER.fingerprint), worker_conn()
    out = deliver(deliver(deliver(hello(c), w), c), w)
    assert of_type(deliver(out, c), Authenticated)


# ===================================================================== attackers


def test_a_squatter_without_the_pinned_key_is_refused_loudly() -> None:
    # Mallory registered the worker's peer id at signaling and answers the offer.
    c, squatter = client_conn(pinned=WORKER.fingerprint), worker_conn(signer=MALLORY)
    out = deliver(deliver(hello(c), squatter), c)
    failed = one(out, AuthFailed)
    assert failed.code == "WORKER_KEY_CHANGED" and MALLORY.fingerprint in failed.detail
    assert sends(out) == [ProtocolErrorFrame(ErrorCode.AUTH_FAILED, failed.detail)]
    assert not of_type(out, AuthResponse)  # the client signed nothing for the squatter
    with pytest.raises(LocalProtocolError) as info:
        c.send(JobId("run-1"))
    assert info.value.code == ErrorCode.AUTH_REQUIRED


def test_a_dishonest_signaling_server_in_the_middle_breaks_the_signature() -> None:
    # The server swapped the client's DTLS certificate in the offer for its own, so the
    # worker's transcript holds the server's fingerprint; the client's holds its own.
    c = client_conn()
    mitm_dtls = "sha-256 " + ":".join(["EE"] * 32)
    w = Connection(
        Role.WORKER, peer=PEER, auth=dataclasses.replace(worker_auth(), offer_dtls=mitm_dtls)
    )
    out = deliver(deliver(hello(c), w), c)
    assert one(out, AuthFailed).code == ErrorCode.AUTH_FAILED
    assert not of_type(out, AuthResponse)
    # and the other way round: the worker refuses a client whose view differs
    c2 = Connection(Role.CLIENT, auth=dataclasses.replace(client_auth(), answer_dtls=mitm_dtls))
    w2 = worker_conn()
    challenge = deliver(hello(c2), w2)
    # the client sees a bad worker signature (its answer_dtls differs) and stops here
    assert one(deliver(challenge, c2), AuthFailed).code == ErrorCode.AUTH_FAILED


def test_a_relayed_handshake_cannot_be_completed_by_someone_in_the_middle() -> None:
    # Mallory relays the client's AUTH_HELLO to the real worker and the worker's
    # AUTH_CHALLENGE back: the client, pinning the worker, answers; Mallory forwards the
    # answer. Both ends agree, but Mallory learns nothing it can use on another channel:
    # replaying the same AUTH_RESPONSE to a new handshake (a fresh worker nonce) fails.
    c, w = client_conn(pinned=WORKER.fingerprint), worker_conn()
    response = deliver(deliver(hello(c), w), c)
    w2 = worker_conn()
    deliver(hello(client_conn()), w2)  # a new handshake with a fresh worker nonce
    replayed = deliver(response, w2)
    assert one(replayed, AuthFailed).code == ErrorCode.AUTH_FAILED
    assert sends(replayed) == [
        ProtocolErrorFrame(ErrorCode.AUTH_FAILED, one(replayed, AuthFailed).detail)
    ]
    assert w2.principal == PEER  # nobody was authenticated


def test_an_impostor_client_with_another_key_gets_its_own_identity_only() -> None:
    authenticated_pair()  # the victim's own channel
    impostor = Connection(Role.CLIENT, auth=client_auth(MALLORY))
    w = worker_conn()
    out = deliver(deliver(deliver(hello(impostor), w), impostor), w)
    assert one(out, Authenticated).principal == MALLORY.fingerprint != CLIENT.fingerprint


def test_a_client_claiming_another_key_cannot_sign_for_it() -> None:
    w = worker_conn()
    feed(w, AuthHello(CLIENT.public_key, bytes(32)))  # the victim's public key
    signature = MALLORY.sign(b"anything")
    out = feed(w, AuthResponse(signature))
    assert one(out, AuthFailed).code == ErrorCode.AUTH_FAILED
    assert w.handshake is not None and w.handshake.state is AuthState.FAILED
    refused = feed(w, JobStart())
    assert one(refused, ev.Violation).code == ErrorCode.AUTH_FAILED


def test_a_weak_key_with_a_forged_signature_is_refused() -> None:
    # An all-zero key is of small order: an all-zero signature verifies for some payloads.
    assert is_weak_public_key(bytes(32)) and not is_weak_public_key(CLIENT.public_key)
    w = worker_conn()
    feed(w, AuthHello(bytes(32), bytes(32)))
    out = feed(w, AuthResponse(bytes(64)))
    assert one(out, AuthFailed).code == ErrorCode.AUTH_FAILED


def test_an_unauthorized_client_is_refused_after_proving_its_key() -> None:
    w = worker_conn(authorized=frozenset({WORKER.fingerprint}))
    c = client_conn()
    out = deliver(deliver(deliver(hello(c), w), c), w)
    failed = one(out, AuthFailed)
    assert failed.code == ErrorCode.NOT_AUTHORIZED
    assert sends(out) == [ProtocolErrorFrame(ErrorCode.NOT_AUTHORIZED, failed.detail)]
    assert one(deliver(out, c), AuthFailed).code == ErrorCode.NOT_AUTHORIZED
    assert w.principal == PEER  # the worker kept no identity for it


def test_an_authorized_client_is_accepted() -> None:
    _, w = authenticated_pair(authorized=frozenset({CLIENT.fingerprint}))
    assert w.principal == CLIENT.fingerprint


# ===================================================================== before the handshake


@pytest.mark.parametrize(
    "frame", ["JOB_START", "SHARED_INPUT_PATH::inputs/a.zip", "RESULTS_REQUEST::run-1"]
)
def test_job_frames_before_the_handshake_are_refused_with_auth_required(frame: str) -> None:
    w = worker_conn()
    out = feed(w, frame)
    (violation,) = violations(out)
    assert violation.code == ErrorCode.AUTH_REQUIRED
    assert sends(out) == [ProtocolErrorFrame(ErrorCode.AUTH_REQUIRED, violation.detail)]
    assert w.job.value == "IDLE" and w.sender.state == "IDLE"  # type: ignore[union-attr]


def test_a_file_before_the_handshake_is_refused() -> None:
    w = worker_conn()
    out = feed(w, f"FILE_META::a.bin::3::{'0' * 64}::4")
    assert one(out, ev.Violation).code == ErrorCode.AUTH_REQUIRED
    assert w.receiver.state == "IDLE"
    out = feed(w, b"abc")
    assert sends(out) == [
        TransferError(TransferErrorCode.UNEXPECTED_DATA, one(out, ev.Violation).detail)
    ]


def test_job_frames_during_the_handshake_are_refused() -> None:
    w = worker_conn()
    deliver(hello(client_conn()), w)
    assert one(feed(w, "JOB_START"), ev.Violation).code == ErrorCode.AUTH_REQUIRED


def test_a_peer_error_is_logged_whatever_the_handshake_state() -> None:
    w = worker_conn()
    out = feed(w, "PROTOCOL_ERROR::AUTH_FAILED::no")
    assert not violations(out) and of_type(out, ev.Note)


def test_handshake_frames_out_of_turn_are_unexpected() -> None:
    c, w = authenticated_pair()
    assert one(feed(w, AuthHello(CLIENT.public_key, bytes(32))), ev.Violation).code == (
        ErrorCode.UNEXPECTED_MESSAGE
    )
    fresh = worker_conn()
    assert one(feed(fresh, AuthResponse(bytes(64))), ev.Violation).code == (
        ErrorCode.UNEXPECTED_MESSAGE
    )
    assert one(feed(c, AuthOk(CLIENT.fingerprint)), ev.Violation).code == (
        ErrorCode.UNEXPECTED_MESSAGE
    )


def test_a_client_cannot_send_before_the_handshake() -> None:
    c = client_conn()
    for message in (JobId("run-1"), SharedInputPath("a")):
        with pytest.raises(LocalProtocolError) as info:
            c.send(message)
        assert info.value.code == ErrorCode.AUTH_REQUIRED
    assert c.drain() == []


def test_a_worker_without_the_handshake_fails_the_client_clearly() -> None:
    old = Connection(Role.WORKER, peer=PEER)  # no auth configured
    c = client_conn()
    out = deliver(deliver(hello(c), old), c)
    assert one(out, AuthFailed).code == ErrorCode.UNEXPECTED_MESSAGE


def test_auth_ok_naming_another_client_fails() -> None:
    c, w = client_conn(), worker_conn()
    deliver(deliver(hello(c), w), c)
    assert one(feed(c, AuthOk(MALLORY.fingerprint)), AuthFailed).code == ErrorCode.AUTH_FAILED


# ===================================================================== anonymous clients


def test_anonymous_clients_are_refused_by_default() -> None:
    w = worker_conn()
    assert one(feed(w, JobId("run-1")), ev.Violation).code == ErrorCode.AUTH_REQUIRED


def test_each_anonymous_connection_is_its_own_principal() -> None:
    first, second = worker_conn(allow_anonymous=True), worker_conn(allow_anonymous=True)
    out = feed(first, JobId("run-1"))
    assert not violations(out)
    assert is_anonymous(one(out, Authenticated).principal)
    feed(second, JobId("run-1"))
    assert first.principal != second.principal and is_anonymous(second.principal)
    assert first.worker is not None and first.worker.job_id == "run-1"
    # an anonymous connection cannot turn into someone mid-way
    assert one(feed(first, AuthHello(CLIENT.public_key, bytes(32))), ev.Violation)


def test_an_anonymous_client_connection_sends_without_a_handshake() -> None:
    c = Connection(Role.CLIENT, auth=dataclasses.replace(client_auth(), identity=None))
    c.send(JobId("run-1"))
    assert sends(c.drain()) == [JobId("run-1")]
    with pytest.raises(LocalProtocolError):
        c.start_handshake()


def test_a_key_holder_still_authenticates_where_anonymous_clients_are_allowed() -> None:
    _, w = authenticated_pair(allow_anonymous=True)
    assert w.principal == CLIENT.fingerprint


# ===================================================================== robustness


@given(st.lists(st.one_of(messages(), malformed_frames()), max_size=8))
def test_any_frames_in_any_order_never_escape(frames: list[object]) -> None:
    for conn in (worker_conn(), worker_conn(allow_anonymous=True), client_conn()):
        if conn.role is Role.CLIENT:
            conn.start_handshake()
        for frame in frames:
            raw = frame if isinstance(frame, str | bytes) else encode(frame)  # type: ignore[arg-type]
            conn.receive(raw, 0.0)
        conn.drain()


def test_sdp_fingerprints_are_read_and_normalised() -> None:
    sdp = (
        "v=0\r\na=fingerprint:sha-256 ab:cd\r\na=fingerprint:sha-512 00:11\r\n"
        "m=application 9 UDP/DTLS/SCTP webrtc-datachannel\r\na=fingerprint:SHA-256 AB:CD\r\n"
    )
    assert sdp_dtls_fingerprint(sdp) == "sha-256 AB:CD"
    with pytest.raises(ValueError, match="found 2"):
        sdp_dtls_fingerprint(sdp + "a=fingerprint:sha-256 EF:01\r\n")
    with pytest.raises(ValueError, match="found 0"):
        sdp_dtls_fingerprint("v=0\r\n")


# ===================================================================== the documented vector


def _vector() -> dict[str, str]:
    text = DOC.read_text("utf-8")
    block = text.split("<!-- BEGIN GENERATED: handshake-vector -->", 1)[1].split("<!-- END", 1)[0]
    values = dict(re.findall(r"^(\w+)\s+= (.+)$", block, re.M))
    frames = re.findall(r"^(?:->|<-) (.+)$", block, re.M)
    values.update({f"frame{i}": frame for i, frame in enumerate(frames)})
    return values


def _field(data: bytes) -> bytes:
    return len(data).to_bytes(2, "big") + data


def test_the_documented_vector_verifies_independently() -> None:
    v = _vector()
    # the transcript, built by hand from the specification's prose
    built = b"rtc-worker/channel-handshake/v1" + b"".join(
        _field(x)
        for x in (
            v["offer_dtls"].encode(),
            v["answer_dtls"].encode(),
            bytes.fromhex(v["client_key"]),
            bytes.fromhex(v["worker_key"]),
            bytes.fromhex(v["client_nonce"]),
            bytes.fromhex(v["worker_nonce"]),
        )
    )
    assert built.hex() == v["transcript"]
    worker_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(v["worker_key"]))
    client_key = Ed25519PublicKey.from_public_bytes(bytes.fromhex(v["client_key"]))
    worker_key.verify(base64.b64decode(v["worker_sig_b64"]), b"worker" + built)
    client_key.verify(base64.b64decode(v["client_sig_b64"]), b"client" + built)
    assert hashlib.sha256(bytes.fromhex(v["client_key"])).hexdigest() == v["client_fp"]
    assert v["frame3"] == f"AUTH_OK::{v['client_fp']}"
    assert v["frame1"].endswith(v["worker_sig_b64"])


def test_the_documented_vector_is_what_two_connections_exchange() -> None:
    v = _vector()
    nonces = iter([bytes.fromhex(v["client_nonce"])])
    c = Connection(Role.CLIENT, auth=dataclasses.replace(client_auth(), nonce=lambda: next(nonces)))
    w_nonces = iter([bytes.fromhex(v["worker_nonce"])])
    w = Connection(
        Role.WORKER,
        peer=PEER,
        auth=dataclasses.replace(worker_auth(), nonce=lambda: next(w_nonces)),
    )
    seen: list[str | bytes] = []
    out = hello(c)
    while sends(out):
        seen += [o.frame for o in of_type(out, ev.Send)]
        target = w if len(seen) % 2 else c
        out = deliver(out, target)
    assert seen == [v["frame0"], v["frame1"], v["frame2"], v["frame3"]]
    assert (
        transcript(
            offer_dtls=CLIENT_DTLS,
            answer_dtls=WORKER_DTLS,
            client_key=CLIENT.public_key,
            worker_key=WORKER.public_key,
            client_nonce=bytes.fromhex(v["client_nonce"]),
            worker_nonce=bytes.fromhex(v["worker_nonce"]),
        ).hex()
        == v["transcript"]
    )
    assert fingerprint(CLIENT.public_key) == v["client_fp"]
