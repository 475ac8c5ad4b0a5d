"""What a job is given: its input's open file, the files it works on, its environment.

The input was opened once, at validation (:meth:`SafeRoot.open_input
<rtc_worker.storage.SafeRoot.open_input>`); nothing here resolves its path again:

* an operator's command gets a file input as an inherited descriptor: ``{input}``
  becomes ``/dev/fd/N`` (:func:`child_descriptor`), a new read-only open file of the
  same inode, so a symlink swapped in at the input's path after the check changes
  nothing the job reads. A directory input is copied by descriptor into the job's
  working folder first (a private, read-only snapshot,
  :func:`~rtc_worker.storage.copies.copy_tree`) and ``{input}`` is that copy;
* the built-in job reads the same descriptor, or walks the folder by directory
  descriptors (:func:`tree_files`);
* the job's environment holds only ``PATH``, ``HOME``, ``LANG``, ``LC_*``, ``TZ`` and
  the variables the operator names (:func:`job_environment`): never the worker's
  secrets.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any

from rtc_worker.storage import InputHandle, SafeRoot, hash_file

__all__ = [
    "BASE_ENV_NAMES",
    "BASE_ENV_PREFIXES",
    "JobFiles",
    "child_descriptor",
    "count_files",
    "describe_files",
    "descriptor_path",
    "job_environment",
    "single_file",
    "tree_files",
]

BASE_ENV_NAMES = ("PATH", "HOME", "LANG", "TZ")
"""Variables every job inherits from the worker (when set)."""
BASE_ENV_PREFIXES = ("LC_",)
"""Prefixes of the variables every job inherits (the locale categories)."""

JobFiles = Callable[[], Iterator[tuple[str, int]]]
"""The files a built-in job works on: each call yields ``(name, descriptor)`` one at a
time (the descriptor is valid until the next item is asked for; read it with
``pread``)."""


def single_file(name: str, handle: InputHandle) -> JobFiles:
    """The input file itself, under ``name``."""
    return lambda: iter([(name, handle.fd)])


def tree_files(tree: SafeRoot) -> JobFiles:
    """The regular files under ``tree``, walked and opened by descriptor (symlinks,
    special files and hard-linked files skipped: :meth:`SafeRoot.open_files`)."""

    def files() -> Iterator[tuple[str, int]]:
        for parts, fd, _st in tree.open_files(()):
            yield "/".join(parts), fd

    return files


def count_files(files: JobFiles) -> int:
    """How many files ``files`` yields (each opened, checked and closed).

    Raises:
        StorageError: a folder vanished or became unreadable meanwhile.
    """
    return sum(1 for _ in files())


def describe_files(
    files: JobFiles, stop: threading.Event, log: Callable[[str], None]
) -> tuple[list[dict[str, Any]], int] | None:
    """The manifest's entries (path, size in bytes, sha256, MIME type) of ``files`` and
    their total size in bytes, each file read by descriptor; one ``log`` line per file.

    Returns:
        ``(entries, total_bytes)``, or None when ``stop`` was set meanwhile.

    Raises:
        StorageError: a folder vanished or became unreadable meanwhile.
    """
    entries: list[dict[str, Any]] = []
    total = 0
    for name, fd in files():
        hasher = hash_file(fd, stop=stop)
        if stop.is_set():
            return None
        meta = hasher.finish()
        total += meta.size
        entries.append(
            {"path": name, "size": meta.size, "sha256": meta.sha256, "mime_type": meta.mime_type}
        )
        log(f"{name}  {meta.size} bytes  {meta.mime_type}  sha256={meta.sha256[:16]}…")
    return entries, total


def child_descriptor(handle: InputHandle) -> int:
    """A new read-only descriptor of the input's open file, for a job to inherit.

    Opened through ``/proc/self/fd`` (the same inode, whatever its path leads to now,
    with an offset of its own); where ``/proc`` is missing, a duplicate of the
    descriptor (sharing its offset). Close it once the job has started.

    Raises:
        OSError: no descriptor is left.
    """
    try:
        return os.open(f"/proc/self/fd/{handle.fd}", os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return os.dup(handle.fd)


def descriptor_path(fd: int) -> Path:
    """The path a process opens to read its inherited descriptor ``fd``: ``/dev/fd/N``."""
    return Path(f"/dev/fd/{fd}")


def job_environment(
    allowed: Sequence[str], environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """The environment of a job: :data:`BASE_ENV_NAMES`, :data:`BASE_ENV_PREFIXES` and
    the variables matching ``allowed`` (names, or shell-style patterns such as
    ``CUDA_*``), taken from ``environ`` (default: the worker's).

    The worker's settings refuse patterns that match a secret's variable, so the token
    and the storage key are never among them.
    """
    source = os.environ if environ is None else environ
    return {
        name: value
        for name, value in source.items()
        if name in BASE_ENV_NAMES
        or name.startswith(BASE_ENV_PREFIXES)
        or any(fnmatchcase(name, pattern) for pattern in allowed)
    }
