"""API keys of the storage service: one per principal and role, stored hashed.

A key is ``rtck_<key_id>_<secret>``: ``key_id`` is 16 lowercase hex digits (public: it
names the key in ``keys list`` and ``keys revoke``) and ``secret`` 32 random bytes in
base64url without padding. The database keeps the key id, the role, a name, the
principal and a hash of the whole key: HMAC-SHA256 under the fixed context
:data:`KEY_HASH_CONTEXT` (the key is random, so no slow hash is needed; the context
keeps the digest from meaning anything elsewhere). The key itself is shown once, when
it is made (``rtc-signaling keys add``), and never stored.

Roles (:class:`Role`): ``admin`` may do everything; ``worker`` uploads results for an
owner; ``client`` reads, downloads and deletes its own principal's results. Each key
acts as a principal: a client key's is the fingerprint it is bound to
(:func:`protocol.identity.is_fingerprint`); an admin key's is :data:`ADMIN_PRINCIPAL`;
a worker key's is the fingerprint given, else ``key:<key_id>``. Principals starting
with ``key:`` never own results (an owner must match :func:`is_valid_owner`).
"""

from __future__ import annotations

import base64
import enum
import hmac
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select, update

from protocol.identity import is_anonymous, is_fingerprint
from rtc_worker.storage import format_timestamp
from signaling.db_engine import Database, is_unique_violation
from signaling.db_schema import api_keys

__all__ = [
    "ADMIN_PRINCIPAL",
    "KEY_HASH_CONTEXT",
    "KEY_PREFIX",
    "ApiKey",
    "KeyQueries",
    "Role",
    "hash_key",
    "is_valid_key_name",
    "is_valid_owner",
    "new_key",
    "parse_key",
]

KEY_PREFIX = "rtck_"
"""How every key made by ``keys add`` starts."""

KEY_HASH_CONTEXT = b"rtc-worker/storage-api-key/v1"
"""The HMAC key of :func:`hash_key` (a fixed context string, not a secret)."""

ADMIN_PRINCIPAL = "key:admin"
"""The principal of the admin key of the settings and of every admin key."""

_KEY_ID = re.compile(r"[0-9a-f]{16}")
_SECRET = re.compile(r"[A-Za-z0-9_-]{43}")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PEER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_COLUMNS = (
    api_keys.c.key_id,
    api_keys.c.key_hash,
    api_keys.c.role,
    api_keys.c.name,
    api_keys.c.principal,
    api_keys.c.created_at,
    api_keys.c.revoked_at,
)


class Role(enum.StrEnum):
    """What a key may do (see the module docstring)."""

    ADMIN = "admin"
    WORKER = "worker"
    CLIENT = "client"


def is_valid_owner(owner: str) -> bool:
    """Whether ``owner`` can own results: a fingerprint (64 lowercase hex) or an
    anonymous principal (``anon-`` + 32 hex): the identities of the channel handshake."""
    return is_fingerprint(owner) or is_anonymous(owner)


def is_valid_key_name(name: str) -> bool:
    """Whether ``name`` is a key name: ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``."""
    return _NAME.fullmatch(name) is not None


def hash_key(key: str) -> str:
    """The stored hash of ``key``: HMAC-SHA256(:data:`KEY_HASH_CONTEXT`, UTF-8 key), hex."""
    return hmac.digest(KEY_HASH_CONTEXT, key.encode("utf-8"), "sha256").hex()


def new_key() -> tuple[str, str]:
    """A fresh key and its id: ``("rtck_<key_id>_<secret>", key_id)``."""
    key_id = secrets.token_hex(8)
    secret = base64.urlsafe_b64encode(secrets.token_bytes(32)).decode("ascii").rstrip("=")
    return f"{KEY_PREFIX}{key_id}_{secret}", key_id


def parse_key(key: str) -> str | None:
    """The key id of a well-formed key, else ``None`` (no database access)."""
    if not key.startswith(KEY_PREFIX):
        return None
    key_id, sep, secret = key[len(KEY_PREFIX) :].partition("_")
    if not sep or not _KEY_ID.fullmatch(key_id) or not _SECRET.fullmatch(secret):
        return None
    return key_id


