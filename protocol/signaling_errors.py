"""Signaling error codes and the exception that carries one (sans-IO).

Every refusal of the signaling server is an ``{"type":"error","code":CODE,...}`` frame
(:class:`protocol.signaling.ErrorFrame`); inside the code it is a
:class:`SignalingError`. Both are re-exported by :mod:`protocol.signaling`, which is
where peers import them from.

Source: PROTOCOL.md section 3.4 (the codes) and section 5 (signaling).
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from protocol.signaling import ErrorFrame

__all__ = ["SignalingError", "SignalingErrorCode"]


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
    #: ``register`` carried no ``public_key`` and ``signature``: a worker always proves
    #: its key, a client too unless the server allows anonymous clients.
    KEY_REQUIRED = "KEY_REQUIRED"
    #: The ``register`` signature is not the key's signature of the registration payload
    #: for this socket's challenge nonce; the server closes the socket after this error.
    BAD_SIGNATURE = "BAD_SIGNATURE"
    #: The peer id is bound to another key (for an anonymous client: to any key). Nothing
    #: changes; only the operator can release a binding (``rtc-signaling bindings release``).
    PEER_ID_BOUND = "PEER_ID_BOUND"
    #: The socket did not register within the server's deadline; the server closes it
    #: after this error (1008).
    REGISTRATION_TIMEOUT = "REGISTRATION_TIMEOUT"
    #: The WebSocket upgrade is refused: too many connections from this address (HTTP
    #: 429) or in total (HTTP 503); this error frame is the HTTP body.
    TOO_MANY_CONNECTIONS = "TOO_MANY_CONNECTIONS"
    #: The server could not complete the request (its bindings store or its shared
    #: registry, Redis, is unavailable); nothing changed; try again later.
    SERVER_ERROR = "SERVER_ERROR"


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
        """Return the :class:`~protocol.signaling.ErrorFrame` that reports this error."""
        from protocol.signaling import ErrorFrame

        return ErrorFrame(code=str(self.code), message=self.message, ref_type=self.ref_type)
