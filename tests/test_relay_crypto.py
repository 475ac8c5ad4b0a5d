"""The relay road's chunk encryption: a fixed test vector checked with ``cryptography``
directly (not through ChunkCipher), the STREAM nonce and associated data, every
authentication failure (tampered, swapped, dropped, truncated, wrong key, wrong file),
lengths and byte spans, and the bounds."""

from __future__ import annotations

import hashlib

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError, TransferErrorCode
from protocol.limits import MAX_RELAY_CHUNKS, RELAY_MAX_CHUNK_BYTES, RELAY_MIN_CHUNK_BYTES
from protocol.relay_crypto import TAG_BYTES, ChunkCipher, RelaySecret
from protocol.testing.relay import relay_secrets

KEY = bytes(range(32))
PREFIX = bytes(range(0xA0, 0xA7))
SECRET = RelaySecret(KEY, PREFIX)
PLAIN = bytes((i * 7 + 3) & 255 for i in range(10000))  # 2 full chunks of 4096 and 1808
SHA = hashlib.sha256(PLAIN).hexdigest()
CHUNK = 4096

#: The test vector of PROTOCOL.md section 2.6: the sha256 of each sealed chunk of PLAIN
#: (key 00..1f, nonce prefix a0..a6, chunk_size 4096). Computed once with AESGCM
#: directly; a change of the construction changes them.
VECTOR = {
    "aad": "7274632d72656c61792f31" + SHA + "0000000000002710" + "00001000",
    "nonce0": "a0a1a2a3a4a5a60000000000",
    "nonce2": "a0a1a2a3a4a5a60000000201",
    "chunk0_sha256": "ec42f23ac881a6ca791d4d2e3e96202242437fe2d9c09328dfe8e05b5d53927b",
    "chunk0_tag": "289a2e51ce8dc9742124b09a6c688ce7",
    "chunk2_sha256": "f0e7f94711a2735afec24a5a579a1e840c2a07f65247eaf4835f82e760e74ee7",
    "chunk2_tag": "ea35c5e9de49874d525e53aae128f917",
}


def direct_seal(index: int, last: bool) -> bytes:
    """Seal chunk ``index`` of PLAIN with AESGCM itself, following PROTOCOL.md 2.4."""
    nonce = PREFIX + index.to_bytes(4, "big") + (b"\x01" if last else b"\x00")
    aad = (
        b"rtc-relay/1"
        + bytes.fromhex(SHA)
        + len(PLAIN).to_bytes(8, "big")
        + CHUNK.to_bytes(4, "big")
    )
    return AESGCM(KEY).encrypt(nonce, PLAIN[index * CHUNK : (index + 1) * CHUNK], aad)


def test_the_construction_matches_the_specification_with_cryptography_directly() -> None:
    first, last = direct_seal(0, last=False), direct_seal(2, last=True)
    assert hashlib.sha256(first).hexdigest() == VECTOR["chunk0_sha256"]
    assert first[-16:].hex() == VECTOR["chunk0_tag"]
    assert hashlib.sha256(last).hexdigest() == VECTOR["chunk2_sha256"]
    assert last[-16:].hex() == VECTOR["chunk2_tag"]
    cipher = ChunkCipher(SECRET, SHA, len(PLAIN), CHUNK)
    assert cipher.chunk_count == 3
    assert cipher.nonce(0).hex() == VECTOR["nonce0"]
    assert cipher.nonce(2).hex() == VECTOR["nonce2"]
    assert cipher._aad.hex() == VECTOR["aad"]
    for index in range(3):
        sealed = cipher.seal(index, PLAIN[index * CHUNK : (index + 1) * CHUNK])
        assert sealed == direct_seal(index, last=index == 2)
        assert cipher.open(index, sealed) == PLAIN[index * CHUNK : (index + 1) * CHUNK]


