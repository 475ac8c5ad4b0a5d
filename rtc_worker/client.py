"""RTCClient: the reference client (Python API) for the job protocol.

Usage::

    async with RTCClient("ws://127.0.0.1:8765/ws") as client:
        print(await client.workers())
        # shared storage: only relative paths cross the channel
        result = await client.submit_shared("worker-1", "inputs/train.zip", "outputs/run1")
        # no shared storage: the file goes over the channel, the results come back
        outcome = await client.submit_file("worker-1", Path("train.zip"), Path("results"))

The client is the offerer: it opens one peer connection and one data channel per
worker and reuses it for later jobs. Each channel is driven by a ``Connection(CLIENT)``
(:class:`~rtc_worker.client_channel.WorkerConnection`), so the client never sends what
the worker would refuse; every refusal is raised as the exception of its wire code
(:mod:`rtc_worker.errors`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal, overload

from aiortc import RTCPeerConnection
from loguru import logger

from protocol import DEFAULT_LIMITS
from protocol.handshake import AuthConfig, Authenticated
from protocol.limits import RELAY_CHUNK_BYTES
from protocol.roads import Road
from protocol.signaling import PeerInfo, SignalingError
from rtc_worker.channel_auth import authenticate_channel, channel_auth_config
from rtc_worker.client_channel import WorkerConnection
from rtc_worker.client_offer import open_channel
from rtc_worker.client_raw import RawWorkerConnection
from rtc_worker.client_results import JobResult, SendResult, SubmitResult, extract_results
from rtc_worker.errors import (
    ClientError,
    JobFailedError,
    PathRefusedError,
    RoadFailed,
    TransferFailedError,
    WorkerBusy,
    WorkerProtocolError,
)
from rtc_worker.identity import Identity, default_client_key_file
from rtc_worker.relay_http import RelayHttp
from rtc_worker.relay_send import part_length
from rtc_worker.roads_client import OnRoad, RoadPlan, plan_road
from rtc_worker.rtc import (
    FrameChannel,
    IcePolicy,
    ice_servers_expire_soon,
)
from rtc_worker.signaling_client import SignalingClient
from rtc_worker.storage import BlobStore
from rtc_worker.transfer_io import PartialRegistry
from rtc_worker.trust import KnownWorkers

__all__ = [
    "ClientError",
    "JobFailedError",
    "JobResult",
    "PathRefusedError",
    "RTCClient",
    "RawWorkerConnection",
    "RoadFailed",
    "SendResult",
    "SignalingError",
    "SubmitResult",
    "TransferFailedError",
    "WorkerBusy",
    "WorkerConnection",
    "WorkerProtocolError",
]

Trace = Callable[[str, str | bytes], None]
Progress = Callable[[int, int], None]


class RTCClient:
    """Client of the signaling server and of workers' data channels.

    Args:
        signaling_url: WebSocket URL of the signaling server.
        token: the signaling server's token, if it has one.
        peer_id: the id to register; a random ``client-...`` id by default.
        ice_servers: STUN/TURN URLs; none for loopback and LAN. The TURN servers the
            signaling server hands out (``registered`` frame) are used too, first.
        ice_transport_policy: ``"all"``, or ``"relay"``: relay candidates only (every
            byte through TURN); then :meth:`connect` raises ``IceSetupError``
            (NO_TURN_SERVER, NO_RELAY_CANDIDATE) instead of waiting.
        reply_timeout: seconds to wait for each protocol reply.
        connect_timeout: seconds to wait for signaling, the answer and the channel.
        trace: optional callback ``(direction, frame)`` for every text frame.
        cache_dir: where downloads are received (partials kept for a resume);
            default ``~/.cache/rtc-client``.
        max_file_size: largest file accepted from a worker, bytes.
        identity: the client's key; None loads it from ``key_file`` (created on first use).
        anonymous: no key at all: registers and connects as an anonymous client (only
            where the operator allows anonymous clients).
        key_file: where the key is kept; default ``$XDG_CONFIG_HOME/rtc-client/identity.key``.
        worker_keys: worker peer id -> the fingerprint its handshake must prove (the
            ``--worker-key`` of the CLI); these override the known-workers file.
        known_workers: the known-workers file (trust on first use, refused loudly when
            a worker's key changes); default ``known_workers`` beside the key file.
        storage_url / storage_api_key: the storage service beside signaling and a key
            of it (any role): the relay road (:mod:`rtc_worker.relay_send`); unset: none.
        relay_part_mb: plaintext MB (10^6 bytes) per relay object.
        relay_chunk_bytes: plaintext bytes per sealed chunk on the relay road.

    Attributes:
        identity: the client's key, or None when anonymous.

    Raises:
        ValueError: both ``identity`` and ``anonymous`` given.
        IdentityError: the key file cannot be used (rtc_worker.identity).
    """

    def __init__(
        self,
        signaling_url: str,
        token: str | None = None,
        *,
        peer_id: str | None = None,
        ice_servers: list[str] | None = None,
        ice_transport_policy: IcePolicy = "all",
        reply_timeout: float = 60.0,
        connect_timeout: float = 30.0,
        trace: Trace | None = None,
        cache_dir: Path | None = None,
        max_file_size: int = DEFAULT_LIMITS.max_file_bytes,
        identity: Identity | None = None,
        anonymous: bool = False,
        key_file: Path | None = None,
        worker_keys: Mapping[str, str] | None = None,
        known_workers: Path | None = None,
        storage_url: str | None = None,
        storage_api_key: str | None = None,
        relay_part_mb: int = 64,
        relay_chunk_bytes: int | None = None,
    ) -> None:
        if identity is not None and anonymous:
            raise ValueError("an anonymous client has no identity")
        if identity is None and not anonymous:
            identity = Identity.load_or_create(key_file or default_client_key_file())
        self.identity = identity
        self.worker_keys = dict(worker_keys or {})
        self.known_workers = KnownWorkers(
            known_workers or (key_file or default_client_key_file()).parent / "known_workers"
        )
        self.signaling_url = signaling_url
        self.token = token
        self.peer_id = peer_id or f"client-{uuid.uuid4().hex[:12]}"
        self.ice_servers = ice_servers or []
        self.ice_transport_policy: IcePolicy = ice_transport_policy
        self.reply_timeout = reply_timeout
        self.connect_timeout = connect_timeout
        self.trace = trace
        self.cache_dir = cache_dir or Path.home() / ".cache" / "rtc-client"
        self.max_file_size = max_file_size
        self.limits = dataclasses.replace(DEFAULT_LIMITS, max_file_bytes=max_file_size)
        self._store: BlobStore | None = None
        self._partials = PartialRegistry()
        self._signaling: SignalingClient | None = None
        self._connections: dict[str, WorkerConnection] = {}
        self._raw_connections: list[RawWorkerConnection] = []
        self._signaling_lock = asyncio.Lock()
        self._connect_lock = asyncio.Lock()
        self._relay = (
            RelayHttp(storage_url, storage_api_key) if storage_url and storage_api_key else None
        )
        self.relay_chunk_bytes = relay_chunk_bytes or RELAY_CHUNK_BYTES
        self.relay_part_bytes = part_length(relay_part_mb, self.relay_chunk_bytes)

    async def __aenter__(self) -> RTCClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @property
    def store(self) -> BlobStore:
        """The client's store of received files (created on first use)."""
        if self._store is None:
            self._store = BlobStore(self.cache_dir / "store")
        return self._store

    async def _signaling_client(self) -> SignalingClient:
        async with self._signaling_lock:
            if self._signaling is not None and ice_servers_expire_soon(
                self._signaling.ice_servers,
                time.time(),
                received_s=self._signaling.ice_servers_received_s,
            ):  # registered longer than the TURN credential lives: register again
                await self._signaling.close()
                self._signaling = None
            if self._signaling is None or self._signaling.closed.is_set():
                signaling = SignalingClient(
                    self.signaling_url,
                    self.peer_id,
                    "client",
                    token=self.token,
                    timeout=self.connect_timeout,
                    identity=self.identity,
                )
                await signaling.connect()
                self._signaling = signaling
            return self._signaling

    async def workers(self) -> list[PeerInfo]:
        """Registered workers (peer_id, role, metadata).

        Raises:
            SignalingError: e.g. UNAUTHORIZED. OSError/TimeoutError: unreachable.
        """
        signaling = await self._signaling_client()
        return [peer for peer in await signaling.list_peers() if peer.role == "worker"]

    async def plan_road(
        self, worker_id: str, road: str = "auto", *, shared_input: bool = False
    ) -> RoadPlan:
        """The road of an input for ``worker_id``: ``road`` forced (``shared``, ``relay``,
        ``channel``) or chosen (``auto``) from the roads the worker advertises and
        whether this client reaches the storage service (:mod:`rtc_worker.roads_client`).

        Raises:
            RoadFailed: ROAD_UNAVAILABLE: the forced road is impossible.
            SignalingError, OSError, TimeoutError: signaling unreachable.
        """
        found = {peer.peer_id: peer for peer in await self.workers()}.get(worker_id)
        return await plan_road(
            forced=None if road == "auto" else Road(road),
            metadata={} if found is None else found.metadata,
            relay=self._relay,
            shared_input=shared_input,
            part_bytes=self.relay_part_bytes,
            chunk_size=self.relay_chunk_bytes,
        )

    async def wait_for_worker(self, worker_id: str, timeout: float) -> PeerInfo:
        """Poll ``list_peers`` until ``worker_id`` is registered.

        Raises:
            TimeoutError: not registered within ``timeout`` seconds.
        """
        async with asyncio.timeout(timeout):
            while True:
                for peer in await self.workers():
                    if peer.peer_id == worker_id:
                        return peer
                await asyncio.sleep(0.2)

    @overload
    async def connect(self, worker_id: str, *, raw: Literal[False] = False) -> WorkerConnection: ...

    @overload
    async def connect(self, worker_id: str, *, raw: Literal[True]) -> RawWorkerConnection: ...

    async def connect(
        self, worker_id: str, *, raw: bool = False
    ) -> WorkerConnection | RawWorkerConnection:
        """Open (or reuse) a peer connection and data channel to ``worker_id``, and run
        the channel handshake on it (PROTOCOL.md 2.5): the worker must prove the key
        pinned for it, or, on first use, its key is recorded in the known-workers file.

        Args:
            raw: a new channel without a protocol connection (:meth:`connect_raw`).

        Raises:
            SignalingError: PEER_NOT_FOUND when no such worker is registered.
            IceSetupError: relay-only and no TURN server (NO_TURN_SERVER) or no relay
                candidate (NO_RELAY_CANDIDATE: the TURN server refused the credential or
                did not answer within ``connect_timeout``).
            TimeoutError: no answer or no open channel within ``connect_timeout``.
            HandshakeError: WorkerKeyChanged (another key than the pinned one),
                NotAuthorized, AuthFailed, AuthRequired...
            TrustFileError: the known-workers file is damaged.
        """
        if raw:
            return await self.connect_raw(worker_id)
        async with self._connect_lock:  # one offer/answer exchange at a time
            existing = self._connections.get(worker_id)
            if existing is not None and existing.channel.is_open and not existing.broken:
                return existing
            pc, frames = await self._open_channel(worker_id)
            connection = WorkerConnection(
                pc,
                frames,
                worker_id,
                self.reply_timeout,
                store=self.store,
                registry=self._partials,
                limits=self.limits,
                auth=self._auth_config(pc, worker_id),
            )
            try:
                proven = await connection.authenticate(self.connect_timeout)
            except BaseException:
                await connection.close()
                raise
            self._pin(worker_id, proven)
            if existing is not None:
                await existing.close()
            self._connections[worker_id] = connection
            logger.info("data channel to {} open", worker_id)
            return connection

    async def connect_raw(
        self, worker_id: str, *, authenticate: bool = True
    ) -> RawWorkerConnection:
        """A new data channel to ``worker_id`` without a protocol connection: frames go
        out as given and come back decoded (for tests and fuzzing).

        Args:
            authenticate: run the channel handshake first (as :meth:`connect` does);
                False leaves the channel as it opened.

        Raises:
            SignalingError, TimeoutError, HandshakeError: as :meth:`connect`.
        """
        async with self._connect_lock:
            pc, frames = await self._open_channel(worker_id)
        if authenticate and self.identity is not None:
            try:
                config = self._auth_config(pc, worker_id)
                self._pin(
                    worker_id, await authenticate_channel(frames, config, self.connect_timeout)
                )
            except BaseException:
                await pc.close()
                raise
        connection = RawWorkerConnection(pc, frames, worker_id)
        self._raw_connections.append(connection)
        return connection

    def _auth_config(self, pc: RTCPeerConnection, worker_id: str) -> AuthConfig:
        """Our side of the handshake with ``worker_id``: our key, the DTLS fingerprints
        of our SDP, the pinned key (``worker_keys``, else the known-workers file)."""
        pinned = self.worker_keys.get(worker_id) or self.known_workers.pinned(worker_id)
        return channel_auth_config(pc, self.identity, offerer=True, pinned=pinned)

    def _pin(self, worker_id: str, proven: Authenticated | None) -> None:
        """Record a worker's key on first use (known-workers file)."""
        if proven is not None and worker_id not in self.worker_keys:
            self.known_workers.record(worker_id, proven.principal)

    async def _open_channel(self, worker_id: str) -> tuple[RTCPeerConnection, FrameChannel]:
        """Offer, wait for the worker's answer and for the data channel to open."""
        signaling = await self._signaling_client()
        return await open_channel(
            signaling, worker_id, self.ice_servers, self.ice_transport_policy,
            timeout=self.connect_timeout, trace=self.trace,
        )  # fmt: skip

    async def submit_shared(
        self,
        worker_id: str,
        input_path: str,
        output_path: str,
        *,
        job_id: str | None = None,
        on_log: Callable[[str], None] | None = None,
        job_timeout: float | None = None,
        via_storage: bool = False,
        local_copy: Path | None = None,
        on_progress: Progress | None = None,
        road: str = "auto",
        on_road: OnRoad | None = None,
    ) -> JobResult:
        """Run a shared-storage job on ``worker_id``; see :meth:`WorkerConnection.run_shared`.

        ``road``: ``auto`` or ``shared`` runs on the shared path (``local_copy`` goes on
        the best other road when the worker cannot read it); ``relay`` or ``channel``
        sends ``local_copy`` on that road instead, with the outputs in ``output_path``.

        Raises:
            PathRefusedError, JobFailedError, TransferFailedError, WorkerProtocolError
            (subclasses per wire code), RoadFailed, SignalingError, ChannelClosed,
            TimeoutError.
        """
        plan = await self.plan_road(worker_id, road, shared_input=True)
        if plan.road is not Road.SHARED and (local_copy is not None or road != "auto"):
            if local_copy is None:
                raise RoadFailed("ROAD_UNAVAILABLE", "no local file to send", road=road)
            connection = await self.connect(worker_id)
            _, job = await connection.run_file(
                local_copy, job_id=job_id, output_path=output_path, on_log=on_log,
                on_progress=on_progress, job_timeout=job_timeout, via_storage=via_storage,
                road=plan, on_road=on_road,
            )  # fmt: skip
            return job
        copy_plan = None
        if local_copy is not None:
            copy_plan = await self.plan_road(worker_id, "auto", shared_input=False)
        connection = await self.connect(worker_id)
        return await connection.run_shared(
            input_path, output_path, job_id=job_id, on_log=on_log, job_timeout=job_timeout,
            via_storage=via_storage, local_copy=local_copy, on_progress=on_progress,
            copy_road=copy_plan, on_road=on_road,
        )  # fmt: skip

    async def submit_file(
        self,
        worker_id: str,
        local_path: Path,
        download_dir: Path,
        *,
        job_id: str | None = None,
        on_log: Callable[[str], None] | None = None,
        on_upload_progress: Progress | None = None,
        on_download_progress: Progress | None = None,
        job_timeout: float | None = None,
        via_storage: bool = False,
        road: str = "auto",
        on_road: OnRoad | None = None,
    ) -> SubmitResult:
        """Send a local file to the worker, run the job, download the verified results.

        The file takes the road :meth:`plan_road` gives (``road``: ``auto``, or
        ``relay`` / ``channel`` forced); ``on_road`` is told the road taken and each
        change (a relay road that fails continues on the channel from the worker's
        verified offset, unless forced). The results ZIP is saved as
        ``download_dir/results-{job_id}.zip`` and extracted (safely: no member may land
        outside) into ``download_dir/{job_id}/``.

        Raises:
            TransferFailedError, JobFailedError, WorkerBusy, WorkerProtocolError,
            SignalingError, ChannelClosed, TimeoutError, ArchiveError (the results ZIP
            could not be extracted), OSError, RoadFailed (the road forced is
            unavailable: ROAD_UNAVAILABLE; or the relay road forced failed: its code).
        """
        plan = await self.plan_road(worker_id, road)
        connection = await self.connect(worker_id)
        upload, job = await connection.run_file(
            local_path,
            job_id=job_id,
            on_log=on_log,
            on_progress=on_upload_progress,
            job_timeout=job_timeout,
            via_storage=via_storage,
            road=plan,
            on_road=on_road,
        )
        download, zip_path = await connection.download_results(
            job.job_id, download_dir, on_progress=on_download_progress
        )
        results_dir = download_dir / job.job_id
        await asyncio.to_thread(extract_results, zip_path, results_dir)
        return SubmitResult(job, upload, zip_path, results_dir, download)

    async def close(self) -> None:
        """Close every peer connection and the signaling connection."""
        for connection in self._connections.values():
            await connection.close()
        for raw in self._raw_connections:
            await raw.close()
        self._connections.clear()
        self._raw_connections.clear()
        if self._signaling is not None:
            await self._signaling.close()
            self._signaling = None
        if self._relay is not None:
            await self._relay.close()
