"""Signaling frames: typed models and a sans-IO codec.

Peers talk to the signaling server over a WebSocket with JSON text frames.
This module owns the shape of every frame in both directions and decides, for
any text the server receives, whether it is a valid frame or which error code
the reply carries. It performs no I/O.

Client -> server frames (:data:`ClientFrame`)::

    {"type": "register", "peer_id": ID, "role": "worker"|"client",
     "token": STR (optional), "metadata": {...} (optional),
     "public_key": B64 (optional), "signature": B64 (optional, with public_key)}
    {"type": "list_peers"}
    {"type": "offer",     "to": ID, "sdp": STR}
    {"type": "answer",    "to": ID, "sdp": STR}
    {"type": "candidate", "to": ID, "candidate": ANY_JSON_OR_NULL}

Server -> client frames (:data:`ServerFrame`)::

    {"type": "challenge", "nonce": B64}                (first frame on every socket)
    {"type": "registered", "peer_id": ID, "fingerprint": FP|null, "ice_servers": [ICE, ...]}
    {"type": "peers", "peers": [{"peer_id": ID, "role": ROLE, "fingerprint": FP|null,
                                 "metadata": {...}}, ...]}
    {"type": "offer",     "from": ID, "fingerprint": FP|null, "to": ID, "sdp": STR,
                          "ice_servers": [ICE, ...]}
    {"type": "answer",    "from": ID, "fingerprint": FP|null, "to": ID, "sdp": STR}
    {"type": "candidate", "from": ID, "fingerprint": FP|null, "to": ID, "candidate": ANY}
    {"type": "error", "code": CODE, "message": STR, "ref_type": STR (optional)}

``ID`` matches :data:`PEER_ID_PATTERN`; ``FP`` is a fingerprint (64 lowercase hex
digits, :func:`protocol.identity.fingerprint`), ``null`` for an anonymous client;
``B64`` is standard base64 with padding; ``ICE`` is a W3C ``RTCIceServer``,
``{"urls": [URL, ...], "username": STR, "credential": STR}`` (:class:`IceServer`): the TURN
servers the receiving peer may use, with credentials made for its own peer id (``[]``, or
absent, when the server hands out none). Unknown object keys are ignored, so a
``"from"`` or a ``"fingerprint"`` sent by a peer never survives parsing: the server
sets them. What a peer signs to register is in :mod:`protocol.signaling_proof`.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    TypeAdapter,
    ValidationInfo,
    field_validator,
)

from protocol.identity import NONCE_BYTES, PUBLIC_KEY_BYTES, SIGNATURE_BYTES, b64decode
from protocol.signaling_errors import SignalingError, SignalingErrorCode
from protocol.signaling_json import compact_json, load_object, validate

__all__ = [
    "DEFAULT_MAX_FRAME_BYTES",
    "ICE_URL_SCHEMES",
    "MAX_ICE_SERVERS",
    "MAX_ICE_TEXT",
    "MAX_METADATA_BYTES",
    "PEER_ID_PATTERN",
    "Answer",
    "Candidate",
    "Challenge",
    "ClientFrame",
    "ErrorFrame",
    "Fingerprint",
    "IceServer",
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

MAX_ICE_SERVERS = 8
"""Most entries in a frame's ``ice_servers``, and most URLs in one entry."""

MAX_ICE_TEXT = 512
"""Longest ICE server URL, username or credential, in characters."""

ICE_URL_SCHEMES = ("turn:", "turns:", "stun:", "stuns:")
"""The URL schemes of an ICE server (RFC 7064 section 3.1, RFC 7065 section 3.1)."""

PeerId = Annotated[str, StringConstraints(pattern=PEER_ID_PATTERN)]
"""A peer id string matching :data:`PEER_ID_PATTERN`."""

Fingerprint = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]
"""A key's fingerprint: sha256 of the raw Ed25519 public key, 64 lowercase hex digits."""


def _base64_of(size: int) -> AfterValidator:
    def check(value: str) -> str:
        b64decode(value, size)  # raises ValueError: not base64, or the wrong length
        return value

    return AfterValidator(check)


PublicKeyB64 = Annotated[str, _base64_of(PUBLIC_KEY_BYTES)]
"""A raw 32-byte Ed25519 public key in standard base64 (RFC 4648 section 4)."""

SignatureB64 = Annotated[str, _base64_of(SIGNATURE_BYTES)]
"""A 64-byte Ed25519 signature in standard base64."""

NonceB64 = Annotated[str, _base64_of(NONCE_BYTES)]
"""A 32-byte challenge nonce in standard base64."""


