"""The worker's folder and file names, in one place.

Under the worker's storage root (the shared root, else its data dir)::

    .rtc-work/<job_id>-<random>/      a ZIP input extracted for one job (removed after it)
    .rtc-jobs/<principal>/<job_id>/   one job of one identity (job ids are per identity)
        output/                       outputs of a job without a shared output folder
        output-path                   the output folder the job wrote (for its results)
        results-<job_id>.zip          the job's results, packed
    .rtc-store/ (or store/ in the data dir)   the blob store of received files:
        objects/ab/<sha256>           verified content, named by its SHA-256
        partial/<key>.part|.json      partial files and their sidecars (a worker's keys
                                      are <principal tag>-<sha256>: one per principal)
        owners/<fingerprint>/<sha256> which principals stored which content

The storage service keeps its content in ``blobs/ab/<sha256>`` and its partials in
``partial/`` under its storage folder; ``uploads/`` and ``tmp/`` are its folders from
before the one file layer (migrated or cleaned at start-up).

Paths are tuples of plain components, the form :class:`~rtc_worker.storage.SafeRoot`
takes. A job id is the protocol's ``[A-Za-z0-9._-]{1,64}``; a principal is a key's
fingerprint (64 hex digits) or an anonymous connection's ``anon-…``; ``.`` and ``..``
are not plain components and are refused here (ValueError).
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "DATA_STORE_DIR",
    "JOBS_DIR",
    "OBJECTS_DIR",
    "OWNERS_DIR",
    "PARTIAL_DIR",
    "RESERVED_NAMES",
    "SERVICE_BLOBS_DIR",
    "SERVICE_LEGACY_TMP_DIR",
    "SERVICE_LEGACY_UPLOADS_DIR",
    "STORE_DIR",
    "WORK_DIR",
    "job_dir",
    "job_output",
    "job_record_file",
    "job_results_zip",
    "reserved_names",
    "results_zip_name",
    "store_parts",
    "store_root",
    "work_dir",
]

WORK_DIR = ".rtc-work"
"""Per-job extraction folders (the default of ``RTC_WORK_DIR_NAME``)."""
JOBS_DIR = ".rtc-jobs"
"""Job folders, one folder per identity: outputs of jobs without a shared output path,
the output folder each job wrote, results ZIPs."""
STORE_DIR = ".rtc-store"
"""The blob store under a shared root (shared by every worker on that storage)."""
DATA_STORE_DIR = "store"
"""The blob store under the worker's data dir (no shared storage)."""
RESERVED_NAMES = (WORK_DIR, STORE_DIR, JOBS_DIR)
"""Top-level names of the worker under a shared root: never a job's input or output."""

OBJECTS_DIR = "objects"
"""Folder of a blob store's objects (the worker's)."""
PARTIAL_DIR = "partial"
"""Folder of a blob store's partial files."""
OWNERS_DIR = "owners"
"""Folder of a worker's blob store recording which principal stored which content."""
SERVICE_BLOBS_DIR = "blobs"
"""Folder of the storage service's objects."""
SERVICE_LEGACY_UPLOADS_DIR = "uploads"
"""The storage service's chunk folders of resumable uploads, before the file layer."""
SERVICE_LEGACY_TMP_DIR = "tmp"
"""The storage service's temporary files, before the file layer."""

_JOB_OUTPUT = "output"
_JOB_RECORD = "output-path"


def _component(value: str) -> str:
    if not value or value in (".", "..") or "/" in value or "\x00" in value:
        raise ValueError(f"not usable as a folder name: {value!r}")
    return value


def reserved_names(work_dir_name: str = WORK_DIR) -> tuple[str, ...]:
    """The reserved top-level names, with the configured work folder's name."""
    return tuple(dict.fromkeys((_component(work_dir_name), *RESERVED_NAMES)))


def job_dir(owner: str, job_id: str) -> tuple[str, str, str]:
    """``(".rtc-jobs", owner, job_id)``: the folder of ``owner``'s job ``job_id``.

    Raises:
        ValueError: either is ``.``, ``..``, empty or holds a ``/``.
    """
    return (JOBS_DIR, _component(owner), _component(job_id))


def job_output(owner: str, job_id: str) -> tuple[str, str, str, str]:
    """The output folder of a job without a shared output path."""
    return (*job_dir(owner, job_id), _JOB_OUTPUT)


def job_record_file(owner: str, job_id: str) -> tuple[str, str, str, str]:
    """The file holding the output folder the job wrote (where its results are)."""
    return (*job_dir(owner, job_id), _JOB_RECORD)


def results_zip_name(job_id: str) -> str:
    """``results-{job_id}.zip``: the name a job's results ZIP is sent and stored under."""
    return _component(f"results-{job_id}.zip")


def job_results_zip(owner: str, job_id: str) -> tuple[str, str, str, str]:
    """Where a job's results ZIP is built."""
    return (*job_dir(owner, job_id), results_zip_name(job_id))


def work_dir(job_id: str, suffix: str, work_dir_name: str = WORK_DIR) -> tuple[str, str]:
    """A job's extraction folder: ``(work_dir_name, f"{job_id}-{suffix}")``."""
    return (_component(work_dir_name), _component(f"{job_id}-{suffix}"))


def store_parts(shared: bool) -> tuple[str]:
    """The blob store's folder relative to the worker's storage root."""
    return (STORE_DIR,) if shared else (DATA_STORE_DIR,)


def store_root(shared_root: Path | None, data_dir: Path) -> Path:
    """Where the worker's blob store lives.

    Returns:
        ``shared_root / ".rtc-store"`` when there is a shared root (every worker on that
        storage shares one store), else ``data_dir / "store"``.
    """
    if shared_root is not None:
        return shared_root / STORE_DIR
    return data_dir / DATA_STORE_DIR
