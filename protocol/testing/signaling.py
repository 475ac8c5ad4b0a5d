"""Hypothesis strategies for the signaling frames (JSON over the WebSocket)."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from protocol import signaling as sig
from protocol.identity import NONCE_BYTES, PUBLIC_KEY_BYTES, SIGNATURE_BYTES, b64encode
from protocol.testing.text import fill, utf8_len
from protocol.testing.valid import codes

__all__ = [
    "base64_of",
    "client_signaling_frames",
    "fingerprints",
    "ice_servers",
    "json_values",
    "malformed_signaling_frames",
    "malformed_signaling_frames_with_codes",
    "peer_ids",
    "server_signaling_frames",
    "signaling_frames",
]


def peer_ids() -> SearchStrategy[str]:
    """Valid signaling peer ids: ``[A-Za-z0-9._-]{1,64}``."""
    return st.from_regex(sig.PEER_ID_PATTERN.strip("^$"), fullmatch=True)


def fingerprints() -> SearchStrategy[str]:
    """Key fingerprints: 64 lowercase hex digits."""
    return st.binary(min_size=32, max_size=32).map(bytes.hex)


def base64_of(size: int) -> SearchStrategy[str]:
    """Standard base64 (with padding) of ``size`` random bytes."""
    return st.binary(min_size=size, max_size=size).map(b64encode)


def _keyed_register() -> SearchStrategy[sig.Register]:
    """A register frame with a public key and a signature (which need not verify: the
    codec checks their shape, the server their meaning)."""
    return st.builds(
        sig.Register,
        peer_id=peer_ids(),
        role=st.sampled_from(["worker", "client"]),
        token=st.none() | _JSON_TEXT,
        metadata=st.just({}),
        public_key=base64_of(PUBLIC_KEY_BYTES),
        signature=base64_of(SIGNATURE_BYTES),
    )


_JSON_TEXT = st.text(st.characters(codec="utf-8"), max_size=20)


def json_values(*, max_leaves: int = 8) -> SearchStrategy[Any]:
    """JSON values that survive a round trip: null, booleans, integers within ±2^53,
    finite floats, text (no lone surrogates), and lists and objects of them."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**53), 2**53),
        st.floats(allow_nan=False, allow_infinity=False),
        _JSON_TEXT,
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(_JSON_TEXT, inner, max_size=4)
        ),
        max_leaves=max_leaves,
    )


def _metadata() -> SearchStrategy[dict[str, Any]]:
    return st.dictionaries(_JSON_TEXT, json_values(max_leaves=4), max_size=4).filter(
        lambda m: (
            len(json.dumps(m, separators=(",", ":"), ensure_ascii=False).encode())
            <= sig.MAX_METADATA_BYTES
        )
    )


def _sdp() -> SearchStrategy[str]:
    return st.one_of(
        st.just("v=0\r\no=- 1 2 IN IP4 127.0.0.1\r\ns=-\r\nt=0 0\r\n"),
        st.text(st.characters(codec="utf-8"), max_size=200),
    )


def client_signaling_frames() -> SearchStrategy[sig.ClientFrame]:
    """Frames a peer sends to the signaling server (protocol.signaling models):
    register (with token and metadata or not, with a key and a signature or not),
    list_peers, offer, answer, candidate (any JSON candidate, null included)."""
    return st.one_of(
        st.builds(
            sig.Register,
            peer_id=peer_ids(),
            role=st.sampled_from(["worker", "client"]),
            token=st.none() | _JSON_TEXT,
            metadata=_metadata(),
        ),
        _keyed_register(),
        st.just(sig.ListPeers()),
        st.builds(sig.Offer, to=peer_ids(), sdp=_sdp()),
        st.builds(sig.Answer, to=peer_ids(), sdp=_sdp()),
        st.builds(sig.Candidate, to=peer_ids(), candidate=json_values()),
    )


def ice_servers() -> SearchStrategy[tuple[sig.IceServer, ...]]:
    """``ice_servers`` of a ``registered`` or relayed ``offer``: none, or TURN REST entries
    (``"{expiry}:{peer_id}"`` and a base64 credential) with 1 to 3 URLs."""
    url = st.builds(
        lambda scheme, host, port: f"{scheme}{host}:{port}",
        st.sampled_from(sig.ICE_URL_SCHEMES),
        st.sampled_from(["127.0.0.1", "turn.example.org", "[::1]"]),
        st.integers(1, 65535),
    )
    entry = st.builds(
        sig.IceServer,
        urls=st.lists(url, min_size=1, max_size=3).map(tuple),
        username=st.builds(lambda t, p: f"{t}:{p}", st.integers(0, 2**34), peer_ids()),
        credential=base64_of(20),
    )
    return st.lists(entry, max_size=2).map(tuple)


