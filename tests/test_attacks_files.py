"""Attacks on the files of a shared-storage job, end to end: a real worker, real aiortc
peers on loopback, a real job command, real files.

The attacker is another user of the shared storage (a lab member with write access to
the folders involved). Each test is written as the attacker's steps; the assertion is
that nothing from outside the shared root reaches the job or the results: a refusal with
its code, or the victim's own bytes."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from loguru import logger

from protocol import JobComplete, JobFailed, JobLog, PathError, PathReason, PathValidated
from rtc_worker.client import RTCClient
from rtc_worker.errors import InputHardLinked
from tests.conftest import make_zip, recv_until
from tests.zip_bombs import MiB, overlapping_zip

PY = sys.executable
pytestmark = pytest.mark.asyncio

SECRET = b"the key to another lab's data: outside the shared root\n"

#: A job that prints what it was given, waits for the test's signal (a file named
#: ``go`` in its output folder: the window in which the attacker swaps things), then
#: copies whatever its {input} leads to into the output folder, following every link.
JOB = """\
import os, shutil, sys, time
src, out = sys.argv[1], sys.argv[2]
print("input", src, flush=True)
deadline = time.monotonic() + 30
while not os.path.exists(os.path.join(out, "go")) and time.monotonic() < deadline:
    time.sleep(0.02)
os.remove(os.path.join(out, "go"))
if os.path.isdir(src):
    shutil.copytree(src, os.path.join(out, "copy"), symlinks=False)
else:
    shutil.copyfile(src, os.path.join(out, "copy.bin"))
