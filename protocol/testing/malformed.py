"""Hypothesis strategies: frames a conforming peer must refuse, with their codes."""

from __future__ import annotations

import json
from collections.abc import Callable

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from protocol.codec import FRAME_TYPES
from protocol.errors import ErrorCode
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import JOB_ID_PATTERN, SEP, JobMetrics
from protocol.testing.relay import malformed_relay_frames_with_codes
from protocol.testing.text import (
    MAX_COUNT,
    fill,
    free_text,
    job_ids,
    paths,
    repeat_bytes,
    sha256_hex,
    utf8_len,
)

__all__ = ["malformed_frames", "malformed_frames_with_codes"]

_FIELDLESS = ("JOB_START", "JOB_CANCEL", "END_OF_FILE", "FILE_CANCEL", "RESULTS_VIA_STORAGE")


def _expect(frame: str, code: ErrorCode, limits: Limits) -> tuple[str | bytes, ErrorCode]:
    """Pair a text frame with the code decode must raise: the size is checked first, then
    the number of fields, then the rest."""
    if utf8_len(frame) > limits.max_text_frame_bytes:
        return frame, ErrorCode.FRAME_TOO_LARGE
    if frame.count(SEP) >= limits.max_fields:
        return frame, ErrorCode.TOO_MANY_FIELDS
    return frame, code


_NO_COLON_TEXT = st.text(st.characters(codec="utf-8", exclude_characters=":"), max_size=12)
_BAD_NUMBERS = (
    "",
    "-1",
    "+1",
    "1.5",
    " 1",
    "1 ",
    "1\n",
    "0x10",
    "1e3",
    "１",
    "٣",
    "abc",
    "1" * 19,
    "NaN",
)
_BAD_MB = ("", "-1", "1e5", ".5", "1.", "1.1234567", "inf", "nan", "1" * 16, "1,5", "0x1")
_BAD_COUNT = ("", "-1", "1.0", "1" * 16, "x", " 1", "1e3")
_BAD_SHA = ("", "0" * 63, "0" * 65, "g" * 64, "0" * 32 + " " * 32, "0x" + "0" * 62, "é" * 64)
_BAD_PROOF_RANGES = (
    "",
    "0",
    "0+",
    "+1",
    "0+0",  # an empty range
    "0+65537",  # longer than a range may be
    "0+1,",
    ",0+1",
    "0+1;2+3",
    "0-1",
    "-1+1",
    "0+1 ",
    "1" * 19 + "+1",
    "999999999999999999+1",  # it would end at 10^18
    "0+1,,1+1",
    "0x1+1",
)
_BAD_CODES = ("", "lower", "1ABC", "A-B", "A" * 65, "A B", "É", "_A", "Abc")
_BAD_JOB_IDS_NO_COLON = (
    "",
    "a" * 65,
    "has space",
    "a/b",
    "é",
    "a\n",
    "a\x00",
    "*",
    "a,b",
    ".",
    "..",
)


def _bad_job_ids(*, colons: bool) -> SearchStrategy[str]:
    base = st.one_of(
        st.sampled_from(_BAD_JOB_IDS_NO_COLON),
        st.text(min_size=1, max_size=70).filter(
            lambda t: JOB_ID_PATTERN.fullmatch(t) is None and ":" not in t
        ),
    )
    if not colons:
        return base
    return st.one_of(base, st.sampled_from(["a:b", "a:", ":", "a::b", "::"]))


def _bad_metrics_json() -> SearchStrategy[str]:
    good = dict.fromkeys(JobMetrics.FIELDS, 1.5)

    def with_value(name: str, raw: str) -> str:
        parts = [f'"{key}":{raw if key == name else "1.5"}' for key in JobMetrics.FIELDS]
        return "{" + ",".join(parts) + "}"

    def without(names: list[str]) -> str:
        return json.dumps({k: v for k, v in good.items() if k not in names})

    return st.one_of(
        st.sampled_from(
            [
                "",
                "{",
                "{not json",
                "{'validation_ms': 1}",
                "[1,2]",
                "1",
                "null",
                '"text"',
                "true",
                json.dumps(good) + " x",
                "[" * 30000,
                "{" * 1000,
                '{"validation_ms":' * 3000,
            ]
        ),
        st.builds(
            with_value,
            st.sampled_from(JobMetrics.FIELDS),
            st.sampled_from(
                [
                    "-1",
                    '"1"',
                    "true",
                    "false",
                    "null",
                    "NaN",
                    "Infinity",
                    "-Infinity",
                    "1e14",
                    "1e400",
                    "[1]",
                    "{}",
                    "1" * 5000,
                    "-0.001",
                ]
            ),
        ),
        st.lists(st.sampled_from(JobMetrics.FIELDS), min_size=1, unique=True).map(without),
    )