def test_the_documented_vector_is_the_one_in_protocol_md() -> None:
    from pathlib import Path

    text = (Path(__file__).parent.parent / "PROTOCOL.md").read_text()
    for value in VECTOR.values():
        assert value in text


def sealed_all(cipher: ChunkCipher, plain: bytes = PLAIN) -> list[bytes]:
    return [
        cipher.seal(i, plain[i * cipher.chunk_size : (i + 1) * cipher.chunk_size])
        for i in range(cipher.chunk_count)
    ]


def refused(call: object) -> RemoteProtocolError:
    with pytest.raises(RemoteProtocolError) as info:
        call()  # type: ignore[operator]
    assert info.value.code == TransferErrorCode.RELAY_CHUNK_INVALID
    return info.value


def test_tampered_swapped_truncated_and_foreign_chunks_are_refused() -> None:
    cipher = ChunkCipher(SECRET, SHA, len(PLAIN), CHUNK)
    chunks = sealed_all(cipher)
    flipped = bytearray(chunks[1])
    flipped[10] ^= 1
    refused(lambda: cipher.open(1, bytes(flipped)))  # a tampered byte
    tag = bytearray(chunks[1])
    tag[-1] ^= 0x80
    refused(lambda: cipher.open(1, bytes(tag)))  # a tampered tag
    refused(lambda: cipher.open(0, chunks[1]))  # swapped (same length)
    refused(lambda: cipher.open(1, chunks[0]))
    refused(lambda: cipher.open(2, chunks[2][:-1]))  # truncated
    refused(lambda: cipher.open(2, chunks[2] + b"x"))  # extended
    refused(lambda: cipher.open(1, chunks[1][:100]))  # a short object
    other_key = ChunkCipher(RelaySecret(bytes(32), PREFIX), SHA, len(PLAIN), CHUNK)
    refused(lambda: other_key.open(0, chunks[0]))
    other_prefix = ChunkCipher(RelaySecret(KEY, bytes(7)), SHA, len(PLAIN), CHUNK)
    refused(lambda: other_prefix.open(0, chunks[0]))
    other_file = ChunkCipher(SECRET, "0" * 64, len(PLAIN), CHUNK)
    refused(lambda: other_file.open(0, chunks[0]))
    detail = refused(lambda: cipher.open(0, chunks[1])).detail
    assert "does not authenticate" in detail and KEY.hex() not in detail


def test_a_file_cut_short_at_a_chunk_boundary_is_refused() -> None:
    # An attacker who drops the last chunk and claims the file ended earlier: the size is
    # in the associated data, and a chunk sealed as "last" only opens as the last one.
    cipher = ChunkCipher(SECRET, SHA, len(PLAIN), CHUNK)
    chunks = sealed_all(cipher)
    short = ChunkCipher(SECRET, SHA, 2 * CHUNK, CHUNK)
    refused(lambda: short.open(0, chunks[0]))
    refused(lambda: short.open(1, chunks[1]))
    aad = cipher._aad
    as_last = AESGCM(KEY).encrypt(
        PREFIX + (1).to_bytes(4, "big") + b"\x01", PLAIN[CHUNK : 2 * CHUNK], aad
    )
    refused(lambda: cipher.open(1, as_last))  # a middle chunk that claims to end the file


