"""The chunk size follows the remote's max-message-size (RFC 8841 section 6): over real
aiortc peers, a side that announces a smaller ``a=max-message-size`` in its SDP gets
FILE_META's ``chunk_size`` and binary frames no larger than that, in both directions
(the client's upload, the worker's results), and the sender's streaming loop."""

from __future__ import annotations

import asyncio
import hashlib
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiortc import RTCDataChannel, RTCPeerConnection, RTCSessionDescription, rtcsctptransport

from protocol import DEFAULT_LIMITS, Limits
from protocol.connection import Connection
from protocol.events import FileToSend, Send, StreamFrom
from protocol.routes import Role
from rtc_worker.chunk_sender import read_chunks, send_chunks
from rtc_worker.client import RTCClient
from rtc_worker.rtc import (
    DEFAULT_MAX_MESSAGE_BYTES,
    FrameChannel,
    chunk_bytes_for,
    remote_max_message_size,
    rtc_configuration,
)
from tests.conftest import PACKAGE, make_zip

KIB = 1024
SMALL = 16 * KIB


@pytest.mark.parametrize(
    ("limits", "max_message_size", "expected"),
    [
        (DEFAULT_LIMITS, None, 64 * KIB),  # unknown: RFC 8841's default of 64 KiB
        (Limits(chunk_bytes=256 * KIB), None, DEFAULT_MAX_MESSAGE_BYTES),
        (DEFAULT_LIMITS, 256 * KIB, 64 * KIB),  # an aiortc peer: the preferred size
        (Limits(chunk_bytes=256 * KIB), 256 * KIB, 256 * KIB),
        (DEFAULT_LIMITS, SMALL, SMALL),  # a smaller remote is a ceiling
        (Limits(chunk_bytes=1024), 256 * KIB, 1024),
        (Limits(chunk_bytes=256 * KIB), 0, 256 * KIB),  # 0: any size; our bound holds
        (Limits(chunk_bytes=512 * KIB), 0, 256 * KIB),  # never above max_binary_frame
        (Limits(chunk_bytes=512 * KIB), 1 << 30, 256 * KIB),  # Firefox announces 1 GiB
    ],
)
def test_the_chunk_size_is_the_preferred_one_under_both_ceilings(
    limits: Limits, max_message_size: int | None, expected: int
) -> None:
    assert chunk_bytes_for(limits, max_message_size) == expected


def test_an_unreadable_max_message_size_is_unknown() -> None:
    class Bare:
        transport = None

    assert remote_max_message_size(Bare()) is None  # type: ignore[arg-type]


def _announcing(sdp: str, size: int) -> str:
    lines = sdp.splitlines()
    assert any(line.startswith("a=max-message-size:") for line in lines)
    changed = [
        f"a=max-message-size:{size}" if line.startswith("a=max-message-size:") else line
        for line in lines
    ]
    return "\r\n".join(changed) + "\r\n"


@pytest_asyncio.fixture
async def small_answerer() -> AsyncIterator[tuple[RTCDataChannel, RTCDataChannel]]:
    """A real pair whose answerer announces ``a=max-message-size:16384`` (the offerer,
    aiortc, announces 262144)."""
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
    answer = _announcing(answerer.localDescription.sdp, SMALL)
    await offerer.setRemoteDescription(RTCSessionDescription(answer, "answer"))
    await asyncio.wait_for(opened.wait(), 10)
    yield local, await asyncio.wait_for(remote, 10)
    await offerer.close()
    await answerer.close()


async def test_each_side_reads_the_other_sides_announcement(
    small_answerer: tuple[RTCDataChannel, RTCDataChannel],
) -> None:
    local, remote = small_answerer
    roomy = Limits(chunk_bytes=256 * KIB)
    assert remote_max_message_size(local) == SMALL
    assert FrameChannel(local).sending_limits(roomy).chunk_bytes == SMALL
    assert remote_max_message_size(remote) == rtcsctptransport.LOCAL_MAX_MESSAGE_SIZE
    assert FrameChannel(remote).sending_limits(roomy).chunk_bytes == 256 * KIB
    assert FrameChannel(remote).sending_limits(DEFAULT_LIMITS) is DEFAULT_LIMITS


