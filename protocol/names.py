"""The one checker of names and relative paths that cross the wire (sans-IO).

A *name* is a base name a sender announces (``FILE_META``), a ZIP member's component
or a saved file's name; a *relative path* is what a client sends in
``SHARED_INPUT_PATH`` / ``SHARED_OUTPUT_PATH`` (and a ZIP member name). Both are
checked lexically here, component by component, before anything on disk is looked at.
Resolving symlinks inside a root is the file layer's job (``rtc_worker.storage``).

Refused (:class:`InvalidNameError`): text that is not valid UTF-8 (lone surrogates);
NUL and every control character (C0, DEL, C1); more than ``max_path_bytes`` /
``max_name_bytes`` bytes; absolute and UNC paths; Windows drives (``C:``); any ``..``
component; and look-alikes whose NFKC form is ``.`` or ``..`` or holds a separator
(``"．．"``, ``"x／y"``), which another tool might fold into a traversal.

Source: croc ``src/receivefs/path.go`` (normalize, then check every component);
magic-wormhole keeps base names only; PROTOCOL.md section 3.1.
"""

from __future__ import annotations

import re
import unicodedata

from protocol.limits import DEFAULT_LIMITS, Limits

__all__ = ["InvalidNameError", "check_name", "split_path"]

# C0 controls, DEL and C1 controls: exactly the Unicode category "Cc".
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DRIVE = re.compile(r"^[A-Za-z]:")


class InvalidNameError(ValueError):
    """A name or relative path the protocol refuses.

    Attributes:
        detail: why, for logs and for TRANSFER_ERROR details (it quotes only what the
            peer sent).
    """

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


def _utf8_len(text: str) -> int:
    try:
        return len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise InvalidNameError("not valid UTF-8") from None


def _check_component(component: str, limits: Limits) -> str:
    """Checks shared by names and path components; returns the NFKC form."""
    if _utf8_len(component) > limits.max_name_bytes:
        raise InvalidNameError(f"a name longer than {limits.max_name_bytes} bytes")
    folded = unicodedata.normalize("NFKC", component)
    if any(sep in text for text in (component, folded) for sep in ("/", "\\")):
        raise InvalidNameError(f"{component!r} has a directory part")
    return folded


def check_name(name: str, limits: Limits = DEFAULT_LIMITS) -> None:
    """Check a base name (no directory part) as a receiver or a file saver accepts it.

    Raises:
        InvalidNameError: empty; not UTF-8; over ``limits.max_name_bytes`` bytes; a
            control character; ``.``/``..`` or a look-alike (also with surrounding
            spaces); a directory part (``/``, ``\\`` or a look-alike); a drive prefix
            (a letter and ``:``).
    """
    if not isinstance(name, str) or not name:
        raise InvalidNameError("empty name")
    if _CONTROL.search(name):
        raise InvalidNameError("name contains a control character")
    folded = _check_component(name, limits)
    if folded.strip() in (".", "..") or name in (".", ".."):
        raise InvalidNameError("name is . or ..")
    if any(len(text) >= 2 and text[1] == ":" and text[0].isalpha() for text in (name, folded)):
        raise InvalidNameError("name has a drive prefix")


def split_path(path: str, limits: Limits = DEFAULT_LIMITS) -> tuple[str, ...]:
    """Check a client's relative path and split it into components.

    Backslashes count as separators; empty and ``.`` components are dropped, so ``""``
    and ``"."`` give ``()`` (the root itself). Names are not otherwise normalized: Linux
    names are byte strings and the client's name is used as it is.

    Returns:
        The components, in order.

    Raises:
        InvalidNameError: anything in the module docstring's list (the wire answer is
            ``PATH_ERROR::Path outside shared storage: {path}``).
    """
    if not isinstance(path, str):
        raise InvalidNameError("path is not text")
    if _CONTROL.search(path):
        raise InvalidNameError("control character in path")
    if _utf8_len(path) > limits.max_path_bytes:
        raise InvalidNameError(f"path longer than {limits.max_path_bytes} bytes")
    normalized = path.replace("\\", "/")
    if normalized.startswith("/"):
        raise InvalidNameError("absolute or UNC path")
    if _DRIVE.match(normalized):
        raise InvalidNameError("Windows drive in path")
    parts: list[str] = []
    for component in normalized.split("/"):
        if component in ("", "."):
            continue
        if component == "..":
            raise InvalidNameError("parent directory reference")
        folded = _check_component(component, limits)
        if folded in (".", "..") or _CONTROL.search(folded):
            raise InvalidNameError(f"component {component!r} is a look-alike of {folded!r}")
        parts.append(component)
    return tuple(parts)
