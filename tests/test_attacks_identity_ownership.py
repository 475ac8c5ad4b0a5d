"""Attacks on what belongs to whom, end to end: real signaling servers on loopback, real
in-process workers, a real storage service (real HTTP, SQLite and files), real aiortc
clients and real files.

Each test is written as the attacker's steps and asserts that the attacker gets
nothing (UNKNOWN_JOB, a refusal with a code, its own results and never the victim's)
and that the victim's results are unchanged and still its own:

* an impostor registers a departed client's peer id on a server that lost its
  bindings, and asks for the victim's job;
* another identity reuses the victim's job id with RESULTS_VIA_STORAGE;
* anonymous connections, where allowed, own only what they created; where not
  allowed, they are refused at signaling and at the worker.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
import zipfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from protocol import ProtocolErrorFrame
from protocol.identity import is_anonymous
from protocol.signaling import SignalingError
from rtc_worker.client import RTCClient
from rtc_worker.errors import AuthRequired, UnknownJob
from rtc_worker.identity import Identity
from signaling.keys import Role
from tests.conftest import Signaling, StartService, free_port, start_signaling
from tests.storage_service import KEY

pytestmark = pytest.mark.asyncio


@pytest.fixture
async def clients(tmp_path: Path) -> AsyncIterator[Callable[..., RTCClient]]:
    """Make RTCClients (each with its own cache and known-workers file); all are closed
    after the test."""
    made: list[RTCClient] = []

    def make(url: str, name: str, **options: Any) -> RTCClient:
        rtc = RTCClient(
            url,
            cache_dir=tmp_path / name,
            known_workers=tmp_path / f"{name}.known_workers",
            reply_timeout=20,
            connect_timeout=20,
            **options,
        )
        made.append(rtc)
        return rtc

    yield make
    for rtc in made:
        await rtc.close()


def input_file(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(random.Random(seed).randbytes(100_000))
    return path


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def manifest(zip_bytes: bytes) -> dict[str, Any]:
    with zipfile.ZipFile(io.BytesIO(zip_bytes)) as archive:
        loaded: dict[str, Any] = json.loads(archive.read("manifest.json"))
        return loaded


# ===================================================================== an impostor


async def test_an_impostor_on_the_victims_departed_peer_id_gets_unknown_job(
    start_worker: Any, clients: Callable[..., RTCClient], tmp_path: Path
) -> None:
    port = free_port()
    server = await start_signaling(port, data_dir=tmp_path / "signaling-1")
    try:
        worker = await start_worker(signaling_url=server.url)
        alice = Identity.generate()
        victim = clients(server.url, "alice", peer_id="alice-laptop", identity=alice)
        conn = await victim.connect("worker-1")
        await conn.run_file(input_file(tmp_path / "alice" / "scan.bin", 1), job_id="run7")
        results, _ = await conn.download_results("run7", tmp_path / "alice-1")
        theirs = worker.resources.root.root / ".rtc-jobs" / alice.fingerprint / "run7"
        before = sorted((p.name, p.read_bytes()) for p in theirs.rglob("*") if p.is_file())
        await victim.close()
        # The server restarts without its bindings database; the worker registers again.
        await server.runner.cleanup()
        server = await start_signaling(port, data_dir=tmp_path / "signaling-2")
        # The impostor takes alice's peer id (nothing binds it any more), with its key.
        impostor = clients(
            server.url, "impostor", peer_id="alice-laptop", identity=Identity.generate()
        )
        await impostor.wait_for_worker("worker-1", 10)
        stolen = await impostor.connect("worker-1")
        with pytest.raises(UnknownJob):
            await stolen.download_results("run7", tmp_path / "stolen")
        raw = await impostor.connect_raw("worker-1")  # the frame itself, on a new channel
        raw.send("RESULTS_REQUEST::run7")
        refused = await raw.recv(10)
        assert isinstance(refused, ProtocolErrorFrame) and refused.code == "UNKNOWN_JOB"
        bare = await impostor.connect_raw("worker-1", authenticate=False)  # no handshake
        bare.send("RESULTS_REQUEST::run7")
        refused = await bare.recv(10)
        assert isinstance(refused, ProtocolErrorFrame) and refused.code == "AUTH_REQUIRED"
        assert not (tmp_path / "stolen").exists()
        # Alice, from another machine (a new peer id and peer connection), same key.
        back = clients(server.url, "alice-2", peer_id="alice-desktop", identity=alice)
        again, _ = await (await back.connect("worker-1")).download_results(
            "run7", tmp_path / "alice-2"
        )
        assert again.sha256 == results.sha256
        assert manifest(again.path.read_bytes())["input"] == "scan.bin"
        after = sorted((p.name, p.read_bytes()) for p in theirs.rglob("*") if p.is_file())
        assert after == before
    finally:
        await server.runner.cleanup()


# ===================================================================== job-id reuse


async def test_reusing_the_victims_job_id_with_storage_never_touches_its_results(
    start_worker: Any,
    start_storage_service: StartService,
    signaling: Signaling,
    clients: Callable[..., RTCClient],
    tmp_path: Path,
) -> None:
    service = await start_storage_service()
    worker_key = await service.make_key(Role.WORKER, "worker-1")
    await start_worker(storage_url=service.url(""), storage_api_key=worker_key)
    victim = clients(signaling.url, "victim", identity=Identity.generate())
    attacker = clients(signaling.url, "attacker", identity=Identity.generate())
    assert victim.identity is not None and attacker.identity is not None
    secret = input_file(tmp_path / "victim" / "victim-secret.bin", 2)
    mine = await victim.connect("worker-1")
    _, stored = await mine.run_file(secret, job_id="run7", via_storage=True)
    assert stored.stored_sha256 is not None and stored.download_token is not None
    # The attacker names the victim's job id, with RESULTS_VIA_STORAGE, and runs a job.
    theirs = await attacker.connect("worker-1")
    decoy = input_file(tmp_path / "attacker" / "decoy.bin", 3)
    _, taken = await theirs.run_file(decoy, job_id="run7", via_storage=True)
    assert taken.stored_sha256 != stored.stored_sha256
    # The victim's stored results: unchanged, still the victim's alone.
    got = await service.request("GET", "/download/run7?keep=true", token=stored.download_token)
    assert got.status == 200 and sha(got.body) == stored.stored_sha256
    assert len(got.body) == stored.stored_size
    assert manifest(got.body)["input"] == "victim-secret.bin"
    listed = await service.request("GET", "/list", key=KEY)  # the operator's view
    by_owner = {(f["owner"], f["job_id"]): f["sha256"] for f in listed.body["files"]}
    assert by_owner == {
        (victim.identity.fingerprint, "run7"): stored.stored_sha256,
        (attacker.identity.fingerprint, "run7"): taken.stored_sha256,
    }
    # The attacker's token gives its own results, never the victim's.
    own = await service.request("GET", "/download/run7?keep=true", token=taken.download_token)
    assert own.status == 200 and sha(own.body) == taken.stored_sha256
    assert b"victim-secret" not in own.body
    # Over the channel: each asks for run7 and gets its own ZIP.
    ours, _ = await mine.download_results("run7", tmp_path / "victim-dl")
    assert manifest(ours.path.read_bytes())["input"] == "victim-secret.bin"
    other, _ = await theirs.download_results("run7", tmp_path / "attacker-dl")
    assert other.sha256 != ours.sha256
    assert manifest(other.path.read_bytes())["input"] == "decoy.bin"
    assert b"victim-secret" not in other.path.read_bytes()


# ===================================================================== anonymous clients


async def test_anonymous_connections_own_only_their_own_jobs(
    start_worker: Any, clients: Callable[..., RTCClient], tmp_path: Path
) -> None:
    open_door = await start_signaling(allow_anonymous_clients=True, data_dir=tmp_path / "sig")
    try:
        worker = await start_worker(signaling_url=open_door.url, allow_anonymous_clients=True)
        first = clients(open_door.url, "anon-1", anonymous=True)
        conn = await first.connect("worker-1")
        await conn.run_file(input_file(tmp_path / "a" / "anon.bin", 4), job_id="run7")
        own, _ = await conn.download_results("run7", tmp_path / "anon-1-dl")  # its own: yes
        assert manifest(own.path.read_bytes())["input"] == "anon.bin"
        (owner,) = (
            p.parent.name for p in (worker.resources.root.root / ".rtc-jobs").glob("*/run7")
        )
        assert is_anonymous(owner)
        # Another anonymous client, and the same one on a new connection: other principals.
        second = clients(open_door.url, "anon-2", anonymous=True)
        with pytest.raises(UnknownJob):
            await (await second.connect("worker-1")).download_results("run7", tmp_path / "x")
        raw = await first.connect_raw("worker-1")
        raw.send("RESULTS_REQUEST::run7")
        refused = await raw.recv(10)
        assert isinstance(refused, ProtocolErrorFrame) and refused.code == "UNKNOWN_JOB"
        assert not (tmp_path / "x").exists()
        # A worker that keeps the default (no anonymous clients), on the same server.
        strict = await start_worker("strict-1", signaling_url=open_door.url)
        refused_at_worker = clients(open_door.url, "anon-3", anonymous=True)
        with pytest.raises(AuthRequired):
            await (await refused_at_worker.connect("strict-1")).run_file(
                input_file(tmp_path / "b" / "anon.bin", 5), job_id="run8"
            )
        assert strict.resources.jobs == {} and list(strict.store.objects()) == []
    finally:
        await open_door.runner.cleanup()


async def test_anonymous_clients_are_refused_at_signaling_by_default(
    start_worker: Any, signaling: Signaling, clients: Callable[..., RTCClient]
) -> None:
    worker = await start_worker()
    anonymous = clients(signaling.url, "anon", anonymous=True)
    with pytest.raises(SignalingError) as refused:
        await anonymous.connect("worker-1")
    assert refused.value.code == "KEY_REQUIRED"
    assert worker.peer_connections == 0 and worker.resources.jobs == {}
