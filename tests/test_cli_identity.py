"""``rtc-client`` and identities: a pinned worker key that does not match is refused
loudly, before any job frame; the known-workers file records the first key."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import REPO, Signaling

pytestmark = pytest.mark.asyncio

PY = sys.executable
CLIENT = ["-c", "import sys; from rtc_worker.cli import client_main; sys.exit(client_main())"]


def submit(signaling: Signaling, config: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_CONFIG_HOME": str(config)}
    argv = [PY, *CLIENT, "submit", "--signaling-url", signaling.url, "--worker", "worker-1",
            "--input", "inputs/package.zip", "--output", "outputs/cli-1", "--no-progress",
            "--trace", *extra]  # fmt: skip
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60, env=env)


async def test_a_wrong_worker_key_is_refused_before_any_job_frame(
    signaling: Signaling, start_worker: Any, shared_root: Path, package: Path, tmp_path: Path
) -> None:
    worker = await start_worker(shared_root=shared_root)
    config = tmp_path / "config"
    wrong = await asyncio.to_thread(submit, signaling, config, "--worker-key", "ab" * 32)
    assert wrong.returncode == 4, wrong.stderr
    assert "WORKER KEY CHANGED" in wrong.stderr and worker.identity.fingerprint in wrong.stderr
    assert "AUTH_HELLO" in wrong.stdout and "SHARED_INPUT_PATH" not in wrong.stdout
    assert not (shared_root / "outputs" / "cli-1").exists()
    # The right key, then trust on first use: the key is recorded and the job runs.
    right = await asyncio.to_thread(
        submit, signaling, config, "--worker-key", worker.identity.fingerprint
    )
    assert right.returncode == 0, right.stderr
    first_use = await asyncio.to_thread(submit, signaling, config)
    assert first_use.returncode == 0, first_use.stderr
    known = (config / "rtc-client" / "known_workers").read_text()
    assert known == f"worker-1 {worker.identity.fingerprint}\n"
    # A damaged known-workers file is a usage error, never trust widened.
    (config / "rtc-client" / "known_workers").write_text("worker-1 not-a-fingerprint\n")
    damaged = await asyncio.to_thread(submit, signaling, config)
    assert damaged.returncode == 2 and "known_workers:1" in damaged.stderr