def malformed_frames_with_codes(
    *, limits: Limits = DEFAULT_LIMITS
) -> SearchStrategy[tuple[str | bytes, ErrorCode]]:
    """Frames a conforming peer must refuse, each with the :class:`ErrorCode` that
    :func:`protocol.codec.decode` raises for it (as a ``RemoteProtocolError``).

    Covers: unknown types (lower case, trailing spaces or newlines, BOM, arbitrary text);
    fields on field-less types; missing fields; bad job ids; non-numeric, signed,
    fractional, non-ASCII-digit and 19-digit counts; bad sha256; broken FILE_META (both
    forms); broken FILE_PROOF_REQUEST (nonces, ranges, too many ranges); invalid JSON,
    wrong values and 30000-deep nesting in JOB_METRICS; broken RELAY_PART, RELAY_STOP
    and RELAY_ENDED (:func:`~protocol.testing.relay.malformed_relay_frames_with_codes`); line
    breaks where a single line is required; empty required fields; bad codes; frames
    just over ``limits.max_text_frame_bytes`` (ASCII and multi-byte), paths over
    ``limits.max_path_bytes``, binary frames over ``limits.max_binary_frame_bytes`` and
    text frames just over ``limits.max_fields`` fields. A frame of another group that
    breaks a limit (small limits) is paired with the code of that limit, as decode
    checks the frame's size first, then its number of fields.
    """
    malformed = ErrorCode.MALFORMED_FRAME

    def pair(code: ErrorCode) -> Callable[[str], tuple[str | bytes, ErrorCode]]:
        return lambda frame: _expect(frame, code, limits)

    types = sorted(FRAME_TYPES)
    odd_types = (
        [t.lower() for t in types]
        + [t + " " for t in types]
        + [" " + t for t in types]
        + [t + "\n" for t in types]
        + ["\ufeff" + t for t in types]
        + [t + "\x00" for t in types]
        + ["", ":", "JOB-START", "FILE_META:", "SHARED_INPUT_PATH :"]
    )
    unknown = st.builds(
        lambda type_, rest: type_ if rest is None else f"{type_}{SEP}{rest}",
        st.one_of(st.sampled_from(odd_types), st.text(max_size=24)),
        st.one_of(st.none(), st.text(max_size=40)),
    ).filter(lambda f: f.partition(SEP)[0] not in FRAME_TYPES)

    fieldless_with_fields = st.builds(
        lambda t, rest: f"{t}{SEP}{rest}", st.sampled_from(_FIELDLESS), st.text(max_size=20)
    )
    legacy_start = st.one_of(
        st.just("SHARED_STORAGE_JOB"),
        st.text(max_size=12)
        .filter(lambda r: r != "start")
        .map(lambda r: f"SHARED_STORAGE_JOB{SEP}{r}"),
    )
    missing = st.sampled_from(
        [t for t in types if t not in _FIELDLESS and t != "SHARED_STORAGE_JOB"]
    )

    bad_ids = st.one_of(
        _bad_job_ids(colons=True).map(lambda j: f"JOB_ID{SEP}{j}"),
        _bad_job_ids(colons=True).map(lambda j: f"RESULTS_REQUEST{SEP}{j}"),
        _bad_job_ids(colons=False).map(lambda j: f"RESULTS_STORED{SEP}{j}{SEP}/download/x"),
        st.builds(
            lambda j, r: f"JOB_FAILED{SEP}{j}{SEP}{r}",
            _bad_job_ids(colons=False),
            free_text(max_bytes=40),
        ),
        st.builds(
            lambda j, p: f"JOB_COMPLETE{SEP}{j}{SEP}{p}{SEP}3{SEP}1.25",
            _bad_job_ids(colons=False),
            paths(max_bytes=60),
        ),
    )

    name = st.sampled_from(["train.zip", "a b.zip", "x::y.zip", "中文"])
    legacy_name = st.sampled_from(["train.zip", "a b", "中文", "x:y"])
    sha = sha256_hex()
    count = st.integers(0, MAX_COUNT).map(str)
    bad_numbers = st.one_of(
        st.sampled_from(_BAD_NUMBERS).map(lambda n: f"FILE_READY{SEP}{n}"),
        st.builds(
            lambda a, b, flip: f"FILE_PROGRESS{SEP}{b if flip else a}{SEP}{a if flip else b}",
            st.sampled_from(_BAD_NUMBERS),
            count,
            st.booleans(),
        ),
        count.map(lambda n: f"FILE_PROGRESS{SEP}{n}"),
        st.builds(lambda a, b, c: f"FILE_PROGRESS{SEP}{a}{SEP}{b}{SEP}{c}", count, count, count),
        st.builds(
            lambda j, p, c: f"JOB_COMPLETE{SEP}{j}{SEP}{p}{SEP}{c}{SEP}1.00",
            job_ids(),
            paths(max_bytes=60),
            st.sampled_from(_BAD_COUNT),
        ),
        st.builds(
            lambda j, p, mb: f"JOB_COMPLETE{SEP}{j}{SEP}{p}{SEP}2{SEP}{mb}",
            job_ids(),
            paths(max_bytes=60),
            st.sampled_from(_BAD_MB),
        ),
        st.builds(
            lambda j, fields: SEP.join(["JOB_COMPLETE", j, *fields]),
            job_ids(),
            st.lists(st.sampled_from(["out", "1", "2.00", "a b"]), max_size=2),
        ),
        st.builds(
            lambda n, s, h, c: SEP.join(["FILE_META", n, s, h, c]),
            name,
            st.sampled_from(_BAD_NUMBERS),
            sha,
            count.filter(lambda c: c != "0"),
        ),
        st.builds(
            lambda n, s, h, c: SEP.join(["FILE_META", n, s, h, c]),
            name,
            count,
            sha,
            st.sampled_from(("0", *_BAD_NUMBERS)),
        ),
    )
    bad_sha = st.one_of(
        st.builds(
            lambda t, h: f"{t}{SEP}{h}",
            st.sampled_from(["FILE_EXISTS", "FILE_RECEIVED", "FILE_PROOF"]),
            st.sampled_from(_BAD_SHA),
        ),
        st.builds(
            lambda n, s, h, c: SEP.join(["FILE_META", n, s, h, c]),
            name,
            count,
            st.sampled_from(_BAD_SHA),
            count,
        ),
    )
    broken_meta = st.one_of(
        st.builds(lambda s, h: SEP.join(["FILE_META", "", s, h, "64"]), count, sha),
        st.builds(
            lambda n, s, h: SEP.join(["FILE_META", n, s, h]),
            legacy_name.filter(lambda n: ":" not in n),
            count,
            sha,
        ),
        st.builds(lambda n: f"FILE_META{SEP}{n}", st.sampled_from(["train.zip", "a b", ""])),
        st.builds(
            lambda n, s, g: f"FILE_META{SEP}{n}:{s}:{g}",
            st.sampled_from(["train.zip", "a b", "中文"]),
            st.sampled_from([b for b in _BAD_NUMBERS if b and ":" not in b and "\n" not in b]),
            _NO_COLON_TEXT,
        ),
        st.builds(lambda s: f"FILE_META{SEP}a{SEP}b:{s}:", count),  # a legacy name with '::'
        st.builds(lambda s: f"FILE_META{SEP}na\nme:{s}:", count),
        st.builds(lambda s: f"FILE_META{SEP}name:{s}:g\rui", count),
        st.just(f"FILE_META{SEP}:5:"),  # an empty legacy name
    )
    nonce = sha.map(lambda h: h[:32])
    broken_proof = st.one_of(
        st.builds(  # a nonce that is not 32 hexadecimal digits
            lambda n: f"FILE_PROOF_REQUEST{SEP}{n}{SEP}0+1",
            st.sampled_from(["", "0" * 31, "0" * 33, "g" * 32, "0" * 64, " " + "0" * 31]),
        ),
        st.builds(  # ranges outside the grammar or the bounds
            lambda n, r: f"FILE_PROOF_REQUEST{SEP}{n}{SEP}{r}",
            nonce,
            st.sampled_from(_BAD_PROOF_RANGES),
        ),
        st.builds(  # more ranges than a request may name
            lambda n, k: f"FILE_PROOF_REQUEST{SEP}{n}{SEP}" + ",".join(["0+1"] * k),
            nonce,
            st.integers(17, 40),
        ),
        nonce.map(lambda n: f"FILE_PROOF_REQUEST{SEP}{n}"),  # no ranges
        nonce.map(lambda n: f"FILE_PROOF_REQUEST{SEP}{n}{SEP}0+1{SEP}x"),
    )
    single_line = st.builds(
        lambda a, brk, b: f"JOB_LOG{SEP}{a}{brk}{b}",
        free_text(max_bytes=40) | st.just(""),
        st.sampled_from(["\n", "\r", "\r\n"]),
        free_text(max_bytes=40) | st.just(""),
    )
    empty_required = st.sampled_from(
        [
            f"SHARED_INPUT_PATH{SEP}",
            f"SHARED_OUTPUT_PATH{SEP}",
            f"PATH_ERROR{SEP}",
            f"JOB_FAILED{SEP}job-1{SEP}",
            f"JOB_FAILED{SEP}job-1",
            f"PATH_VALIDATED{SEP}",
            f"PATH_VALIDATED{SEP}both",
            f"PATH_VALIDATED{SEP}Input",
            f"PATH_VALIDATED{SEP}input ",
            f"PATH_VALIDATED{SEP}input{SEP}x",
        ]
    )
    bad_codes = st.builds(
        lambda t, c, d: f"{t}{SEP}{c}{SEP}{d}",
        st.sampled_from(["PROTOCOL_ERROR", "TRANSFER_ERROR"]),
        st.sampled_from(_BAD_CODES),
        free_text(max_bytes=30) | st.just(""),
    )
    metrics = _bad_metrics_json().map(lambda body: f"JOB_METRICS{SEP}{body}")

    top = limits.max_text_frame_bytes
    oversize_text = st.builds(
        lambda prefix, seed, extra: prefix + fill(seed, top - utf8_len(prefix) + extra),
        st.sampled_from([*(f"{t}{SEP}" for t in types), "", "NOPE::"]),
        st.sampled_from(["x", "é", "中", "😀", "::", ":", "a:", "["]),
        st.integers(1, 8),
    )
    oversize_path = st.builds(
        lambda t, seed, extra: (
            f"{t}{SEP}" + fill(seed + "/", limits.max_path_bytes + extra, pad="p")
        ),
        st.sampled_from(["SHARED_INPUT_PATH", "SHARED_OUTPUT_PATH"]),
        st.sampled_from(["a", "é", "中文", "a::b", "😀"]),
        st.integers(1, 8),
    )
    too_many_fields = st.builds(
        lambda t, field, extra: f"{t}{SEP}" + SEP.join([field] * (limits.max_fields + extra - 1)),
        st.sampled_from([*types, "NOPE"]),
        st.sampled_from(["", "a", "x y", "1", "é", "job-1"]),
        st.integers(1, 8),
    )
    oversize_binary = st.builds(
        lambda seed, extra: repeat_bytes(seed, limits.max_binary_frame_bytes + extra),
        st.binary(min_size=1, max_size=16),
        st.integers(1, 64),
    )

    return st.one_of(
        unknown.map(pair(ErrorCode.UNKNOWN_MESSAGE)),
        fieldless_with_fields.map(pair(malformed)),
        legacy_start.map(pair(malformed)),
        missing.map(pair(malformed)),
        bad_ids.map(pair(ErrorCode.INVALID_JOB_ID)),
        bad_numbers.map(pair(malformed)),
        bad_sha.map(pair(malformed)),
        broken_meta.map(pair(malformed)),
        broken_proof.map(pair(malformed)),
        single_line.map(pair(malformed)),
        empty_required.map(pair(malformed)),
        bad_codes.map(pair(malformed)),
        metrics.map(pair(malformed)),
        oversize_text.map(pair(ErrorCode.FRAME_TOO_LARGE)),
        oversize_path.map(pair(ErrorCode.PATH_TOO_LONG)),
        oversize_binary.map(lambda b: (b, ErrorCode.FRAME_TOO_LARGE)),
        too_many_fields.map(pair(ErrorCode.TOO_MANY_FIELDS)),
        malformed_relay_frames_with_codes().map(lambda p: _expect(p[0], p[1], limits)),
    )


def malformed_frames(*, limits: Limits = DEFAULT_LIMITS) -> SearchStrategy[str | bytes]:
    """Text and binary frames that :func:`protocol.codec.decode` must refuse with a
    ``RemoteProtocolError`` (see :func:`malformed_frames_with_codes` for what is covered)."""
    return malformed_frames_with_codes(limits=limits).map(lambda pair: pair[0])