print("copied", flush=True)
"""


@pytest.fixture
def secret(shared_root: Path) -> Path:
    """A file outside the shared root that the worker can read and the attacker cannot."""
    path = shared_root.parent / "private" / "secret.txt"
    path.parent.mkdir()
    path.write_bytes(SECRET)
    return path


@pytest.fixture
def job_command(tmp_path: Path) -> str:
    script = tmp_path / "job.py"
    script.write_text(JOB)
    return f"{PY} {script} {{input}} {{output}}"


def everything_under(folder: Path) -> Iterator[bytes]:
    """The bytes of every file under ``folder`` (links not followed)."""
    for path in folder.rglob("*"):
        if path.is_file() and not path.is_symlink():
            yield path.read_bytes()


async def start_job(conn: Any, job_id: str, input_path: str, output_path: str) -> str:
    """Validate both paths, start the job, wait for its first line; return that line."""
    conn.send(f"JOB_ID::{job_id}")
    conn.send(f"SHARED_INPUT_PATH::{input_path}")
    assert await conn.recv(10) == PathValidated("input")
    conn.send(f"SHARED_OUTPUT_PATH::{output_path}")
    assert await conn.recv(10) == PathValidated("output")
    conn.send("JOB_START")
    first = await recv_until(conn, (JobLog, JobFailed))
    assert isinstance(first, JobLog), first
    return first.line


@pytest.mark.parametrize("swapped", ["file", "folder"])
async def test_an_input_swapped_for_a_symlink_while_the_job_runs_is_never_read(
    start_worker: Any,
    client: RTCClient,
    shared_root: Path,
    secret: Path,
    job_command: str,
    swapped: str,
) -> None:
    victim = shared_root / "inputs" / "data.txt"
    victim.write_bytes(b"the victim's own bytes\n" * 1000)
    original = victim.read_bytes()
    await start_worker(shared_root=shared_root, job_command=job_command)
    conn = await client.connect("worker-1", raw=True)
    line = await start_job(conn, f"swap-{swapped}", "inputs/data.txt", "outputs/swap")
    # The job is running, past every check. The attacker swaps the input (or the folder
    # above it) for a symlink that leads to the secret.
    if swapped == "file":
        victim.unlink()
        victim.symlink_to(secret)
    else:
        (secret.parent / "data.txt").symlink_to(secret)
        (shared_root / "inputs").rename(shared_root / "inputs.old")
        (shared_root / "inputs").symlink_to(secret.parent, target_is_directory=True)
    (shared_root / "outputs" / "swap" / "go").touch()
    done = await recv_until(conn, (JobComplete, JobFailed))
    assert isinstance(done, JobComplete), done
    assert (shared_root / "outputs" / "swap" / "copy.bin").read_bytes() == original
    assert all(SECRET not in data for data in everything_under(shared_root / "outputs"))
    assert line.startswith("input /dev/fd/")  # the job held the file, not its path


async def test_a_folder_input_is_a_private_copy_the_attacker_cannot_reach(
    start_worker: Any, client: RTCClient, shared_root: Path, secret: Path, job_command: str
) -> None:
    folder = shared_root / "inputs" / "dataset"
    (folder / "part").mkdir(parents=True)
    (folder / "a.csv").write_bytes(b"a,b\n1,2\n")
    (folder / "part" / "b.csv").write_bytes(b"c,d\n3,4\n")
    (folder / "planted").symlink_to(secret)  # planted before: a link is never copied
    await start_worker(shared_root=shared_root, job_command=job_command)
    conn = await client.connect("worker-1", raw=True)
    line = await start_job(conn, "swap-dir", "inputs/dataset", "outputs/dir")
    (folder / "a.csv").unlink()
    (folder / "a.csv").symlink_to(secret)
    (folder / "part").rename(shared_root / "part.old")
    (folder / "part").symlink_to(secret.parent, target_is_directory=True)
    (shared_root / "outputs" / "dir" / "go").touch()
    done = await recv_until(conn, (JobComplete, JobFailed))
    assert isinstance(done, JobComplete), done
    copy = shared_root / "outputs" / "dir" / "copy"
    assert sorted(str(p.relative_to(copy)) for p in copy.rglob("*") if p.is_file()) == [
        "a.csv",
        "part/b.csv",
    ]
    assert (copy / "a.csv").read_bytes() == b"a,b\n1,2\n"
    assert all(SECRET not in data for data in everything_under(shared_root / "outputs"))
    assert ".rtc-work" in line  # {input} was the worker's copy, not the shared folder


async def test_results_packed_while_a_subfolder_flips_to_a_symlink_hold_nothing_from_outside(
    start_worker: Any, client: RTCClient, shared_root: Path, secret: Path, tmp_path: Path
) -> None:
    script = tmp_path / "results.py"
    script.write_text(
        "import os, sys\nout = sys.argv[1]\nos.makedirs(os.path.join(out, 'sub'))\n"
        "for i in range(30):\n"
        "    open(os.path.join(out, 'sub', f'r{i}.bin'), 'wb').write(os.urandom(30000))\n"
        "open(os.path.join(out, 'top.txt'), 'w').write('done')\n"
    )
    await start_worker(shared_root=shared_root, job_command=f"{PY} {script} {{output}}")
    make_zip(shared_root / "inputs" / "in.zip", {"x.txt": b"x"})
    result = await client.submit_shared("worker-1", "inputs/in.zip", "outputs/res", job_id="res")
    assert result.file_count == 31
    sub = shared_root / "outputs" / "res" / "sub"
    aside = shared_root / "aside"  # where the attacker keeps the real folder meanwhile
    stop = threading.Event()

    def flip() -> None:  # the attacker, as fast as it can
        while not stop.is_set():
            sub.rename(aside)
            sub.symlink_to(secret.parent, target_is_directory=True)
            sub.unlink()
            aside.rename(sub)

    flipper = threading.Thread(target=flip)
    flipper.start()
    try:
        conn = await client.connect("worker-1")
        for attempt in range(10):
            _received, path = await conn.download_results("res", tmp_path / f"got{attempt}")
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
                assert "top.txt" in names
                assert set(names) <= {"top.txt", *(f"sub/r{i}.bin" for i in range(30))}
                assert all(SECRET not in archive.read(name) for name in names)
    finally:
        stop.set()
        await asyncio.to_thread(flipper.join)
    # And when the swap is in place before the request, the results hold the rest.
    sub.rename(aside)
    sub.symlink_to(secret.parent, target_is_directory=True)
    _received, path = await conn.download_results("res", tmp_path / "last")
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["top.txt"]


async def test_a_hard_link_to_an_outside_file_is_refused_with_its_code(
    start_worker: Any, client: RTCClient, shared_root: Path, secret: Path
) -> None:
    """The attacker links the secret into the shared root (same filesystem) and asks a
    job to read it: refused at validation, before anything is read."""
    os.link(secret, shared_root / "inputs" / "innocent.txt")
    await start_worker(shared_root=shared_root)
    with pytest.raises(InputHardLinked) as info:
        await client.submit_shared("worker-1", "inputs/innocent.txt", "outputs/h")
    assert info.value.kind is PathReason.HARD_LINKED
    assert info.value.reason == "Hard-linked file refused: inputs/innocent.txt"
    conn = await client.connect("worker-1", raw=True)
    conn.send("SHARED_INPUT_PATH::inputs/innocent.txt")
    assert await conn.recv(10) == PathError("Hard-linked file refused: inputs/innocent.txt")
    assert not (shared_root / "outputs" / "h").exists()


async def test_a_hard_link_planted_in_the_output_is_not_collected(
    start_worker: Any, client: RTCClient, shared_root: Path, secret: Path, tmp_path: Path
) -> None:
    """The attacker plants a hard link to the secret in a job's output folder while the
    job runs: it is neither counted in JOB_COMPLETE nor packed in the results."""
    script = tmp_path / "planted.py"
    script.write_text(
        "import os, sys, time\nout = sys.argv[1]\nprint('ready', flush=True)\n"
        "open(os.path.join(out, 'mine.txt'), 'w').write('job output')\n"
        "while not os.path.exists(os.path.join(out, 'go')):\n    time.sleep(0.02)\n"
        "os.remove(os.path.join(out, 'go'))\n"
    )
    await start_worker(shared_root=shared_root, job_command=f"{PY} {script} {{output}}")
    make_zip(shared_root / "inputs" / "in.zip", {"x.txt": b"x"})
    conn = await client.connect("worker-1", raw=True)
    assert await start_job(conn, "planted", "inputs/in.zip", "outputs/p") == "ready"
    os.link(secret, shared_root / "outputs" / "p" / "planted.txt")
    (shared_root / "outputs" / "p" / "go").touch()
    done = await recv_until(conn, (JobComplete, JobFailed))
    assert isinstance(done, JobComplete) and done.file_count == 1
    await conn.close()
    channel = await client.connect("worker-1")
    _received, path = await channel.download_results("planted", tmp_path / "got")
    with zipfile.ZipFile(path) as archive:
        assert archive.namelist() == ["mine.txt"]


async def test_the_operator_may_allow_hard_links(
    start_worker: Any, client: RTCClient, shared_root: Path
) -> None:
    (shared_root / "inputs" / "a.txt").write_text("data")
    os.link(shared_root / "inputs" / "a.txt", shared_root / "inputs" / "b.txt")
    await start_worker(shared_root=shared_root, allow_hardlinks=True)
    result = await client.submit_shared("worker-1", "inputs/b.txt", "outputs/ok")
    assert result.file_count == 1


@pytest.fixture(scope="module")
def lying_zip() -> bytes:
    """1.1 MB; ten members sharing one deflate stream of 1 GiB of zeros, each declaring
    ratio 100 (the central directory understates what the archive expands to)."""
    return overlapping_zip(1 << 30, members=10, declared_ratio=100)


async def test_the_lying_zip_is_refused_at_the_real_cap_with_nothing_left(
    start_worker: Any, client: RTCClient, shared_root: Path, lying_zip: bytes
) -> None:
    (shared_root / "inputs" / "lying.zip").write_bytes(lying_zip)
    assert len(lying_zip) < 1.1e6
    messages: list[str] = []
    sink = logger.add(lambda m: messages.append(str(m)), level="WARNING")
    work = shared_root / ".rtc-work"
    peak = 0
    sampling = True

    def sample() -> None:  # the disk used under the work folder, while extracting
        nonlocal peak
        while sampling:
            try:
                used = sum(p.stat().st_size for p in work.rglob("*") if p.is_file())
            except OSError:  # a folder or file removed while listing
                continue
            peak = max(peak, used)

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        await start_worker(shared_root=shared_root)  # the default caps: ratio 200
        conn = await client.connect("worker-1", raw=True)
        conn.send("SHARED_INPUT_PATH::inputs/lying.zip")
        assert await conn.recv(10) == PathValidated("input")  # the declared sizes pass
        conn.send("SHARED_OUTPUT_PATH::outputs/bomb")
        assert await conn.recv(10) == PathValidated("output")
        conn.send("JOB_START")
        done = await recv_until(conn, (JobComplete, JobFailed), timeout=60)
    finally:
        sampling = False
        await asyncio.to_thread(sampler.join)
        logger.remove(sink)
    assert isinstance(done, JobFailed)
    assert done.reason == "File corrupted or invalid format: inputs/lying.zip"
    assert any("too_large" in m and "archive of" in m for m in messages), messages
    assert peak <= 200 * len(lying_zip) + 2 * MiB  # bounded by the real ratio, not 1 GiB
    assert [p for p in work.rglob("*") if p.is_file()] == []
    assert not any((shared_root / "outputs" / "bomb").iterdir())
