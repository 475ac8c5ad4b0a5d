"""``signaling.byte_ranges``: the Range and If-Range rules of RFC 9110 section 14, as a
table of requests and the bytes they get, and a property over every single range."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from signaling.byte_ranges import ByteRange, RangeNotSatisfiable, select_range, strong_etag

SHA = "ab" * 32
ETAG = strong_etag(SHA)
SIZE = 1000


def test_the_entity_tag_is_the_quoted_sha256() -> None:
    assert strong_etag(SHA) == '"' + SHA + '"'


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("bytes=0-99", (0, 100)),
        ("bytes=100-", (100, SIZE)),
        ("bytes=999-999", (999, SIZE)),
        ("bytes=990-5000", (990, SIZE)),  # last-pos past the end: up to the end
        ("bytes=-10", (990, SIZE)),  # suffix
        ("bytes=-5000", (0, SIZE)),  # a suffix longer than the content: all of it
        ("BYTES=0-0", (0, 1)),  # the unit is case-insensitive
        ("bytes=0-0, ", (0, 1)),  # empty list elements are ignored
        ("bytes=000-0009", (0, 10)),
        ("bytes=0-" + "9" * 5000, (0, SIZE)),  # a huge number is no crash
    ],
)
def test_a_single_range(header: str, expected: tuple[int, int]) -> None:
    span = select_range(header, None, ETAG, SIZE)
    assert span == ByteRange(*expected, SIZE)


@pytest.mark.parametrize(
    "header",
    [
        None,
        "items=0-5",  # a unit we do not know: ignored (section 14.2)
        "bytes=5-2",  # last-pos below first-pos: invalid, ignored
        "bytes=0-1,5-6",  # several ranges: the whole content (documented choice)
        "bytes=-1,0-0",
        "bytes=",
        "bytes=-",
        "bytes=a-b",
        "bytes=1-2-3",
        "bytes=+1-2",
        "bytes=١-٢",  # non-ASCII digits are no digits
        "bytes =0-5",
        "bytes",
        "",
    ],
)
def test_what_gets_the_whole_content(header: str | None) -> None:
    assert select_range(header, None, ETAG, SIZE) is None


@pytest.mark.parametrize(
    "header", ["bytes=1000-", "bytes=1000-2000", "bytes=-0", "bytes=" + "9" * 40 + "-"]
)
def test_what_is_not_satisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable) as info:
        select_range(header, None, ETAG, SIZE)
    assert info.value.content_range() == f"bytes */{SIZE}"


def test_an_empty_content() -> None:
    with pytest.raises(RangeNotSatisfiable):
        select_range("bytes=0-", None, ETAG, 0)
    assert select_range("bytes=-5", None, ETAG, 0) is None  # satisfiable, but no byte


@pytest.mark.parametrize(
    ("if_range", "ranged"),
    [
        (ETAG, True),
        (f" {ETAG} ", True),
        (f"W/{ETAG}", False),  # a weak tag never matches strongly
        (strong_etag("cd" * 32), False),  # other content
        (SHA, False),  # unquoted: not this entity tag
        ("Sun, 06 Nov 1994 08:49:37 GMT", False),  # a date: no Last-Modified to match
        ("", False),
    ],
)
def test_if_range(if_range: str, ranged: bool) -> None:
    span = select_range("bytes=10-19", if_range, ETAG, SIZE)
    assert span == (ByteRange(10, 20, SIZE) if ranged else None)


def test_a_failed_if_range_wins_over_an_unsatisfiable_range() -> None:
    assert select_range("bytes=5000-", strong_etag("cd" * 32), ETAG, SIZE) is None


@given(
    size=st.integers(0, 10**12),
    first=st.integers(0, 10**13),
    last=st.none() | st.integers(0, 10**13),
    suffix=st.booleans(),
)
def test_every_answer_names_bytes_of_the_content(
    size: int, first: int, last: int | None, suffix: bool
) -> None:
    header = f"bytes=-{first}" if suffix else f"bytes={first}-{'' if last is None else last}"
    try:
        span = select_range(header, None, ETAG, size)
    except RangeNotSatisfiable:
        assert first == 0 if suffix else first >= size
        return
    if span is None:  # ignored: invalid, or a suffix of an empty content
        assert (suffix and size == 0) or (last is not None and last < first)
        return
    assert 0 <= span.start < span.end <= size
    first_byte, last_byte = span.content_range().removeprefix("bytes ").split("/")[0].split("-")
    assert (int(first_byte), int(last_byte) + 1) == (span.start, span.end)
    if suffix:
        assert span.end == size and span.length == min(first, size)
    else:
        assert span.start == first
        assert span.end == (size if last is None else min(last + 1, size))
