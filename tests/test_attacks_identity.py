"""Attacks on who talks to whom, end to end: real signaling servers on loopback (each
with its own bindings database), real in-process workers with their own keys, real
aiortc peers (RTCClient, or raw channels that send whatever an attacker wants) and
real files.

Each test is written as the attacker's steps and asserts that the attacker gets
nothing: a refusal with a code, or a closed connection; and that the victim's data is
unchanged.

* a squatter serves a pinned worker's id with another key (a dishonest or reset
  signaling server);
* job and transfer frames on a channel that never ran the handshake;
* a client whose key is not in the worker's authorized-clients file;
* a handshake that claims the victim's key, and one that replays the victim's frames;
* 100 offers abandoned before ICE, from one identity.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from aiortc import RTCPeerConnection

from protocol import (
    AuthChallenge,
    AuthHello,
    AuthResponse,
    Message,
    ProtocolErrorFrame,
    TransferError,
    decode,
)
from protocol.identity import new_nonce, transcript
from protocol.signaling import Offer
from rtc_worker.channel_auth import authenticate_channel, channel_auth_config
from rtc_worker.client import RawWorkerConnection, RTCClient
from rtc_worker.errors import NotAuthorized, WorkerKeyChanged
from rtc_worker.identity import Identity
from rtc_worker.rtc import ChannelClosed, rtc_configuration
from rtc_worker.signaling_client import SignalingClient
from tests.conftest import Signaling, start_signaling

pytestmark = pytest.mark.asyncio

#: Frames that start or feed a job or a transfer (never to reach a squatter).
JOB_FRAMES = ("JOB_", "SHARED_", "FILE_", "RESULTS_")


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Callable[..., RTCClient]]:
    """Make RTCClients (each with its own cache and known-workers file unless given);
    all are closed after the test."""
    made: list[RTCClient] = []

    def make(url: str, name: str, **options: Any) -> RTCClient:
        options.setdefault("known_workers", tmp_path / f"{name}.known_workers")
        rtc = RTCClient(
            url, cache_dir=tmp_path / name, reply_timeout=20, connect_timeout=20, **options
        )
        made.append(rtc)
        return rtc

    yield make
    for rtc in made:
        await rtc.close()


def job_folders(worker: Any) -> list[Path]:
    """Every job folder the worker created (``.rtc-jobs/<principal>/<job_id>``)."""
    jobs = worker.resources.root.root / ".rtc-jobs"
    return sorted(jobs.glob("*/*")) if jobs.exists() else []


async def refused_or_closed(raw: RawWorkerConnection, frame: str | bytes, code: str) -> None:
    """Send ``frame``: it must be refused with ``code`` (PROTOCOL_ERROR or, for a binary
    frame, TRANSFER_ERROR), or find the channel already closed."""
    try:
        raw.send(frame)
        reply = await raw.recv(10)
    except ChannelClosed:
        return
    assert isinstance(reply, ProtocolErrorFrame | TransferError), reply
    assert reply.code == code, reply


async def until(condition: Callable[[], bool], timeout: float = 10) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.02)


# ===================================================================== a squatter


async def test_a_squatter_on_the_pinned_workers_id_gets_no_job_frame(
    start_worker: Any,
    signaling: Signaling,
    clients: Callable[..., RTCClient],
    shared_root: Path,
    package: Path,
    tmp_path: Path,
) -> None:
    genuine = await start_worker("gpu-1", shared_root=shared_root)
    key_a = genuine.identity.fingerprint
    me = Identity.generate()
    known = tmp_path / "known_workers"
    first = clients(signaling.url, "me", identity=me, known_workers=known)
    assert (await first.submit_shared("gpu-1", "inputs/package.zip", "outputs/mine")).file_count
    assert known.read_text() == f"gpu-1 {key_a}\n"  # pinned on first use
    before = job_folders(genuine)  # both workers see the same shared root
    # A dishonest (or reset) signaling server: a fresh bindings database, where the
    # attacker's worker, with its own key B, registers gpu-1 first.
    rogue = await start_signaling(data_dir=tmp_path / "rogue-signaling")
    try:
        squatter = await start_worker(
            "gpu-1",
            signaling_url=rogue.url,
            data_dir=tmp_path / "squatter",
            shared_root=shared_root,
        )
        assert squatter.identity.fingerprint != key_a
        fresh = tmp_path / "fresh_known_workers"
        attempts: list[tuple[str, dict[str, Any]]] = [
            ("pinned", {"known_workers": known}),  # trust on first use
            ("given", {"known_workers": fresh, "worker_keys": {"gpu-1": key_a}}),  # --worker-key
        ]
        for name, options in attempts:
            sent: list[str] = []

            def trace(direction: str, frame: str | bytes, sent: list[str] = sent) -> None:
                if direction == "send":
                    sent.append(str(frame))

            victim = clients(rogue.url, name, identity=me, trace=trace, **options)
            with pytest.raises(WorkerKeyChanged):
                await victim.submit_shared("gpu-1", "inputs/package.zip", "outputs/stolen")
            with pytest.raises(WorkerKeyChanged):
                await victim.connect_raw("gpu-1")
            types = [frame.split("::")[0] for frame in sent]
            assert set(types) <= {"AUTH_HELLO", "PROTOCOL_ERROR"} and "AUTH_HELLO" in types
            assert not [t for t in types if t.startswith(JOB_FRAMES)]  # no AUTH_RESPONSE either
            await victim.close()
        assert squatter.resources.jobs == {} and job_folders(squatter) == before
        assert not (shared_root / "outputs" / "stolen").exists()
        assert known.read_text() == f"gpu-1 {key_a}\n"  # still A, not B
        assert not fresh.exists()  # a given key is never replaced by the one proven
    finally:
        await rogue.runner.cleanup()


# ===================================================================== no handshake


async def test_job_and_transfer_frames_without_the_handshake_are_refused_then_closed(
    start_worker: Any,
    signaling: Signaling,
    clients: Callable[..., RTCClient],
    shared_root: Path,
    package: Path,
) -> None:
    worker = await start_worker(shared_root=shared_root, handshake_timeout_s=1.5)
    attacker = clients(signaling.url, "attacker", identity=Identity.generate())
    raw = await attacker.connect_raw("worker-1", authenticate=False)
    opened = time.monotonic()
    data = b"attacker bytes " * 1000
    digest = hashlib.sha256(data).hexdigest()
    for frame in (
        "JOB_ID::run7",
        "SHARED_INPUT_PATH::inputs/package.zip",
        "SHARED_OUTPUT_PATH::outputs/run7",
        "JOB_START",
        f"FILE_META::a.bin::{len(data)}::{digest}::65536",
        "RESULTS_REQUEST::run7",
    ):
        raw.send(frame)
        refused = await raw.recv(5)
        assert isinstance(refused, ProtocolErrorFrame) and refused.code == "AUTH_REQUIRED", frame
    raw.send(data[:65536])
    refused = await raw.recv(5)
    assert isinstance(refused, TransferError) and refused.code == "UNEXPECTED_DATA"
    with pytest.raises(ChannelClosed):  # the worker's handshake deadline
        await raw.recv(10)
    assert 1.2 <= time.monotonic() - opened < 6  # not before: refusals keep it open
    await until(lambda: worker.peer_connections == 0)  # the peer connection went too
    assert not (shared_root / "outputs" / "run7").exists() and job_folders(worker) == []
    assert worker.store.partial_keys() == [] and not worker.store.has(digest)


# ===================================================================== authorized clients


async def test_a_key_outside_the_authorized_clients_file_is_refused_and_disconnected(
    start_worker: Any,
    signaling: Signaling,
    clients: Callable[..., RTCClient],
    shared_root: Path,
    package: Path,
    tmp_path: Path,
) -> None:
    member, outsider = Identity.generate(), Identity.generate()
    authorized = tmp_path / "authorized_clients"
    authorized.write_text(f"# the lab\n{member.fingerprint} alice\n")
    worker = await start_worker(shared_root=shared_root, authorized_clients_file=authorized)
    intruder = clients(signaling.url, "outsider", identity=outsider)
    with pytest.raises(NotAuthorized):
        await intruder.submit_shared("worker-1", "inputs/package.zip", "outputs/intruder")
    # By hand, keeping our side open: the worker closes the channel and the peer
    # connection itself, and nothing passes meanwhile.
    raw = await intruder.connect_raw("worker-1", authenticate=False)
    config = channel_auth_config(raw.pc, outsider, offerer=True)
    with pytest.raises(NotAuthorized):
        await authenticate_channel(raw.channel, config, 10)
    await refused_or_closed(raw, "JOB_START", "AUTH_FAILED")
    with pytest.raises(ChannelClosed):
        await raw.recv(10)
    await until(lambda: worker.peer_connections == 0)
    assert job_folders(worker) == [] and not (shared_root / "outputs" / "intruder").exists()
    # the authorized client works
    lab = clients(signaling.url, "member", identity=member)
    done = await lab.submit_shared("worker-1", "inputs/package.zip", "outputs/member")
    assert done.file_count == 1
    assert not (shared_root / "outputs" / "intruder").exists()


# ===================================================================== a forged handshake


def sent_frame(frames: list[str], kind: type[Message]) -> Message:
    """The first frame of ``kind`` in a trace."""
    return next(m for m in map(decode, frames) if isinstance(m, kind))


async def test_a_handshake_claiming_the_victims_key_fails_and_nothing_runs(
    start_worker: Any,
    signaling: Signaling,
    clients: Callable[..., RTCClient],
    shared_root: Path,
    package: Path,
) -> None:
    worker = await start_worker(shared_root=shared_root)
    victim_key = Identity.generate()
    victim_frames: list[str] = []
    victim = clients(
        signaling.url,
        "victim",
        identity=victim_key,
        trace=lambda d, f: victim_frames.append(str(f)) if d == "send" else None,
    )
    await victim.connect("worker-1")  # what a dishonest signaling server could record
    attacker = clients(signaling.url, "attacker", identity=Identity.generate())
    assert attacker.identity is not None

    # 1. AUTH_HELLO with the victim's public key, AUTH_RESPONSE signed by its own key.
    raw = await attacker.connect_raw("worker-1", authenticate=False)
    ours = channel_auth_config(raw.pc, None, offerer=True)
    nonce = new_nonce()
    raw.send(AuthHello(victim_key.public_key, nonce))
    challenge = await raw.recv(10)
    assert isinstance(challenge, AuthChallenge)
    signed = transcript(
        offer_dtls=ours.offer_dtls,
        answer_dtls=ours.answer_dtls,
        client_key=victim_key.public_key,
        worker_key=challenge.public_key,
        client_nonce=nonce,
        worker_nonce=challenge.nonce,
    )
    raw.send(AuthResponse(attacker.identity.sign(b"client" + signed)))
    failed = await raw.recv(10)
    assert isinstance(failed, ProtocolErrorFrame) and failed.code == "AUTH_FAILED"
    await refused_or_closed(raw, "SHARED_INPUT_PATH::inputs/package.zip", "AUTH_FAILED")
    with pytest.raises(ChannelClosed):
        await raw.recv(10)

    # 2. The victim's own AUTH_HELLO and AUTH_RESPONSE, replayed on a new channel.
    replay = await attacker.connect_raw("worker-1", authenticate=False)
    replay.send(sent_frame(victim_frames, AuthHello))
    assert isinstance(await replay.recv(10), AuthChallenge)  # a fresh worker nonce
    replay.send(sent_frame(victim_frames, AuthResponse))
    failed = await replay.recv(10)
    assert isinstance(failed, ProtocolErrorFrame) and failed.code == "AUTH_FAILED"
    await refused_or_closed(replay, "JOB_START", "AUTH_FAILED")
    with pytest.raises(ChannelClosed):
        await replay.recv(10)

    assert worker.resources.jobs == {} and job_folders(worker) == []
    sessions = worker.resources.sessions
    await until(lambda: [s.conn.principal for s in sessions] == [victim_key.fingerprint])
    # the victim's channel is untouched and works
    done = await (await victim.connect("worker-1")).run_shared(
        "inputs/package.zip", "outputs/victim"
    )
    assert done.file_count == 1


# ===================================================================== abandoned offers


async def test_100_abandoned_offers_hold_at_most_the_cap_and_expire(
    start_worker: Any,
    signaling: Signaling,
    clients: Callable[..., RTCClient],
    shared_root: Path,
    package: Path,
) -> None:
    per_client, peers, offers_each = 3, 10, 10
    worker = await start_worker(
        shared_root=shared_root,
        max_peer_connections=8,
        max_peer_connections_per_client=per_client,
        peer_connect_timeout_s=2,
    )
    held: list[int] = []

    async def sample() -> None:
        while True:
            held.append(worker.peer_connections)
            await asyncio.sleep(0.005)

    sampler = asyncio.create_task(sample())
    attacker = Identity.generate()
    sockets: list[SignalingClient] = []
    offerers: list[RTCPeerConnection] = []
    try:
        # One identity, ten peer ids (one binding each), ten offers from each: real
        # offers from real peer connections that never take the answer.
        for index in range(peers):
            socket = SignalingClient(signaling.url, f"flood-{index}", "client", identity=attacker)
            await socket.connect()
            sockets.append(socket)
        for _ in range(offers_each):
            for socket in sockets:
                pc = RTCPeerConnection(rtc_configuration([]))  # host candidates only
                offerers.append(pc)
                pc.createDataChannel("jobs")
                await pc.setLocalDescription(await pc.createOffer())
                await socket.send(Offer(to="worker-1", sdp=pc.localDescription.sdp))
        await until(lambda: worker.peer_connections == per_client)  # the attack bites...
        flood = list(held)
        assert max(flood) == per_client  # ... up to the cap, never beyond
        # a legitimate client still gets in (and runs a job) while they are held
        lab = clients(signaling.url, "lab", identity=Identity.generate())
        done = await lab.submit_shared("worker-1", "inputs/package.zip", "outputs/during")
        assert done.file_count == 1
        assert max(held) <= per_client + 1
        await lab.close()
        # every abandoned offer's peer connection is closed at its deadline
        await until(lambda: worker.peer_connections == 0, timeout=2 + 5)
    finally:
        sampler.cancel()
        for pc in offerers:
            await pc.close()
        for socket in sockets:
            await socket.close()
    # and afterwards
    again = clients(signaling.url, "again", identity=Identity.generate())
    done = await again.submit_shared("worker-1", "inputs/package.zip", "outputs/after")
    assert done.file_count == 1
    with contextlib.suppress(asyncio.CancelledError):
        await sampler
