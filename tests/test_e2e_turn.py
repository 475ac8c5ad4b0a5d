"""End to end through a real coturn on loopback: both peers relay-only (a shared-storage
job, a 32 MiB transfer, a resume), each test showing the relay carried it (only ``typ
relay`` candidates in both SDPs, the nominated pair relay<->relay, coturn's byte counts),
and the attacker's steps against the TURN credentials (bound to the receiving peer's id,
refused once expired, refused with a wrong secret: a clear error, never a hang)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import io
import random
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from loguru import logger

from protocol.signaling import Offer, RelayedOffer
from rtc_worker.client import RTCClient
from rtc_worker.identity import Identity
from rtc_worker.rtc import (
    NO_RELAY_CANDIDATE,
    NO_TURN_SERVER,
    ChannelClosed,
    IceSetupError,
    candidate_types,
    selected_candidate_types,
)
from rtc_worker.signaling_client import SignalingClient
from signaling.turn import turn_credential
from tests.conftest import Signaling, start_signaling, worker_subprocess
from tests.turn_helpers import Coturn, coturn_fixture  # noqa: F401 - the coturn fixture

pytestmark = [pytest.mark.asyncio, pytest.mark.live]

MIB = 1024 * 1024


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest_asyncio.fixture
async def signaling(coturn: Coturn) -> AsyncIterator[Signaling]:
    """This module's signaling server hands out the test coturn with its secret (it
    replaces conftest's, so the start_worker and client fixtures use it too)."""
    server = await start_signaling(turn_urls=[coturn.url], turn_secret=coturn.secret)
    yield server
    await server.runner.cleanup()


@pytest_asyncio.fixture
async def relay_client(signaling: Signaling) -> AsyncIterator[RTCClient]:
    async with RTCClient(
        signaling.url, ice_transport_policy="relay", reply_timeout=30, connect_timeout=20
    ) as client:
        yield client


