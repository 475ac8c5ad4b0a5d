"""Hypothesis strategies for the relay road: valid RELAY_PART, RELAY_STOP and RELAY_ENDED
messages, relay secrets, and RELAY_* frames a peer must refuse (with the
code :func:`protocol.codec.decode` raises).

Example (fuzz a client's relay handling)::

    from hypothesis import given
    from protocol.testing import malformed_relay_frames_with_codes

    @given(malformed_relay_frames_with_codes())
    def test_refused(pair):
        frame, code = pair
        ...
"""

from __future__ import annotations

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from protocol.errors import ErrorCode, RelayEndCode
from protocol.limits import RELAY_MAX_CHUNK_BYTES, RELAY_MIN_CHUNK_BYTES
from protocol.messages import SEP
from protocol.relay_crypto import KEY_BYTES, NONCE_PREFIX_BYTES, RelaySecret
from protocol.relay_messages import RelayEnded, RelayPart, RelayStop, b64url_encode
from protocol.testing.text import free_text, sha256_hex

__all__ = [
    "malformed_relay_frames_with_codes",
    "relay_chunk_sizes",
    "relay_endeds",
    "relay_parts",
    "relay_secrets",
    "relay_stops",
    "relay_tokens",
    "upload_ids",
]

_TOKEN_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~-"


def relay_secrets() -> SearchStrategy[RelaySecret]:
    """Any :class:`RelaySecret` (32-byte key, 7-byte nonce prefix)."""
    return st.builds(
        RelaySecret,
        st.binary(min_size=KEY_BYTES, max_size=KEY_BYTES),
        st.binary(min_size=NONCE_PREFIX_BYTES, max_size=NONCE_PREFIX_BYTES),
    )


def relay_chunk_sizes() -> SearchStrategy[int]:
    """Relay chunk sizes: the bounds, powers of two and any value between."""
    return st.one_of(
        st.sampled_from([RELAY_MIN_CHUNK_BYTES, 65536, 1 << 20, RELAY_MAX_CHUNK_BYTES]),
        st.integers(RELAY_MIN_CHUNK_BYTES, RELAY_MAX_CHUNK_BYTES),
    )


def upload_ids() -> SearchStrategy[str]:
    """tus upload ids: 32 lowercase hex digits."""
    return st.text("0123456789abcdef", min_size=32, max_size=32)


def relay_tokens() -> SearchStrategy[str]:
    """Relay tokens: ``[A-Za-z0-9._~-]{1,512}``."""
    return st.one_of(
        st.text(_TOKEN_ALPHABET, min_size=1, max_size=80),
        st.just("t" * 512),
    )


def relay_parts() -> SearchStrategy[RelayPart]:
    """``RELAY_PART::...`` (sender -> receiver): any valid fields (offset aligned)."""
    return st.builds(
        lambda sha, chunk, index, length, secret, upload, token: RelayPart.of(
            sha, index * chunk, length, chunk, secret, upload, token
        ),
        sha256_hex(),
        relay_chunk_sizes(),
        st.integers(0, 2**20),
        st.integers(1, 2**40),
        relay_secrets(),
        upload_ids(),
        relay_tokens(),
    )


def relay_stops() -> SearchStrategy[RelayStop]:
    """``RELAY_STOP::{sha256}`` (sender -> receiver)."""
    return st.builds(RelayStop, sha256_hex())


def relay_endeds() -> SearchStrategy[RelayEnded]:
    """``RELAY_ENDED::{sha256}::{offset}::{code}::{detail}`` (receiver -> sender): the
    codes of :class:`RelayEndCode` and any other code of the grammar, one-line details
    (``::`` included)."""
    return st.builds(
        RelayEnded,
        sha256_hex(),
        st.integers(0, 10**18 - 1),
        st.one_of(
            st.sampled_from(list(RelayEndCode)),
            st.from_regex(r"[A-Z][A-Z0-9_]{0,8}", fullmatch=True),
        ),
        st.one_of(
            st.just(""),
            free_text(max_bytes=60).map(lambda t: t.replace("\n", " ").replace("\r", " ")),
        ),
    )


