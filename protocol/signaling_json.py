"""The JSON text of signaling frames (sans-IO): size, decoding, shape and field errors.

:mod:`protocol.signaling` parses a frame in two steps: :func:`load_object` checks the
text's size in UTF-8 bytes, decodes it as JSON and checks that it is an object with a
known string ``type``; :func:`validate` builds the frame model and turns a validation
error into a :class:`~protocol.signaling_errors.SignalingError` naming the field.
Nothing but ``SignalingError`` leaves either.

Source: PROTOCOL.md section 5 ("Order of checks"); RFC 8259 (JSON), RFC 7493 (I-JSON).
"""

from __future__ import annotations

import json
from typing import Any, NoReturn, TypeVar

from pydantic import TypeAdapter, ValidationError

from protocol.signaling_errors import SignalingError, SignalingErrorCode

__all__ = ["MAX_REF_TYPE_CHARS", "compact_json", "describe", "json_kind", "load_object", "validate"]

MAX_REF_TYPE_CHARS = 64
"""The longest ``ref_type`` an error frame echoes, in characters."""


def compact_json(value: Any) -> str:
    """``value`` as compact JSON text (no spaces, non-ASCII kept, NaN refused).

    Raises:
        ValueError: NaN or infinity, or a lone surrogate cannot be written later.
        TypeError: a value JSON cannot hold.
    """
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def load_object(
    text: str, max_bytes: int | None, known_types: frozenset[str]
) -> tuple[dict[str, Any], str]:
    """Check size, decode JSON, check it is an object with a known string ``type``.

    Args:
        text: the frame as received. max_bytes: limit on its UTF-8 size, in bytes, or
            None for no limit. known_types: the ``type`` values of this direction.

    Returns:
        The decoded object and its ``type``.

    Raises:
        SignalingError: ``FRAME_TOO_LARGE``, ``INVALID_JSON``, ``INVALID_FRAME`` or
            ``UNKNOWN_TYPE``.
    """
    if max_bytes is not None and len(text) * 4 > max_bytes:
        size = len(text.encode("utf-8", "surrogatepass"))
        if size > max_bytes:
            raise SignalingError(
                SignalingErrorCode.FRAME_TOO_LARGE,
                f"frame is {size} bytes; the limit is {max_bytes} bytes",
            )
    try:
        obj = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise SignalingError(SignalingErrorCode.INVALID_JSON, f"invalid JSON: {exc}") from None
    try:
        # Refuse what cannot be written back out (I-JSON, RFC 7493): lone surrogate
        # escapes such as "\ud800" and numbers that overflow to infinity.
        compact_json(obj).encode("utf-8")
    except (ValueError, RecursionError) as exc:
        raise SignalingError(
            SignalingErrorCode.INVALID_JSON, f"JSON that cannot be relayed: {exc}"
        ) from None
    if not isinstance(obj, dict):
        raise SignalingError(
            SignalingErrorCode.INVALID_FRAME, f"frame must be a JSON object, not {json_kind(obj)}"
        )
    if "type" not in obj:
        raise SignalingError(SignalingErrorCode.INVALID_FRAME, "missing field 'type'")
    frame_type = obj["type"]
    if not isinstance(frame_type, str):
        raise SignalingError(
            SignalingErrorCode.INVALID_FRAME,
            f"field 'type' must be a string, not {json_kind(frame_type)}",
        )
    if frame_type not in known_types:
        shown = frame_type[:MAX_REF_TYPE_CHARS]
        raise SignalingError(
            SignalingErrorCode.UNKNOWN_TYPE,
            f"unknown frame type {shown!r}; expected one of {sorted(known_types)}",
            ref_type=shown,
        )
    return obj, frame_type


_FrameT = TypeVar("_FrameT")


def validate(adapter: TypeAdapter[_FrameT], obj: dict[str, Any], frame_type: str) -> _FrameT:
    """Build the frame model of ``obj`` with ``adapter``.

    Raises:
        SignalingError: ``INVALID_FRAME``, naming the first invalid field.
    """
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        raise SignalingError(
            SignalingErrorCode.INVALID_FRAME, describe(exc, frame_type), ref_type=frame_type
        ) from None
    except RecursionError:
        raise SignalingError(
            SignalingErrorCode.INVALID_FRAME, "frame is nested too deeply", ref_type=frame_type
        ) from None


def describe(exc: ValidationError, frame_type: str) -> str:
    """Name the first invalid field of a validation error, e.g. ``field 'sdp': ...``."""
    errors = exc.errors(include_url=False, include_input=False)
    if not errors:
        return f"invalid {frame_type!r} frame"
    first = errors[0]
    loc = list(first.get("loc", ()))
    if loc and loc[0] == frame_type:
        loc = loc[1:]  # the discriminated union prefixes the tag
    where = ".".join(str(part) for part in loc) or "type"
    kind = first.get("type")
    reason = "missing" if kind == "missing" else first.get("msg", "invalid")
    text = f"field '{where}' in {frame_type!r} frame: {reason}"
    if len(errors) > 1:
        text += f" (and {len(errors) - 1} more error(s))"
    return text


def json_kind(value: Any) -> str:
    """What kind of JSON value ``value`` is, for error messages (``"an array"``...)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"
