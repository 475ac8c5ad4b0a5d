"""The signaling frames (protocol.signaling) and their strategies: every refusal with
its code and message, round trips in both directions, and the fuzz invariant (any
text is a frame or a SignalingError)."""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import protocol.signaling as sig
from protocol import signaling_json
from protocol.identity import b64decode
from protocol.signaling import (
    MAX_METADATA_BYTES,
    PEER_ID_PATTERN,
    Answer,
    Candidate,
    Challenge,
    ErrorFrame,
    ListPeers,
    Offer,
    Peers,
    Register,
    Registered,
    RelayedAnswer,
    RelayedCandidate,
    RelayedOffer,
    SignalingError,
    SignalingErrorCode,
    dump_frame,
    parse_client_frame,
    parse_server_frame,
)
from protocol.testing import (
    client_signaling_frames,
    json_values,
    malformed_signaling_frames,
    malformed_signaling_frames_with_codes,
    peer_ids,
    server_signaling_frames,
    signaling_frames,
)
from tests.protocol_helpers import draw_until

QUICK = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODE = SignalingErrorCode


# ===================================================================== refusals


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("null", "null"),
        ("true", "a boolean"),
        ("3.5", "a number"),
        ('"register"', "a string"),
        ("[]", "an array"),
    ],
)
def test_non_object_frames_name_their_json_kind(text: str, kind: str) -> None:
    for parse in (parse_client_frame, parse_server_frame):
        with pytest.raises(SignalingError) as info:
            parse(text)
        assert info.value.code == CODE.INVALID_FRAME
        assert info.value.message == f"frame must be a JSON object, not {kind}"
        assert info.value.ref_type is None


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("null", "null"),
        ("false", "a boolean"),
        ("1", "a number"),
        ("[]", "an array"),
        ("{}", "an object"),
    ],
)
def test_non_string_type_field_names_its_json_kind(value: str, kind: str) -> None:
    with pytest.raises(SignalingError) as info:
        parse_client_frame(f'{{"type": {value}}}')
    assert info.value.code == CODE.INVALID_FRAME
    assert info.value.message == f"field 'type' must be a string, not {kind}"


def test_a_frame_without_a_type() -> None:
    with pytest.raises(SignalingError) as info:
        parse_client_frame('{"peer_id": "a"}')
    assert (info.value.code, info.value.message) == (CODE.INVALID_FRAME, "missing field 'type'")


def test_several_field_errors_are_counted() -> None:
    with pytest.raises(SignalingError) as info:
        parse_client_frame('{"type": "offer"}')
    assert info.value.code == CODE.INVALID_FRAME
    assert info.value.ref_type == "offer"
    assert info.value.message == "field 'to' in 'offer' frame: missing (and 1 more error(s))"


def test_a_field_error_names_the_field_and_the_reason() -> None:
    with pytest.raises(SignalingError) as info:
        parse_client_frame('{"type": "offer", "to": "a b", "sdp": "v=0"}')
    assert info.value.message.startswith("field 'to' in 'offer' frame: String should match")


def test_unknown_type_error_names_the_type_truncated() -> None:
    with pytest.raises(SignalingError) as info:
        parse_server_frame(json.dumps({"type": "t" * 100}))
    assert info.value.code == CODE.UNKNOWN_TYPE
    assert info.value.ref_type == "t" * 64
    with pytest.raises(SignalingError) as info:
        parse_client_frame('{"type": "registered", "peer_id": "a"}')  # a server's frame
    assert info.value.message.startswith("unknown frame type 'registered'; expected one of")


def test_unrelayable_json_is_refused() -> None:
    for text in ('{"type": "list_peers", "x": "\\ud800"}', '{"type": "list_peers", "x": 1e999}'):
        with pytest.raises(SignalingError) as info:
            parse_client_frame(text)
        assert info.value.code == CODE.INVALID_JSON
        assert info.value.message.startswith("JSON that cannot be relayed: ")
    with pytest.raises(SignalingError) as info:
        parse_client_frame('{"type": "list_peers", "x": NaN}')
    assert (info.value.code, info.value.message) == (
        CODE.INVALID_JSON,
        "invalid JSON: NaN is not valid JSON",
    )


def test_the_size_is_checked_first_in_bytes() -> None:
    frame = json.dumps({"type": "offer", "to": "w", "sdp": "é" * 60}, ensure_ascii=False)
    with pytest.raises(SignalingError) as info:
        parse_client_frame(frame, max_bytes=100)
    assert info.value.code == CODE.FRAME_TOO_LARGE
    assert info.value.message == f"frame is {len(frame.encode())} bytes; the limit is 100 bytes"
    assert parse_client_frame(frame, max_bytes=len(frame.encode())) == Offer(to="w", sdp="é" * 60)
    assert parse_server_frame('{"type":"registered","peer_id":"a","fingerprint":null}', None)