@pytest.fixture
def relay_worker(signaling: Signaling, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """``rtc-worker serve`` as its own process, relay-only; yields (peer id, log file)."""
    log = tmp_path / "worker.log"
    proc = worker_subprocess(
        signaling.url,
        "relay-worker",
        None,
        extra_env={"RTC_ICE_TRANSPORT_POLICY": "relay"},
        log_path=log,
    )
    try:
        yield "relay-worker", log
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def assert_relayed(pc: Any) -> None:
    """Only relay candidates on both sides, and ICE nominated relay <-> relay."""
    local, remote = pc.localDescription.sdp, pc.remoteDescription.sdp
    assert candidate_types(local) and set(candidate_types(local)) == {"relay"}, local
    assert candidate_types(remote) and set(candidate_types(remote)) == {"relay"}, remote
    assert selected_candidate_types(pc) == ("relay", "relay")


async def relayed_at_least(server: Coturn, peer_id: str, size: int, timeout: float = 5) -> int:
    """coturn's count of bytes it received from ``peer_id``, once it reaches ``size``
    (coturn logs once a second)."""
    deadline = time.monotonic() + timeout
    while (got := server.relayed_bytes(peer_id)) < size and time.monotonic() < deadline:
        await asyncio.sleep(0.25)
    return got


async def wait_registered(client: RTCClient, worker_id: str) -> None:
    await client.wait_for_worker(worker_id, timeout=20)


# ------------------------------------------------------------------ the relay carries it


async def test_a_shared_job_through_the_relay(
    start_worker: Any, relay_client: RTCClient, shared_root: Path, package: Path
) -> None:
    worker = await start_worker(shared_root=shared_root, ice_transport_policy="relay")
    result = await relay_client.submit_shared("worker-1", "inputs/package.zip", "outputs/relay")
    assert result.file_count > 0
    assert (shared_root / "outputs" / "relay" / "manifest.json").is_file()
    assert_relayed(relay_client._connections["worker-1"].pc)
    worker_pc = worker._peer_connections[relay_client.peer_id][0]
    assert selected_candidate_types(worker_pc) == ("relay", "relay")


async def test_32_mib_over_the_channel_through_the_relay(
    relay_worker: tuple[str, Path],
    relay_client: RTCClient,
    coturn: Coturn,
    tmp_path: Path,
) -> None:
    worker_id, log = relay_worker
    await wait_registered(relay_client, worker_id)
    data = random.Random(12).randbytes(32 * MIB)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    conn = await relay_client.connect(worker_id)
    result = await conn.send_file(path)
    assert result.outcome.status == "received" and result.bytes_sent == len(data)
    assert result.outcome.sha256 == sha(data)  # computed by the worker on what it stored
    assert_relayed(conn.pc)
    assert await relayed_at_least(coturn, relay_client.peer_id, len(data)) >= len(data)
    assert "connected via relay" in log.read_text()


async def test_a_resume_through_the_relay_sends_at_most_105_percent(
    relay_worker: tuple[str, Path],
    relay_client: RTCClient,
    coturn: Coturn,
    tmp_path: Path,
) -> None:
    worker_id, _ = relay_worker
    await wait_registered(relay_client, worker_id)
    data = random.Random(13).randbytes(32 * MIB)
    path = tmp_path / "big.bin"
    path.write_bytes(data)
    conn = await relay_client.connect(worker_id)
    assert_relayed(conn.pc)
    closing: list[asyncio.Task[None]] = []

    def cut_at_half(received: int, size: int) -> None:
        if received >= size // 2 and not closing:
            closing.append(asyncio.ensure_future(conn.close()))

    with pytest.raises(ChannelClosed):
        await conn.send_file(path, on_progress=cut_at_half)
    await closing[0]
    first = conn.io.bytes_sent
    assert len(data) // 2 <= first < len(data)
    await asyncio.sleep(0.5)  # the worker notices the drop and keeps the partial
    fresh = await relay_client.connect(worker_id)
    result = await fresh.send_file(path)
    assert result.outcome.status == "received" and result.outcome.sha256 == sha(data)
    assert result.outcome.offset > 0 and result.bytes_sent == len(data) - result.outcome.offset
    assert first + result.bytes_sent <= 1.05 * len(data), (first, result.bytes_sent)
    assert_relayed(fresh.pc)
    assert await relayed_at_least(coturn, relay_client.peer_id, len(data)) >= len(data)


# ------------------------------------------------------------------ attacker's steps


async def test_credentials_are_bound_to_the_receiving_peer_and_expire(
    signaling: Signaling,
    coturn: Coturn,
) -> None:
    """An attacker registers as "mallory": it gets a credential naming mallory (never the
    worker), expiring one TTL from now; the offer it sends gives the worker a credential
    naming the worker, which mallory never sees. No secret or credential is logged."""
    lines = io.StringIO()
    sink = logger.add(lines, level="DEBUG")
    worker = SignalingClient(signaling.url, "w-1", "worker", identity=Identity.generate())
    mallory = SignalingClient(signaling.url, "mallory", "client", identity=Identity.generate())
    try:
        await worker.connect()
        before = int(time.time())
        await mallory.connect()
        (given,) = mallory.ice_servers
        expiry, _, name = given.username.partition(":")
        assert name == "mallory" and given.urls == (coturn.url,)
        assert before + 3600 <= int(expiry) <= int(time.time()) + 3600
        assert given.credential == turn_credential(coturn.secret.encode(), given.username)
        await mallory.send(Offer(to="w-1", sdp="v=0\r\n"))
        relayed = await worker.recv(timeout=5)
        assert isinstance(relayed, RelayedOffer) and relayed.from_ == "mallory"
        (for_worker,) = relayed.ice_servers
        assert for_worker.username.endswith(":w-1")
        assert for_worker.credential != given.credential
        with pytest.raises(TimeoutError):  # mallory gets nothing back for the worker
            await mallory.recv(timeout=0.5)
    finally:
        await mallory.close()
        await worker.close()
        logger.remove(sink)
    text = lines.getvalue()
    assert coturn.secret not in text
    assert given.credential not in text and for_worker.credential not in text


async def test_an_expired_credential_gets_no_relay_and_a_clear_error(
    coturn: Coturn,
    tmp_path: Path,
) -> None:
    """The attacker keeps a credential past its expiry and tries to allocate with it:
    coturn refuses, and relay-only gathering fails with NO_RELAY_CANDIDATE at once. An
    honest client registered for longer than the TTL registers again and gets through."""
    from aiortc import RTCPeerConnection

    from rtc_worker.rtc import require_relay_candidate, rtc_configuration

    server = await start_signaling(turn_urls=[coturn.url], turn_secret=coturn.secret, turn_ttl_s=1)
    attacker = SignalingClient(server.url, "keeper", "client", identity=Identity.generate())
    try:
        await attacker.connect()
        stale = attacker.ice_servers
        await asyncio.sleep(2.2)  # past the expiry
        pc = RTCPeerConnection(rtc_configuration([], stale, "relay"))
        try:
            pc.createDataChannel("x")
            started = time.monotonic()
            await pc.setLocalDescription(await pc.createOffer())
            with pytest.raises(IceSetupError) as caught:
                require_relay_candidate(pc.localDescription.sdp)
            assert caught.value.code == NO_RELAY_CANDIDATE
            assert time.monotonic() - started < 10
        finally:
            await pc.close()
        assert any(":keeper" in line for line in coturn.refused_users())
        async with (
            relay_worker_in_process(server.url, tmp_path / "w"),
            RTCClient(server.url, ice_transport_policy="relay") as client,
        ):
            await client.workers()  # registered: its credential expires in 1 s
            await asyncio.sleep(2.2)
            conn = await client.connect("relay-w")  # registers again, fresh credential
            assert_relayed(conn.pc)
    finally:
        await attacker.close()
        await server.runner.cleanup()


@contextlib.asynccontextmanager
async def relay_worker_in_process(url: str, data_dir: Path) -> AsyncIterator[Any]:
    """An in-process relay-only worker "relay-w", registered; stopped at the end."""
    from rtc_worker.settings import WorkerSettings
    from rtc_worker.worker import RTCWorkerClient

    worker = RTCWorkerClient(
        WorkerSettings(
            signaling_url=url,
            peer_id="relay-w",
            shared_root_candidates=[],
            data_dir=data_dir,
            ice_transport_policy="relay",
        )
    )
    task = asyncio.create_task(worker.run())
    try:
        async with asyncio.timeout(10):
            await worker.registered.wait()
        yield worker, task
    finally:
        await worker.stop()
        await asyncio.wait_for(task, 15)


async def test_a_wrong_secret_gets_no_relay_and_a_clear_error_never_a_hang(
    coturn: Coturn,
    tmp_path: Path,
) -> None:
    """Signaling whose secret is not coturn's hands out credentials coturn refuses: the
    relay-only client gets NO_RELAY_CANDIDATE quickly; a relay-only worker refuses the
    offer of a client that tries anyway, logs NO_RELAY_CANDIDATE and keeps serving."""
    server = await start_signaling(turn_urls=[coturn.url], turn_secret="not-" + coturn.secret)
    lines = io.StringIO()
    sink = logger.add(lines, level="ERROR")
    try:
        async with relay_worker_in_process(server.url, tmp_path / "w") as (worker, task):
            async with RTCClient(
                server.url, ice_transport_policy="relay", connect_timeout=15
            ) as client:
                started = time.monotonic()
                with pytest.raises(IceSetupError) as caught:
                    await client.connect("relay-w")
                assert caught.value.code == NO_RELAY_CANDIDATE
                assert time.monotonic() - started < 10
            async with RTCClient(server.url, connect_timeout=5) as plain:
                with pytest.raises(TimeoutError):  # the worker could not answer
                    await plain.connect("relay-w")
            assert "NO_RELAY_CANDIDATE" in lines.getvalue()
            assert not task.done() and worker.registered.is_set()  # still serving
        assert coturn.refused_users()
    finally:
        logger.remove(sink)
        await server.runner.cleanup()


async def test_relay_only_without_any_turn_server(tmp_path: Path) -> None:
    """Relay-only against a signaling server without TURN: the client fails fast with
    NO_TURN_SERVER; a relay-only worker refuses each offer, logs why and keeps running."""
    server = await start_signaling()
    lines = io.StringIO()
    sink = logger.add(lines, level="ERROR")
    try:
        async with relay_worker_in_process(server.url, tmp_path / "w") as (worker, task):
            # At registration, before any offer: one ERROR with the code.
            assert lines.getvalue().count("NO_TURN_SERVER") == 1, lines.getvalue()
            assert "every offer is refused" in lines.getvalue()
            async with RTCClient(server.url, ice_transport_policy="relay") as client:
                started = time.monotonic()
                with pytest.raises(IceSetupError) as caught:
                    await client.connect("relay-w")
                assert caught.value.code == NO_TURN_SERVER
                assert time.monotonic() - started < 5
            async with RTCClient(server.url, connect_timeout=3) as plain:
                with pytest.raises(TimeoutError) as timed_out:  # the worker refused the offer
                    await plain.connect("relay-w")
            # The client's error says what to look for, not a bare TimeoutError.
            assert "relay-w did not answer" in str(timed_out.value)
            assert "NO_TURN_SERVER" in str(timed_out.value)
            assert "refusing the offer of" in lines.getvalue()  # each offer: the code logged
            assert lines.getvalue().count("NO_TURN_SERVER") == 2
            assert not task.done() and worker.registered.is_set()  # still serving
    finally:
        logger.remove(sink)
        await server.runner.cleanup()


async def test_rtc_client_relay_only_without_turn_exits_3_with_the_code(tmp_path: Path) -> None:
    """``rtc-client submit --ice-transport-policy relay`` where signaling hands out no TURN
    server: exit status 3 (connection) with NO_TURN_SERVER, within seconds."""
    import os
    import sys

    from tests.conftest import REPO

    server = await start_signaling()
    argv = [sys.executable, "-c", "import sys; from rtc_worker.cli import client_main; "
            "sys.exit(client_main())", "submit", "--signaling-url", server.url,
            "--worker", "anyone", "--input", "a.zip", "--output", "out", "--no-progress",
            "--ice-transport-policy", "relay"]  # fmt: skip
    env = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path / "config")}
    try:
        done = await asyncio.to_thread(
            subprocess.run, argv, cwd=REPO, capture_output=True, text=True, timeout=60, env=env
        )
    finally:
        await server.runner.cleanup()
    assert done.returncode == 3, done.stderr
    assert "NO_TURN_SERVER" in done.stderr