async def test_the_stream_to_a_smaller_remote_uses_its_size(
    small_answerer: tuple[RTCDataChannel, RTCDataChannel], tmp_path: Path
) -> None:
    """send_chunks over the real channel: FILE_META announces 16 KiB and no binary frame
    is larger (aiortc would refuse one: ValueError); every byte arrives in order."""
    local, remote = small_answerer
    data = random.Random(5).randbytes(300_000)
    path = tmp_path / "data.bin"
    path.write_bytes(data)
    got: list[bytes] = []
    everything = asyncio.Event()

    def on_message(message: str | bytes) -> None:
        if isinstance(message, bytes):
            got.append(message)
            if sum(map(len, got)) >= len(data):
                everything.set()

    remote.on("message", on_message)
    frames = FrameChannel(local)
    conn = Connection(Role.CLIENT, limits=frames.sending_limits(Limits(chunk_bytes=256 * KIB)))
    conn.send_file(FileToSend("data.bin", len(data), hashlib.sha256(data).hexdigest()))
    (announced,) = conn.drain()
    assert isinstance(announced, Send) and announced.frame.endswith(f"::{SMALL}")
    conn.receive("FILE_READY::0", 0.0)
    assert any(isinstance(out, StreamFrom) for out in conn.drain())
    sent: list[int] = []
    fd = os.open(path, os.O_RDONLY)
    try:
        done = await send_chunks(
            conn, frames, fd, 0, high_water=64 * KIB, low_water=16 * KIB, sent=sent.append
        )
    finally:
        os.close(fd)
    assert done and sum(sent) == len(data)
    await asyncio.wait_for(everything.wait(), 20)
    assert max(map(len, got)) == SMALL
    assert b"".join(got) == data


def test_read_chunks_cuts_a_block_into_chunks_without_slicing(tmp_path: Path) -> None:
    path = tmp_path / "f.bin"
    data = random.Random(2).randbytes(10_000)
    path.write_bytes(data)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert [len(c) for c in read_chunks(fd, 0, 4096, 1000)] == [1000] * 4 + [96]
        assert b"".join(read_chunks(fd, 9000, 4096, 1000)) == data[9000:]
        assert read_chunks(fd, 10_000, 4096, 1000) == []
    finally:
        os.close(fd)


async def test_peers_announcing_16_kib_transfer_both_ways_in_16_kib_chunks(
    start_worker: Any, client: RTCClient, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Client and worker (aiortc, in this process) both announce max-message-size 16384:
    the upload and the results download still work, every chunk within 16 KiB (with the
    64 KiB default the first chunk would be refused by aiortc)."""
    monkeypatch.setattr(rtcsctptransport, "LOCAL_MAX_MESSAGE_SIZE", SMALL)
    binary: dict[int, list[int]] = {}
    announced: list[str] = []
    on_message = FrameChannel._on_message

    def spy(self: FrameChannel, frame: str | bytes) -> None:
        if isinstance(frame, bytes):
            binary.setdefault(id(self), []).append(len(frame))
        elif frame.startswith("FILE_META::"):
            announced.append(frame.rsplit("::", 1)[1])
        on_message(self, frame)

    monkeypatch.setattr(FrameChannel, "_on_message", spy)
    await start_worker(job_command="cp {input} {output}/copy.bin")  # results hold the input
    package = make_zip(tmp_path / "client" / "package.zip", PACKAGE)
    async with asyncio.timeout(60):  # a chunk above 16 KiB: aiortc refuses it, nothing moves
        outcome = await client.submit_file(
            "worker-1", package, tmp_path / "downloads", job_id="s-1"
        )
    assert outcome.upload.outcome.status == "received"
    assert hashlib.sha256(outcome.results_zip.read_bytes()).hexdigest() == (outcome.download.sha256)
    assert announced == [str(SMALL), str(SMALL)]  # the upload's FILE_META, the results'
    sizes = list(binary.values())
    assert len(sizes) == 2  # chunks reached the worker and the client
    assert all(max(side) == SMALL for side in sizes)
    assert all(sum(side) >= package.stat().st_size for side in sizes)
