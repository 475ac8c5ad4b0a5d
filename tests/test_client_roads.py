"""The client's side of the roads without peers: its settings, the road it plans from a
worker's advertised roads and a real storage service, the sealed pieces it uploads, the
result it reports and what ``--trace`` prints of a RELAY_PART."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import pytest_asyncio
from pydantic import ValidationError

from protocol.events import FileToSend as SendFile
from protocol.events import SendEnded
from protocol.relay_crypto import TAG_BYTES, ChunkCipher, RelaySecret
from protocol.relay_events import RelayFrom
from protocol.relay_messages import RelayStop
from protocol.roads import Road
from protocol.sender import SenderState
from rtc_worker.cli_output import shown_frame
from rtc_worker.client_results import SendResult
from rtc_worker.client_settings import ClientCli, SubmitCommand
from rtc_worker.errors import RoadFailed
from rtc_worker.relay_http import RelayHttp
from rtc_worker.relay_send import (
    FileChangedError,
    RelaySender,
    file_identity,
    part_length,
    sealed_chunks,
)
from rtc_worker.roads_client import OLDER_WORKER_ROADS, RoadChange, plan_road, worker_roads
from rtc_worker.settings_sources import CommandLine
from rtc_worker.storage import SafeRoot
from tests.protocol_helpers import BIG, BIG_META, BIG_SHA, client, feed, one, sends
from tests.storage_service import KEY, service_settings


def submit(*argv: str) -> SubmitCommand:
    line = CommandLine(ClientCli, "rtc-client")
    command = line.command(line.parse(["submit", "--worker", "w", *argv]))
    assert isinstance(command, SubmitCommand)
    return command


@pytest.fixture
def no_storage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("RTC_STORAGE_API_KEY", "STORAGE_API_KEY", "RTC_STORAGE_API_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    for name in ("RTC_STORAGE_URL", "RTC_ROAD", "RTC_RELAY_PART_MB", "RTC_RELAY_CHUNK_BYTES"):
        monkeypatch.delenv(name, raising=False)


def test_submit_settings_of_the_roads(
    no_storage_env: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = submit()
    assert (default.road, default.storage_url, default.storage_api_key_value) == (
        "auto",
        None,
        None,
    )
    assert (default.relay_part_mb, default.relay_chunk_bytes) == (64, 1024 * 1024)
    key_file = tmp_path / "key"
    key_file.write_text("rtck_secret\n")
    key_file.chmod(0o600)
    given = submit(
        "--road", "relay", "--storage-url", "http://s:1", "--api-key-file", str(key_file),
        "--relay-part-mb", "8", "--relay-chunk-bytes", "65536",
    )  # fmt: skip
    assert (given.road, given.storage_url, given.storage_api_key_value) == (
        "relay",
        "http://s:1",
        "rtck_secret",
    )
    assert (given.relay_part_mb, given.relay_chunk_bytes) == (8, 65536)
    assert "rtck_secret" not in repr(given)
    monkeypatch.setenv("RTC_STORAGE_API_KEY", "from-env")
    assert submit().storage_api_key_value == "from-env"
    for bad in (
        ["--road", "turn"],
        ["--relay-chunk-bytes", "100"],
        ["--relay-chunk-bytes", str(32 * 1024 * 1024)],
        ["--relay-part-mb", "0"],
    ):
        with pytest.raises((ValidationError, SystemExit)):
            submit(*bad)


def test_worker_roads_from_registration_metadata() -> None:
    assert worker_roads({}) == OLDER_WORKER_ROADS == {Road.SHARED, Road.CHANNEL}
    assert worker_roads({"roads": ["relay", "channel"]}) == {Road.RELAY, Road.CHANNEL}
    assert worker_roads({"roads": ["quic", 3, "channel"]}) == {Road.CHANNEL}
    assert worker_roads({"roads": "relay"}) == OLDER_WORKER_ROADS


@pytest_asyncio.fixture
async def storage_url(tmp_path: Path) -> AsyncIterator[str]:
    """A real storage service in this process (SQLite, a folder)."""
    from signaling.app import start_server

    runner, port = await start_server(service_settings(tmp_path / "store"))
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.asyncio
async def test_plan_road_probes_the_storage_service(storage_url: str) -> None:
    relay = RelayHttp(storage_url, KEY)
    wrong_key = RelayHttp(storage_url, "not-a-key")
    relay_worker = {"roads": ["relay", "channel"]}
    try:

        async def plan(forced: Road | None, http: RelayHttp | None, **meta: object) -> Road:
            chosen = await plan_road(
                forced=forced,
                metadata={**relay_worker, **meta},
                relay=http,
                shared_input=False,
                part_bytes=1 << 20,
                chunk_size=1 << 20,
            )
            assert chosen.fallback is (forced is None)
            assert (chosen.relay is not None) is (chosen.road is Road.RELAY)
            return chosen.road

        assert await plan(None, relay) is Road.RELAY
        assert await plan(None, None) is Road.CHANNEL  # no storage service configured
        assert await plan(None, wrong_key) is Road.CHANNEL  # the service refuses our key
        assert await plan(None, relay, roads=["channel"]) is Road.CHANNEL  # worker has none
        assert await plan(Road.CHANNEL, relay) is Road.CHANNEL
        assert await plan(None, relay, roads=None) is Road.CHANNEL  # an older worker
        for forced, http, meta in (
            (Road.RELAY, None, {}),
            (Road.RELAY, wrong_key, {}),
            (Road.RELAY, relay, {"roads": ["channel"]}),
            (Road.SHARED, relay, {}),
        ):
            with pytest.raises(RoadFailed) as refused:
                await plan(forced, http, **meta)
            assert refused.value.code == "ROAD_UNAVAILABLE" and refused.value.detail
    finally:
        await relay.close()
        await wrong_key.close()


def test_part_length_is_whole_chunks() -> None:
    assert part_length(64, 1 << 20) == 61 * (1 << 20)
    assert part_length(1, 4096) == 244 * 4096
    assert part_length(1, 16 << 20) == 16 << 20  # at least one chunk


@pytest.mark.asyncio
async def test_sealed_chunks_resume_inside_a_chunk(tmp_path: Path) -> None:
    """``pieces(offset)`` of an upload resumed at any byte yields the object's bytes from
    there: the same as the whole object's suffix, and each chunk opens."""
    size, chunk = 5 * 4096 + 123, 4096
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    secret = RelaySecret.generate()
    cipher = ChunkCipher(secret, hashlib.sha256(data).hexdigest(), size, chunk)
    fd = os.open(path, os.O_RDONLY)
    try:
        whole = b"".join(
            [piece async for piece in sealed_chunks(fd, cipher, 0, cipher.chunk_count)]
        )
        sealed = chunk + TAG_BYTES
        opened = [
            cipher.open(index, whole[index * sealed : (index + 1) * sealed])
            for index in range(cipher.chunk_count)
        ]
        assert b"".join(opened) == data
        for skip in (0, 1, 4111, sealed - 1):
            tail = [piece async for piece in sealed_chunks(fd, cipher, 2, 6, skip)]
            assert b"".join(tail) == whole[2 * sealed + skip :]
        path.write_bytes(data[:-1])  # the file changed under us: refused, not sent short
        with pytest.raises(OSError, match="changed"):
            _ = [piece async for piece in sealed_chunks(fd, cipher, 0, cipher.chunk_count)]
    finally:
        os.close(fd)


