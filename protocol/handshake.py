"""The channel handshake (sans-IO): worker and client prove their keys to each other.

Right after the data channel opens, before any job or transfer frame, the client sends
AUTH_HELLO; the worker answers AUTH_CHALLENGE (its key, its nonce, its signature); the
client checks it, answers AUTH_RESPONSE (its signature); the worker checks that and
answers AUTH_OK. Both sign the same transcript (:func:`protocol.identity.transcript`):
both DTLS fingerprints as each side sees them in the SDP, both public keys, both
nonces. A squatter at signaling holds neither key; a dishonest signaling server that
swaps the DTLS certificates in the SDP makes the two transcripts differ, so a
signature fails. Neither can sit in the middle.

The two machines are tables keyed by (state, step), where a step is a handshake message
that arrived or the outcome of checking it (:class:`AuthStep`): "anything not in the
table is refused". The adapter never decides: it gives the :class:`AuthConfig` (key,
DTLS fingerprints, pins, policy) and performs what comes out.

A worker whose operator allows anonymous clients (``allow_anonymous``) takes a job or
transfer frame that arrives first as the start of an anonymous connection: its own
principal (:func:`protocol.identity.anonymous_principal`), owning only what it creates.
Otherwise that frame is answered ``PROTOCOL_ERROR::AUTH_REQUIRED``.

Source: PROTOCOL.md section 5; DESIGN.md ("Identity first"); SSH's known_hosts and
authorized_keys (pinning by fingerprint); RFC 8032 (Ed25519).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from protocol.auth_messages import AuthChallenge, AuthHello, AuthOk, AuthResponse
from protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from protocol.identity import (
    anonymous_principal,
    fingerprint,
    new_nonce,
    transcript,
    verify,
)
from protocol.messages import Message, ProtocolErrorFrame

__all__ = [
    "CLIENT_AUTH_TABLE",
    "WORKER_AUTH_TABLE",
    "AuthConfig",
    "AuthFailed",
    "AuthState",
    "AuthStep",
    "Authenticated",
    "Handshake",
    "Signer",
]


class Signer(Protocol):
    """Who signs for us: a raw 32-byte Ed25519 ``public_key`` and ``sign(payload)``
    returning a 64-byte signature (``rtc_worker.identity.Identity`` is one)."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, payload: bytes) -> bytes: ...


class AuthState(StrEnum):
    """Where a connection's handshake stands."""

    #: Nothing exchanged yet.
    NEW = "NEW"
    #: (Client) AUTH_HELLO sent; awaiting AUTH_CHALLENGE.
    HELLO_SENT = "HELLO_SENT"
    #: (Worker) AUTH_CHALLENGE sent; awaiting AUTH_RESPONSE.
    CHALLENGED = "CHALLENGED"
    #: (Client) AUTH_RESPONSE sent; awaiting AUTH_OK.
    RESPONDED = "RESPONDED"
    #: Both keys proven: job and transfer frames flow; the principal is the peer's key.
    AUTHENTICATED = "AUTHENTICATED"
    #: No handshake, allowed by the operator: the principal is this connection's own.
    ANONYMOUS = "ANONYMOUS"
    #: The handshake failed; nothing more is accepted (the adapter closes the channel).
    FAILED = "FAILED"


class AuthStep(StrEnum):
    """What moves a handshake machine besides the arrival of a message."""

    #: (Client) the adapter starts the handshake.
    START = "start"
    #: The peer's signature is valid (and its key is the pinned / an authorized one).
    VALID = "valid"
    #: The peer's signature does not verify over our transcript.
    BAD_SIGNATURE = "bad signature"
    #: (Worker) the client's key is valid but not in the authorized-clients list.
    NOT_AUTHORIZED = "not authorized"
    #: (Client) the worker's key is not the one pinned for it.
    KEY_CHANGED = "key changed"
    #: (Client) AUTH_OK names another fingerprint than ours.
    WRONG_PRINCIPAL = "wrong principal"
    #: (Client) the worker answered the handshake with PROTOCOL_ERROR.
    REFUSED = "refused"
    #: (Worker) a job or transfer frame came first and anonymous clients are allowed.
    ANONYMOUS_FRAME = "anonymous frame"


