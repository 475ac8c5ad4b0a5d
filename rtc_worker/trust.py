"""Whom a peer trusts: the client's known workers, the worker's authorized clients.

* ``known_workers`` (the client's, like SSH's ``known_hosts``): one line per worker,
  ``<peer_id> <fingerprint>``. The first handshake with a worker records its key (trust
  on first use); a later handshake proving another key is refused loudly
  (``WORKER_KEY_CHANGED``) until the line is removed by hand.
* ``authorized_clients`` (the worker's, like SSH's ``authorized_keys``): one client
  fingerprint per line, optionally followed by a name. When the file is configured,
  only those clients are accepted (``NOT_AUTHORIZED`` otherwise).

In both, ``#`` starts a comment and blank lines are ignored. A line that is not valid
is an error naming the file and line, never silently skipped: a typo must not widen
trust.

Source: OpenSSH's ``known_hosts`` and ``authorized_keys`` (sshd(8), AUTHORIZED_KEYS
FILE FORMAT); DESIGN.md ("Identity first").
"""

from __future__ import annotations

import fcntl
import os
import re
from pathlib import Path

from protocol.identity import is_fingerprint

__all__ = ["KnownWorkers", "TrustFileError", "read_authorized_clients"]

_PEER_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_MAX_TRUST_FILE_BYTES = 4 * 1024 * 1024


class TrustFileError(ValueError):
    """A trust file cannot be read, or one of its lines is not valid (file and line)."""


def _lines(path: Path) -> list[tuple[int, list[str]]]:
    """The meaningful lines of ``path``: (number, fields) without comments.

    Raises:
        TrustFileError: unreadable, too large, or not UTF-8.
    """
    try:
        with path.open("rb") as handle:
            data = handle.read(_MAX_TRUST_FILE_BYTES + 1)
        if len(data) > _MAX_TRUST_FILE_BYTES:
            raise TrustFileError(f"{path}: larger than {_MAX_TRUST_FILE_BYTES} bytes")
        text = data.decode("utf-8")
    except FileNotFoundError:
        raise
    except (OSError, UnicodeDecodeError) as exc:
        raise TrustFileError(f"{path}: cannot read it: {exc}") from None
    found = []
    for number, line in enumerate(text.splitlines(), start=1):
        fields = line.split("#", 1)[0].split()
        if fields:
            found.append((number, fields))
    return found


def read_authorized_clients(path: Path) -> frozenset[str]:
    """The client fingerprints in an authorized-clients file.

    Each line: ``<fingerprint> [name...]`` (a name is for people).

    Raises:
        TrustFileError: the file is missing or unreadable, or a line's first field is
            not a fingerprint (64 lowercase hex digits).
    """
    try:
        lines = _lines(path)
    except FileNotFoundError:
        raise TrustFileError(f"{path}: no such authorized-clients file") from None
    found = set()
    for number, fields in lines:
        if not is_fingerprint(fields[0]):
            raise TrustFileError(
                f"{path}:{number}: not a client fingerprint (64 lowercase hex digits; "
                "see rtc-client id)"
            )
        found.add(fields[0])
    return frozenset(found)


class KnownWorkers:
    """The client's pinned worker keys, in a ``known_workers`` file.

    Args:
        path: the file (created on the first record, mode 0600).

    Raises:
        TrustFileError: (on every read) a line is not ``<peer_id> <fingerprint>``, or a
            worker appears twice with different keys.
    """

    def __init__(self, path: Path) -> None:
        self.path = path.expanduser()

    def _read(self) -> dict[str, str]:
        try:
            lines = _lines(self.path)
        except FileNotFoundError:
            return {}
        pins: dict[str, str] = {}
        for number, fields in lines:
            if (
                len(fields) != 2
                or not _PEER_ID.fullmatch(fields[0])
                or not is_fingerprint(fields[1])
            ):
                raise TrustFileError(f"{self.path}:{number}: expected '<peer_id> <fingerprint>'")
            if pins.setdefault(fields[0], fields[1]) != fields[1]:
                raise TrustFileError(f"{self.path}:{number}: {fields[0]} is pinned twice")
        return pins

    def pinned(self, peer_id: str) -> str | None:
        """The fingerprint pinned for ``peer_id``, or None on first use."""
        return self._read().get(peer_id)

    def record(self, peer_id: str, fingerprint: str) -> None:
        """Pin ``fingerprint`` for ``peer_id`` (first use): appended under an exclusive
        lock, so two clients starting at once do not interleave.

        Raises:
            TrustFileError: the file cannot be written, or another process pinned a
                different key for ``peer_id`` meanwhile.
            ValueError: ``peer_id`` or ``fingerprint`` is not valid.
        """
        if not _PEER_ID.fullmatch(peer_id) or not is_fingerprint(fingerprint):
            raise ValueError("a pin is a peer id and a fingerprint")
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(
                self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )  # fmt: skip
        except OSError as exc:
            raise TrustFileError(f"{self.path}: cannot write it: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            current = self.pinned(peer_id)
            if current is not None and current != fingerprint:
                raise TrustFileError(f"{self.path}: {peer_id} was pinned to {current} meanwhile")
            if current is None:
                os.write(fd, f"{peer_id} {fingerprint}\n".encode())
                os.fsync(fd)
        finally:
            os.close(fd)