def test_lengths_and_spans() -> None:
    cipher = ChunkCipher(SECRET, SHA, len(PLAIN), CHUNK)
    assert [cipher.plain_length(i) for i in range(3)] == [4096, 4096, 1808]
    assert [cipher.cipher_length(i) for i in range(3)] == [4112, 4112, 1824]
    assert TAG_BYTES == 16
    assert cipher.cipher_span(0, 0, 3) == (0, 4112 * 2 + 1824)
    assert cipher.cipher_span(0, 1, 2) == (4112, 8224)
    assert cipher.cipher_span(1, 1, 3) == (0, 4112 + 1824)
    assert cipher.cipher_span(1, 2, 3) == (4112, 4112 + 1824)
    assert cipher.cipher_span(2, 3, 3) == (1824, 1824)
    assert cipher.cipher_span(3, 3, 3) == (0, 0)
    assert cipher.cipher_span(0, 2, 2) == (8224, 8224)
    for bad in ((1, 0, 2), (0, 2, 1), (0, 0, 4), (-1, 0, 1)):
        with pytest.raises(ValueError):
            cipher.cipher_span(*bad)
    for index in (-1, 3, True, 1.0):
        with pytest.raises(ValueError):
            cipher.plain_length(index)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cipher.seal(0, b"short")
    assert "key" not in repr(cipher) and SHA in repr(cipher)


@settings(max_examples=40, deadline=None)
@given(
    secret=relay_secrets(),
    size=st.integers(1, 40000),
    chunk=st.sampled_from([RELAY_MIN_CHUNK_BYTES, 5000, 8192, 65536]),
    data=st.data(),
)
def test_any_span_of_sealed_chunks_opens_to_the_plaintext(
    secret: RelaySecret, size: int, chunk: int, data: st.DataObject
) -> None:
    plain = bytes(i & 255 for i in range(size))
    sha = hashlib.sha256(plain).hexdigest()
    cipher = ChunkCipher(secret, sha, size, chunk)
    chunks = sealed_all(cipher, plain)
    assert sum(map(len, chunks)) == size + TAG_BYTES * cipher.chunk_count
    first = data.draw(st.integers(0, cipher.chunk_count - 1))
    start = data.draw(st.integers(first, cipher.chunk_count))
    end = data.draw(st.integers(start, cipher.chunk_count))
    obj = b"".join(chunks[first:])
    lo, hi = cipher.cipher_span(first, start, end)
    got, at = b"", lo
    for index in range(start, end):
        got += cipher.open(index, obj[at : at + cipher.cipher_length(index)])
        at += cipher.cipher_length(index)
    assert at == hi
    assert got == plain[start * chunk : end * chunk]


def test_the_secret_hides_itself_and_is_fresh() -> None:
    one, two = RelaySecret.generate(), RelaySecret.generate()
    assert one != two and len(one.key) == 32 and len(one.nonce_prefix) == 7
    assert repr(one) == "RelaySecret(<hidden>)" and one.key.hex() not in repr(one)
    for bad in ((bytes(31), PREFIX), (KEY, bytes(8)), ("x" * 32, PREFIX), (KEY, "x" * 7)):
        with pytest.raises(ValueError):
            RelaySecret(*bad)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("sha", "size", "chunk"),
    [
        ("x", 10, CHUNK),
        (SHA, 0, CHUNK),
        (SHA, -1, CHUNK),
        (SHA, True, CHUNK),
        (SHA, 10, RELAY_MIN_CHUNK_BYTES - 1),
        (SHA, 10, RELAY_MAX_CHUNK_BYTES + 1),
        (SHA, 10, True),
        (SHA, RELAY_MIN_CHUNK_BYTES * MAX_RELAY_CHUNKS + 1, RELAY_MIN_CHUNK_BYTES),
    ],
)
def test_the_bounds(sha: str, size: int, chunk: int) -> None:
    with pytest.raises(LocalProtocolError) as info:
        ChunkCipher(SECRET, sha, size, chunk)
    assert info.value.code == ErrorCode.MALFORMED_FRAME


def test_the_largest_file_has_2_to_the_32_chunks() -> None:
    cipher = ChunkCipher(
        SECRET, SHA, RELAY_MIN_CHUNK_BYTES * MAX_RELAY_CHUNKS, RELAY_MIN_CHUNK_BYTES
    )
    assert cipher.chunk_count == MAX_RELAY_CHUNKS
    assert cipher.nonce(MAX_RELAY_CHUNKS - 1)[7:] == b"\xff\xff\xff\xff\x01"
