"""The relay road's frames: exact forms, secrets never shown (repr, redacted trace
lines), every field's grammar, malformed frames refused with their code, and JOB_METRICS'
optional road and transfer_mb_s (an earlier 4-field JSON still decodes)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings

from protocol import decode, encode
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.messages import JobMetrics
from protocol.relay_crypto import RelaySecret
from protocol.relay_messages import (
    RelayEnded,
    RelayPart,
    RelayStop,
    b64url_decode,
    b64url_encode,
    redact,
)
from protocol.testing import (
    malformed_relay_frames_with_codes,
    relay_endeds,
    relay_parts,
    relay_stops,
)

SHA = "ab" * 32
KEY = bytes(range(32))
PREFIX = bytes(range(7))
UPLOAD = "0123456789abcdef" * 2
TOKEN = "v1.relay-token_~x"


def part(**changes: object) -> RelayPart:
    fields: dict[str, object] = dict(
        sha256=SHA,
        offset=4096,
        length=8192,
        chunk_size=4096,
        key=KEY,
        nonce_prefix=PREFIX,
        upload_id=UPLOAD,
        token=TOKEN,
    )
    fields.update(changes)
    return RelayPart(**fields)  # type: ignore[arg-type]


def test_a_part_hides_its_key_and_token_everywhere_it_is_shown() -> None:
    message = part()
    frame = encode(message)
    assert isinstance(frame, str)
    key_text, prefix_text = b64url_encode(KEY), b64url_encode(PREFIX)
    assert (
        frame
        == f"RELAY_PART::{SHA}::4096::8192::4096::{key_text}::{prefix_text}::{UPLOAD}::{TOKEN}"
    )
    for shown in (repr(message), str(message), redact(frame), repr(message.secret)):
        assert TOKEN not in shown and key_text not in shown and prefix_text not in shown
        assert KEY.hex() not in shown and repr(KEY) not in shown
    assert "key=<hidden>" in repr(message) and "token=<hidden>" in repr(message)
    assert redact(frame) == f"RELAY_PART::{SHA}::4096::8192::...<hidden>"
    assert redact("FILE_READY::0") == "FILE_READY::0" and redact(b"\x00") == b"\x00"
    assert message.end == 12288 and message.secret == RelaySecret(KEY, PREFIX)
    assert RelayPart.of(SHA, 4096, 8192, 4096, RelaySecret(KEY, PREFIX), UPLOAD, TOKEN) == message


@settings(max_examples=60, deadline=None)
@given(relay_parts() | relay_stops() | relay_endeds())
def test_every_relay_message_round_trips(message: RelayPart | RelayStop | RelayEnded) -> None:
    assert decode(encode(message)) == message


@settings(max_examples=200, deadline=None)
@given(malformed_relay_frames_with_codes())
def test_malformed_relay_frames_are_refused_with_their_code(pair: tuple[str, ErrorCode]) -> None:
    frame, code = pair
    with pytest.raises(RemoteProtocolError) as info:
        decode(frame)
    assert type(info.value) is RemoteProtocolError and info.value.code == code
    assert TOKEN not in info.value.detail


@pytest.mark.parametrize(
    "changes",
    [
        {"sha256": "x"},
        {"offset": -1},
        {"offset": 1},
        {"length": 0},
        {"chunk_size": 4095},
        {"chunk_size": 16 * 1024 * 1024 + 1},
        {"key": bytes(31)},
        {"nonce_prefix": bytes(8)},
        {"upload_id": UPLOAD.upper()},
        {"upload_id": "https://evil.example/" + "0" * 11},
        {"token": "a b"},
        {"token": "t" * 513},
        {"token": 5},
        {"upload_id": None},
        {"offset": 10**18 - 4096, "length": 4096},
    ],
)
def test_a_part_outside_its_grammar_cannot_be_built(changes: dict[str, object]) -> None:
    with pytest.raises(LocalProtocolError) as info:
        part(**changes)
    assert info.value.code == ErrorCode.MALFORMED_FRAME


def test_stop_and_ended_check_their_fields() -> None:
    assert RelayStop(SHA.upper()).sha256 == SHA
    assert RelayEnded(SHA, 0, "STOPPED").detail == ""
    for bad in (("x", 0, "STOPPED"), (SHA, -1, "STOPPED"), (SHA, 0, "stopped"), (SHA, 0, 5)):
        with pytest.raises(LocalProtocolError):
            RelayEnded(*bad)  # type: ignore[arg-type]
    with pytest.raises(LocalProtocolError):
        RelayEnded(SHA, 0, "STOPPED", "two\nlines")
    with pytest.raises(LocalProtocolError):
        RelayStop("x")


def test_base64url_is_canonical_and_of_its_length() -> None:
    assert b64url_decode(b64url_encode(KEY), 32) == KEY
    for bad in ("AAAA=", "AA AA", "A", "A" * 42 + "B", "+" * 43):
        with pytest.raises(ValueError):
            b64url_decode(bad, 32)


def test_job_metrics_carries_the_road_and_its_rate() -> None:
    old = 'JOB_METRICS::{"validation_ms":1,"file_access_ms":2,"run_s":3,"total_s":4}'
    metrics = decode(old)
    assert (
        isinstance(metrics, JobMetrics) and metrics.road is None and metrics.transfer_mb_s is None
    )
    assert (
        encode(metrics)
        == 'JOB_METRICS::{"validation_ms":1.0,"file_access_ms":2.0,"run_s":3.0,"total_s":4.0}'
    )
    new = JobMetrics(1, 2, 3, 4, road="relay+channel", transfer_mb_s=312.4567)
    assert decode(encode(new)) == new and new.transfer_mb_s == 312.457
    assert new.as_dict() == {
        "validation_ms": 1.0,
        "file_access_ms": 2.0,
        "run_s": 3.0,
        "total_s": 4.0,
        "transfer_mb_s": 312.457,
    }
    assert new.wire_dict()["road"] == "relay+channel"
    for road in sorted(JobMetrics.ROADS):
        assert decode(encode(JobMetrics(0, 0, 0, 0, road=road, transfer_mb_s=0))).road == road  # type: ignore[attr-defined]
    for bad in ('"bus"', "1", '""', "null"):
        frame = old[:-1] + f',"road":{bad}' + "}"
        if bad == "null":
            assert decode(frame) == metrics  # null is "not said"
            continue
        with pytest.raises(RemoteProtocolError):
            decode(frame)
    for bad in ('"1"', "-1", "true", "1e14"):
        with pytest.raises(RemoteProtocolError):
            decode(old[:-1] + f',"transfer_mb_s":{bad}' + "}")