def server_signaling_frames() -> SearchStrategy[sig.ServerFrame]:
    """Frames the signaling server sends (protocol.signaling models): challenge, registered,
    peers, relayed offer/answer/candidate (with ``from`` and ``fingerprint``, ``null`` for
    an anonymous sender), error (known and future codes)."""
    maybe_fp = st.none() | fingerprints()
    return st.one_of(
        st.builds(sig.Challenge, nonce=base64_of(NONCE_BYTES)),
        st.builds(
            sig.Registered, peer_id=peer_ids(), fingerprint=maybe_fp, ice_servers=ice_servers()
        ),
        st.builds(
            sig.Peers,
            peers=st.lists(
                st.builds(
                    sig.PeerInfo,
                    peer_id=peer_ids(),
                    role=st.sampled_from(["worker", "client"]),
                    fingerprint=maybe_fp,
                    metadata=_metadata(),
                ),
                max_size=4,
            ).map(tuple),
        ),
        st.builds(
            sig.RelayedOffer,
            from_=peer_ids(),
            fingerprint=maybe_fp,
            to=peer_ids(),
            sdp=_sdp(),
            ice_servers=ice_servers(),
        ),
        st.builds(
            sig.RelayedAnswer, from_=peer_ids(), fingerprint=maybe_fp, to=peer_ids(), sdp=_sdp()
        ),
        st.builds(
            sig.RelayedCandidate,
            from_=peer_ids(),
            fingerprint=maybe_fp,
            to=peer_ids(),
            candidate=json_values(),
        ),
        st.builds(
            sig.ErrorFrame,
            code=codes([c.value for c in sig.SignalingErrorCode]),
            message=_JSON_TEXT,
            ref_type=st.none() | st.text(max_size=64),
        ),
    )


def signaling_frames() -> SearchStrategy[sig.ClientFrame | sig.ServerFrame]:
    """Any signaling frame model, either direction (serialize with ``sig.dump_frame``)."""
    return st.one_of(client_signaling_frames(), server_signaling_frames())


_BAD_PEER_IDS = ("", "a b", "a" * 65, "a\n", "\na", "é", "a/b", "a:b", "*")
_REQUIRED = {
    "register": ("peer_id", "role"),
    "offer": ("to", "sdp"),
    "answer": ("to", "sdp"),
    "candidate": ("to", "candidate"),
}
_STRING_FIELDS = {
    "register": ("peer_id", "role", "token", "public_key", "signature"),
    "offer": ("to", "sdp"),
    "answer": ("to", "sdp"),
    "candidate": ("to",),
}


