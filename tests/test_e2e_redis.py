"""Signaling on a real Redis, end to end: separate ``rtc-signaling`` processes on one
``redis-server`` (tests/engine_redis.py) act as one server.

* a worker connected to one process serves a client connected to the other: a shared
  job and a file over the data channel, sha256 equal;
* a process killed with SIGKILL takes only its own peers: they vanish from the other
  process's list within the presence TTL, and the other process's peers keep working;
* the frames of a sender to a receiver on another process arrive in order, none lost;
* attacks across processes, as the attacker's steps: a squatter on another process is
  refused by the binding, a live id is refused on every process (PEER_ID_TAKEN, even
  anonymous), a spoofed ``from`` is replaced; the operator releases a binding in Redis;
* Redis unreachable, then restarted empty: clear SERVER_ERROR frames and log lines, no
  crash, and the processes recover (peers and bindings registered again);
* a password-protected Redis (password in a 0600 config file) that then stops: the
  password appears in no log line, /health or /ready body, nor error frame;
* a receiver that never reads, flooded by an accomplice on another process: the other
  peers of its process still get their offers within 1 s, and it is closed;
* Redis emptied (FLUSHALL) while a worker is live: a squatter asking for its id at once
  gets SERVER_ERROR, and the worker keeps its id and its binding.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from aiohttp import WSMsgType

from rtc_worker.identity import Identity
from tests.conftest import PACKAGE, REPO, make_zip, worker_subprocess
from tests.engine_redis import RedisServer, redis_engine, redis_url, require_redis_server
from tests.requirements import REQUIRE_E2E_ENV
from tests.signaling_helpers import WS, register_with_key
from tests.signaling_processes import SignalingProcess, StartProcess, signaling_processes

__all__ = ["redis_engine", "redis_url", "signaling_processes"]  # fixtures used here

pytestmark = pytest.mark.live

TOKEN = "lab-shared-token"
TTL = "2"  # presence TTL of the processes, seconds
ENV = {"RTC_SIGNALING_TOKEN": TOKEN}
TIMEOUT = 20.0


@pytest_asyncio.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as client:
        yield client


async def two(start: StartProcess, url: str) -> tuple[SignalingProcess, SignalingProcess]:
    a, b = await asyncio.gather(
        start("a", url, "--redis-presence-ttl-s", TTL, env=ENV),
        start("b", url, "--redis-presence-ttl-s", TTL, env=ENV),
    )
    return a, b


async def register(
    session: aiohttp.ClientSession,
    server: SignalingProcess,
    peer_id: str,
    role: str = "client",
    identity: Identity | None = None,
) -> tuple[WS, dict[str, Any]]:
    return await register_with_key(
        session, server.url, peer_id, role, identity or Identity.generate(), token=TOKEN
    )


async def registered(
    session: aiohttp.ClientSession,
    server: SignalingProcess,
    peer_id: str,
    role: str = "client",
    identity: Identity | None = None,
) -> WS:
    ws, reply = await register(session, server, peer_id, role, identity)
    assert reply["type"] == "registered", reply
    return ws


async def listed(ws: WS) -> list[str]:
    await ws.send_json({"type": "list_peers"})
    reply = await ws.receive_json(timeout=TIMEOUT)
    assert reply["type"] == "peers", reply
    return [peer["peer_id"] for peer in reply["peers"]]


async def wait_listed(ws: WS, expected: list[str], timeout: float = 10.0) -> float:
    """Poll list_peers until it is ``expected``; returns how long it took, seconds."""
    loop = asyncio.get_running_loop()
    began = loop.time()
    async with asyncio.timeout(timeout):
        while (peers := await listed(ws)) != expected:
            del peers
            await asyncio.sleep(0.1)
    return loop.time() - began


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


# --------------------------------------------------------------------------- one server


async def test_a_worker_on_one_process_serves_a_client_on_the_other(
    redis_url: str,
    signaling_processes: StartProcess,
    shared_root: Path,
    package: Path,
    tmp_path: Path,
) -> None:
    from rtc_worker.client import RTCClient

    a, b = await two(signaling_processes, redis_url)
    worker = worker_subprocess(
        a.url, "gpu-1", shared_root, extra_env=ENV, log_path=tmp_path / "worker.log"
    )
    local = make_zip(tmp_path / "client" / "package.zip", PACKAGE)
    try:
        async with RTCClient(b.url, TOKEN, reply_timeout=30, connect_timeout=30) as client:
            found = await client.wait_for_worker("gpu-1", TIMEOUT)
            assert found.metadata["shared_storage"] is True
            conn = await client.connect("gpu-1")
            shared = await conn.run_shared("inputs/package.zip", "outputs/across", job_id="x1")
            upload, channel_job = await conn.run_file(local, job_id="x2")
            received, results = await conn.download_results("x2", tmp_path / "dl")
        assert shared.file_count == 1
        manifest = json.loads((shared_root / "outputs/across/manifest.json").read_text())
        assert {entry["path"]: entry["sha256"] for entry in manifest["files"]} == {
            name: sha(data) for name, data in PACKAGE.items()
        }
        assert upload.outcome.status == "received"
        assert upload.outcome.sha256 == sha(local.read_bytes())
        stored = shared_root / ".rtc-store" / "objects"
        assert any(p.read_bytes() == local.read_bytes() for p in stored.rglob("*") if p.is_file())
        assert channel_job.job_id == "x2" and received.sha256 == sha(results.read_bytes())
    finally:
        worker.terminate()
        worker.wait(15)
    for process in (a, b):
        assert "Traceback" not in process.log_text()


async def test_a_killed_process_takes_only_its_own_peers(
    redis_url: str,
    signaling_processes: StartProcess,
    session: aiohttp.ClientSession,
    shared_root: Path,
    package: Path,
    tmp_path: Path,
) -> None:
    from rtc_worker.client import RTCClient
    from rtc_worker.settings import WorkerSettings
    from rtc_worker.worker import RTCWorkerClient

    a, b = await two(signaling_processes, redis_url)
    gpu_a_key = Identity.generate()
    on_a = [
        await registered(session, a, "gpu-a", "worker", gpu_a_key),
        await registered(session, a, "alice"),
    ]
    worker = RTCWorkerClient(
        WorkerSettings(
            signaling_url=b.url,
            peer_id="gpu-b",
            token=TOKEN,
            shared_root=shared_root,
            data_dir=tmp_path / "worker-b",
        )
    )
    task = asyncio.create_task(worker.run())
    try:
        await asyncio.wait_for(worker.registered.wait(), TIMEOUT)
        watcher = await registered(session, b, "bob")
        assert await listed(watcher) == ["alice", "bob", "gpu-a", "gpu-b"]

        await a.kill()
        vanished_in = await wait_listed(watcher, ["bob", "gpu-b"], timeout=10)
        assert vanished_in < 2 * float(TTL) + 1
        for ws in on_a:  # A's sockets died with it
            msg = await ws.receive(timeout=TIMEOUT)
            assert msg.type in (WSMsgType.CLOSE, WSMsgType.CLOSED, WSMsgType.ERROR), msg
        await watcher.send_json({"type": "offer", "to": "gpu-a", "sdp": "x"})
        refused = await watcher.receive_json(timeout=TIMEOUT)
        assert (refused["type"], refused["code"]) == ("error", "PEER_NOT_FOUND")

        # B's peers keep working: a client on B runs a job on the worker on B ...
        async with RTCClient(b.url, TOKEN, reply_timeout=30, connect_timeout=30) as client:
            result = await client.submit_shared("gpu-b", "inputs/package.zip", "outputs/after")
            assert result.file_count == 1
        # ... and the dead process's worker takes its id again on B with its key.
        back = await registered(session, b, "gpu-a", "worker", gpu_a_key)
        assert await listed(back) == ["bob", "gpu-a", "gpu-b"]
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 15)
    assert "Traceback" not in b.log_text()


async def test_order_is_kept_and_no_frame_is_lost_across_processes(
    redis_url: str, signaling_processes: StartProcess, session: aiohttp.ClientSession
) -> None:
    a, b = await two(signaling_processes, redis_url)
    count = 2000
    pairs = [
        (await registered(session, a, "s1"), await registered(session, b, "r1"), "r1"),
        (await registered(session, b, "s2"), await registered(session, a, "r2"), "r2"),
        (await registered(session, a, "s3"), await registered(session, a, "r3"), "r3"),
    ]

    async def send(ws: WS, to: str) -> None:
        for n in range(count):
            await ws.send_json({"type": "candidate", "to": to, "candidate": {"n": n}})

    async def receive(ws: WS, sender: str) -> list[int]:
        got = []
        async with asyncio.timeout(60):
            while len(got) < count:
                frame = await ws.receive_json()
                assert frame["type"] == "candidate" and frame["from"] == sender, frame
                got.append(frame["candidate"]["n"])
        return got

    results = await asyncio.gather(
        *(send(s, to) for s, _, to in pairs),
        *(receive(r, f"s{i + 1}") for i, (_, r, _) in enumerate(pairs)),
    )
    for got in results[len(pairs) :]:
        assert got == list(range(count))
    for sender, _, _ in pairs:  # no sender got an error frame
        with pytest.raises(TimeoutError):
            await sender.receive_json(timeout=0.2)


# --------------------------------------------------------------------------- attacks


async def test_a_squatter_on_another_process_is_refused_by_the_binding(
    redis_url: str, signaling_processes: StartProcess, session: aiohttp.ClientSession
) -> None:
    a, b = await two(signaling_processes, redis_url)
    owner, mallory = Identity.generate(), Identity.generate()
    gpu = await registered(session, a, "gpu-1", "worker", owner)

    # the attacker, with the token and its own key, asks process B for gpu-1
    ws, reply = await register(session, b, "gpu-1", "worker", mallory)
    assert (reply["type"], reply["code"]) == ("error", "PEER_ID_BOUND"), reply
    await ws.close()
    # the same key on another process while the id is live: refused, atomically
    ws, reply = await register(session, b, "gpu-1", "worker", owner)
    assert reply["code"] == "PEER_ID_TAKEN", reply
    await ws.close()
    # an anonymous-free server: ids of clients are bound too; a live one is taken
    alice = await registered(session, a, "alice")
    ws, reply = await register(session, b, "alice")
    assert reply["code"] == "PEER_ID_BOUND", reply
    await ws.close()

    # a spoofed from/fingerprint is replaced by what process B knows of the sender
    spy = await registered(session, b, "mallory", "client", mallory)
    await spy.send_json(
        {"type": "offer", "to": "gpu-1", "from": "alice", "fingerprint": "0" * 64, "sdp": "x"}
    )
    relayed = await gpu.receive_json(timeout=TIMEOUT)
    assert (relayed["from"], relayed["fingerprint"]) == ("mallory", mallory.fingerprint)

    # the worker leaves; the attacker tries again on both processes: still bound
    await gpu.close()
    await wait_listed(alice, ["alice", "mallory"])
    for server in (a, b):
        ws, reply = await register(session, server, "gpu-1", "worker", mallory)
        assert reply["code"] == "PEER_ID_BOUND", reply
        await ws.close()
    # and the owner registers again, on the other process
    back = await registered(session, b, "gpu-1", "worker", owner)
    assert "gpu-1" in await listed(back)


async def test_a_live_anonymous_id_is_refused_on_every_process(
    redis_url: str, signaling_processes: StartProcess, session: aiohttp.ClientSession
) -> None:
    args = ("--redis-presence-ttl-s", TTL, "--allow-anonymous-clients")
    a = await signaling_processes("a", redis_url, *args, env=ENV)
    b = await signaling_processes("b", redis_url, *args, env=ENV)

    async def anonymous(server: SignalingProcess) -> tuple[WS, dict[str, Any]]:
        ws = await session.ws_connect(server.url)
        await ws.receive_json(timeout=TIMEOUT)  # the challenge
        await ws.send_json(
            {"type": "register", "peer_id": "kiosk", "role": "client", "token": TOKEN}
        )
        return ws, await ws.receive_json(timeout=TIMEOUT)

    kiosk, reply = await anonymous(a)
    assert reply["type"] == "registered"
    # many impostors on both processes at once: every one refused, the kiosk unchanged
    attempts = await asyncio.gather(*(anonymous(server) for server in [a, b] * 5))
    assert {reply["code"] for _, reply in attempts} == {"PEER_ID_TAKEN"}
    for ws, _ in attempts:
        await ws.close()
    watcher = await registered(session, b, "watcher")
    await watcher.send_json({"type": "offer", "to": "kiosk", "sdp": "for the kiosk"})
    assert (await kiosk.receive_json(timeout=TIMEOUT))["sdp"] == "for the kiosk"


async def test_the_operator_lists_and_releases_bindings_in_redis(
    redis_url: str, signaling_processes: StartProcess, session: aiohttp.ClientSession
) -> None:
    a, b = await two(signaling_processes, redis_url)
    old, new = Identity.generate(), Identity.generate()
    ws = await registered(session, a, "gpu-1", "worker", old)
    await ws.close()

    def operator(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "signaling", "bindings", *args, "--redis-url", redis_url],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=False,
        )

    shown = await asyncio.to_thread(operator, "list", "--json")
    assert shown.returncode == 0, shown.stderr
    assert [(x["peer_id"], x["fingerprint"]) for x in json.loads(shown.stdout)] == [
        ("gpu-1", old.fingerprint)
    ]
    ws, reply = await register(session, b, "gpu-1", "worker", new)
    assert reply["code"] == "PEER_ID_BOUND"
    await ws.close()
    released = await asyncio.to_thread(operator, "release", "gpu-1")
    assert released.returncode == 0 and old.fingerprint in released.stdout, released.stderr
    await registered(session, b, "gpu-1", "worker", new)
    again = await asyncio.to_thread(operator, "release", "nobody")
    assert again.returncode == 1 and "nobody is not bound" in again.stderr


# --------------------------------------------------------------------------- Redis away


async def test_redis_unreachable_then_restarted_gives_clear_errors_and_recovers(
    signaling_processes: StartProcess, session: aiohttp.ClientSession
) -> None:
    redis = RedisServer(require_redis_server())  # not started yet: unreachable
    try:
        a, b = await two(signaling_processes, redis.url)
        owner = Identity.generate()
        ws, reply = await register(session, a, "gpu-1", "worker", owner)
        assert (reply["type"], reply["code"]) == ("error", "SERVER_ERROR"), reply
        assert not ws.closed
        await ws.close()

        redis.start()
        gpu = await registered(session, a, "gpu-1", "worker", owner)
        alice = await registered(session, b, "alice")
        assert await listed(alice) == ["alice", "gpu-1"]

        redis.stop()  # Redis goes away while peers are connected
        await alice.send_json({"type": "offer", "to": "gpu-1", "sdp": "x"})
        refused = await alice.receive_json(timeout=TIMEOUT)
        assert (refused["code"], refused["ref_type"]) == ("SERVER_ERROR", "offer")
        await alice.send_json({"type": "list_peers"})
        assert (await alice.receive_json(timeout=TIMEOUT))["code"] == "SERVER_ERROR"
        for process in (a, b):
            assert (await process.health(session))["status"] == "ok"

        redis.start()  # back, empty: the processes register their peers again
        await wait_listed(alice, ["alice", "gpu-1"], timeout=15)
        await alice.send_json({"type": "offer", "to": "gpu-1", "sdp": "after"})
        assert (await gpu.receive_json(timeout=TIMEOUT))["sdp"] == "after"
        # the worker's binding came back with it: a squatter is refused, with
        # SERVER_ERROR during the restoring window (one presence TTL), then by the binding
        ws, reply = await register(session, b, "gpu-1", "worker", Identity.generate())
        assert reply["code"] in ("SERVER_ERROR", "PEER_ID_BOUND"), reply
        await ws.close()
        await asyncio.sleep(float(TTL))
        ws, reply = await register(session, b, "gpu-1", "worker", Identity.generate())
        assert reply["code"] == "PEER_ID_BOUND", reply
        await ws.close()
        await gpu.close()
        await wait_listed(alice, ["alice"])
        ws, reply = await register(session, b, "gpu-1", "worker", Identity.generate())
        assert reply["code"] == "PEER_ID_BOUND", reply
        await ws.close()
    finally:
        redis.close()
    for process in (a, b):
        assert process.alive
        text = process.log_text()
        assert "Redis unavailable" in text and "Traceback" not in text


async def test_a_receiver_that_never_reads_does_not_stall_its_process(
    redis_url: str, signaling_processes: StartProcess, session: aiohttp.ClientSession
) -> None:
    a, b = await two(signaling_processes, redis_url)
    sink = await registered(session, b, "sink")  # the attacker's: never reads again
    gpu = await registered(session, b, "gpu-1", "worker")  # the victim, same process
    mallory = await registered(session, a, "mallory")
    alice = await registered(session, a, "alice")
    blob = "x" * 200_000  # under the 256 KiB frame limit: 200 of them fill any buffer

    async def flood() -> None:
        for i in range(200):
            await mallory.send_json({"type": "candidate", "to": "sink", "candidate": [i, blob]})
            await asyncio.sleep(0.005)

    flooding = asyncio.create_task(flood())
    latencies = []
    try:
        for i in range(20):  # for about 4 s, longer than the 5 s deadline's share
            loop = asyncio.get_running_loop()
            began = loop.time()
            await alice.send_json({"type": "offer", "to": "gpu-1", "sdp": f"v=0 {i}"})
            got = await gpu.receive_json(timeout=TIMEOUT)
            latencies.append(loop.time() - began)
            assert (got["type"], got["sdp"]) == ("offer", f"v=0 {i}")
            await asyncio.sleep(0.2)
        await flooding
    finally:
        flooding.cancel()
    assert max(latencies) < 1.0, latencies
    # the sink was closed for not reading, and the flood is refused
    await wait_listed(alice, ["alice", "gpu-1", "mallory"], timeout=15)
    await mallory.send_json({"type": "candidate", "to": "sink", "candidate": None})
    async with asyncio.timeout(TIMEOUT):
        while (reply := await mallory.receive_json())["type"] != "error":
            pass
    assert reply["code"] == "PEER_NOT_FOUND", reply
    del sink


async def test_a_squatter_right_after_redis_lost_its_data_is_refused(
    redis_engine: RedisServer,
    redis_url: str,
    signaling_processes: StartProcess,
    session: aiohttp.ClientSession,
) -> None:
    a, b = await two(signaling_processes, redis_url)
    owner, mallory = Identity.generate(), Identity.generate()
    gpu = await registered(session, a, "gpu-1", "worker", owner)
    alice = await registered(session, b, "alice")

    redis_engine.flushall()  # Redis loses its data while the worker is live
    # the attacker asks for the worker's id before process A restored it: refused
    ws, reply = await register(session, b, "gpu-1", "worker", mallory)
    assert (reply["type"], reply["code"]) == ("error", "SERVER_ERROR"), reply
    await ws.close()
    await wait_listed(alice, ["alice", "gpu-1"], timeout=15)
    await asyncio.sleep(float(TTL))  # the restoring window (one presence TTL) is over
    for server in (a, b):  # the worker's binding came back before anyone could claim it
        ws, reply = await register(session, server, "gpu-1", "worker", mallory)
        assert reply["code"] == "PEER_ID_BOUND", reply
        await ws.close()
    await alice.send_json({"type": "offer", "to": "gpu-1", "sdp": "after"})
    relayed = await gpu.receive_json(timeout=TIMEOUT)
    assert (relayed["sdp"], relayed["from"]) == ("after", "alice")
    late = await registered(session, b, "bob")  # new ids register again
    assert await listed(late) == ["alice", "bob", "gpu-1"]


async def test_the_redis_password_appears_in_no_log_health_body_or_error_frame(
    signaling_processes: StartProcess, session: aiohttp.ClientSession
) -> None:
    password = secrets.token_hex(16)
    redis = RedisServer(require_redis_server(), password=password)
    try:
        redis.start()
        assert (redis.dir / "redis.conf").stat().st_mode & 0o777 == 0o600
        assert password not in Path(f"/proc/{redis.proc.pid}/cmdline").read_text()  # type: ignore[union-attr]
        a = await signaling_processes("a", redis.url, "--redis-presence-ttl-s", TTL, env=ENV)
        gpu = await registered(session, a, "gpu-1", "worker")
        alice = await registered(session, a, "alice")
        await alice.send_json({"type": "offer", "to": "gpu-1", "sdp": "x"})
        assert (await gpu.receive_json(timeout=TIMEOUT))["from"] == "alice"
        bodies = [json.dumps(await a.health(session))]

        redis.stop()  # Redis goes away: errors everywhere, never the password
        frames = []
        for frame in ({"type": "list_peers"}, {"type": "offer", "to": "gpu-1", "sdp": "y"}):
            await alice.send_json(frame)
            frames.append(await alice.receive_json(timeout=TIMEOUT))
        assert [f["code"] for f in frames] == ["SERVER_ERROR", "SERVER_ERROR"], frames
        ws, reply = await register(session, a, "bob")
        frames.append(reply)
        await ws.close()
        assert reply["code"] == "SERVER_ERROR", reply
        for path in ("/health", "/ready"):
            async with session.get(f"http://127.0.0.1:{a.port}{path}") as response:
                bodies.append(await response.text())
        await asyncio.sleep(1.0)  # a heartbeat fails and is logged
    finally:
        redis.close()
    assert "redis" in bodies[-1].lower()  # /ready names what failed
    text = a.log_text()
    assert "Redis unavailable" in text and "***@127.0.0.1" in text
    for seen in (text, *bodies, *map(json.dumps, frames)):
        assert password not in seen


def test_the_redis_fixture_skips_with_a_reason_without_the_binary_or_fails_in_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv(REQUIRE_E2E_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="redis-server is not installed"):
        require_redis_server()
    monkeypatch.setenv(REQUIRE_E2E_ENV, "1")  # as .ci/run: a missing engine is a failure
    with pytest.raises(pytest.fail.Exception, match="redis-server is not installed"):
        require_redis_server()
