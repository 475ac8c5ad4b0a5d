"""A peer's Ed25519 key pair on disk: created on first start, mode 0600.

The key file holds the 32-byte private key in PKCS#8 PEM (unencrypted: the worker
starts unattended; the file's mode and its folder are the protection, as for SSH host
keys). It is created with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode 0600, so two
processes starting at once cannot both create one, and a symlink planted at its path
is refused. An existing key file that others can read is refused until its mode is
fixed, like ``ssh`` does for a private key.

The identity shown to others is :attr:`Identity.fingerprint` (see
:mod:`protocol.identity`).

Source: DESIGN.md ("Identity first"); RFC 8032; OpenSSH's key-file rules.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from protocol.identity import fingerprint

__all__ = ["KEY_FILE_NAME", "Identity", "IdentityError", "default_client_key_file"]

#: The key file's name inside a peer's data folder.
KEY_FILE_NAME = "identity.key"


def default_client_key_file() -> Path:
    """Where a client keeps its key by default: ``$XDG_CONFIG_HOME/rtc-client/identity.key``
    (``~/.config/rtc-client/identity.key`` when ``XDG_CONFIG_HOME`` is unset or not an
    absolute path, as the XDG Base Directory specification says)."""
    config = os.environ.get("XDG_CONFIG_HOME", "")
    base = Path(config) if os.path.isabs(config) else Path.home() / ".config"
    return base / "rtc-client" / KEY_FILE_NAME


_MAX_KEY_FILE_BYTES = 4096


class IdentityError(Exception):
    """The key file cannot be used (unreadable, not a key, readable by others).

    Attributes:
        code: ``KEY_UNREADABLE``, ``KEY_INVALID`` or ``KEY_PERMISSIONS``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code


class Identity:
    """An Ed25519 key pair: signs for its owner, shows its public key and fingerprint.

    Attributes:
        public_key: the raw 32-byte public key.
        fingerprint: sha256 of ``public_key``, 64 hex digits (the peer's identity).
        path: the key file, or None for a key held only in memory.
    """

    __slots__ = ("_private", "fingerprint", "path", "public_key")

    def __init__(self, private: Ed25519PrivateKey, path: Path | None = None) -> None:
        self._private = private
        self.public_key = private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        self.fingerprint = fingerprint(self.public_key)
        self.path = path

    def __repr__(self) -> str:  # never the private key
        return f"Identity(fingerprint={self.fingerprint!r})"

    @classmethod
    def generate(cls) -> Identity:
        """A new key pair held only in memory (tests, one-off clients)."""
        return cls(Ed25519PrivateKey.generate())

    @classmethod
    def load_or_create(cls, path: Path) -> Identity:
        """Load the key at ``path``, or create it (and its folder, mode 0700) when absent.

        Raises:
            IdentityError: KEY_PERMISSIONS (group or others can read it, or it is not a
                regular file), KEY_INVALID (not an Ed25519 PKCS#8 PEM key),
                KEY_UNREADABLE (another OS error).
        """
        path = path.expanduser()
        try:
            return cls._load(path)
        except FileNotFoundError:
            pass
        try:
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise IdentityError(
                "KEY_UNREADABLE", f"cannot create {path.parent}: {exc.strerror}"
            ) from None
        private = Ed25519PrivateKey.generate()
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileExistsError:  # another process created it first: use theirs
            return cls._load(path)
        except OSError as exc:
            raise IdentityError("KEY_UNREADABLE", f"cannot create {path}: {exc.strerror}") from None
        try:
            os.fchmod(fd, 0o600)  # whatever the umask
            os.write(fd, pem)
            os.fsync(fd)
        except OSError as exc:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(path)
            raise IdentityError("KEY_UNREADABLE", f"cannot write {path}: {exc.strerror}") from None
        os.close(fd)
        return cls(private, path)

    @classmethod
    def _load(cls, path: Path) -> Identity:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise IdentityError("KEY_PERMISSIONS", f"{path} is a symlink") from None
            raise IdentityError("KEY_UNREADABLE", f"cannot open {path}: {exc.strerror}") from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise IdentityError("KEY_PERMISSIONS", f"{path} is not a regular file")
            if info.st_mode & 0o077:
                raise IdentityError(
                    "KEY_PERMISSIONS",
                    f"{path} is readable by others (mode {stat.S_IMODE(info.st_mode):o});"
                    f" run: chmod 600 {path}",
                )
            data = os.read(fd, _MAX_KEY_FILE_BYTES)
        finally:
            os.close(fd)
        try:
            private = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise IdentityError("KEY_INVALID", f"{path} is not a PEM private key") from None
        if not isinstance(private, Ed25519PrivateKey):
            raise IdentityError("KEY_INVALID", f"{path} is not an Ed25519 key")
        return cls(private, path)

    def sign(self, payload: bytes) -> bytes:
        """The 64-byte Ed25519 signature of ``payload`` (RFC 8032 section 5.1.6)."""
        return self._private.sign(payload)