def test_send_result_names_the_roads() -> None:
    def result(status: str, *roads: RoadChange, sent: int = 0, relayed: int = 0) -> SendResult:
        return SendResult(SendEnded(status, "ab" * 32), 100, sent, 2.0, relayed, roads)

    relay, channel = RoadChange("relay"), RoadChange("channel", "relay", 48_000_000, "X")
    assert result("exists").road == "stored"
    assert result("received", channel, sent=100).road == "channel"
    assert result("received", relay, relayed=100).road == "relay"
    both = result("received", relay, channel, sent=40, relayed=60)
    assert (both.road, both.bytes_moved, both.mb_per_s) == ("relay+channel", 100, 50e-6)
    assert str(relay) == "road: relay"
    assert str(channel) == "relay -> channel at 48.0 MB: X"


def test_trace_hides_the_secrets_of_a_relay_part() -> None:
    frame = "RELAY_PART::" + "ab" * 32 + "::0::1048576::1048576::KEY::NONCE::" + "c" * 32 + "::TOK"
    shown = shown_frame(frame)
    assert shown == "RELAY_PART::" + "ab" * 32 + "::0::1048576::...<hidden>"
    assert "KEY" not in shown and "TOK" not in shown
    assert shown_frame("FILE_READY::0") == "FILE_READY::0"
    assert shown_frame(b"abc") == "<binary 3 bytes>"


