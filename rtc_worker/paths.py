"""Where the worker turns client paths into components and file-layer errors into
``PATH_ERROR`` reasons: one place, so every answer quotes the path the same way.

The file layer (:mod:`rtc_worker.storage`) knows nothing of the wire; its
:class:`~rtc_worker.storage.StorageErrorKind` members have the same names as the
protocol's :class:`~protocol.errors.PathReason`, and the mapping is by name.
"""

from __future__ import annotations

from protocol.errors import PathReason
from protocol.limits import DEFAULT_LIMITS, Limits
from protocol.names import InvalidNameError, split_path
from rtc_worker.storage import StorageError, StorageErrorKind

__all__ = ["path_reason", "user_parts"]


def user_parts(path: str, limits: Limits = DEFAULT_LIMITS) -> tuple[str, ...]:
    """Check a client's relative path and split it into components.

    Returns:
        The components (``()`` for ``""`` or ``"."``: the root itself).

    Raises:
        StorageError: ``OUTSIDE_ROOT`` for anything ``protocol.names.split_path``
            refuses (absolute, ``..``, NUL, control characters, look-alikes, too long);
            the detail says why.
    """
    try:
        return split_path(path, limits)
    except InvalidNameError as exc:
        raise StorageError(StorageErrorKind.OUTSIDE_ROOT, (path,), exc.detail) from None


def path_reason(exc: StorageError, user_path: str) -> str:
    """The ``PATH_ERROR`` text for ``exc``: ``"{reason}: {user_path}"``.

    ``user_path`` is quoted exactly as the client sent it; the worker's absolute paths
    never appear (they are only in ``exc.detail``, for the log).
    """
    return PathReason[exc.kind.name].quote(user_path)
