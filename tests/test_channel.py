"""The data-channel adapter over a real aiortc peer-connection pair: ordering, the
bounded inbox, and a job that floods its log."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription

from rtc_worker.client import RTCClient
from rtc_worker.rtc import ChannelClosed, FrameChannel, rtc_configuration


@pytest_asyncio.fixture
async def channel_pair() -> AsyncIterator[tuple[RTCDataChannel, asyncio.Future[RTCDataChannel]]]:
    offerer = RTCPeerConnection(rtc_configuration([]))
    answerer = RTCPeerConnection(rtc_configuration([]))
    remote: asyncio.Future[RTCDataChannel] = asyncio.get_running_loop().create_future()
    answerer.on("datachannel", remote.set_result)
    local = offerer.createDataChannel("jobs")
    opened = asyncio.Event()
    local.on("open", opened.set)
    await offerer.setLocalDescription(await offerer.createOffer())
    await answerer.setRemoteDescription(
        RTCSessionDescription(offerer.localDescription.sdp, "offer")
    )
    await answerer.setLocalDescription(await answerer.createAnswer())
    await offerer.setRemoteDescription(
        RTCSessionDescription(answerer.localDescription.sdp, "answer")
    )
    await asyncio.wait_for(opened.wait(), 10)
    yield local, remote
    await offerer.close()
    await answerer.close()


async def test_frames_arrive_in_order(channel_pair: Any) -> None:
    local, remote = channel_pair
    inbox = FrameChannel(await asyncio.wait_for(remote, 10))
    for i in range(2000):
        local.send(f"JOB_LOG::{i}" if i % 3 else bytes([i % 256]) * 100)
    got = [await inbox.recv(10) for _ in range(2000)]
    assert got == [f"JOB_LOG::{i}" if i % 3 else bytes([i % 256]) * 100 for i in range(2000)]


async def test_a_flooding_peer_is_told_and_disconnected(channel_pair: Any) -> None:
    local, remote = channel_pair
    sender = FrameChannel(local)
    inbox = FrameChannel(await asyncio.wait_for(remote, 10), max_queued_frames=10)
    for i in range(50):
        local.send(f"JOB_LOG::{i}")
    assert await sender.recv(10) == "PROTOCOL_ERROR::OVERLOADED::too many frames queued; closing"
    assert inbox.overflowed
    received = []
    with pytest.raises(ChannelClosed):
        while True:
            received.append(await inbox.recv(1))
    assert received == [f"JOB_LOG::{i}" for i in range(10)]
    with pytest.raises(ChannelClosed):  # every later recv sees the close too
        await inbox.recv(1)


async def test_recv_times_out(channel_pair: Any) -> None:
    _, remote = channel_pair
    inbox = FrameChannel(await asyncio.wait_for(remote, 10))
    with pytest.raises(TimeoutError):
        await inbox.recv(0.05)


async def test_a_job_that_floods_its_log_completes(
    start_worker: Any, client: RTCClient, shared_root: Path, package: Path
) -> None:
    script = "import sys; [print('line', i) for i in range(5000)]"
    await start_worker(shared_root=shared_root, job_command=f'{sys.executable} -c "{script}"')
    lines: list[str] = []
    result = await client.submit_shared(
        "worker-1", "inputs/package.zip", "outputs/flood", on_log=lines.append
    )
    assert result.file_count == 0
    assert lines[0] == "line 0"
    numbered = [int(line.split()[1]) for line in lines if line.startswith("line ")]
    assert numbered == sorted(numbered)
    dropped = sum(int(line[1:].split()[0]) for line in lines if line.endswith("client too slow]"))
    assert len(numbered) + dropped <= 5000