def _ice_url(value: str) -> str:
    if not value.startswith(ICE_URL_SCHEMES):
        raise ValueError(f"an ICE server URL starts with one of {', '.join(ICE_URL_SCHEMES)}")
    return value


IceUrl = Annotated[
    str, StringConstraints(min_length=6, max_length=MAX_ICE_TEXT), AfterValidator(_ice_url)
]
"""A STUN or TURN URL: ``turn:HOST:PORT``, ``turns:...``, ``stun:...`` or ``stuns:...``
(RFC 7064, RFC 7065), at most :data:`MAX_ICE_TEXT` characters."""

Role = Literal["worker", "client"]
"""What a registered peer is: a ``worker`` serving jobs or a ``client`` sending them."""


class _Frame(BaseModel):
    """Base of all frames: immutable, unknown keys ignored, aliases accepted by name."""

    model_config = ConfigDict(frozen=True, extra="ignore", populate_by_name=True)


# --------------------------------------------------------------------------- client -> server


class Register(_Frame):
    """``{"type":"register","peer_id":ID,"role":ROLE,"token":STR?,"metadata":{...}?,
    "public_key":B64?,"signature":B64?}``.

    ``metadata`` is a JSON object of at most :data:`MAX_METADATA_BYTES` bytes once
    serialized compactly; ``null`` or absent means ``{}``. ``token`` is compared by
    the server with its own when it has one. ``public_key`` (32 bytes) and
    ``signature`` (64 bytes) come together or not at all: the signature is the key's
    Ed25519 signature of :func:`protocol.identity.registration_payload` over this
    socket's challenge nonce (see :mod:`protocol.signaling_proof`); without them the
    peer is an anonymous client.
    """

    type: Literal["register"] = "register"
    peer_id: PeerId
    role: Role
    token: str | None = Field(None, repr=False)  # a secret: never in a repr or a log
    metadata: dict[str, Any] = Field(default_factory=dict)
    public_key: PublicKeyB64 | None = None
    signature: SignatureB64 | None = Field(None, validate_default=True)

    @field_validator("signature")
    @classmethod
    def _key_and_signature_together(cls, value: str | None, info: ValidationInfo) -> str | None:
        if "public_key" in info.data and (value is None) != (info.data["public_key"] is None):
            raise ValueError("public_key and signature come together or not at all")
        return value

    @field_validator("metadata", mode="before")
    @classmethod
    def _null_metadata_is_empty(cls, value: Any) -> Any:
        return {} if value is None else value

    @field_validator("metadata")
    @classmethod
    def _bounded_metadata(cls, value: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(compact_json(value).encode("utf-8", "surrogatepass"))
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


class Challenge(_Frame):
    """``{"type":"challenge","nonce":B64}``: the first frame the server sends on a socket.

    ``nonce`` is :data:`protocol.identity.NONCE_BYTES` fresh random bytes; a ``register``
    on this socket signs them (:mod:`protocol.signaling_proof`).
    """

    type: Literal["challenge"] = "challenge"
    nonce: NonceB64


class IceServer(_Frame):
    """``{"urls":[URL, ...],"username":STR,"credential":STR}``: one ICE server in the W3C
    ``RTCIceServer`` shape, with a time-limited TURN credential.

    ``urls``: 1 to :data:`MAX_ICE_SERVERS` STUN/TURN URLs (:data:`IceUrl`).
    ``username``: ``"{expiry_unix_s}:{peer_id}"`` and ``credential``:
    ``base64(HMAC-SHA1(secret, username))`` by the TURN REST API convention
    (draft-uberti-behave-turn-rest-00 section 2.2; made by :mod:`signaling.turn`).
    ``credential`` is a secret: never in a repr or a log.
    """

    urls: tuple[IceUrl, ...] = Field(min_length=1, max_length=MAX_ICE_SERVERS)
    username: str = Field(max_length=MAX_ICE_TEXT)
    credential: str = Field(max_length=MAX_ICE_TEXT, repr=False)


IceServers = Annotated[tuple[IceServer, ...], Field(max_length=MAX_ICE_SERVERS)]
"""The ``ice_servers`` of a frame: at most :data:`MAX_ICE_SERVERS` entries."""


class Registered(_Frame):
    """``{"type":"registered","peer_id":ID,"fingerprint":FP|null,"ice_servers":[ICE,...]}``:
    the socket is now registered as ``peer_id``, proven by the key of ``fingerprint``
    (``null``: anonymous).

    ``ice_servers`` (default empty) are the TURN servers this peer may use, with
    credentials bound to ``peer_id`` (:class:`IceServer`).
    """

    type: Literal["registered"] = "registered"
    peer_id: PeerId
    fingerprint: Fingerprint | None
    ice_servers: IceServers = ()


class PeerInfo(_Frame):
    """One entry of :class:`Peers`:
    ``{"peer_id":ID,"role":ROLE,"fingerprint":FP|null,"metadata":{...}}``.

    ``fingerprint`` is the key the peer proved at registration, set by the server
    (``null`` for an anonymous client).
    """

    peer_id: PeerId
    role: Role
    fingerprint: Fingerprint | None
    metadata: dict[str, Any] = Field(default_factory=dict)


class Peers(_Frame):
    """``{"type":"peers","peers":[PeerInfo, ...]}``: every registered peer, sorted by id."""

    type: Literal["peers"] = "peers"
    peers: tuple[PeerInfo, ...] = ()


class RelayedOffer(_Frame):
    """``{"type":"offer","from":ID,"fingerprint":FP|null,"to":ID,"sdp":STR,
    "ice_servers":[ICE,...]}``: an offer relayed by the server.

    ``from_`` (JSON key ``"from"``) is the sender's registered id and ``fingerprint`` the
    key it proved at registration (``null``: an anonymous client), both set by the server.
    ``ice_servers`` (default empty) carry fresh TURN credentials for the answerer ``to``,
    so a peer registered for longer than their lifetime still answers with valid ones.
    """

    type: Literal["offer"] = "offer"
    from_: PeerId = Field(alias="from")
    fingerprint: Fingerprint | None
    to: PeerId
    sdp: str
    ice_servers: IceServers = ()


class RelayedAnswer(_Frame):
    """``{"type":"answer","from":ID,"fingerprint":FP|null,"to":ID,"sdp":STR}``: an answer
    relayed by the server (``from`` and ``fingerprint`` set by it)."""

    type: Literal["answer"] = "answer"
    from_: PeerId = Field(alias="from")
    fingerprint: Fingerprint | None
    to: PeerId
    sdp: str


class RelayedCandidate(_Frame):
    """``{"type":"candidate","from":ID,"fingerprint":FP|null,"to":ID,"candidate":ANY}``: a
    relayed ICE candidate (``from`` and ``fingerprint`` set by the server)."""

    type: Literal["candidate"] = "candidate"
    from_: PeerId = Field(alias="from")
    fingerprint: Fingerprint | None
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
    Challenge | Registered | Peers | RelayedOffer | RelayedAnswer | RelayedCandidate | ErrorFrame,
    Field(discriminator="type"),
]
"""Any frame the server sends to a peer, discriminated on ``type``."""