async def test_a_turn_server_that_never_answers_is_no_relay_candidate_not_a_timeout() -> None:
    """The TURN server handed out by signaling drops every packet (a firewall, a dead
    host): the relay-only client fails with NO_RELAY_CANDIDATE after its connect timeout,
    not with a bare TimeoutError."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as black_hole:
        black_hole.bind(("127.0.0.1", 0))  # receives, never answers
        url = f"turn:127.0.0.1:{black_hole.getsockname()[1]}"
        server = await start_signaling(turn_urls=[url], turn_secret="any-secret")
        try:
            async with RTCClient(
                server.url, ice_transport_policy="relay", connect_timeout=2
            ) as client:
                started = time.monotonic()
                with pytest.raises(IceSetupError) as caught:
                    await client.connect("anyone")
            assert caught.value.code == NO_RELAY_CANDIDATE
            assert "did not answer within 2 s" in str(caught.value)
            assert time.monotonic() - started < 6
            assert black_hole.recv(2048)  # the allocation request did reach it
        finally:
            await server.runner.cleanup()


async def test_a_running_allocation_is_refreshed_past_its_credentials_expiry(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """What PROTOCOL.md 5.4 claims: the expiry gates new allocations only. coturn grants
    4 s allocations here (aioice refreshes them every 3.3 s) and the credentials live 1 s:
    both peers' REFRESH requests succeed well past the expiry, the relayed channel stays
    up, and a file sent 8 s after the expiry arrives through the relay."""
    import logging

    from tests.turn_helpers import running_coturn

    caplog.set_level(logging.INFO, logger="aioice.turn")
    with running_coturn(tmp_path / "coturn", extra_config=["max-allocate-lifetime=4"]) as turn:
        server = await start_signaling(turn_urls=[turn.url], turn_secret=turn.secret, turn_ttl_s=1)
        try:
            async with (
                relay_worker_in_process(server.url, tmp_path / "w"),
                RTCClient(server.url, ice_transport_policy="relay") as client,
            ):
                conn = await client.connect("relay-w")
                assert_relayed(conn.pc)
                await asyncio.sleep(9)  # every credential has expired 8 s ago
                refreshed = [r for r in caplog.messages if "TURN allocation refreshed" in r]
                assert len(refreshed) >= 4, caplog.messages  # 2 per peer at least
                assert not [r for r in caplog.messages if "refresh failed" in r]
                data = random.Random(5).randbytes(MIB)
                (tmp_path / "late.bin").write_bytes(data)
                result = await conn.send_file(tmp_path / "late.bin")
                assert result.outcome.status == "received" and result.outcome.sha256 == sha(data)
                assert_relayed(conn.pc)
            assert "expires in 4 seconds" in " ".join(caplog.messages)
        finally:
            await server.runner.cleanup()
