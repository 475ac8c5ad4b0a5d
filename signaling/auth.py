"""Who is calling a storage route, and which owner's result a request is about.

A caller presents a key as ``X-API-Key: KEY`` or ``Authorization: Bearer KEY``: the
operator's admin key of the settings (compared in constant time), or a key made by
``rtc-signaling keys add`` (looked up by its id, its hash compared in constant time;
see :mod:`signaling.keys`). No key, an unknown or malformed one: 401 UNAUTHORIZED; a
revoked one: 401 KEY_REVOKED; a role the route does not allow: 403 FORBIDDEN.

A download (and a delete) may instead present a download capability
(:mod:`signaling.capability`) as ``X-Download-Token: TOKEN`` or ``?token=TOKEN``: it
names its owner and job, so no key is needed. A malformed or forged token: 401
TOKEN_INVALID; an expired one: 401 TOKEN_EXPIRED; one for another job: 403 FORBIDDEN.

Which owner (:func:`resolve_owner`): a token's; a client key's own principal (a job of
another owner is simply not found: 404); an admin's ``?owner=`` (default: the only owner
holding that job id). A worker key reads nothing.
"""

from __future__ import annotations

import hmac
import time
from dataclasses import dataclass

from aiohttp import web

from signaling.api_common import ApiError, ApiErrorCode
from signaling.capability import CapabilityError, verify
from signaling.db import LEGACY_OWNER, StorageDB
from signaling.keys import ADMIN_PRINCIPAL, Role, is_valid_owner, parse_key

__all__ = ["ADMIN_PRINCIPAL", "Access", "Authenticator", "Caller", "Role", "presented_key"]

TOKEN_HEADER = "X-Download-Token"
"""The header carrying a download capability."""


@dataclass(frozen=True, slots=True)
class Caller:
    """The principal behind a key.

    Attributes:
        principal: who it acts as (owner of what it creates).
        role: what it may do.
        key_id: the key's id, or ``None`` for the admin key of the settings.
    """

    principal: str
    role: Role
    key_id: str | None


@dataclass(frozen=True, slots=True)
class Access:
    """Which result a download or delete is about, and whether it is the owner asking.

    Attributes:
        owner: the owner of the result.
        by_owner: the owner itself asks (its token or its own key); only then does a
            download delete the result (auto-delete).
        sha256: the content a token was issued for, else ``None``.
    """

    owner: str
    by_owner: bool
    sha256: str | None = None


def presented_key(request: web.Request) -> str | None:
    """The key of ``X-API-Key`` or ``Authorization: Bearer``, else ``None``."""
    key = request.headers.get("X-API-Key")
    if key is not None:
        return key
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def _presented_token(request: web.Request) -> str | None:
    return request.headers.get(TOKEN_HEADER) or request.query.get("token") or None


class Authenticator:
    """Checks keys and tokens against the settings' admin key, the database and the
    server secret.

    Args:
        admin_key: the operator's key from the settings, or ``None``.
        db: the database holding the other keys.
        secret: the server secret signing download tokens.
    """

    def __init__(self, admin_key: str | None, db: StorageDB, secret: bytes) -> None:
        self._admin = None if admin_key is None else admin_key.encode("utf-8")
        self._db = db
        self._secret = secret

    async def caller(self, request: web.Request) -> Caller:
        """The caller of ``request``.

        Raises:
            ApiError: UNAUTHORIZED (no key, unknown or malformed), KEY_REVOKED.
        """
        given = presented_key(request)
        if given is None:
            raise ApiError(ApiErrorCode.UNAUTHORIZED, "missing API key")
        raw = given.encode("utf-8", "surrogateescape")
        if self._admin is not None and hmac.compare_digest(raw, self._admin):
            return Caller(ADMIN_PRINCIPAL, Role.ADMIN, None)
        key_id = parse_key(given)
        row = None if key_id is None else await self._db.find_key(key_id)
        if row is None or not row.matches(given):
            raise ApiError(ApiErrorCode.UNAUTHORIZED, "unknown API key")
        if row.revoked_at is not None:
            raise ApiError(ApiErrorCode.KEY_REVOKED, "this API key was revoked")
        return Caller(row.principal, row.role, row.key_id)

    async def require(self, request: web.Request, *roles: Role) -> Caller:
        """The caller of ``request``, whose role must be one of ``roles``.

        Raises:
            ApiError: as :meth:`caller`; FORBIDDEN for another role.
        """
        caller = await self.caller(request)
        if caller.role not in roles:
            raise ApiError(
                ApiErrorCode.FORBIDDEN, f"a {caller.role.value} key may not use this route"
            )
        return caller

    async def resolve_owner(self, request: web.Request, job_id: str) -> Access:
        """Whose result ``job_id`` is, for a download or a delete (see the module docstring).

        Raises:
            ApiError: TOKEN_INVALID, TOKEN_EXPIRED, FORBIDDEN (a token of another job, a
                worker key), as :meth:`caller`; INVALID_FIELD for a bad ``?owner=``;
                MISSING_FIELD when an admin must name the owner (several hold the job);
                NOT_FOUND when no owner holds it.
        """
        token = _presented_token(request)
        if token is not None:
            try:
                grant = verify(self._secret, token, time.time())
            except CapabilityError as exc:
                raise ApiError(ApiErrorCode(exc.problem.value), str(exc)) from None
            if grant.job_id != job_id:
                raise ApiError(ApiErrorCode.FORBIDDEN, "this download token is for another job")
            return Access(grant.owner, True, grant.sha256)
        caller = await self.require(request, Role.CLIENT, Role.ADMIN)
        if caller.role is Role.CLIENT:
            return Access(caller.principal, True)
        owner = request.query.get("owner")
        if owner is not None:
            if owner not in (ADMIN_PRINCIPAL, LEGACY_OWNER) and not is_valid_owner(owner):
                raise ApiError(ApiErrorCode.INVALID_FIELD, "owner is not a principal")
            return Access(owner, owner == caller.principal)
        owners = await self._db.owners_of(job_id)
        if caller.principal in owners:
            return Access(caller.principal, True)
        if len(owners) > 1:
            raise ApiError(
                ApiErrorCode.MISSING_FIELD,
                f"several owners hold job {job_id!r}: name one with ?owner=",
            )
        if not owners:
            raise ApiError(ApiErrorCode.NOT_FOUND, f"no file for job {job_id!r}")
        return Access(owners[0], False)
