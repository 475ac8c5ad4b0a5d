"""RTCWorkerClient: the GPU-container worker, answerer of client offers.

It registers with the signaling server (reconnecting with jittered exponential backoff,
through tenacity, when the server goes away), answers each client's offer with one
``RTCPeerConnection``, and serves every data channel the client opens with a
:class:`~rtc_worker.session.WorkerSession`. Several clients may be connected; one job
runs at a time per worker (:class:`~rtc_worker.worker_state.JobSlot`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription
from loguru import logger
from tenacity import AsyncRetrying, retry_if_exception, wait_exponential_jitter

from protocol import DEFAULT_LIMITS
from protocol.connection import Capabilities
from protocol.signaling import Answer as AnswerFrame
from protocol.signaling import ErrorFrame, RelayedCandidate, RelayedOffer, SignalingError
from rtc_worker import __version__
from rtc_worker.archive import ZipLimits
from rtc_worker.channel_auth import channel_auth_config
from rtc_worker.holdings import Holdings, Quota
from rtc_worker.identity import Identity
from rtc_worker.jobs import JobRunner
from rtc_worker.relay_fetch import RelayRoad
from rtc_worker.results_client import ResultsServiceClient
from rtc_worker.rtc import (
    FrameChannel,
    IceSetupError,
    describe_path,
    require_relay_candidate,
    rtc_configuration,
)
from rtc_worker.session import WorkerSession
from rtc_worker.settings import WorkerSettings
from rtc_worker.signaling_client import SignalingClient
from rtc_worker.storage import BlobStore, SafeRoot, layout
from rtc_worker.trust import read_authorized_clients
from rtc_worker.worker_state import WorkerResources

__all__ = ["RTCWorkerClient"]

T = TypeVar("T")

#: Registration refusals that retrying cannot fix.
_FINAL_CODES = ("UNAUTHORIZED", "INVALID_FRAME", "KEY_REQUIRED", "BAD_SIGNATURE", "PEER_ID_BOUND")


def _under_umask(umask: int, make: Callable[[], T]) -> T:
    """``make()`` with the process's umask set to ``umask`` (the store's folders)."""
    previous = os.umask(umask)
    try:
        return make()
    finally:
        os.umask(previous)


def _retryable(exc: BaseException) -> bool:
    """Retry when signaling is unreachable or refused for now, never on a cancel or a
    final refusal."""
    if not isinstance(exc, Exception):
        return False
    return not (isinstance(exc, SignalingError) and exc.code in _FINAL_CODES)


class RTCWorkerClient:
    """The worker process's WebRTC side.

    Args:
        settings: the worker's configuration.

    Attributes:
        identity: the worker's key (``settings.identity_file``, created on first start).
        shared_storage_root: the detected shared root, or None without shared storage.
        resources: what every session shares (roots, store, slot, runner).
        registered: set while the worker is registered with signaling.

    Raises:
        ValueError: a configured shared root is not a directory.
        IdentityError: the key file cannot be used (rtc_worker.identity).
        TrustFileError: the authorized-clients file is missing or has a bad line.
    """

    def __init__(self, settings: WorkerSettings) -> None:
        self.settings = settings
        self.identity = Identity.load_or_create(settings.identity_file)
        self.authorized_clients: frozenset[str] | None = (
            None
            if settings.authorized_clients_file is None
            else read_authorized_clients(settings.authorized_clients_file.expanduser())
        )
        self.shared_storage_root: Path | None = settings.detect_shared_root()
        slow, links = settings.slow_validation_warning_s, settings.allow_hardlinks
        shared = (
            None
            if self.shared_storage_root is None
            else SafeRoot(self.shared_storage_root, slow_warning_s=slow, allow_hardlinks=links)
        )
        if shared is not None:
            logger.info("shared storage root: {}", self.shared_storage_root)
        else:
            logger.warning(
                "no shared storage found (set SHARED_STORAGE_ROOT or --shared-root; probed {});"
                " serving without it: files come over the data channel into {}",
                ", ".join(settings.shared_root_candidates) or "nothing",
                settings.data_dir,
            )
        root = shared or SafeRoot(
            settings.storage_root(None), slow_warning_s=slow, allow_hardlinks=links
        )
        store_parts = layout.store_parts(shared is not None)
        limits = dataclasses.replace(
            DEFAULT_LIMITS,
            max_text_frame_bytes=settings.max_text_frame_bytes,
            max_path_bytes=settings.max_path_bytes,
            max_fields=settings.max_fields,
            max_file_bytes=settings.max_file_size,
            chunk_bytes=settings.chunk_size,
            proof_timeout_s=settings.proof_timeout_s,
        )
        results_client = None
        if settings.storage_url:
            results_client = ResultsServiceClient(
                settings.storage_url,
                settings.storage_api_key_value,
                retries=settings.storage_retries,
                backoff_s=settings.storage_backoff_s,
            )
        store = _under_umask(
            settings.umask,
            lambda: BlobStore(
                root.root.joinpath(*store_parts),
                partial_ttl_s=settings.partial_ttl_s,
                object_mode=0o444 & ~settings.umask,
            ),
        )
        self.resources = WorkerResources(
            shared=shared,
            root=root,
            store=store,
            holdings=Holdings.for_worker(
                store,
                quota=Quota(settings.partial_quota_bytes, settings.partial_quota_files),
                anonymous_quota=Quota(
                    settings.anonymous_partial_quota_bytes, settings.anonymous_partial_quota_files
                ),
                reserve_bytes=settings.free_space_reserve_bytes,
            ),
            store_parts=store_parts,
            runner=JobRunner(
                root,
                command=settings.job_command,
                zip_limits=ZipLimits(
                    max_total_bytes=settings.zip_max_total_bytes,
                    max_ratio=settings.zip_max_ratio,
                    max_members=settings.zip_max_members,
                ),
                work_dir_name=settings.work_dir_name,
                keep_workdir=settings.keep_workdir,
                cancel_grace_s=settings.cancel_grace_s,
                env_allow=settings.job_env,
            ),
            limits=limits,
            capabilities=Capabilities(
                shared_storage=shared is not None,
                results_service=results_client is not None,
                relay_road=settings.relay_road_offered,
            ),
            reserved_names=layout.reserved_names(settings.work_dir_name),
            results_client=results_client,
        )
        self.resources.relay_road = RelayRoad.for_worker(settings, self.resources.metrics)
        self.registered = asyncio.Event()
        #: peer id -> (peer connection, the client identity it counts against)
        self._peer_connections: dict[str, tuple[RTCPeerConnection, str]] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._signaling: SignalingClient | None = None
        self._stopping = asyncio.Event()

    @property
    def store(self) -> BlobStore:
        """The worker's store of received files (objects by sha256, partials)."""
        return self.resources.store

    @property
    def active_sessions(self) -> int:
        """Data channels being served now."""
        return len(self.resources.sessions)

    @property
    def peer_connections(self) -> int:
        """Peer connections held now (answered and not yet closed)."""
        return len(self._peer_connections)

    @property
    def metadata(self) -> dict[str, Any]:
        """What other peers see in ``list_peers``."""
        return {
            "shared_storage": self.shared_storage_root is not None,
            "max_file_size": self.settings.max_file_size,
            "job": "command" if self.settings.job_command else "manifest",
            "version": __version__,
            "roads": self.roads,
        }

    @property
    def roads(self) -> list[str]:
        """The roads a file can take to this worker, best first: ``shared`` (with a
        shared root), ``relay`` (when offered), ``channel`` (always)."""
        offered = (
            ("shared", self.shared_storage_root is not None),
            ("relay", self.resources.relay_road is not None),
            ("channel", True),
        )
        return [road for road, on in offered if on]

    async def run(self) -> None:
        """Serve until :meth:`stop`; reconnect to signaling with backoff.

        While it runs, the process's umask is the configured one (what the worker and
        its jobs write on shared storage, received files, records, outputs, results
        ZIPs, is readable by the group at most by default); the previous umask is
        restored at the end. The umask is the process's: run one worker per process.

        Raises:
            SignalingError: the server refused the registration for good
                (UNAUTHORIZED, an invalid peer id, or the id bound to another key):
                retrying cannot help.
            OSError: the metrics port (``metrics_port``) cannot be bound.
        """
        previous_umask = os.umask(self.settings.umask)
        self._spawn(self._cleanup_loop())
        try:
            settings = self.settings  # the metrics port (off unless metrics_port is set)
            self._spawn(
                await self.resources.metrics.serve(
                    self._gauges, settings.metrics_host, settings.metrics_port
                )
            )
            while not self._stopping.is_set():
                signaling = await self._register()
                if signaling is None:
                    break
                self._signaling = signaling
                self.registered.set()
                self._check_turn(signaling)
                await self._serve(signaling)
                self.registered.clear()
                await signaling.close()
                if not self._stopping.is_set():
                    logger.warning("lost signaling connection; reconnecting")
        finally:
            await self._shutdown()
            os.umask(previous_umask)

    def _check_turn(self, signaling: SignalingClient) -> None:
        """Log an ERROR with ``NO_TURN_SERVER`` once per registration when this worker is
        relay-only but neither signaling (``ice_servers`` of ``registered``) nor its own
        ``--ice-server`` names a TURN server: every offer will then be refused."""
        try:
            rtc_configuration(
                self.settings.ice_servers, signaling.ice_servers, self.settings.ice_transport_policy
            )
        except IceSetupError as exc:
            logger.error(
                "{}; every offer is refused until the signaling server hands out TURN "
                "servers or the worker runs with --ice-transport-policy all",
                exc,
            )

    def _gauges(self) -> tuple[int, int]:
        """(peer connections held, files being received or sent) for a scrape."""
        return self.peer_connections, sum(s.io.in_progress for s in self.resources.sessions)

    async def _register(self) -> SignalingClient | None:
        """Connect and register, retrying with backoff; None once stopping."""
        retrying = AsyncRetrying(
            wait=wait_exponential_jitter(
                multiplier=0.5, max=self.settings.reconnect_max_delay_s, jitter=0.5
            ),
            retry=retry_if_exception(_retryable),
            sleep=self._sleep,
            before_sleep=lambda state: logger.warning(
                "signaling unreachable at {}: {}; retrying",
                self.settings.signaling_url,
                state.outcome.exception() if state.outcome else "?",
            ),
            reraise=True,
        )
        async for attempt in retrying:
            with attempt:
                if self._stopping.is_set():
                    return None
                signaling = SignalingClient(
                    self.settings.signaling_url,
                    self.settings.peer_id,
                    "worker",
                    token=self.settings.token_value,
                    metadata=self.metadata,
                    identity=self.identity,
                )
                await signaling.connect()
                return signaling
        return None  # pragma: no cover - AsyncRetrying either returns or raises

    async def _sleep(self, seconds: float) -> None:
        """Wait between attempts, cut short by :meth:`stop`."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), timeout=seconds)

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
                except ConnectionError:
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

    def _admit(self, peer: str, claim: str) -> str | None:
        """Why an offer from ``peer`` (counted against ``claim``) is dropped, or None.

        Every peer connection holds UDP sockets and an ICE agent, so a client could
        make us hold many: they are capped in total and per client identity.
        """
        held = len(self._peer_connections)
        if held >= self.settings.max_peer_connections:
            return f"{held} peer connections are held (the maximum)"
        same = sum(1 for _, who in self._peer_connections.values() if who == claim)
        if same >= self.settings.max_peer_connections_per_client:
            return f"{same} peer connections are held for this client (the maximum)"
        return None

    def _forget(self, peer: str, pc: RTCPeerConnection) -> None:
        link = self._peer_connections.get(peer)
        if link is not None and link[0] is pc:
            del self._peer_connections[peer]

    async def _connect_deadline(self, peer: str, pc: RTCPeerConnection) -> None:
        """Close ``pc`` when it is not connected within the connect timeout: an offer
        abandoned before ICE must not hold sockets."""
        await asyncio.sleep(self.settings.peer_connect_timeout_s)
        link = self._peer_connections.get(peer)
        if link is not None and link[0] is pc and pc.connectionState != "connected":
            logger.warning(
                "peer connection with {} not connected after {:.0f} s; closing it",
                peer,
                self.settings.peer_connect_timeout_s,
            )
            self._forget(peer, pc)
            await pc.close()

    async def _answer(self, signaling: SignalingClient, offer: RelayedOffer) -> None:
        """Answer one client's offer with a new peer connection (within the caps)."""
        peer = offer.from_
        # the identity signaling vouches for; an anonymous client only has its peer id
        claim = offer.fingerprint or f"peer:{peer}"
        old = self._peer_connections.pop(peer, None)
        if old is not None:  # the client reconnected: the old connection is stale
            await old[0].close()
        refused = self._admit(peer, claim)
        if refused is not None:
            logger.warning("dropping the offer of {}: {}", peer, refused)
            return
        try:  # the TURN servers of this offer: fresh credentials for our peer id
            config = rtc_configuration(
                self.settings.ice_servers, offer.ice_servers, self.settings.ice_transport_policy
            )
        except IceSetupError as exc:
            logger.error("refusing the offer of {}: {}", peer, exc)
            return
        pc = RTCPeerConnection(config)
        self._peer_connections[peer] = (pc, claim)
        self._spawn(self._connect_deadline(peer, pc))

        @pc.on("datachannel")
        def on_datachannel(channel: RTCDataChannel) -> None:
            try:
                auth = channel_auth_config(
                    pc,
                    self.identity,
                    offerer=False,
                    allow_anonymous=self.settings.allow_anonymous_clients,
                    authorized=self.authorized_clients,
                )
            except ValueError as exc:  # an SDP without one DTLS fingerprint
                logger.warning("refusing the data channel of {}: {}", peer, exc)
                channel.close()
                return
            session = WorkerSession(
                FrameChannel(channel),
                self.resources,
                peer=peer,
                auth=auth,
                handshake_timeout_s=self.settings.handshake_timeout_s,
                on_refused=pc.close,
            )
            self._spawn(self._serve_session(session))

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState == "connected":
                logger.info("peer connection with {}: connected via {}", peer, describe_path(pc))
            else:
                logger.info("peer connection with {}: {}", peer, pc.connectionState)
            if pc.connectionState in ("failed", "closed"):
                self._forget(peer, pc)
                await pc.close()

        try:
            await pc.setRemoteDescription(RTCSessionDescription(offer.sdp, "offer"))
            await pc.setLocalDescription(await pc.createAnswer())
            if self.settings.ice_transport_policy == "relay":
                require_relay_candidate(pc.localDescription.sdp)
            await signaling.send(AnswerFrame(to=peer, sdp=pc.localDescription.sdp))
            logger.info("answered offer from {}", peer)
        except IceSetupError as exc:
            logger.error("refusing the offer of {}: {}", peer, exc)
            self._forget(peer, pc)
            await pc.close()
        except Exception as exc:
            logger.warning("could not answer offer from {}: {}", peer, exc)
            self._forget(peer, pc)
            await pc.close()

    async def _serve_session(self, session: WorkerSession) -> None:
        try:
            await session.run()
        finally:
            if session.job_task is not None:
                with contextlib.suppress(Exception):
                    await session.job_task

    async def _cleanup_loop(self) -> None:
        """Remove partial files older than the TTL, now and then every interval."""
        while True:
            try:
                removed = await asyncio.to_thread(self.resources.store.cleanup)
                if removed:
                    logger.info("removed {} expired partial file(s)", removed)
            except OSError as exc:
                logger.warning("partial-file cleanup failed: {}", exc)
            await asyncio.sleep(self.settings.cleanup_interval_s)

    async def stop(self) -> None:
        """Ask :meth:`run` to return (it cancels running jobs and closes connections)."""
        self._stopping.set()

    async def _shutdown(self) -> None:
        self.resources.slot.close()
        for session in list(self.resources.sessions):
            await session.aclose()
        for pc, _ in list(self._peer_connections.values()):
            await pc.close()
        self._peer_connections.clear()
        if self.resources.relay_road is not None:
            await self.resources.relay_road.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._signaling is not None:
            await self._signaling.close()
        logger.info("worker stopped")