_Key = type[Message] | AuthStep

#: (worker state, step) -> next state. Messages move the state when they arrive; the
#: check of AUTH_RESPONSE then moves it again.
WORKER_AUTH_TABLE: dict[tuple[AuthState, _Key], AuthState] = {
    (AuthState.NEW, AuthHello): AuthState.CHALLENGED,
    (AuthState.NEW, AuthStep.ANONYMOUS_FRAME): AuthState.ANONYMOUS,
    (AuthState.CHALLENGED, AuthResponse): AuthState.CHALLENGED,
    (AuthState.CHALLENGED, AuthStep.VALID): AuthState.AUTHENTICATED,
    (AuthState.CHALLENGED, AuthStep.BAD_SIGNATURE): AuthState.FAILED,
    (AuthState.CHALLENGED, AuthStep.NOT_AUTHORIZED): AuthState.FAILED,
}

#: (client state, step) -> next state.
CLIENT_AUTH_TABLE: dict[tuple[AuthState, _Key], AuthState] = {
    (AuthState.NEW, AuthStep.START): AuthState.HELLO_SENT,
    (AuthState.HELLO_SENT, AuthChallenge): AuthState.HELLO_SENT,
    (AuthState.HELLO_SENT, AuthStep.VALID): AuthState.RESPONDED,
    (AuthState.HELLO_SENT, AuthStep.BAD_SIGNATURE): AuthState.FAILED,
    (AuthState.HELLO_SENT, AuthStep.KEY_CHANGED): AuthState.FAILED,
    (AuthState.HELLO_SENT, AuthStep.REFUSED): AuthState.FAILED,
    (AuthState.RESPONDED, AuthOk): AuthState.RESPONDED,
    (AuthState.RESPONDED, AuthStep.VALID): AuthState.AUTHENTICATED,
    (AuthState.RESPONDED, AuthStep.WRONG_PRINCIPAL): AuthState.FAILED,
    (AuthState.RESPONDED, AuthStep.REFUSED): AuthState.FAILED,
}

_FAILURE_CODES: dict[AuthStep, str] = {
    AuthStep.BAD_SIGNATURE: ErrorCode.AUTH_FAILED,
    AuthStep.NOT_AUTHORIZED: ErrorCode.NOT_AUTHORIZED,
    AuthStep.KEY_CHANGED: "WORKER_KEY_CHANGED",
    AuthStep.WRONG_PRINCIPAL: ErrorCode.AUTH_FAILED,
}


@dataclass(frozen=True, slots=True)
class Authenticated:
    """Output: the peer proved its key (or the connection is anonymous).

    Attributes:
        principal: the peer's fingerprint, or the anonymous connection's principal.
        public_key: the peer's raw 32-byte key; None when anonymous.
    """

    principal: str
    public_key: bytes | None = None


@dataclass(frozen=True, slots=True)
class AuthFailed:
    """Output: the handshake failed; the adapter closes the channel after sending what
    is queued.

    Attributes:
        code: ``AUTH_FAILED`` (a signature does not verify), ``NOT_AUTHORIZED`` (the
            worker does not accept this client's key), ``WORKER_KEY_CHANGED`` (the
            worker's key is not the pinned one), or the code of the worker's
            PROTOCOL_ERROR refusal (e.g. ``UNKNOWN_MESSAGE`` from a worker without the
            handshake).
        detail: for people.
    """

    code: str
    detail: str


@dataclass(frozen=True)
class AuthConfig:
    """What a connection needs to run the handshake.

    Attributes:
        identity: our key; None for an anonymous client (a worker always has one).
        offer_dtls / answer_dtls: the DTLS fingerprints of the offer (the client's
            certificate) and the answer (the worker's), as this side's SDP shows them
            (``protocol.identity.sdp_dtls_fingerprint``).
        allow_anonymous: (worker) accept clients that do not authenticate, each
            connection its own principal.
        authorized: (worker) the fingerprints of the only clients accepted; None
            accepts any client that proves its key.
        pinned: (client) the fingerprint the worker must prove; None accepts the
            first key (trust on first use: the adapter records it).
        nonce: makes our fresh nonce (:data:`protocol.identity.NONCE_BYTES` bytes).
    """

    identity: Signer | None
    offer_dtls: str = ""
    answer_dtls: str = ""
    allow_anonymous: bool = False
    authorized: frozenset[str] | None = None
    pinned: str | None = None
    nonce: Callable[[], bytes] = field(default=new_nonce, compare=False)