_BAD_B64 = (
    "",
    "A",
    "AAAA",
    "A" * 44,
    "A" * 42 + "=",
    "A" * 42 + "+",
    "A" * 42 + "/",
    "A" * 42 + "B",
)
_BAD_PREFIX = ("", "AAAA", "A" * 11, "A" * 9 + "=", "A" * 9 + "B", "A" * 9 + "+")
_BAD_UPLOAD = ("", "0" * 31, "0" * 33, "G" * 32, "A" * 32, "../" + "0" * 29, "0" * 30 + "/x")
_BAD_TOKEN = ("", "t" * 513, "a b", "a/b", "a+b", "a=b", "a:b", "é", "a\n")
_BAD_COUNT = ("", "-1", "1.0", "1" * 19, "x", " 1", "1e3", "٣")


def malformed_relay_frames_with_codes() -> SearchStrategy[tuple[str, ErrorCode]]:
    """RELAY_* frames :func:`protocol.codec.decode` must refuse, with their code (all
    MALFORMED_FRAME): missing or extra fields, a bad sha256, counts that are not decimal
    digits, an unaligned offset, an empty length, a chunk_size out of bounds, a key or
    nonce prefix that is not canonical base64url of its length, an upload id that is
    not 32 lowercase hex digits (a path or URL included), a token outside its grammar, a
    bad RELAY_ENDED code or a detail with a line break."""
    key = b64url_encode(bytes(KEY_BYTES))
    prefix = b64url_encode(bytes(NONCE_PREFIX_BYTES))
    upload = "0" * 32
    good = ["0" * 64, "0", "4096", "4096", key, prefix, upload, "tok"]

    def part(index: int, value: str) -> str:
        fields = list(good)
        fields[index] = value
        return SEP.join(["RELAY_PART", *fields])

    bad_fields = st.one_of(
        st.sampled_from(["", "0" * 63, "g" * 64]).map(lambda v: part(0, v)),
        st.builds(part, st.sampled_from([1, 2, 3]), st.sampled_from(_BAD_COUNT)),
        st.sampled_from(["1", "4095", "4097"]).map(lambda v: part(1, v)),  # unaligned offset
        st.just(part(2, "0")),  # an empty part
        st.sampled_from(["0", "4095", str(RELAY_MAX_CHUNK_BYTES + 1), "1"]).map(
            lambda v: part(3, v)
        ),
        st.sampled_from(_BAD_B64).map(lambda v: part(4, v)),
        st.sampled_from(_BAD_PREFIX).map(lambda v: part(5, v)),
        st.sampled_from(_BAD_UPLOAD).map(lambda v: part(6, v)),
        st.sampled_from(_BAD_TOKEN).map(lambda v: part(7, v)),
        st.just(SEP.join(["RELAY_PART", *good, "extra"])),
        st.integers(0, 7).map(lambda n: SEP.join(["RELAY_PART", *good[:n]]) if n else "RELAY_PART"),
    )
    stop = st.sampled_from(
        [
            "RELAY_STOP",
            f"RELAY_STOP{SEP}",
            f"RELAY_STOP{SEP}{'0' * 63}",
            f"RELAY_STOP{SEP}{'0' * 64}{SEP}x",
        ]
    )
    ended = st.sampled_from(
        [
            "RELAY_ENDED",
            f"RELAY_ENDED{SEP}{'0' * 64}",
            f"RELAY_ENDED{SEP}{'0' * 64}{SEP}0{SEP}STOPPED",
            f"RELAY_ENDED{SEP}{'0' * 64}{SEP}-1{SEP}STOPPED{SEP}",
            f"RELAY_ENDED{SEP}{'0' * 64}{SEP}0{SEP}stopped{SEP}",
            f"RELAY_ENDED{SEP}{'0' * 64}{SEP}0{SEP}{SEP}",
            f"RELAY_ENDED{SEP}{'0' * 64}{SEP}0{SEP}STOPPED{SEP}a\nb",
            f"RELAY_ENDED{SEP}{'0' * 65}{SEP}0{SEP}STOPPED{SEP}",
        ]
    )
    malformed = ErrorCode.MALFORMED_FRAME
    return st.one_of(bad_fields, stop, ended).map(lambda frame: (frame, malformed))
