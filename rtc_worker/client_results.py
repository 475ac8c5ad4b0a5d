"""What the client's calls return: a job's result, a sent file, a received file."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from protocol.events import SendEnded
from rtc_worker.roads_client import RoadChange
from rtc_worker.storage import SafeRoot

__all__ = ["JobResult", "ReceivedFile", "SendResult", "SubmitResult", "extract_results"]


@dataclass(frozen=True)
class JobResult:
    """A completed job.

    Attributes:
        job_id: the job's id; ``output_path`` its output folder relative to the root.
        file_count: files in the output folder; ``total_mb`` their size, MB (10^6 bytes).
        metrics: validation_ms, file_access_ms, run_s, total_s, transfer_mb_s (empty if
            not sent).
        logs: the JOB_LOG lines, in order.
        stored_path: where the storage service serves the results ZIP, when asked for
            with ``via_storage`` and RESULTS_STORED came in time.
        stored_sha256 / stored_size: the stored ZIP's sha256 and size (bytes), to verify
            the download against.
        download_token: the download capability for it (the owner's; it expires).
        road: how the input reached the worker, as its JOB_METRICS says (``shared``,
            ``relay``, ``channel``, ``stored``, ``relay+channel``); None from a worker
            that does not say.
    """

    job_id: str
    output_path: str
    file_count: int
    total_mb: float
    metrics: dict[str, float] = field(default_factory=dict)
    logs: tuple[str, ...] = ()
    stored_path: str | None = None
    stored_sha256: str | None = None
    stored_size: int | None = None
    download_token: str | None = None
    road: str | None = None


@dataclass(frozen=True)
class SendResult:
    """How sending one file ended.

    Attributes:
        outcome: the sender's end (status received, exists, failed, cancelled).
        size: the file's size, bytes; ``bytes_sent``: bytes put on the data channel this
            time (0 for a dedupe hit; size - offset for a resumed transfer).
        seconds: from FILE_META to the receiver's verdict.
        bytes_relayed: plaintext bytes handed to the worker on the relay road (the parts
            announced with RELAY_PART).
        roads: each road taken, in order (the first, then each change with its offset
            and code); empty when no byte had to move.
        relay_failure: the code that ended the relay road (the upload's or the
            worker's RELAY_ENDED), or None.
    """

    outcome: SendEnded
    size: int
    bytes_sent: int
    seconds: float
    bytes_relayed: int = 0
    roads: tuple[RoadChange, ...] = ()
    relay_failure: str | None = None

    @property
    def ok(self) -> bool:
        """True when the receiver holds the file (verified now, or already)."""
        return self.outcome.status in ("received", "exists")

    @property
    def road(self) -> str:
        """The road the bytes took: ``channel``, ``relay``, ``relay+channel`` (after a
        failover), or ``stored`` when the worker held the content (no byte moved)."""
        if self.outcome.status == "exists" or not self.roads:
            return "stored"
        names = dict.fromkeys(change.road for change in self.roads)
        return "+".join(names)

    @property
    def bytes_moved(self) -> int:
        """Bytes of the file that went to the worker this time, on every road."""
        return self.bytes_sent + self.bytes_relayed

    @property
    def mb_per_s(self) -> float:
        """Throughput of this transfer on every road, MB (10^6 bytes) per second."""
        return self.bytes_moved / 1e6 / self.seconds if self.seconds > 0 else 0.0


@dataclass(frozen=True)
class ReceivedFile:
    """A file received from the worker (or already held): ``path`` is the verified
    object in the client's store; ``bytes_received`` crossed the channel this time."""

    sha256: str
    name: str
    size: int
    path: Path
    existed: bool
    bytes_received: int


@dataclass(frozen=True)
class SubmitResult:
    """A job run on a file sent over the channel, with its results downloaded.

    Attributes:
        job: the job's result.
        upload: how the input went (bytes sent, MB/s; 0 bytes when the worker had it).
        results_zip: the verified results ZIP saved in the download folder.
        results_dir: the ZIP's files, extracted safely next to it.
        download: the received results file (size, sha256, bytes that crossed).
    """

    job: JobResult
    upload: SendResult
    results_zip: Path
    results_dir: Path
    download: ReceivedFile


def extract_results(zip_path: Path, results_dir: Path) -> None:
    """Extract a verified results ZIP into ``results_dir`` (emptied first), safely: no
    member may land outside it (:func:`rtc_worker.archive.extract_zip`).

    Raises:
        ArchiveError: a member is unsafe or the ZIP is damaged. OSError.
    """
    from rtc_worker.archive import extract_zip

    if results_dir.exists():
        shutil.rmtree(results_dir)
    results_dir.mkdir(parents=True)
    with SafeRoot(results_dir) as dest, zip_path.open("rb") as handle:
        extract_zip(handle, dest)
