"""One fuzz run against one worker (:class:`Fuzzer`): set-up, the raw connection and
its reader, paced sending, and the checks after each batch (alive, job, outside,
process)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import json
import shutil
import subprocess
import sys
import time
from collections import deque
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from fuzz_fixtures import MARKER, Fixtures, diff_snapshots, make_fixtures, snapshot
from fuzz_frames import Frame, iter_frames, materialize, show
from fuzz_processes import clean_env, free_port, spawn, stop_process
from fuzz_report import CheckFailed, Stats

#: How long the job check retries WORKER_BUSY (seconds).
BUSY_RETRY_S = 30.0
#: Sending pauses above HIGH_WATER bytes buffered on the channel until LOW_WATER.
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024


class Fuzzer:
    """One fuzz run against one worker."""

    def __init__(self, args: argparse.Namespace, tmp: Path, stats: Stats) -> None:
        self.args = args
        self.tmp = tmp
        self.stats = stats
        self.worker_id: str = args.worker
        self.url: str = args.signaling_url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}
        self.fixtures: Fixtures | None = None
        self.baseline: dict[str, Any] | None = None
        self.excluded = {"root", "data", "client-cache", "logs", "signaling"}
        self.client: Any = None
        self.conn: Any = None
        self.reader: asyncio.Task[None] | None = None
        self.last_frames: deque[str] = deque(maxlen=8)
        self.batch = 0
        self.overloaded = False
        self.leaks: list[str] = []
        self.probe: tuple[str, asyncio.Future[None]] | None = None

    # -------------------------------------------------------------- set-up

    async def start_processes(self) -> None:
        logs = self.tmp / "logs"
        logs.mkdir()
        port = free_port()
        self.url = f"ws://127.0.0.1:{port}/ws"
        env = clean_env()
        # The server's peer-id bindings live and die with this run: the worker's key is
        # new every run, and a binding kept in the user's data folder would refuse it.
        env["RTC_SIGNALING_DATA_DIR"] = str(self.tmp / "signaling")
        self.processes["signaling"] = spawn(
            [sys.executable, "-m", "signaling", "--port", str(port), "--log-level", "WARNING"],
            env,
            logs / "signaling.log",
        )
        deadline = time.monotonic() + 30
        while True:
            if self.processes["signaling"].poll() is not None:
                raise RuntimeError("the signaling server exited at start (see logs/signaling.log)")
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.close()
                break
            if time.monotonic() > deadline:
                raise RuntimeError("the signaling server did not listen within 30 s")
            await asyncio.sleep(0.1)
        env["RTC_DATA_DIR"] = str(self.tmp / "data")
        argv = [sys.executable, "-m", "rtc_worker", "serve", "--signaling-url", self.url]
        argv += ["--peer-id", self.worker_id, "--shared-root", str(self.tmp / "root")]
        self.processes["worker"] = spawn([*argv, "--log-level", "INFO"], env, logs / "worker.log")

    def new_client(self) -> Any:
        from rtc_worker.client import RTCClient

        return RTCClient(
            self.url,
            self.args.token,
            reply_timeout=30.0,
            connect_timeout=30.0,
            cache_dir=self.tmp / "client-cache",
            # the client's key and its pin of this run's worker live and die with the run
            key_file=self.tmp / "client-cache" / "identity.key",
        )

    async def setup(self) -> None:
        own = self.args.signaling_url is None
        root = self.tmp / "root" if own else self.args.shared_root
        (self.tmp / "data").mkdir()
        (self.tmp / "client-cache").mkdir()
        self.fixtures = make_fixtures(self.tmp, root, own_root=own)
        if own:
            await self.start_processes()
        self.baseline = snapshot(self.tmp, self.excluded)
        self.client = self.new_client()
        try:
            await self.client.wait_for_worker(self.worker_id, 60)
        except TimeoutError:
            raise RuntimeError(f"worker {self.worker_id} did not register within 60 s") from None
        await self.reconnect(count=False)

    async def reconnect(self, *, count: bool = True) -> None:
        old = self.conn
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader
        if old is not None:
            with contextlib.suppress(Exception):
                await old.close()
        if why := self.exited():
            raise CheckFailed("process", why)
        self.conn = await self.client.connect(self.worker_id, raw=True)
        self.overloaded = False
        self.reader = asyncio.create_task(self.read_loop(self.conn))
        if count:
            self.stats.reconnections += 1

    async def close(self) -> None:
        if self.reader is not None:
            self.reader.cancel()
            with contextlib.suppress(BaseException):
                await self.reader
        if self.client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.client.close(), 15)

    def stop_processes(self) -> None:
        for name in ("worker", "signaling"):
            proc = self.processes.get(name)
            if proc is not None:
                with contextlib.suppress(Exception):
                    stop_process(proc)

    # -------------------------------------------------------------- replies

    def anomaly(self, what: str) -> None:
        self.stats.anomalies.append(
            {
                "batch": self.batch,
                "reply": what,
                "last_frame": self.last_frames[-1] if self.last_frames else None,
            }
        )

    async def read_loop(self, conn: Any) -> None:
        from protocol import (
            Chunk,
            JobComplete,
            JobFailed,
            JobLog,
            PathError,
            ProtocolErrorFrame,
            TransferError,
        )
        from rtc_worker.client import WorkerProtocolError
        from rtc_worker.rtc import ChannelClosed

        while True:
            try:
                message = await conn.recv()
            except ChannelClosed:
                if not self.overloaded:
                    self.stats.drops_without_overloaded += 1
                return
            except WorkerProtocolError as exc:
                self.stats.replies["UNDECODABLE"] += 1
                self.anomaly(f"undecodable reply: {exc}")
                continue
            if isinstance(message, ProtocolErrorFrame):
                probe = self.probe
                if (
                    probe is not None
                    and message.code == "UNKNOWN_MESSAGE"
                    and f"'{probe[0]}'" in message.detail
                ):
                    if not probe[1].done():
                        probe[1].set_result(None)
                    continue
                self.stats.codes[f"PROTOCOL_ERROR:{message.code}"] += 1
                if message.code == "OVERLOADED":
                    self.overloaded = True
                if message.code == "INTERNAL_ERROR":
                    self.anomaly(f"PROTOCOL_ERROR::INTERNAL_ERROR::{message.detail}")
            elif isinstance(message, TransferError):
                self.stats.codes[f"TRANSFER_ERROR:{message.code}"] += 1
            elif isinstance(message, PathError):
                self.stats.codes[f"PATH_ERROR:{message.reason.split(':', 1)[0]}"] += 1
            elif isinstance(message, JobFailed):
                self.stats.codes[f"JOB_FAILED:{message.reason.split(':', 1)[0][:40]}"] += 1
                if "internal" in message.reason:
                    self.anomaly(f"JOB_FAILED::{message.job_id}::{message.reason}")
            elif isinstance(message, JobLog | JobComplete):
                text = message.line if isinstance(message, JobLog) else message.output_path
                if MARKER in text:
                    self.leaks.append(text[:200])
            elif isinstance(message, Chunk) and MARKER.encode() in message.data:
                # ZIP member names are stored as they are: a results ZIP packed a file
                # that only exists outside the root
                self.leaks.append(f"a results chunk names {MARKER}*")
            kind = "BINARY" if isinstance(message, Chunk) else message.TYPE
            self.stats.replies[kind] += 1

    # -------------------------------------------------------------- sending

    async def send(self, frame: Frame) -> None:
        """Send one frame, paced on the channel's buffer; reopen a dropped connection."""
        from rtc_worker.rtc import ChannelClosed

        assert self.fixtures is not None
        wire = materialize(frame, self.fixtures.outside, self.tmp)
        for attempt in range(2):
            if not self.conn.channel.is_open:
                await self.reconnect()
            try:
                self.conn.send(wire)
                break
            except ChannelClosed:
                if attempt:
                    raise
        if isinstance(wire, bytes):
            self.stats.frames_binary += 1
        else:
            self.stats.frames_text += 1
        self.last_frames.append(show(wire))
        await asyncio.sleep(0)
        channel = self.conn.channel.channel
        if channel.bufferedAmount > HIGH_WATER:
            deadline = time.monotonic() + 30
            while True:
                if channel.bufferedAmount <= LOW_WATER or channel.readyState != "open":
                    break
                if time.monotonic() > deadline:
                    raise CheckFailed("alive", "the send buffer did not drain within 30 s")
                await asyncio.sleep(0.01)

    # -------------------------------------------------------------- checks

    async def check_alive(self) -> None:
        """PING-{batch} must be answered UNKNOWN_MESSAGE within the probe timeout."""
        for attempt in range(2):
            token = f"PING-{self.batch}-{attempt}"
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.probe = (token, future)
            try:
                if not self.conn.channel.is_open:
                    await self.reconnect()
                self.conn.send(token)
                waiter = asyncio.ensure_future(future)
                assert self.reader is not None
                done, _ = await asyncio.wait(
                    {waiter, self.reader},
                    timeout=self.args.probe_timeout,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if waiter in done:
                    self.stats.checks_passed["alive"] += 1
                    return
                waiter.cancel()
                if not done:
                    raise CheckFailed(
                        "alive",
                        f"no answer to {token} within {self.args.probe_timeout:.0f} s",
                    )
                # the connection dropped while we waited: reopen it and probe again
            finally:
                self.probe = None
        raise CheckFailed("alive", "the connection dropped twice while probing")

    async def check_job(self) -> None:
        """A valid shared-storage job completes on a fresh connection, with the right manifest."""
        from rtc_worker.client import ClientError, WorkerBusy
        from rtc_worker.rtc import ChannelClosed

        output = f"outputs/check-{self.batch}"
        deadline = time.monotonic() + BUSY_RETRY_S
        client = self.new_client()
        try:
            while True:
                try:
                    result = await client.submit_shared(
                        self.worker_id, "inputs/package.zip", output, job_timeout=60
                    )
                    break
                except WorkerBusy as exc:
                    if time.monotonic() > deadline:
                        raise CheckFailed(
                            "job", f"WORKER_BUSY for over {BUSY_RETRY_S:.0f} s: {exc.detail}"
                        ) from None
                    with contextlib.suppress(ChannelClosed, AttributeError):
                        self.conn.send("JOB_CANCEL")
                    await asyncio.sleep(1)
                except (ClientError, ChannelClosed, TimeoutError) as exc:
                    raise CheckFailed("job", f"{type(exc).__name__}: {exc}".rstrip(": ")) from None
        finally:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.close(), 15)
        if result.file_count != 1 or result.output_path != output:
            raise CheckFailed(
                "job", f"JOB_COMPLETE named {result.output_path} with {result.file_count} file(s)"
            )
        assert self.fixtures is not None
        if self.fixtures.root is None or self.fixtures.expected is None:
            self.stats.checks_skipped["manifest"] += 1
        else:
            manifest_path = self.fixtures.root / output / "manifest.json"
            try:
                manifest = json.loads(manifest_path.read_text("utf-8"))
                listed = {e["path"]: (e["size"], e["sha256"]) for e in manifest["files"]}
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckFailed("job", f"{output}/manifest.json unreadable: {exc}") from None
            if listed != self.fixtures.expected:
                raise CheckFailed(
                    "job",
                    f"manifest lists {sorted(listed)}, expected {sorted(self.fixtures.expected)}"
                    " (or a sha256/size differs)",
                )
            shutil.rmtree(self.fixtures.root / output, ignore_errors=True)
        self.stats.checks_passed["job"] += 1

    def check_outside(self) -> None:
        """Nothing outside the root changed; no JOB_LOG named a file from outside."""
        assert self.fixtures is not None and self.baseline is not None
        if self.fixtures.root is None:
            self.stats.checks_skipped["outside"] += 1
            return
        changes = diff_snapshots(self.baseline, snapshot(self.tmp, self.excluded))
        if changes:
            self.stats.outside_writes += len(changes)
            raise CheckFailed("outside", "changed outside the root: " + "; ".join(changes[:10]))
        if self.leaks:
            raise CheckFailed("outside", f"a job read outside the root: {self.leaks[0]!r}")
        self.stats.checks_passed["outside"] += 1

    def exited(self) -> str | None:
        """Which started process exited, if any."""
        for name, proc in self.processes.items():
            if proc.poll() is not None:
                return f"the {name} exited with code {proc.returncode}"
        return None

    async def guarded(self, check: Coroutine[Any, Any, None]) -> None:
        """Run a check; a started process that exits meanwhile fails it at once."""
        task = asyncio.ensure_future(check)
        try:
            while not task.done():
                await asyncio.wait({task}, timeout=0.5)
                if not task.done() and (why := self.exited()):
                    raise CheckFailed("process", why)
            task.result()
        except CheckFailed as exc:
            why = self.exited()
            if why and exc.check != "process":
                raise CheckFailed("process", f"{why} ({exc.check}: {exc.detail})") from None
            raise
        finally:
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task

    async def check_process(self) -> None:
        """The worker process is alive (or, remote, still registered)."""
        if self.processes:
            if why := self.exited():
                raise CheckFailed("process", why)
        else:
            peers = await self.client.workers()
            if not any(peer.peer_id == self.worker_id for peer in peers):
                raise CheckFailed("process", f"worker {self.worker_id} is no longer registered")
        self.stats.checks_passed["process"] += 1

    # -------------------------------------------------------------- main loop

    async def run(self) -> None:
        await self.setup()
        frames = iter_frames(self.args.seed)
        remaining = self.args.frames
        while remaining > 0:
            self.batch += 1
            size = min(self.args.batch, remaining)
            for frame in itertools.islice(frames, size):
                await self.send(frame)
            remaining -= size
            self.stats.batches = self.batch
            await self.guarded(self.check_alive())
            await self.guarded(self.check_job())
            self.check_outside()
            await self.check_process()
            if not self.args.json and self.batch % 20 == 0:
                print(
                    f"  batch {self.batch}: {self.stats.frames_sent} frames, "
                    f"{sum(self.stats.replies.values())} replies",
                    file=sys.stderr,
                    flush=True,
                )

    def worker_log_tail(self, lines: int = 25) -> list[str]:
        path = self.tmp / "logs" / "worker.log"
        with contextlib.suppress(OSError):
            return path.read_text("utf-8", "replace").splitlines()[-lines:]
        return []
