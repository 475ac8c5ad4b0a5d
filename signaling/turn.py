"""Time-limited TURN credentials, as coturn's ``use-auth-secret`` expects them.

The signaling server and the TURN server share one secret. For each peer the server
makes a credential that expires (the TURN REST API convention):

* ``username = f"{expiry}:{peer_id}"``, ``expiry`` in Unix seconds (now + TTL);
* ``credential = base64(HMAC-SHA1(secret, username))`` (standard base64, with padding).

The TURN server recomputes the HMAC from the username it is given and refuses an
allocation whose expiry has passed; it needs no per-user state, and a leaked credential
opens no allocation after its expiry. The expiry gates new allocations only: coturn 4.6
still accepts the REFRESH of a running one (its channel stays up), as
``tests/test_e2e_turn.py::test_a_running_allocation_is_refreshed_past_its_credentials_expiry``
shows.

Source: "A REST API For Access To TURN Services", draft-uberti-behave-turn-rest-00,
section 2.2; coturn's ``turnserver.conf`` (``use-auth-secret``, ``static-auth-secret``).
"""

from __future__ import annotations

import base64
import time
from collections.abc import Callable, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.hmac import HMAC

from protocol.signaling import IceServer

__all__ = ["TurnCredentials", "turn_credential", "turn_username"]


def turn_username(peer_id: str, expiry_s: int) -> str:
    """The TURN REST username of ``peer_id`` valid until ``expiry_s`` (Unix seconds)."""
    return f"{expiry_s}:{peer_id}"


def turn_credential(secret: bytes, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))``: the password coturn derives for
    ``username`` from its ``static-auth-secret`` (UTF-8 bytes of both).

    Returns:
        28 characters of standard base64 (a 20-byte digest, padded).
    """
    mac = HMAC(secret, hashes.SHA1())  # HMAC-SHA1: what TURN REST defines
    mac.update(username.encode("utf-8"))
    return base64.b64encode(mac.finalize()).decode("ascii")


class TurnCredentials:
    """Makes the ``ice_servers`` entry a peer gets from signaling.

    Args:
        urls: the TURN (and STUN) URLs handed out, e.g. ``("turn:turn.example:3478",)``.
        secret: the secret shared with the TURN server (``static-auth-secret``).
        ttl_s: lifetime of each credential, seconds (> 0).
        clock: the current time in Unix seconds (for tests).

    Raises:
        ValueError: no URL, an empty secret or a TTL that is not positive.

    The secret is never in a repr, a log or an error message.
    """

    def __init__(
        self,
        urls: Sequence[str],
        secret: str,
        ttl_s: float,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not urls:
            raise ValueError("TURN credentials need at least one TURN URL")
        if not secret:
            raise ValueError("TURN credentials need a non-empty shared secret")
        if ttl_s <= 0:
            raise ValueError("the TURN credential lifetime must be positive")
        self.urls = tuple(urls)
        self._secret = secret.encode("utf-8")
        self.ttl_s = ttl_s
        self._clock = clock

    def __repr__(self) -> str:
        return f"TurnCredentials(urls={self.urls!r}, ttl_s={self.ttl_s!r})"

    def for_peer(self, peer_id: str) -> IceServer:
        """A fresh credential for ``peer_id``, expiring ``ttl_s`` seconds from now.

        Returns:
            An :class:`~protocol.signaling.IceServer` with every URL, the username
            ``"{expiry}:{peer_id}"`` and its HMAC-SHA1 credential.
        """
        expiry = int(self._clock() + self.ttl_s)
        username = turn_username(peer_id, expiry)
        return IceServer(
            urls=self.urls, username=username, credential=turn_credential(self._secret, username)
        )
