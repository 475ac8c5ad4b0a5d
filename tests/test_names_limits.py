"""The lexical checker of names and relative paths, the bounds, and the two error
directions."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import DEFAULT_LIMITS, Limits
from protocol.errors import (
    ErrorCode,
    LocalProtocolError,
    ProtocolError,
    RemoteProtocolError,
)
from protocol.names import InvalidNameError, check_name, split_path

BAD_NAMES = [
    "",
    "a/b",
    "/etc/passwd",
    "a\\b",
    "..",
    ".",
    " .. ",
    "a\x00b",
    "a\x1fb",
    "tab\there",
    "a\x7fb",
    "a\x85b",  # C1 control
    "C:x",
    "c:",
    "Ｃ：x",  # full-width drive prefix, NFKC: "C:x"
    "ｃ:x",  # full-width letter only
    "C：x",  # full-width colon only
    "a/../b",
    "x" * 256,
    "é" * 128,  # 256 bytes of UTF-8
    "．．",  # NFKC: ".."
    "．",  # NFKC: "."
    "‥",  # two dot leader, NFKC: ".."
    "a／b",  # NFKC: "a/b"
    "a＼b",  # NFKC: "a\\b"
    "\ud800.bin",  # a lone surrogate is not UTF-8
]

GOOD_NAMES = [
    "données.zip",
    "模型.bin",
    "a b.zip",
    "name::with::colons.zip",
    ".hidden",
    "...",
    "a..b",
    "x" * 255,
    "é" * 127 + "x",  # 255 bytes of UTF-8
    "1:x",
    "１：x",  # NFKC: "1:x", a digit is no drive letter
    "file.tar.gz",
]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_check_name_accepts_ordinary_names(name: str) -> None:
    assert check_name(name) is None


@pytest.mark.parametrize("name", BAD_NAMES)
def test_check_name_refuses(name: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        check_name(name)
    assert info.value.detail and str(info.value) == info.value.detail
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    ("name", "detail"),
    [
        ("", "empty name"),
        ("a\x00b", "name contains a control character"),
        ("x" * 256, "a name longer than 255 bytes"),
        ("a/b", "'a/b' has a directory part"),
        ("..", "name is . or .."),
        ("C:x", "name has a drive prefix"),
        ("\ud800", "not valid UTF-8"),
    ],
)
def test_check_name_says_why(name: str, detail: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        check_name(name)
    assert info.value.detail == detail


def test_check_name_refuses_what_is_not_text() -> None:
    with pytest.raises(InvalidNameError, match="empty name"):
        check_name(b"bytes.bin")  # type: ignore[arg-type]


def test_the_name_bound_is_configurable() -> None:
    short = Limits(max_name_bytes=4)
    check_name("abcd", short)
    with pytest.raises(InvalidNameError, match="longer than 4 bytes"):
        check_name("abcde", short)
    with pytest.raises(InvalidNameError):
        check_name("ééé", short)  # 6 bytes


@pytest.mark.parametrize(
    ("path", "parts"),
    [
        ("inputs/train.zip", ("inputs", "train.zip")),
        ("a//b/./c/", ("a", "b", "c")),
        ("a\\b", ("a", "b")),
        ("", ()),
        (".", ()),
        ("./", ()),
        ("x/a::b/c d/中文.zip", ("x", "a::b", "c d", "中文.zip")),
        ("a::b", None),  # "a:" reads as a drive
        ("1:x", ("1:x",)),
        ("x/C:y", ("x", "C:y")),  # only a path's start is a drive
        ("...", ("...",)),
        (".hidden/a..b", (".hidden", "a..b")),
    ],
)
def test_split_path_gives_the_components(path: str, parts: tuple[str, ...] | None) -> None:
    if parts is None:
        with pytest.raises(InvalidNameError, match="Windows drive"):
            split_path(path)
    else:
        assert split_path(path) == parts


@pytest.mark.parametrize(
    ("path", "detail"),
    [
        ("/etc/passwd", "absolute or UNC path"),
        ("\\\\server\\share", "absolute or UNC path"),
        ("C:\\x", "Windows drive in path"),
        ("c:x", "Windows drive in path"),
        ("..", "parent directory reference"),
        ("a/../../b", "parent directory reference"),
        ("a\\..\\b", "parent directory reference"),
        ("a/\x00/b", "control character in path"),
        ("a\nb", "control character in path"),
        ("a/．．/b", "component '．．' is a look-alike of '..'"),
        ("x／y", "'x／y' has a directory part"),
        ("a/" + "x" * 256, "a name longer than 255 bytes"),
        ("a/" * 2049, "path longer than 4096 bytes"),
        ("a/\udc80", "not valid UTF-8"),
    ],
)
def test_split_path_refuses(path: str, detail: str) -> None:
    with pytest.raises(InvalidNameError) as info:
        split_path(path)
    assert info.value.detail == detail


def test_split_path_refuses_what_is_not_text() -> None:
    with pytest.raises(InvalidNameError, match="path is not text"):
        split_path(None)  # type: ignore[arg-type]


def test_the_path_bound_is_configurable_and_counts_bytes() -> None:
    limits = Limits(max_path_bytes=4, max_name_bytes=2)
    assert split_path("éé", Limits(max_path_bytes=4)) == ("éé",)
    with pytest.raises(InvalidNameError, match="path longer than 4 bytes"):
        split_path("ééé", limits)
    with pytest.raises(InvalidNameError, match="longer than 2 bytes"):
        split_path("abc", limits)


@settings(max_examples=200, deadline=None)
@given(st.text(st.characters(blacklist_categories=()), max_size=40))
def test_names_and_paths_are_accepted_or_refused_with_invalid_name_error(text: str) -> None:
    for check in (check_name, split_path):
        try:
            result = check(text)
        except InvalidNameError as exc:
            assert exc.detail
        else:
            if check is split_path:
                assert isinstance(result, tuple)
                for part in result:  # every component is a good name, or looks like a drive
                    try:
                        check_name(part)
                    except InvalidNameError as exc:
                        assert exc.detail == "name has a drive prefix", (text, part)


# ===================================================================== limits


def test_the_defaults() -> None:
    assert Limits() == DEFAULT_LIMITS
    assert dataclasses.asdict(DEFAULT_LIMITS) == {
        "max_text_frame_bytes": 65536,
        "max_binary_frame_bytes": 262144,
        "max_path_bytes": 4096,
        "max_name_bytes": 255,
        "max_fields": 1024,
        "max_file_bytes": 10 * 1024**3,
        "chunk_bytes": 65536,
        "progress_interval_s": 0.5,
        "proof_ranges": 8,
        "proof_range_bytes": 4096,
        "proof_timeout_s": 10.0,
        "max_relay_parts": 8,
    }


@pytest.mark.parametrize(
    "field",
    [
        "max_text_frame_bytes",
        "max_binary_frame_bytes",
        "max_path_bytes",
        "max_name_bytes",
        "max_fields",
        "max_file_bytes",
        "chunk_bytes",
        "proof_ranges",
        "proof_range_bytes",
    ],
)
@pytest.mark.parametrize("value", [0, -1, True, 1.5, "10", None])
def test_every_size_bound_is_a_positive_integer(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=f"Limits.{field} must be a positive integer"):
        Limits(**{field: value})


@pytest.mark.parametrize("value", [-0.1, float("nan")])
def test_the_progress_interval_is_not_negative(value: float) -> None:
    with pytest.raises(ValueError, match="progress_interval_s must be >= 0"):
        Limits(progress_interval_s=value)
    assert Limits(progress_interval_s=0).progress_interval_s == 0


def test_the_proof_bounds_stay_within_the_grammar_and_the_deadline_is_positive() -> None:
    assert Limits(proof_ranges=16, proof_range_bytes=65536).proof_ranges == 16
    for bad in ({"proof_ranges": 17}, {"proof_range_bytes": 65537}):
        rule = r"proof_ranges <= 16 and .*proof_range_bytes <= 65536"
        with pytest.raises(ValueError, match=rule):
            Limits(**bad)  # type: ignore[arg-type]
    for value in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match="proof_timeout_s must be > 0"):
            Limits(proof_timeout_s=value)


def test_limits_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        DEFAULT_LIMITS.max_fields = 2  # type: ignore[misc]


# ===================================================================== errors


def test_the_base_error_is_abstract() -> None:
    with pytest.raises(TypeError, match="LocalProtocolError or RemoteProtocolError"):
        ProtocolError(ErrorCode.INTERNAL_ERROR, "abstract")


@pytest.mark.parametrize("cls", [LocalProtocolError, RemoteProtocolError])
def test_both_directions_carry_a_code_and_a_detail(cls: type[ProtocolError]) -> None:
    error = cls(ErrorCode.WORKER_BUSY, "try later")
    assert (error.code, error.detail) == (ErrorCode.WORKER_BUSY, "try later")
    assert str(error) == "WORKER_BUSY: try later"
    assert isinstance(error, ProtocolError)


def test_a_local_error_is_blamed_on_the_peer_with_the_same_code() -> None:
    local = LocalProtocolError(ErrorCode.MALFORMED_FRAME, "bad")
    remote = local.as_remote()
    assert type(remote) is RemoteProtocolError
    assert (remote.code, remote.detail) == (local.code, local.detail)
