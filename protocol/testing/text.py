"""Field values for the protocol's hypothesis strategies: text, paths, names, ids.

Large values (64 KiB frames, 4 KiB paths) are built by repeating a small drawn seed,
so generation stays fast and within hypothesis' per-example budget. Every value here is
valid where its field is; :mod:`protocol.testing.malformed` breaks them on purpose.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata

from hypothesis import strategies as st
from hypothesis.strategies import SearchStrategy

from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.messages import SEP
from protocol.names import InvalidNameError, check_name

__all__ = [
    "MAX_COUNT",
    "MAX_NAME_BYTES",
    "counts",
    "file_names",
    "fill",
    "fit",
    "free_text",
    "job_ids",
    "paths",
    "repeat_bytes",
    "separators_left",
    "sha256_hex",
    "sha256_of",
    "sized",
    "thin",
    "utf8_len",
    "worker_job_ids",
]

#: The largest value of a {1,18}-digit count field.
MAX_COUNT = 10**18 - 1
#: The receiver's bound on a base name, bytes (``Limits.max_name_bytes``).
MAX_NAME_BYTES = DEFAULT_LIMITS.max_name_bytes
_DRIVE = re.compile(r"[A-Za-z]:")


def _acceptable(name: str) -> bool:
    try:
        check_name(name)
    except InvalidNameError:
        return False
    return True


def utf8_len(text: str) -> int:
    """Length of ``text`` in bytes of UTF-8 (lone surrogates counted as 3)."""
    return len(text.encode("utf-8", "surrogatepass"))


def fit(text: str, max_bytes: int) -> str:
    """The longest prefix of ``text`` that is at most ``max_bytes`` of UTF-8."""
    data = text.encode("utf-8", "surrogatepass")
    if len(data) <= max_bytes:
        return text
    return data[: max(0, max_bytes)].decode("utf-8", "ignore")


def fill(seed: str, n_bytes: int, pad: str = "x") -> str:
    """``seed`` repeated to exactly ``n_bytes`` of UTF-8 (topped up with ``pad``); empty
    for ``n_bytes <= 0``."""
    seed = seed or pad
    text = fit(seed * (n_bytes // max(1, utf8_len(seed)) + 1), n_bytes)
    return text + pad * (n_bytes - utf8_len(text))


def sized(
    base: SearchStrategy[str], min_bytes: int, max_bytes: int, *, sep: str = ""
) -> SearchStrategy[str]:
    """``base`` clamped to [min_bytes, max_bytes] bytes of UTF-8, mixed with long values
    (a drawn seed repeated to a drawn length, and to exactly ``max_bytes``)."""
    if max_bytes < min_bytes:
        raise ValueError(f"max_bytes {max_bytes} < min_bytes {min_bytes}")

    def clamp(text: str) -> str:
        text = fit(text, max_bytes)
        return text if utf8_len(text) >= min_bytes else fill(text + sep, min_bytes)

    clamped = base.map(clamp)
    return st.one_of(
        clamped,
        clamped,
        clamped,
        st.builds(lambda s, n: fill(s + sep, n), base, st.integers(min_bytes, max_bytes)),
        base.map(lambda s: fill(s + sep, max_bytes)),
    )


def sha256_of(data: bytes) -> str:
    """The sha256 of ``data``, lowercase hex."""
    return hashlib.sha256(data).hexdigest()


def repeat_bytes(seed: bytes, n: int) -> bytes:
    """``seed`` repeated to exactly ``n`` bytes."""
    seed = seed or b"\x00"
    return (seed * (n // len(seed) + 1))[:n]


def thin(text: str, max_seps: int) -> str:
    """``text`` with every ``::`` after the first ``max_seps`` turned into ``--``: at most
    ``max_seps`` separators, and the same length."""
    parts = text.split(SEP)
    keep = max(0, max_seps) + 1
    if len(parts) <= keep:
        return text
    return SEP.join(parts[:keep]) + "--" + "--".join(parts[keep:])


def separators_left(limits: Limits, fields: int) -> int:
    """The ``::`` a free field may hold in a frame of ``fields`` fields of its own, so
    that the frame stays within ``limits.max_fields``."""
    return limits.max_fields - fields


# ===================================================================== field values

_LINE_CHARS = st.characters(exclude_categories=("Cs", "Cc", "Zl", "Zp"))
_TEXT_PIECES = (
    ":",
    "::",
    ":::",
    " ",
    "  ",
    "\t",
    "-",
    "_",
    ".",
    "é",
    "ß",
    "ü",
    "中文",
    "Ω",
    "😀",
    "\u200b",
    "\u202e",
    "a",
    "Z",
    "0",
    "9",
    "{",
    "}",
    "%s",
    "\\",
    "/",
)
_NAME_PIECES = (
    "train",
    "data",
    ".zip",
    ".tar.gz",
    "v2",
    "résumé",
    "中文",
    "😀",
    "Ω",
    "ß",
    " ",
    "-",
    "_",
    ".",
    "::",
    ":",
    "x::y",
    "(1)",
    "∕",
    "⁄",
    "．",
)
_PATH_COMPONENTS = (
    "inputs",
    "outputs",
    "train.zip",
    "run 1",
    "a::b",
    "::",
    ":",
    "x:y",
    "data::v2",
    "ü",
    "中文.zip",
    "😀",
    "with space",
    " ",
    "résumé.pdf",
    "Ω",
    ".hidden",
    "a.b.c",
)


_ID_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-"
_JOB_IDS = st.one_of(
    st.text(st.sampled_from(_ID_CHARS), min_size=1, max_size=64).filter(
        lambda t: t.strip(".") != ""
    ),
    st.sampled_from(["job-0123456789ab", "a", "A" * 64, ".a", "a..", "-", "_", "0" * 64]),
)
#: One character of single-line text: often a separator, a space or a multi-byte one.
_LINE_CHAR = st.one_of(
    st.sampled_from(list(":: \t-_.éßü中Ω😀\u200b\u202eaZ09{}%/\\")),
    _LINE_CHARS,
)
_FREE_BASE = st.one_of(
    st.lists(st.sampled_from(_TEXT_PIECES), max_size=12).map("".join),
    st.text(_LINE_CHAR, max_size=24),
)
_COMPONENT = st.one_of(
    st.sampled_from(_PATH_COMPONENTS),
    st.text(
        st.one_of(
            st.sampled_from(list("::  .-_éü中😀")), _LINE_CHARS.filter(lambda c: c not in "/\\")
        ),
        min_size=1,
        max_size=12,
    ).filter(lambda c: c not in (".", "..")),
)
_PATH_BASE = st.lists(_COMPONENT, min_size=1, max_size=5).map("/".join)
_NAME_BASE = st.lists(
    st.one_of(
        st.sampled_from(_NAME_PIECES),
        st.text(_LINE_CHARS.filter(lambda c: c not in "/\\"), min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=5,
).map(lambda parts: "f" + "".join(parts))


def job_ids() -> SearchStrategy[str]:
    """Valid job ids: ``[A-Za-z0-9._-]{1,64}``, not only dots; including ``.a``, ``-``
    and the 64-character maximum."""
    return _JOB_IDS


def worker_job_ids() -> SearchStrategy[str]:
    """A job id as the worker generates it: ``job-`` and 12 hex digits."""
    return st.binary(min_size=6, max_size=6).map(lambda b: f"job-{b.hex()}")


def free_text(
    *, min_bytes: int = 1, max_bytes: int = 512, max_separators: int | None = None
) -> SearchStrategy[str]:
    """Single-line text (reasons, log lines, details) of ``min_bytes`` to ``max_bytes``
    bytes of UTF-8: ``:``, ``::``, spaces, tabs, unicode (no control characters other
    than tab, no line or paragraph separators, no surrogates); sometimes exactly
    ``max_bytes`` long. At most ``max_separators`` ``::`` if given (the others become
    ``--``)."""
    texts = sized(_FREE_BASE, min_bytes, max_bytes)
    if max_separators is None:
        return texts
    return texts.map(lambda text: thin(text, max_separators))


def paths(
    *, limits: Limits = DEFAULT_LIMITS, min_bytes: int = 1, max_bytes: int | None = None
) -> SearchStrategy[str]:
    """Relative paths as a client sends them: components joined by ``/`` holding ``:``,
    ``::``, spaces and unicode (no ``..``, no leading ``/``, no control characters, every
    component at most a few dozen bytes); from ``min_bytes`` up to ``max_bytes``
    (default and cap: ``limits.max_path_bytes``), sometimes exactly the maximum. At most
    ``limits.max_fields - 5`` ``::`` (the others become ``--``), so that every frame
    carrying a path, JOB_COMPLETE and its five fields included, stays within
    ``limits.max_fields``."""
    cap = limits.max_path_bytes if max_bytes is None else min(max_bytes, limits.max_path_bytes)
    max_seps = separators_left(limits, 5)
    return (
        sized(_PATH_BASE, min_bytes, cap, sep="/")
        .map(lambda path: thin(path, max_seps))
        .filter(_plain_path)
    )


def _plain_path(path: str) -> bool:
    """A path a worker accepts lexically: not empty or absolute, no drive prefix, and no
    component that is (or whose NFKC form is) ``.`` or ``..`` or holds a separator."""
    if not path or path.startswith("/") or _DRIVE.match(path):
        return False
    for part in path.split("/"):
        folded = unicodedata.normalize("NFKC", part)
        if folded in (".", "..") or "/" in folded or "\\" in folded:
            return False
    return True


def sha256_hex(*, allow_upper: bool = False) -> SearchStrategy[str]:
    """64 hexadecimal digits (lowercase; mixed case too with ``allow_upper``)."""
    digests = st.binary(min_size=32, max_size=32).map(bytes.hex)
    if not allow_upper:
        return digests
    return st.one_of(
        digests,
        digests.map(str.upper),
        st.tuples(digests, st.integers(0, 2**64 - 1)).map(
            lambda pair: "".join(
                c.upper() if (pair[1] >> (i % 64)) & 1 else c for i, c in enumerate(pair[0])
            )
        ),
    )


def file_names(*, min_bytes: int = 1, max_bytes: int = MAX_NAME_BYTES) -> SearchStrategy[str]:
    """Base names a receiver accepts (:func:`protocol.transfer.check_name` passes):
    unicode, spaces, ``:`` and ``::`` inside, from ``min_bytes`` to ``max_bytes`` (at most
    255) bytes of UTF-8, sometimes exactly ``max_bytes`` long."""
    max_bytes = min(max_bytes, MAX_NAME_BYTES)
    names = sized(_NAME_BASE, max(1, min_bytes), max_bytes)
    samples = ["train.zip", "v2::g.zip", "résumé 2.pdf", "中文 文件.zip", "..."]
    fitting = [n for n in samples if utf8_len(n) <= max_bytes]
    if min_bytes <= 1 and fitting:
        names = st.one_of(st.sampled_from(fitting), names)
    return names.filter(_acceptable)


def counts(maximum: int = MAX_COUNT) -> SearchStrategy[int]:
    """Counts from 0 to ``maximum``: small ones, any, and the ends."""
    return st.one_of(
        st.integers(0, min(maximum, 1 << 20)),
        st.integers(0, maximum),
        st.sampled_from([0, 1, maximum]),
    )
