"""What the client's calls return: a job's result, a sent file, a received file."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from protocol.events import SendEnded

__all__ = ["JobResult", "ReceivedFile", "SendResult"]


@dataclass(frozen=True)
class JobResult:
    """A completed job.

    Attributes:
        job_id: the job's id; ``output_path`` its output folder relative to the root.
        file_count: files in the output folder; ``total_mb`` their size, MB (10^6 bytes).
        metrics: validation_ms, file_access_ms, run_s, total_s (empty if not sent).
        logs: the JOB_LOG lines, in order.
        stored_path: where the storage service serves the results ZIP, when asked for
            with ``via_storage`` and RESULTS_STORED came in time.
        stored_sha256 / stored_size: the stored ZIP's sha256 and size (bytes), to verify
            the download against.
        download_token: the download capability for it (the owner's; it expires).
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


@dataclass(frozen=True)
class SendResult:
    """How sending one file ended.

    Attributes:
        outcome: the sender's end (status received, exists, failed, cancelled).
        size: the file's size, bytes; ``bytes_sent``: bytes put on the channel this time
            (0 for a dedupe hit; size - offset for a resumed transfer).
        seconds: from FILE_META to the receiver's verdict.
    """

    outcome: SendEnded
    size: int
    bytes_sent: int
    seconds: float

    @property
    def ok(self) -> bool:
        """True when the receiver holds the file (verified now, or already)."""
        return self.outcome.status in ("received", "exists")

    @property
    def mb_per_s(self) -> float:
        """Throughput of this transfer, MB (10^6 bytes) per second."""
        return self.bytes_sent / 1e6 / self.seconds if self.seconds > 0 else 0.0


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
