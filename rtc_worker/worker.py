"""RTCWorkerClient: the GPU-container worker, answerer of client offers.

It registers with the signaling server (reconnecting with exponential backoff
when the server goes away), answers each client's offer with one
``RTCPeerConnection``, and serves every data channel the client opens with a
:class:`~rtc_worker.session.WorkerSession`. Several clients may be connected;
one job runs at a time per worker (:class:`~rtc_worker.session.JobSlot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from pathlib import Path
from typing import Any

from aiortc import (
    RTCConfiguration,
    RTCDataChannel,
    RTCIceServer,
    RTCPeerConnection,
    RTCSessionDescription,
)
from loguru import logger

from protocol import Limits
from protocol.signaling import Answer as AnswerFrame
from protocol.signaling import ErrorFrame, RelayedCandidate, RelayedOffer, SignalingError
from rtc_worker import __version__
from rtc_worker.archive import ZipLimits
from rtc_worker.channel import FrameChannel
from rtc_worker.config import WorkerSettings
from rtc_worker.jobs import JobRunner
from rtc_worker.results_client import ResultsServiceClient
from rtc_worker.session import JobSlot, WorkerResources, WorkerSession
from rtc_worker.signaling_client import SignalingClient, SignalingClosed
from rtc_worker.storage import BlobStore, SafeRoot, layout
from rtc_worker.transfer import PartialRegistry

__all__ = ["JobSlot", "RTCWorkerClient", "rtc_configuration"]


def rtc_configuration(ice_servers: list[str]) -> RTCConfiguration:
    """An RTCConfiguration with exactly these ICE server URLs (none: host candidates only).

    With an empty list aiortc gathers host candidates only and never contacts a
    public STUN server, which is what loopback, LAN and offline runs need.
    """
    return RTCConfiguration(iceServers=[RTCIceServer(urls=url) for url in ice_servers])


class RTCWorkerClient:
    """The worker process's WebRTC side.

    Attributes:
        shared_storage_root: the detected shared root, or None without shared storage.
        fs_adapter: the shared root's :class:`SafeRoot`, or None.
        registered: set while the worker is registered with signaling.

    Args:
        settings: the worker's configuration.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.shared_storage_root: Path | None = settings.detect_shared_root()
        self.fs_adapter: SafeRoot | None = None
        if self.shared_storage_root is not None:
            self.fs_adapter = SafeRoot(
                self.shared_storage_root, slow_warning_s=settings.slow_validation_warning_s
            )
            logger.info("shared storage root: {}", self.shared_storage_root)
        else:
            logger.warning(
                "no shared storage found (set SHARED_STORAGE_ROOT or --shared-root; probed {});"
                " serving without it: files come over the data channel into {}",
                ", ".join(settings.shared_root_candidates) or "nothing",
                settings.data_dir,
            )
        storage_root = settings.storage_root(self.shared_storage_root)
        local_fs = self.fs_adapter or SafeRoot(
            storage_root, slow_warning_s=settings.slow_validation_warning_s
        )
        self.store = BlobStore(
            layout.store_root(self.shared_storage_root, storage_root),
            partial_ttl_s=settings.partial_ttl_s,
        )
        self.runner = JobRunner(
            local_fs,
            command=settings.job_command,
            zip_limits=ZipLimits(
                max_total_bytes=settings.zip_max_total_bytes,
                max_ratio=settings.zip_max_ratio,
                max_members=settings.zip_max_members,
            ),
            work_dir_name=settings.work_dir_name,
            keep_workdir=settings.keep_workdir,
            cancel_grace_s=settings.cancel_grace_s,
        )
        self.slot = JobSlot()
        self.resources = WorkerResources(
            shared_fs=self.fs_adapter,
            runner=self.runner,
            store=self.store,
            store_parts=layout.store_parts(self.shared_storage_root is not None),
            partials=PartialRegistry(),
            slot=self.slot,
            limits=Limits(
                max_text_frame_bytes=settings.max_text_frame_bytes,
                max_path_bytes=settings.max_path_bytes,
                max_fields=settings.max_fields,
            ),
            max_file_size=settings.max_file_size,
            chunk_size=settings.chunk_size,
            reserved_names=layout.reserved_names(settings.work_dir_name),
            storage=(
                ResultsServiceClient(
                    settings.storage_url,
                    settings.storage_api_key,
                    retries=settings.storage_retries,
                    backoff_s=settings.storage_backoff_s,
                )
                if settings.storage_url
                else None
            ),
        )
        self.registered = asyncio.Event()
        self._peer_connections: dict[str, RTCPeerConnection] = {}
        self._sessions: set[WorkerSession] = set()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._signaling: SignalingClient | None = None
        self._stopping = asyncio.Event()

    @property
    def active_sessions(self) -> int:
        """Data channels being served now."""
        return len(self._sessions)

    @property
    def metadata(self) -> dict[str, Any]:
        """What other peers see in ``list_peers``."""
        return {
            "shared_storage": self.shared_storage_root is not None,
            "max_file_size": self.settings.max_file_size,
            "job": "command" if self.settings.job_command else "manifest",
            "version": __version__,
        }

    async def run(self) -> None:
        """Serve until :meth:`stop`; reconnect to signaling with exponential backoff.

        Raises:
            SignalingError: the server refused the registration for good
                (UNAUTHORIZED or an invalid peer id): retrying cannot help.
        """
        delay = 0.5
        self._spawn(self._cleanup_loop())
        try:
            while not self._stopping.is_set():
                signaling = SignalingClient(
                    self.settings.signaling_url,
                    self.settings.peer_id,
                    "worker",
                    token=self.settings.token,
                    metadata=self.metadata,
                )
                try:
                    await signaling.connect()
                except SignalingError as exc:
                    if exc.code in ("UNAUTHORIZED", "INVALID_FRAME"):
                        raise
                    logger.warning("signaling refused registration: {}", exc)
                except (OSError, TimeoutError, SignalingClosed, Exception) as exc:
                    logger.warning(
                        "signaling unreachable at {}: {}",
                        self.settings.signaling_url,
                        exc or type(exc).__name__,
                    )
                else:
                    delay = 0.5
                    self._signaling = signaling
                    self.registered.set()
                    await self._serve(signaling)
                    self.registered.clear()
                    await signaling.close()
                    if not self._stopping.is_set():
                        logger.warning("lost signaling connection; reconnecting")
                if self._stopping.is_set():
                    break
                wait = delay * (0.8 + 0.4 * random.random())
                logger.info("reconnecting to signaling in {:.1f} s", wait)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), timeout=wait)
                delay = min(delay * 2, self.settings.reconnect_max_delay_s)
        finally:
            await self._shutdown()

    async def _serve(self, signaling: SignalingClient) -> None:
        stop = asyncio.ensure_future(self._stopping.wait())
        try:
            while True:
                recv = asyncio.ensure_future(signaling.recv())
                await asyncio.wait({recv, stop}, return_when=asyncio.FIRST_COMPLETED)
                if stop.done():
                    recv.cancel()
                    return
                try:
                    frame = recv.result()
                except SignalingClosed:
                    return
                match frame:
                    case RelayedOffer():
                        self._spawn(self._answer(signaling, frame))
                    case RelayedCandidate():
                        pass  # our SDP answers carry every candidate; no trickle needed
                    case ErrorFrame():
                        logger.warning("signaling error: {} {}", frame.code, frame.message)
                    case _:
                        logger.debug("ignoring signaling frame {}", frame.type)
        finally:
            stop.cancel()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _answer(self, signaling: SignalingClient, offer: RelayedOffer) -> None:
        """Answer one client's offer with a new peer connection."""
        peer = offer.from_
        old = self._peer_connections.pop(peer, None)
        if old is not None:  # the client reconnected: the old connection is stale
            await old.close()
        pc = RTCPeerConnection(rtc_configuration(self.settings.ice_servers))
        self._peer_connections[peer] = pc

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            session = WorkerSession(FrameChannel(channel), self.resources, peer=peer)
            self._sessions.add(session)

            async def serve() -> None:
                try:
                    await session.run()
                finally:
                    if session.job_task is not None:
                        with contextlib.suppress(Exception):
                            await session.job_task
                    self._sessions.discard(session)

            self._spawn(serve())

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            logger.info("peer connection with {}: {}", peer, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                if self._peer_connections.get(peer) is pc:
                    del self._peer_connections[peer]
                await pc.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            await signaling.send(AnswerFrame(to=peer, sdp=pc.localDescription.sdp))
            logger.info("answered offer from {}", peer)
        except Exception as exc:
            logger.warning("could not answer offer from {}: {}", peer, exc)
            if self._peer_connections.get(peer) is pc:
                del self._peer_connections[peer]
            await pc.close()

    async def _cleanup_loop(self) -> None:
        """Remove partial files older than the TTL, now and then every interval."""
        while True:
            try:
                removed = await asyncio.to_thread(self.store.cleanup)
                if removed:
                    logger.info("removed {} expired partial file(s)", removed)
            except OSError as exc:
                logger.warning("partial-file cleanup failed: {}", exc)
            await asyncio.sleep(self.settings.cleanup_interval_s)

    async def stop(self) -> None:
        """Ask :meth:`run` to return (it cancels running jobs and closes connections)."""
        self._stopping.set()

    async def _shutdown(self) -> None:
        self.slot.close()
        for session in list(self._sessions):
            await session.aclose()
        for pc in list(self._peer_connections.values()):
            await pc.close()
        self._peer_connections.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._signaling is not None:
            await self._signaling.close()
        logger.info("worker stopped")