_CLIENT_ADAPTER: TypeAdapter[ClientFrame] = TypeAdapter(ClientFrame)
_SERVER_ADAPTER: TypeAdapter[ServerFrame] = TypeAdapter(ServerFrame)
_CLIENT_TYPES = frozenset({"register", "list_peers", "offer", "answer", "candidate"})
_SERVER_TYPES = frozenset(
    {"challenge", "registered", "peers", "offer", "answer", "candidate", "error"}
)


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
    obj, frame_type = load_object(text, max_bytes, _CLIENT_TYPES)
    return validate(_CLIENT_ADAPTER, obj, frame_type)


def parse_server_frame(text: str, max_bytes: int | None = None) -> ServerFrame:
    """Parse one text frame sent by the server to a peer.

    Args:
        text: the frame's text as received.
        max_bytes: optional limit on the UTF-8 size of ``text``, in bytes; ``None``
            means no limit.

    Returns:
        One of :class:`Challenge`, :class:`Registered`, :class:`Peers`, :class:`RelayedOffer`,
        :class:`RelayedAnswer`, :class:`RelayedCandidate`, :class:`ErrorFrame`.

    Raises:
        SignalingError: with code ``FRAME_TOO_LARGE``, ``INVALID_JSON``,
            ``INVALID_FRAME`` or ``UNKNOWN_TYPE``. Nothing else is raised.
    """
    obj, frame_type = load_object(text, max_bytes, _SERVER_TYPES)
    return validate(_SERVER_ADAPTER, obj, frame_type)


def dump_frame(frame: BaseModel) -> str:
    """Serialize a frame to compact JSON text.

    Keys use their aliases (``from_`` becomes ``"from"``). Optional fields that are
    ``None`` (``token``, ``ref_type``, ``public_key``, ``signature``) are left out;
    required fields are always written, so ``{"candidate": null}`` and
    ``{"fingerprint": null}`` survive.

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