def test_road_failed_names_the_road_and_code() -> None:
    error = RoadFailed("ROAD_UNAVAILABLE", "the worker offers no relay road", road="relay")
    assert str(error) == "road relay failed: ROAD_UNAVAILABLE: the worker offers no relay road"
    assert asyncio.iscoroutinefunction(plan_road)


def test_the_progress_line_names_the_road_and_its_change(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from rtc_worker.cli_output import Progress

    bars = Progress(disabled=False)
    progress, took = bars.callback("upload"), bars.road_callback("upload")
    took(RoadChange("relay"))
    progress(0, 96_000_000)
    progress(48_000_000, 96_000_000)
    took(RoadChange("channel", "relay", 48_000_000, "RELAY_UNREACHABLE"))
    progress(96_000_000, 96_000_000)
    bars.close()
    err = capsys.readouterr().err
    assert "upload relay" in err and "upload channel" in err
    assert "upload: relay -> channel at 48.0 MB: RELAY_UNREACHABLE" in err
    assert "B/s" in err
    assert Progress(disabled=True).road_callback("upload") is None


@pytest.mark.asyncio
async def test_a_chunk_is_never_sealed_again_from_a_changed_file(tmp_path: Path) -> None:
    """A tus upload resumed inside a chunk seals that chunk again under the same key
    and nonce: when the file changed in place since it was opened (same size), the
    resumed pieces are refused (FILE_CHANGED) and no second ciphertext of the chunk
    goes out, so the service never holds two plaintexts sealed under one nonce."""
    size, chunk = 6 * 4096, 4096
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    cipher = ChunkCipher(RelaySecret.generate(), hashlib.sha256(data).hexdigest(), size, chunk)
    fd = os.open(path, os.O_RDWR)
    try:
        identity = file_identity(fd)
        first = [p async for p in sealed_chunks(fd, cipher, 0, 6, identity=identity)]
        assert len(b"".join(first)) == 6 * (chunk + TAG_BYTES)
        os.pwrite(fd, b"\xff" * 16, 2 * chunk + 100)  # edited in place: the size is the same
        resumed: list[bytes] = []
        with pytest.raises(FileChangedError, match="changed"):
            async for piece in sealed_chunks(fd, cipher, 2, 6, 50, identity=identity):
                resumed.append(piece)
        assert resumed == []
    finally:
        os.close(fd)


@pytest.mark.asyncio
async def test_an_unexpected_error_of_the_relay_sender_stops_the_road(
    storage_url: str, tmp_path: Path
) -> None:
    """The file a SafeRoot opener reaches is swapped for a symlink out of its root as
    the relay road starts: the opener raises StorageError (no OSError). The sender stops
    the road (RELAY_STOP) with INTERNAL_ERROR; before, its task ended silently and the
    sender waited for RELAY_ENDED forever."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "big.bin").write_bytes(BIG)
    (tmp_path / "elsewhere").write_bytes(BIG)
    conn = client()
    conn.send_file(SendFile(BIG_META.name, len(BIG), BIG_SHA), road=Road.RELAY, fallback=False)
    conn.drain()
    assert one(feed(conn, "FILE_READY::0"), RelayFrom).offset == 0
    safe = SafeRoot(root)
    (root / "big.bin").unlink()
    (root / "big.bin").symlink_to(tmp_path / "elsewhere")
    http = RelayHttp(storage_url, KEY)
    woken = asyncio.Event()

    async def wake() -> None:
        woken.set()

    sender = RelaySender(
        conn, http, lambda: safe.open_file(("big.bin",)), BIG_SHA, len(BIG),
        chunk_size=4096, part_bytes=4096, wake=wake,
    )  # fmt: skip
    try:
        sender.start(0)
        async with asyncio.timeout(10):
            await woken.wait()
        assert sender.failure == "INTERNAL_ERROR"
        assert conn.sender.state is SenderState.RELAY_STOPPING
        assert sends(conn.drain()) == [RelayStop(BIG_SHA)]
    finally:
        await sender.discard()
        await http.close()
