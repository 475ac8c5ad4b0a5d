"""HTTP byte ranges of a download (RFC 9110 section 14): which bytes of a representation
one ``GET`` asks for, from its ``Range`` and ``If-Range`` header fields.

The storage service serves a single range (``bytes=a-b``, ``bytes=a-``, the suffix
``bytes=-n``) as 206 Partial Content; every other well-formed request gets the whole
representation (200):

* no ``Range``, or a unit other than ``bytes`` (section 14.2: MUST be ignored);
* a malformed ranges-specifier, or an int-range whose last-pos is below its first-pos
  (section 14.1.1: invalid; section 14.2: the server MAY ignore it);
* **several ranges** (``bytes=0-9,20-29``): section 14.2 lets a server ignore the field,
  and a single-part answer is simpler for every client than ``multipart/byteranges``;
* an ``If-Range`` that is not a strong match of the current entity tag (section
  13.1.5): an entity tag of other content, a weak one, or a date (the service sends no
  ``Last-Modified``, so a date never matches);
* a suffix range of an empty representation (satisfiable by section 14.1.1, but there
  is no byte to name in ``Content-Range``).

A single range that starts at or past the end (or a suffix of length 0) is not
satisfiable: :class:`RangeNotSatisfiable`, answered 416 with ``Content-Range: bytes
*/<size>`` (section 15.5.17).

Sizes and offsets are bytes. Sans-IO: strings in, numbers out.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ByteRange", "RangeNotSatisfiable", "select_range", "strong_etag"]

_INT_RANGE = re.compile(r"([0-9]+)-([0-9]*)")
_SUFFIX_RANGE = re.compile(r"-([0-9]+)")
_OWS = " \t"
_MAX_DIGITS = 19
"""Numbers with more digits are larger than any size (and than ``int()`` accepts)."""


def strong_etag(sha256: str) -> str:
    """The strong entity tag of content with this sha256 (RFC 9110 section 8.8.3):
    ``"<sha256>"`` with the quotes. The content behind a sha256 never changes, so the
    tag is strong."""
    return f'"{sha256}"'


@dataclass(frozen=True)
class ByteRange:
    """The bytes ``[start, end)`` of a representation of ``size`` bytes.

    Attributes:
        start: the first byte, from 0.
        end: the last byte plus one (``end - start`` bytes, at least one).
        size: the whole representation's size.
    """

    start: int
    end: int
    size: int

    @property
    def length(self) -> int:
        """How many bytes the range holds."""
        return self.end - self.start

    @property
    def whole(self) -> bool:
        """Whether the range is every byte of the representation."""
        return self.start == 0 and self.end == self.size

    def content_range(self) -> str:
        """The ``Content-Range`` of a 206 answer: ``bytes <first>-<last>/<size>``
        (both inclusive; RFC 9110 section 14.4)."""
        return f"bytes {self.start}-{self.end - 1}/{self.size}"


class RangeNotSatisfiable(Exception):
    """The request's single range names no byte of the representation (416).

    Attributes:
        size: the representation's size, bytes.
    """

    def __init__(self, size: int) -> None:
        super().__init__(f"the range is not satisfiable: the content has {size} bytes")
        self.size = size

    def content_range(self) -> str:
        """The ``Content-Range`` of the 416 answer: ``bytes */<size>``."""
        return f"bytes */{self.size}"


def _number(digits: str) -> int:
    digits = digits.lstrip("0") or "0"
    return int(digits) if len(digits) <= _MAX_DIGITS else 10**_MAX_DIGITS


def _is_strong_match(if_range: str, etag: str) -> bool:
    """RFC 9110 section 8.8.3.2: both tags strong and their opaque-tags equal."""
    value = if_range.strip(_OWS)
    return not value.startswith("W/") and value == etag


def select_range(
    range_header: str | None, if_range: str | None, etag: str, size: int
) -> ByteRange | None:
    """The range a ``GET`` asks for (see the module docstring).

    Args:
        range_header: the ``Range`` field's value, or ``None``.
        if_range: the ``If-Range`` field's value, or ``None``.
        etag: the representation's current strong entity tag (:func:`strong_etag`).
        size: the representation's size, bytes.

    Returns:
        The single range to answer with 206, or ``None``: answer the whole (200).

    Raises:
        RangeNotSatisfiable: the single range names no byte of the representation.

    Source: RFC 9110 sections 13.1.5 (If-Range), 13.2.2 (the order: If-Range before
    Range), 14.1 (byte ranges), 14.2 (Range).
    """
    if range_header is None:
        return None
    if if_range is not None and not _is_strong_match(if_range, etag):
        return None
    unit, equals, specifier = range_header.strip(_OWS).partition("=")
    if not equals or unit.lower() != "bytes":
        return None
    specs = [spec.strip(_OWS) for spec in specifier.split(",")]
    specs = [spec for spec in specs if spec]  # a list may hold empty elements (5.6.1)
    if len(specs) != 1:
        return None  # none, or several ranges: the whole representation
    spec = specs[0]
    if (found := _INT_RANGE.fullmatch(spec)) is not None:
        first = _number(found.group(1))
        last = _number(found.group(2)) if found.group(2) else None
        if last is not None and last < first:
            return None  # invalid: ignored
        if first >= size:
            raise RangeNotSatisfiable(size)
        end = size if last is None else min(last + 1, size)
        return ByteRange(first, end, size)
    if (found := _SUFFIX_RANGE.fullmatch(spec)) is not None:
        length = _number(found.group(1))
        if length == 0:
            raise RangeNotSatisfiable(size)
        if size == 0:
            return None
        return ByteRange(max(0, size - length), size, size)
    return None  # other-range or garbage: ignored