def malformed_signaling_frames_with_codes(
    *, max_bytes: int = sig.DEFAULT_MAX_FRAME_BYTES
) -> SearchStrategy[tuple[str, str]]:
    """Text frames :func:`protocol.signaling.parse_client_frame` must refuse, each with
    the :class:`protocol.signaling.SignalingErrorCode` value of the ``SignalingError`` it raises
    (``max_bytes`` is the limit passed to the parser).

    Covers: text that is not JSON (or is I-JSON-invalid: NaN, Infinity, 1e400, lone
    surrogates, 100000-deep nesting); JSON that is not an object; a missing or non-string
    ``type``; unknown types (server-only types included); missing required fields;
    wrongly typed fields; invalid peer ids and roles; metadata that is not an object or
    is over its limit; a public key or a signature that is not base64 of the right length,
    or one without the other; frames over ``max_bytes``. A frame of any other group that is over
    ``max_bytes`` (a small limit) is paired with ``FRAME_TOO_LARGE``: the parser checks the
    size first.
    """
    invalid_json = st.sampled_from(
        [
            "",
            "{",
            "not json",
            "{'type': 'list_peers'}",
            '{"type":"list_peers"',
            '{"type":"list_peers"} x',
            "NaN",
            '{"type":"list_peers","x":NaN}',
            '{"type":"list_peers","x":-Infinity}',
            '{"type":"list_peers","x":1e400}',
            '{"type":"list_peers","x":"\\ud800"}',
            '{"type":"list_peers","\\udfff":1}',
            "[" * 100000,
            '{"type":"candidate","to":"a","candidate":' + "[" * 100000,
        ]
    ).map(lambda text: (text, sig.SignalingErrorCode.INVALID_JSON))
    not_object = st.one_of(
        st.sampled_from(["[]", "1", "null", '"register"', "true", "[{}]"]),
        json_values()
        .filter(lambda v: not isinstance(v, dict))
        .map(lambda v: json.dumps(v, ensure_ascii=False)),
    ).map(lambda text: (text, sig.SignalingErrorCode.INVALID_FRAME))
    bad_type = st.sampled_from(
        [
            "{}",
            '{"peer_id":"a"}',
            '{"type":1}',
            '{"type":null}',
            '{"type":["offer"]}',
            '{"type":{"t":"offer"}}',
            '{"type":true}',
        ]
    ).map(lambda text: (text, sig.SignalingErrorCode.INVALID_FRAME))
    unknown_type = st.one_of(
        st.sampled_from(["registered", "peers", "error", "Register", "OFFER", "", " offer"]),
        st.text(max_size=20).filter(lambda t: t not in _REQUIRED and t != "list_peers"),
    ).map(lambda t: (json.dumps({"type": t}), sig.SignalingErrorCode.UNKNOWN_TYPE))

    valid = (
        client_signaling_frames()
        .filter(lambda f: f.type in _REQUIRED)
        .map(lambda frame: json.loads(sig.dump_frame(frame)))
    )

    def drop(obj: dict[str, Any], index: int) -> str:
        fields = _REQUIRED[obj["type"]]
        obj = dict(obj)
        del obj[fields[index % len(fields)]]
        return json.dumps(obj)

    def retype(obj: dict[str, Any], index: int, value: Any) -> str:
        fields = _STRING_FIELDS[obj["type"]]
        return json.dumps({**obj, fields[index % len(fields)]: value})

    def bad_proof(frame: sig.Register, how: int) -> str:
        obj = json.loads(sig.dump_frame(frame))
        field = ("public_key", "signature")[how % 2]
        if how < 2:
            del obj[field]  # one without the other
        elif how < 4:
            obj[field] = obj[field][:-4]  # base64 of too few bytes
        else:
            obj[field] = "*" + obj[field][1:]  # not base64
        return json.dumps(obj)

    def bad_id(obj: dict[str, Any], peer_id: str) -> str:
        key = "peer_id" if obj["type"] == "register" else "to"
        return json.dumps({**obj, key: peer_id})

    wrong_values: SearchStrategy[int | float | list[int] | dict[str, Any]] = st.one_of(
        st.integers(),
        st.booleans(),
        st.lists(st.integers(), max_size=2),
        st.just({}),
        st.floats(allow_nan=False, allow_infinity=False),
    )
    fields = st.one_of(
        st.builds(drop, valid, st.integers(0, 1)),
        st.builds(retype, valid, st.integers(0, 4), wrong_values),
        st.builds(bad_id, valid, st.sampled_from(_BAD_PEER_IDS)),
        st.builds(
            lambda pid, role: json.dumps({"type": "register", "peer_id": pid, "role": role}),
            peer_ids(),
            st.sampled_from(["admin", "Worker", "", "workers", None, 1]),
        ),
        st.builds(
            lambda pid, meta: json.dumps(
                {"type": "register", "peer_id": pid, "role": "client", "metadata": meta}
            ),
            peer_ids(),
            st.one_of(
                st.sampled_from([[], "x", 1, True, [{"a": 1}]]),
                st.integers(sig.MAX_METADATA_BYTES, 2 * sig.MAX_METADATA_BYTES).map(
                    lambda n: {"blob": "x" * n}
                ),
            ),
        ),
        st.builds(bad_proof, _keyed_register(), st.integers(0, 5)),
    ).map(lambda text: (text, sig.SignalingErrorCode.INVALID_FRAME))
    too_large = st.builds(
        lambda extra, seed: (
            json.dumps({"type": "offer", "to": "w", "sdp": fill(seed, max_bytes + extra)}),
            sig.SignalingErrorCode.FRAME_TOO_LARGE,
        ),
        st.integers(1, 64),
        st.sampled_from(["x", "é", "中"]),
    )

    def expect(pair: tuple[str, sig.SignalingErrorCode]) -> tuple[str, str]:
        text, code = pair
        if utf8_len(text) > max_bytes:  # the parser checks the size first
            return text, str(sig.SignalingErrorCode.FRAME_TOO_LARGE)
        return text, str(code)

    return st.one_of(invalid_json, not_object, bad_type, unknown_type, fields, too_large).map(
        expect
    )


def malformed_signaling_frames(
    *, max_bytes: int = sig.DEFAULT_MAX_FRAME_BYTES
) -> SearchStrategy[str]:
    """Text frames the signaling server must refuse with a ``SignalingError`` (see
    :func:`malformed_signaling_frames_with_codes`)."""
    return malformed_signaling_frames_with_codes(max_bytes=max_bytes).map(lambda p: p[0])
