"""What every session of one worker shares: roots, store, the job slot, job records.

Jobs belong to identities (principals): the same job id from two clients is two jobs,
recorded under ``.rtc-jobs/<principal>/<job_id>/``, and a client finds only its own.

Source: DESIGN.md, "The parts" and "Identity first" (the worker holds one job at a time;
results go only to the identity that ran the job).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from protocol.connection import Capabilities
from protocol.events import ResultsFound, WorkerBusy, WorkerIdle
from protocol.limits import Limits
from rtc_worker.holdings import (
    DEFAULT_ANONYMOUS_QUOTA,
    DEFAULT_QUOTA,
    DEFAULT_RESERVE_BYTES,
    Holdings,
)
from rtc_worker.jobs import JobRunner
from rtc_worker.metrics import WorkerMetrics
from rtc_worker.paths import user_parts
from rtc_worker.relay_fetch import RelayRoad
from rtc_worker.results_client import ResultsServiceClient
from rtc_worker.storage import BlobStore, SafeRoot, StorageError, layout
from rtc_worker.transfer_io import PartialRegistry

if TYPE_CHECKING:
    from rtc_worker.session import WorkerSession

__all__ = ["JobKey", "JobSlot", "WorkerResources"]

_MAX_RECORD_BYTES = 8192


JobKey = tuple[str, str]
"""A job: ``(owner principal, job_id)``."""


class JobSlot:
    """The worker-wide permission to run one job at a time; every session's connection
    is told when it is taken and freed (so each can answer WORKER_BUSY itself).

    Attributes:
        running: the running job's ``(owner, job_id)``, or None when the worker is idle.
    """

    def __init__(self, sessions: set[WorkerSession]) -> None:
        self.running: JobKey | None = None
        self.closed = False
        self._sessions = sessions

    @property
    def busy(self) -> bool:
        """True while a job runs, or for good once the worker is stopping."""
        return self.running is not None or self.closed

    @property
    def why(self) -> str:
        """Why JOB_START is refused now (the detail of WORKER_BUSY): never another
        client's job id."""
        if self.closed:
            return "the worker is shutting down"
        return "another job is running on this worker; try again later"

    def _tell(self, outcome: WorkerBusy | WorkerIdle) -> None:
        for session in list(self._sessions):
            session.conn.report(outcome)
            session.driver.kick()

    def acquire(self, job: JobKey) -> None:
        """Take the slot for ``(owner, job_id)`` (the connection only starts a job when
        told the worker is idle).

        Raises:
            RuntimeError: the slot is taken (a bug: connections are told synchronously).
        """
        if self.busy:
            raise RuntimeError(f"job slot taken by {self.running or 'shutdown'}")
        self.running = job
        self._tell(WorkerBusy(self.why))

    def release(self, job: JobKey) -> None:
        """Give the slot back (only the job holding it can)."""
        if self.running == job:
            self.running = None
            if not self.closed:
                self._tell(WorkerIdle())

    def close(self) -> None:
        """The worker is stopping: no new job may start."""
        self.closed = True
        self._tell(WorkerBusy(self.why))


@dataclass
class WorkerResources:
    """What every session of one worker shares.

    Attributes:
        shared: the shared root, or None without shared storage.
        root: the root jobs run on (the shared root, else the data dir); job folders
            and results ZIPs live under it.
        store: received files (objects by sha256, partials).
        store_parts: where ``store`` lies under ``root``.
        runner: runs jobs on ``root``.
        limits / capabilities: of every connection.
        reserved_names: the worker's own top-level folders (never an input or output).
        results_client: the storage service client, or None.
        holdings: what each principal holds in ``store`` and its bounds (default: the
            default quotas and reserve).
        metrics: the worker's Prometheus counters (:mod:`rtc_worker.metrics`).
        relay_road: the relay road when the worker offers it (a storage service with
            its key, ``relay_road`` on), else None.
    """

    shared: SafeRoot | None
    root: SafeRoot
    store: BlobStore
    store_parts: tuple[str, ...]
    runner: JobRunner
    limits: Limits
    capabilities: Capabilities
    reserved_names: tuple[str, ...] = layout.reserved_names()
    results_client: ResultsServiceClient | None = None
    holdings: Holdings | None = None
    partials: PartialRegistry = field(default_factory=PartialRegistry)
    sessions: set[WorkerSession] = field(default_factory=set)
    #: (owner, job_id) -> the output folder as sent, for RESULTS_REQUEST.
    jobs: dict[JobKey, str] = field(default_factory=dict)
    metrics: WorkerMetrics = field(default_factory=WorkerMetrics)
    relay_road: RelayRoad | None = None
    slot: JobSlot = field(init=False)

    def __post_init__(self) -> None:
        self.slot = JobSlot(self.sessions)
        if self.holdings is None:
            self.holdings = Holdings.for_worker(
                self.store,
                quota=DEFAULT_QUOTA,
                anonymous_quota=DEFAULT_ANONYMOUS_QUOTA,
                reserve_bytes=DEFAULT_RESERVE_BYTES,
            )

    def record_job(self, owner: str, job_id: str, output_path: str) -> None:
        """Remember that ``owner`` ran ``job_id`` into ``output_path`` (also on disk, so
        a restarted worker knows; blocking).

        Raises:
            ValueError: ``owner`` or ``job_id`` is not a plain folder name.
        """
        self.jobs[(owner, job_id)] = output_path
        with contextlib.suppress(StorageError, OSError):
            self.root.makedirs(layout.job_dir(owner, job_id))
            self.root.write_atomic(layout.job_record_file(owner, job_id), output_path.encode())

    def lookup(self, owner: str, job_id: str) -> ResultsFound:
        """``owner``'s job ``job_id``: whether it runs and its output folder, if it has
        results (blocking). Another identity's job with that id is never found: the
        answer names ``owner`` only when ``owner`` ran it."""
        running = self.slot.running == (owner, job_id)
        output = self.jobs.get((owner, job_id))
        if output is None:
            with (
                contextlib.suppress(StorageError, OSError, ValueError),
                self.root.open_file(layout.job_record_file(owner, job_id)) as handle,
            ):
                output = handle.read(_MAX_RECORD_BYTES).decode("utf-8", "replace")
        try:
            exists = output is not None and self.root.exists(user_parts(output))
        except StorageError:
            exists = False
        return ResultsFound(
            job_id, owner if output is not None else None, running, output if exists else None
        )