class Handshake:
    """One side's handshake machine.

    Args:
        worker: True for the worker's machine, False for the client's.
        config: keys, DTLS fingerprints, pins and policy.

    Attributes:
        state: the :class:`AuthState`.
        principal: the peer's identity once known (fingerprint or anonymous), else None.
    """

    def __init__(self, *, worker: bool, config: AuthConfig) -> None:
        if worker and config.identity is None:
            raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, "a worker needs a key")
        self.worker = worker
        self.config = config
        self.state = AuthState.ANONYMOUS if config.identity is None else AuthState.NEW
        self.principal: str | None = anonymous_principal() if config.identity is None else None
        self._table = WORKER_AUTH_TABLE if worker else CLIENT_AUTH_TABLE
        self._hello: AuthHello | None = None
        self._our_nonce = b""
        self._peer_key = b""

    @property
    def open(self) -> bool:
        """Job and transfer frames may flow (authenticated or anonymous)."""
        return self.state in (AuthState.AUTHENTICATED, AuthState.ANONYMOUS)

    def _move(self, key: _Key) -> None:
        try:
            self.state = self._table[(self.state, key)]
        except KeyError:
            name = getattr(key, "TYPE", "") or str(key)
            raise RemoteProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"can't handle {name} in handshake state {self.state}"
            ) from None

    def _transcript(self, client_key: bytes, worker_key: bytes, client_nonce: bytes,
                    worker_nonce: bytes) -> bytes:  # fmt: skip
        try:
            return transcript(
                offer_dtls=self.config.offer_dtls,
                answer_dtls=self.config.answer_dtls,
                client_key=client_key,
                worker_key=worker_key,
                client_nonce=client_nonce,
                worker_nonce=worker_nonce,
            )
        except ValueError as exc:  # no DTLS fingerprint: an adapter bug
            raise LocalProtocolError(ErrorCode.INTERNAL_ERROR, f"transcript: {exc}") from None

    def _fail(self, step: AuthStep, detail: str) -> list[object]:
        self._move(step)
        code = _FAILURE_CODES[step]
        wire = code if code in ErrorCode.__members__ else ErrorCode.AUTH_FAILED
        return [ProtocolErrorFrame(wire, detail), AuthFailed(code, detail)]

    # ------------------------------------------------------------------ client

    def start(self) -> list[object]:
        """(Client) Begin: AUTH_HELLO with our key and a fresh nonce.

        Raises:
            LocalProtocolError: not a client with a key in state NEW.
        """
        if self.worker or self.config.identity is None or self.state is not AuthState.NEW:
            raise LocalProtocolError(
                ErrorCode.UNEXPECTED_MESSAGE, f"can't start a handshake in state {self.state}"
            )
        self._move(AuthStep.START)
        self._our_nonce = self.config.nonce()
        self._hello = AuthHello(self.config.identity.public_key, self._our_nonce)
        return [self._hello]

    def _client_receive(self, message: Message) -> list[object]:
        if isinstance(message, ProtocolErrorFrame):
            self._move(AuthStep.REFUSED)
            return [AuthFailed(message.code, message.detail or "the worker refused")]
        self._move(type(message))
        identity, hello = self.config.identity, self._hello
        assert identity is not None and hello is not None  # state HELLO_SENT/RESPONDED
        if isinstance(message, AuthChallenge):
            signed = self._transcript(
                hello.public_key, message.public_key, hello.nonce, message.nonce
            )
            if not verify(message.public_key, message.signature, b"worker" + signed):
                return self._fail(AuthStep.BAD_SIGNATURE, "the worker's signature is invalid")
            worker = fingerprint(message.public_key)
            if self.config.pinned is not None and worker != self.config.pinned:
                return self._fail(
                    AuthStep.KEY_CHANGED,
                    f"the worker proved key {worker}, not the pinned {self.config.pinned}",
                )
            self._move(AuthStep.VALID)
            self._peer_key = message.public_key
            return [AuthResponse(identity.sign(b"client" + signed))]
        assert isinstance(message, AuthOk)  # the table admits nothing else
        if message.fingerprint != fingerprint(identity.public_key):
            return self._fail(AuthStep.WRONG_PRINCIPAL, "AUTH_OK names another client")
        self._move(AuthStep.VALID)
        self.principal = fingerprint(self._peer_key)
        return [Authenticated(self.principal, self._peer_key)]

    # ------------------------------------------------------------------ worker

    def _worker_receive(self, message: Message) -> list[object]:
        identity = self.config.identity
        assert identity is not None
        self._move(type(message))
        if isinstance(message, AuthHello):
            self._hello = message
            self._our_nonce = self.config.nonce()
            signed = self._transcript(
                message.public_key, identity.public_key, message.nonce, self._our_nonce
            )
            signature = identity.sign(b"worker" + signed)
            return [AuthChallenge(identity.public_key, self._our_nonce, signature)]
        assert isinstance(message, AuthResponse) and self._hello is not None
        hello = self._hello
        signed = self._transcript(
            hello.public_key, identity.public_key, hello.nonce, self._our_nonce
        )
        if not verify(hello.public_key, message.signature, b"client" + signed):
            return self._fail(AuthStep.BAD_SIGNATURE, "the client's signature is invalid")
        client = fingerprint(hello.public_key)
        authorized = self.config.authorized
        if authorized is not None and client not in authorized:
            return self._fail(AuthStep.NOT_AUTHORIZED, f"client {client} is not authorized here")
        self._move(AuthStep.VALID)
        self.principal = client
        return [AuthOk(client), Authenticated(client, hello.public_key)]

    # ------------------------------------------------------------------ both

    def receive(self, message: Message) -> list[object]:
        """Take a handshake message (or, on the client, a PROTOCOL_ERROR while the
        handshake runs) and return what follows: frames to send and events.

        Raises:
            RemoteProtocolError: UNEXPECTED_MESSAGE when the message is not allowed in
                this state (nothing changes).
        """
        if self.worker:
            return self._worker_receive(message)
        return self._client_receive(message)

    def gate(self, message: Message) -> list[object] | None:
        """(Both) A job or transfer frame arrived: None lets it through; otherwise what
        to answer instead (it is not handled).

        A worker in state NEW that allows anonymous clients turns anonymous first.

        Raises:
            RemoteProtocolError: AUTH_REQUIRED (worker) or UNEXPECTED_MESSAGE (client)
                when the frame comes before the handshake ended; AUTH_FAILED after it
                failed.
        """
        if self.open:
            return None
        if self.state is AuthState.FAILED:
            raise RemoteProtocolError(ErrorCode.AUTH_FAILED, "the handshake failed")
        if self.worker:
            if self.state is AuthState.NEW and self.config.allow_anonymous:
                self._move(AuthStep.ANONYMOUS_FRAME)
                self.principal = anonymous_principal()
                return [Authenticated(self.principal)]
            raise RemoteProtocolError(
                ErrorCode.AUTH_REQUIRED,
                "authenticate first (AUTH_HELLO); this worker does not accept anonymous clients",
            )
        raise RemoteProtocolError(
            ErrorCode.UNEXPECTED_MESSAGE, f"{message.TYPE or 'data'} before the handshake ended"
        )

    def check_send(self, message: Message) -> None:
        """(Client) Refuse to send a job or transfer frame before the handshake ended.

        Raises:
            LocalProtocolError: AUTH_REQUIRED.
        """
        if not self.open:
            raise LocalProtocolError(
                ErrorCode.AUTH_REQUIRED,
                f"can't send {message.TYPE or 'data'} in handshake state {self.state}",
            )
