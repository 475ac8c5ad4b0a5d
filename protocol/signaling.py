"""Signaling frames: typed models and a sans-IO codec.

Peers talk to the signaling server over a WebSocket with JSON text frames.
This module owns the shape of every frame in both directions and decides, for
any text the server receives, whether it is a valid frame or which error code
the reply carries. It performs no I/O.

Client -> server frames (:data:`ClientFrame`)::

    {"type": "register", "peer_id": ID, "role": "worker"|"client",
     "token": STR (optional), "metadata": {...} (optional)}
    {"type": "list_peers"}
    {"type": "offer",     "to": ID, "sdp": STR}
    {"type": "answer",    "to": ID, "sdp": STR}
    {"type": "candidate", "to": ID, "candidate": ANY_JSON_OR_NULL}

Server -> client frames (:data:`ServerFrame`)::

    {"type": "registered", "peer_id": ID}
    {"type": "peers", "peers": [{"peer_id": ID, "role": ROLE, "metadata": {...}}, ...]}
    {"type": "offer",     "from": ID, "to": ID, "sdp": STR}
    {"type": "answer",    "from": ID, "to": ID, "sdp": STR}
    {"type": "candidate", "from": ID, "to": ID, "candidate": ANY_JSON_OR_NULL}
    {"type": "error", "code": CODE, "message": STR, "ref_type": STR (optional)}

``ID`` matches :data:`PEER_ID_PATTERN`. Unknown object keys are ignored, so a
``"from"`` sent by a peer never survives parsing: the server sets it.
"""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any, Literal, NoReturn, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationError,
    field_validator,
)

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "MAX_METADATA_BYTES",
    "PEER_ID_PATTERN",
    "Answer",
    "Candidate",
    "ClientFrame",
    "ErrorFrame",
    "ListPeers",
    "Offer",
    "PeerId",
    "PeerInfo",
    "Peers",
    "Register",
    "Registered",
    "RelayedAnswer",
    "RelayedCandidate",
    "RelayedOffer",
    "Role",
    "ServerFrame",
    "SignalingError",
    "SignalingErrorCode",
    "dump_frame",
    "parse_client_frame",
    "parse_server_frame",
]

PEER_ID_PATTERN = r"^[A-Za-z0-9._-]{1,64}$"
"""Grammar of a peer id: 1 to 64 characters from ``A-Z a-z 0-9 . _ -``."""

DEFAULT_MAX_FRAME_BYTES = 262144
"""Default soft limit on one text frame, in bytes of its UTF-8 encoding (256 KiB)."""

MAX_METADATA_BYTES = 8192
"""Limit on a register frame's ``metadata``, in bytes of its compact JSON encoding."""

_MAX_REF_TYPE_CHARS = 64

PeerId = Annotated[str, StringConstraints(pattern=PEER_ID_PATTERN)]
"""A peer id string matching :data:`PEER_ID_PATTERN`."""

Role = Literal["worker", "client"]
"""What a registered peer is: a ``worker`` serving jobs or a ``client`` sending them."""


class SignalingErrorCode(StrEnum):
    """Codes carried by ``{"type": "error"}`` frames sent by the server."""

    #: The text frame is not valid JSON.
    INVALID_JSON = "INVALID_JSON"
    #: Valid JSON but not an object, a missing field, a wrong type, or a binary frame.
    INVALID_FRAME = "INVALID_FRAME"
    #: The ``type`` field names no known frame.
    UNKNOWN_TYPE = "UNKNOWN_TYPE"
    #: The UTF-8 text of the frame exceeds the server's soft limit.
    FRAME_TOO_LARGE = "FRAME_TOO_LARGE"
    #: A frame other than ``register`` arrived before the socket registered.
    NOT_REGISTERED = "NOT_REGISTERED"
    #: Wrong or missing token; the server closes the socket after this error.
    UNAUTHORIZED = "UNAUTHORIZED"
    #: Another live socket is registered under this peer id.
    PEER_ID_TAKEN = "PEER_ID_TAKEN"
    #: This socket is already registered.
    ALREADY_REGISTERED = "ALREADY_REGISTERED"
    #: The ``to`` of a relayed frame names no registered peer.
    PEER_NOT_FOUND = "PEER_NOT_FOUND"