@dataclass(frozen=True, slots=True)
class ApiKey:
    """One row of ``api_keys``.

    Attributes:
        key_id: 16 lowercase hex digits (public).
        key_hash: :func:`hash_key` of the key (64 hex digits).
        role: what it may do.
        name: the operator's label.
        principal: who it acts as (see the module docstring).
        created_at: ISO 8601 UTC, second precision.
        revoked_at: when it was revoked, or ``None`` while it is valid.
    """

    key_id: str
    key_hash: str
    role: Role
    name: str
    principal: str
    created_at: str
    revoked_at: str | None

    def matches(self, key: str) -> bool:
        """Whether ``key`` hashes to :attr:`key_hash` (constant time)."""
        return hmac.compare_digest(hash_key(key), self.key_hash)

    def as_dict(self) -> dict[str, Any]:
        """The key as ``keys list`` shows it (without its hash)."""
        return {
            "key_id": self.key_id,
            "role": self.role.value,
            "name": self.name,
            "principal": self.principal,
            "created_at": self.created_at,
            "revoked_at": self.revoked_at,
        }


def _key(row: Sequence[Any]) -> ApiKey:
    return ApiKey(
        key_id=str(row[0]),
        key_hash=str(row[1]),
        role=Role(str(row[2])),
        name=str(row[3]),
        principal=str(row[4]),
        created_at=str(row[5]),
        revoked_at=None if row[6] is None else str(row[6]),
    )


def principal_for(role: Role, key_id: str, principal: str | None) -> str:
    """The principal a new key acts as.

    Raises:
        ValueError: a client key without a fingerprint, an admin key with a principal,
            or a principal that is not a fingerprint.
    """
    if principal is not None and not is_fingerprint(principal):
        raise ValueError("the principal must be a fingerprint (64 lowercase hex digits)")
    if role is Role.CLIENT:
        if principal is None:
            raise ValueError("a client key needs --principal FINGERPRINT")
        return principal
    if role is Role.ADMIN:
        if principal is not None:
            raise ValueError("an admin key acts for the operator; it takes no --principal")
        return ADMIN_PRINCIPAL
    return principal if principal is not None else f"key:{key_id}"


class KeyQueries(Database):
    """The queries of ``api_keys`` (coroutines; see :class:`~signaling.db.StorageDB`)."""

    async def add_key(
        self, role: Role, name: str, principal: str | None = None
    ) -> tuple[ApiKey, str]:
        """Make, store and return a new key.

        Returns:
            The stored row and the key itself (shown once; only its hash is kept).

        Raises:
            ValueError: a bad name or principal (see :func:`principal_for`).
        """
        if not is_valid_key_name(name):
            raise ValueError("the name must match [A-Za-z0-9][A-Za-z0-9._-]{0,63}")
        next_seq = select(func.coalesce(func.max(api_keys.c.seq), 0) + 1).scalar_subquery()
        while True:
            key, key_id = new_key()
            row = ApiKey(
                key_id=key_id,
                key_hash=hash_key(key),
                role=role,
                name=name,
                principal=principal_for(role, key_id, principal),
                created_at=format_timestamp(datetime.now(UTC)),
                revoked_at=None,
            )
            try:
                async with self.write() as conn:
                    await conn.execute(api_keys.insert().values(**_row_values(row), seq=next_seq))
            except Exception as error:  # the same random key id: draw again
                if not is_unique_violation(error):
                    raise
                continue
            return row, key

    async def find_key(self, key_id: str) -> ApiKey | None:
        """The key ``key_id`` (revoked or not), or ``None``."""
        async with self.read() as conn:
            row = (await conn.execute(select(*_COLUMNS).where(api_keys.c.key_id == key_id))).first()
        return None if row is None else _key(row)

    async def list_keys(self) -> list[ApiKey]:
        """Every key, revoked ones included, in the order they were made."""
        query = select(*_COLUMNS).order_by(api_keys.c.seq, api_keys.c.key_id)
        async with self.read() as conn:
            rows = (await conn.execute(query)).all()
        return [_key(row) for row in rows]

    async def revoke_key(self, key_id_or_name: str, when: str) -> list[ApiKey]:
        """Revoke the valid key with this id, or every valid key with this name.

        Returns:
            The keys revoked (empty when none matched).
        """
        match = (
            (api_keys.c.key_id == key_id_or_name) | (api_keys.c.name == key_id_or_name)
        ) & api_keys.c.revoked_at.is_(None)
        async with self.write() as conn:
            rows = (await conn.execute(select(*_COLUMNS).where(match).with_for_update())).all()
            await conn.execute(update(api_keys).where(match).values(revoked_at=when))
        return [_key(row) for row in rows]


def _row_values(key: ApiKey) -> dict[str, Any]:
    return {
        "key_id": key.key_id,
        "key_hash": key.key_hash,
        "role": key.role.value,
        "name": key.name,
        "principal": key.principal,
        "created_at": key.created_at,
        "revoked_at": key.revoked_at,
    }