@pytest.mark.parametrize("metadata", [{"gpu": {1, 2}}, {"ratio": float("nan")}, {"b": b"x"}])
def test_register_built_in_code_refuses_metadata_that_is_not_json(metadata: Any) -> None:
    with pytest.raises(ValidationError) as info:
        Register(peer_id="w1", role="worker", metadata=metadata)
    (error,) = info.value.errors(include_url=False)
    assert error["loc"] == ("metadata",)
    assert "metadata is not serializable as JSON" in error["msg"]


def test_register_metadata_is_bounded_and_null_is_empty() -> None:
    frame = parse_client_frame('{"type":"register","peer_id":"w1","role":"worker","metadata":null}')
    assert isinstance(frame, Register) and frame.metadata == {}
    big = {"blob": "x" * MAX_METADATA_BYTES}
    with pytest.raises(SignalingError) as info:
        parse_client_frame(
            json.dumps({"type": "register", "peer_id": "w", "role": "worker", "metadata": big})
        )
    assert "the limit is 8192" in info.value.message


def test_validation_that_recurses_too_deeply_is_an_invalid_frame(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Nothing but SignalingError leaves the parser, even if validation blows the stack."""

    class Bottomless:
        def validate_python(self, obj: object) -> object:
            raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(sig, "_CLIENT_ADAPTER", Bottomless())
    with pytest.raises(SignalingError) as info:
        parse_client_frame('{"type": "list_peers"}')
    assert (info.value.code, info.value.message, info.value.ref_type) == (
        CODE.INVALID_FRAME,
        "frame is nested too deeply",
        "list_peers",
    )


def test_describe_without_errors_or_without_the_tag_prefix() -> None:
    empty = ValidationError.from_exception_data("Offer", [])
    assert signaling_json.describe(empty, "offer") == "invalid 'offer' frame"
    untagged = ValidationError.from_exception_data(
        "Offer", [{"type": "missing", "loc": ("sdp",), "input": {}}]
    )
    assert signaling_json.describe(untagged, "offer") == "field 'sdp' in 'offer' frame: missing"
    no_loc = ValidationError.from_exception_data(
        "Offer", [{"type": "missing", "loc": (), "input": {}}]
    )
    assert signaling_json.describe(no_loc, "offer") == "field 'type' in 'offer' frame: missing"


def test_error_frame_and_exception_convert_both_ways() -> None:
    error = SignalingError(CODE.PEER_NOT_FOUND, "no peer 'x'", "offer")
    frame = error.to_frame()
    assert frame == ErrorFrame(code="PEER_NOT_FOUND", message="no peer 'x'", ref_type="offer")
    back = frame.to_exception()
    assert (back.code, back.message, back.ref_type) == ("PEER_NOT_FOUND", "no peer 'x'", "offer")
    assert str(back) == "PEER_NOT_FOUND: no peer 'x'"
    assert (
        dump_frame(ErrorFrame(code="X", message="m")) == '{"type":"error","code":"X","message":"m"}'
    )


def test_a_peers_from_is_ignored_and_a_candidate_may_be_null() -> None:
    offer = parse_client_frame('{"type":"offer","to":"w","sdp":"v=0","from":"spoofed"}')
    assert offer == Offer(to="w", sdp="v=0")
    relayed = RelayedCandidate(from_="a", fingerprint=None, to="b", candidate=None)
    assert dump_frame(relayed) == (
        '{"type":"candidate","from":"a","fingerprint":null,"to":"b","candidate":null}'
    )
    assert parse_server_frame(dump_frame(relayed)) == relayed


# ===================================================================== properties


@settings(QUICK, max_examples=100)
@given(client_signaling_frames())
def test_client_signaling_frames_round_trip(frame: Any) -> None:
    text = dump_frame(frame)
    assert parse_client_frame(text) == frame
    assert dump_frame(parse_client_frame(text)) == text


@settings(QUICK, max_examples=100)
@given(server_signaling_frames())
def test_server_signaling_frames_round_trip(frame: Any) -> None:
    assert parse_server_frame(dump_frame(frame)) == frame


@settings(QUICK, max_examples=200)
@given(malformed_signaling_frames_with_codes())
def test_malformed_signaling_frames_raise_their_code(pair: tuple[str, str]) -> None:
    text, code = pair
    with pytest.raises(SignalingError) as info:
        parse_client_frame(text)
    assert info.value.code == code


_ANY_CHAR = st.characters(blacklist_categories=())


@settings(QUICK, max_examples=200)
@given(
    st.one_of(
        st.text(_ANY_CHAR, max_size=200),
        st.builds(
            lambda f, cut: dump_frame(f)[:cut], client_signaling_frames(), st.integers(0, 100)
        ),
    )
)
def test_parse_of_anything_is_a_frame_or_a_signaling_error(text: str) -> None:
    try:
        frame = parse_client_frame(text)
    except SignalingError as exc:
        assert exc.code in {"INVALID_JSON", "INVALID_FRAME", "UNKNOWN_TYPE", "FRAME_TOO_LARGE"}
    else:
        assert parse_client_frame(dump_frame(frame)) == frame


# ===================================================================== the strategies


def test_peer_ids_match_the_pattern() -> None:
    assert all(re.fullmatch(PEER_ID_PATTERN, p) for p in draw_until(peer_ids(), at_least=50))


def test_json_values_survive_a_round_trip() -> None:
    types = {type(None), bool, int, float, str, list, dict}
    for value in draw_until(json_values(), types, lambda v: {type(v)}, at_least=50):
        text = json.dumps(value, ensure_ascii=False)
        assert json.loads(text) == value
        text.encode("utf-8")  # no lone surrogates


CLIENT_FRAMES = {Register, ListPeers, Offer, Answer, Candidate}
SERVER_FRAMES = {
    Challenge,
    Registered,
    Peers,
    RelayedOffer,
    RelayedAnswer,
    RelayedCandidate,
    ErrorFrame,
}


def test_signaling_frames_round_trip_in_their_direction() -> None:
    found = draw_until(signaling_frames(), CLIENT_FRAMES | SERVER_FRAMES, lambda f: {type(f)})
    for frame in found:
        parse = parse_client_frame if type(frame) in CLIENT_FRAMES else parse_server_frame
        assert parse(dump_frame(frame)) == frame


_REQUIRED = {
    "register": ("peer_id", "role"),
    "offer": ("to", "sdp"),
    "answer": ("to", "sdp"),
    "candidate": ("to", "candidate"),
}


def proof_shape_ok(public_key: Any, signature: Any) -> bool:
    """Both absent, or both base64 of 32 and 64 bytes."""
    if public_key is None and signature is None:
        return True
    try:
        b64decode(public_key, 32)
        b64decode(signature, 64)
    except (ValueError, TypeError, AttributeError):
        return False
    return True


def invalid_frame_kind(text: str) -> str:
    """Why a JSON frame refused with INVALID_FRAME is invalid."""
    obj = json.loads(text)
    if not isinstance(obj, dict):
        return "not an object"
    frame_type = obj.get("type")
    if not isinstance(frame_type, str):
        return "no string type"
    if any(name not in obj for name in _REQUIRED[frame_type]):
        return "missing field"
    metadata = obj.get("metadata", {})
    compact = json.dumps(metadata, separators=(",", ":"), ensure_ascii=False).encode()
    if not isinstance(metadata, dict) or len(compact) > MAX_METADATA_BYTES:
        return "bad metadata"
    strings = [obj.get(name, "") for name in ("peer_id", "role", "token", "to", "sdp")]
    if not all(isinstance(value, str) for value in strings if value is not None):
        return "wrongly typed field"
    if obj.get("role", "client") not in ("worker", "client"):
        return "bad role"
    if not proof_shape_ok(obj.get("public_key"), obj.get("signature")):
        return "bad key or signature"
    assert not re.fullmatch(PEER_ID_PATTERN, obj.get("peer_id", obj.get("to"))), text
    return "bad peer id"


@pytest.mark.parametrize("max_bytes", [262144, 1000])
def test_malformed_signaling_frames_cover_every_code_and_kind(max_bytes: int) -> None:
    want: set[str] = {
        CODE.INVALID_JSON,
        CODE.INVALID_FRAME,
        CODE.UNKNOWN_TYPE,
        CODE.FRAME_TOO_LARGE,
    }
    if max_bytes > 100_000:
        want |= {"not an object", "no string type", "missing field", "wrongly typed field"}
        want |= {"bad peer id", "bad role", "bad metadata", "bad key or signature"}

    def labels(pair: tuple[str, str]) -> set[str]:
        text, code = pair
        return {code, invalid_frame_kind(text)} if code == CODE.INVALID_FRAME else {code}

    strategy = malformed_signaling_frames_with_codes(max_bytes=max_bytes)
    for text, code in draw_until(strategy, want, labels):
        with pytest.raises(SignalingError) as info:
            parse_client_frame(text, max_bytes)
        assert info.value.code == code, text[:80]


def test_malformed_signaling_frames_without_codes_are_refused() -> None:
    for text in draw_until(
        malformed_signaling_frames(max_bytes=4096), set(), lambda _: (), at_least=50
    ):
        with pytest.raises(SignalingError):
            parse_client_frame(text, 4096)