class SignalingError(Exception):
    """A frame was refused; carries what the ``error`` reply frame needs.

    Attributes:
        code: one of :class:`SignalingErrorCode` (a plain ``str`` when received from a server
            that knows codes this version does not).
        message: human-readable reason; for field errors it names the field.
        ref_type: the ``type`` of the offending frame when known, else ``None``.
    """

    def __init__(self, code: str, message: str, ref_type: str | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.ref_type = ref_type

    def to_frame(self) -> ErrorFrame:
        """Return the :class:`ErrorFrame` that reports this error to the peer."""
        return ErrorFrame(code=str(self.code), message=self.message, ref_type=self.ref_type)


class _Frame(BaseModel):
    """Base of all frames: immutable, unknown keys ignored, aliases accepted by name."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


# --------------------------------------------------------------------------- client -> server


class Register(_Frame):
    """``{"type":"register","peer_id":ID,"role":ROLE,"token":STR?,"metadata":{...}?}``.

    ``metadata`` is a JSON object of at most :data:`MAX_METADATA_BYTES` bytes once
    serialized compactly; ``null`` or absent means ``{}``. ``token`` is compared by
    the server with its own when it has one.
    """

    type: Literal["register"] = "register"
    peer_id: PeerId
    role: Role
    token: str | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)

    @field_validator("metadata", mode="before")
    @classmethod
    def _null_metadata_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(_compact_json(value).encode("utf-8", "surrogatepass"))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata is not serializable as JSON ({exc})") from None
        if size > MAX_METADATA_BYTES:
            raise ValueError(
                f"metadata is {size} bytes serialized; the limit is {MAX_METADATA_BYTES}"
            )
        return value


class ListPeers(_Frame):
    """``{"type":"list_peers"}``: ask for every registered peer."""

    type: Literal["list_peers"] = "list_peers"


class Offer(_Frame):
    """``{"type":"offer","to":ID,"sdp":STR}``: an SDP offer for peer ``to``."""

    type: Literal["offer"] = "offer"
    to: PeerId
    sdp: str


class Answer(_Frame):
    """``{"type":"answer","to":ID,"sdp":STR}``: an SDP answer for peer ``to``."""

    type: Literal["answer"] = "answer"
    to: PeerId
    sdp: str


class Candidate(_Frame):
    """``{"type":"candidate","to":ID,"candidate":ANY}``: an ICE candidate for peer ``to``.

    ``candidate`` is required but may be any JSON value, ``null`` included (end of
    candidates).
    """

    type: Literal["candidate"] = "candidate"
    to: PeerId
    candidate: Any


ClientFrame = Annotated[
    Register | ListPeers | Offer | Answer | Candidate, Field(discriminator="type")
]
"""Any frame a peer sends to the server, discriminated on ``type``."""


# --------------------------------------------------------------------------- server -> client


class Registered(_Frame):
    """``{"type":"registered","peer_id":ID}``: the socket is now registered as ``peer_id``."""

    type: Literal["registered"] = "registered"
    peer_id: PeerId


class PeerInfo(_Frame):
    """One entry of :class:`Peers`: ``{"peer_id":ID,"role":ROLE,"metadata":{...}}``."""

    peer_id: PeerId
    role: Role
    metadata: dict[str, Any] = Field(default_factory=dict)


class Peers(_Frame):
    """``{"type":"peers","peers":[PeerInfo, ...]}``: every registered peer, sorted by id."""

    type: Literal["peers"] = "peers"
    peers: tuple[PeerInfo, ...] = ()


class RelayedOffer(_Frame):
    """``{"type":"offer","from":ID,"to":ID,"sdp":STR}``: an offer relayed by the server.

    ``from_`` (JSON key ``"from"``) is the sender's registered id, set by the server.
    """

    type: Literal["offer"] = "offer"
    from_: PeerId = Field(alias="from")
    to: PeerId
    sdp: str


class RelayedAnswer(_Frame):
    """``{"type":"answer","from":ID,"to":ID,"sdp":STR}``: an answer relayed by the server."""

    type: Literal["answer"] = "answer"
    from_: PeerId = Field(alias="from")
    to: PeerId
    sdp: str


class RelayedCandidate(_Frame):
    """``{"type":"candidate","from":ID,"to":ID,"candidate":ANY}``: a relayed ICE candidate."""

    type: Literal["candidate"] = "candidate"
    from_: PeerId = Field(alias="from")
    to: PeerId
    candidate: Any


class ErrorFrame(_Frame):
    """``{"type":"error","code":CODE,"message":STR,"ref_type":STR?}``.

    ``code`` is one of :class:`SignalingErrorCode`; it is typed ``str`` so that a client can
    still parse codes added by a newer server. ``ref_type`` is the ``type`` of the
    frame that caused the error, when known.
    """

    type: Literal["error"] = "error"
    code: str
    message: str
    ref_type: str | None = None

    def to_exception(self) -> SignalingError:
        """Return a :class:`SignalingError` carrying this frame's code, message, ref_type."""
        return SignalingError(self.code, self.message, self.ref_type)


ServerFrame = Annotated[
    Registered | Peers | RelayedOffer | RelayedAnswer | RelayedCandidate | ErrorFrame,
    Field(discriminator="type"),
]
"""Any frame the server sends to a peer, discriminated on ``type``."""


_CLIENT_ADAPTER: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
_SERVER_ADAPTER: TypeAdapter[ServerFrame] = TypeAdapter(ServerFrame)
_CLIENT_TYPES = frozenset({"register", "list_peers", "offer", "answer", "candidate"})
_SERVER_TYPES = frozenset({"registered", "peers", "offer", "answer", "candidate", "error"})


# --------------------------------------------------------------------------- codec


def parse_client_frame(text: str, max_bytes: int = DEFAULT_MAX_FRAME_BYTES) -> ClientFrame:
    """Parse one text frame sent by a peer to the server.

    Args:
        text: the frame's text as received.
        max_bytes: soft limit on the UTF-8 size of ``text``, in bytes.

    Returns:
        One of :class:`Register`, :class:`ListPeers`, :class:`Offer`, :class:`Answer`,
        :class:`Candidate`.

    Raises:
        SignalingError: with code ``FRAME_TOO_LARGE`` (checked first), ``INVALID_JSON``,
            ``INVALID_FRAME`` (not an object, missing field, wrong type; the message
            names the field), or ``UNKNOWN_TYPE``. Nothing else is raised.
    """
    obj, frame_type = _load_object(text, max_bytes, _CLIENT_TYPES)
    return _validate(_CLIENT_ADAPTER, obj, frame_type)


def parse_server_frame(text: str, max_bytes: int | None = None) -> ServerFrame:
    """Parse one text frame sent by the server to a peer.

    Args:
        text: the frame's text as received.
        max_bytes: optional limit on the UTF-8 size of ``text``, in bytes; ``None``
            means no limit.

    Returns:
        One of :class:`Registered`, :class:`Peers`, :class:`RelayedOffer`,
        :class:`RelayedAnswer`, :class:`RelayedCandidate`, :class:`ErrorFrame`.

    Raises:
        SignalingError: with code ``FRAME_TOO_LARGE``, ``INVALID_JSON``,
            ``INVALID_FRAME`` or ``UNKNOWN_TYPE``. Nothing else is raised.
    """
    obj, frame_type = _load_object(text, max_bytes, _SERVER_TYPES)
    return _validate(_SERVER_ADAPTER, obj, frame_type)


def dump_frame(frame: BaseModel) -> str:
    """Serialize a frame to compact JSON text.

    Keys use their aliases (``from_`` becomes ``"from"``). Optional fields that are
    ``None`` (``token``, ``ref_type``) are left out; required fields are always
    written, so ``{"candidate": null}`` survives.

    Raises:
        pydantic_core.PydanticSerializationError: if a field holds a value that
            cannot be written as JSON (only possible for models built in code).
    """
    fields = type(frame).model_fields
    omit = {
        name
        for name, info in fields.items()
        if not info.is_required() and getattr(frame, name) is None
    }
    return frame.model_dump_json(by_alias=True, exclude=omit or None)


def _compact_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _reject_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not valid JSON")


def _load_object(
    text: str, max_bytes: int | None, known_types: frozenset[str]
) -> tuple[dict[str, Any], str]:
    """Check size, decode JSON, check it is an object with a known string ``type``."""
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
        _compact_json(obj).encode("utf-8")
    except (ValueError, RecursionError) as exc:
        raise SignalingError(
            SignalingErrorCode.INVALID_JSON, f"JSON that cannot be relayed: {exc}"
        ) from None
    if not isinstance(obj, dict):
        raise SignalingError(
            SignalingErrorCode.INVALID_FRAME, f"frame must be a JSON object, not {_json_kind(obj)}"
        )
    if "type" not in obj:
        raise SignalingError(SignalingErrorCode.INVALID_FRAME, "missing field 'type'")
    frame_type = obj["type"]
    if not isinstance(frame_type, str):
        raise SignalingError(
            SignalingErrorCode.INVALID_FRAME,
            f"field 'type' must be a string, not {_json_kind(frame_type)}",
        )
    if frame_type not in known_types:
        shown = frame_type[:_MAX_REF_TYPE_CHARS]
        raise SignalingError(
            SignalingErrorCode.UNKNOWN_TYPE,
            f"unknown frame type {shown!r}; expected one of {sorted(known_types)}",
            ref_type=shown,
        )
    return obj, frame_type


_FrameT = TypeVar("_FrameT")


def _validate(adapter: TypeAdapter[_FrameT], obj: dict[str, Any], frame_type: str) -> _FrameT:
    try:
        return adapter.validate_python(obj)
    except ValidationError as exc:
        raise SignalingError(
            SignalingErrorCode.INVALID_FRAME, _describe(exc, frame_type), ref_type=frame_type
        ) from None
    except RecursionError:
        raise SignalingError(
            SignalingErrorCode.INVALID_FRAME, "frame is nested too deeply", ref_type=frame_type
        ) from None


def _describe(exc: ValidationError, frame_type: str) -> str:
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


def _json_kind(value: Any) -> str:
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
