"""Configuration from flags and environment, shared-root detection, job argv, the CLIs
and the demo as a person runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from rtc_worker.jobs import build_argv
from rtc_worker.settings import DEFAULT_SHARED_ROOT_CANDIDATES, ClientSettings, WorkerSettings
from tests.conftest import REPO


def test_environment_variables_configure_the_worker(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("SHARED_STORAGE_ROOT", str(tmp_path))
    monkeypatch.setenv("RTC_SIGNALING_URL", "ws://example.invalid:1/ws")
    monkeypatch.setenv("RTC_WORKER_ID", "gpu-7")
    monkeypatch.setenv("RTC_SIGNALING_TOKEN", "t0k")
    monkeypatch.setenv("RTC_JOB_COMMAND", "train {input} {output}")
    monkeypatch.setenv("RTC_ICE_SERVERS", "stun:stun.example:3478, turn:turn.example:3478")
    settings = WorkerSettings()
    assert settings.shared_root == tmp_path
    assert settings.signaling_url == "ws://example.invalid:1/ws"
    assert (settings.peer_id, settings.token) == ("gpu-7", "t0k")
    assert settings.job_command == "train {input} {output}"
    assert settings.ice_servers == ["stun:stun.example:3478", "turn:turn.example:3478"]
    assert settings.detect_shared_root() == tmp_path.resolve()


def test_flags_override_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("RTC_WORKER_ID", "from-env")
    monkeypatch.setenv("SHARED_STORAGE_ROOT", "/nonexistent")
    settings = WorkerSettings(peer_id="from-flag", shared_root=tmp_path)
    assert settings.peer_id == "from-flag"
    assert settings.shared_root == tmp_path


def test_shared_root_detection_uses_the_first_existing_candidate(tmp_path: Path) -> None:
    assert "/home/jovyan/vast/amick" in DEFAULT_SHARED_ROOT_CANDIDATES
    second = tmp_path / "second"
    second.mkdir()
    settings = WorkerSettings(
        shared_root_candidates=[str(tmp_path / "missing"), str(second), str(tmp_path)]
    )
    assert settings.detect_shared_root() == second.resolve()
    assert (
        WorkerSettings(shared_root_candidates=[str(tmp_path / "no")]).detect_shared_root() is None
    )


def test_a_configured_root_that_is_missing_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a directory"):
        WorkerSettings(shared_root=tmp_path / "missing").detect_shared_root()


def test_invalid_settings_are_refused() -> None:
    with pytest.raises(ValueError):
        WorkerSettings(peer_id="has space")
    with pytest.raises(ValueError):
        ClientSettings(reply_timeout_s=0)


def test_job_argv_is_split_before_substitution(tmp_path: Path) -> None:
    odd = tmp_path / "in put; rm -rf $HOME.zip"
    argv = build_argv(
        "python train.py --data {input} --work={workdir} -o '{output}/x y'",
        input_path=odd,
        workdir=tmp_path / "w",
        output=tmp_path / "o",
    )
    assert argv == [
        "python",
        "train.py",
        "--data",
        str(odd),
        f"--work={tmp_path / 'w'}",
        "-o",
        f"{tmp_path / 'o'}/x y",
    ]
    with pytest.raises(ValueError):
        build_argv("  ", input_path=odd, workdir=odd, output=odd)


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], capture_output=True, text=True, timeout=timeout, cwd=REPO
    )


def test_help_texts_name_the_environment_variables() -> None:
    serve = run("-m", "rtc_worker", "serve", "--help")
    assert serve.returncode == 0
    for name in (
        "SHARED_STORAGE_ROOT",
        "RTC_SIGNALING_TOKEN",
        "RTC_JOB_COMMAND",
        "RTC_ICE_SERVERS",
    ):
        assert name in serve.stdout
    client = run("-c", "from rtc_worker.cli import client_main; client_main()", "submit", "--help")
    assert client.returncode == 0 and "--input" in client.stdout


def test_client_cli_reports_an_unreachable_server() -> None:
    result = run(
        "-c",
        "import sys; from rtc_worker.cli import client_main; sys.exit(client_main())",
        "workers",
        "--signaling-url",
        "ws://127.0.0.1:9/ws",
    )
    assert result.returncode == 3
    assert "connection failed" in result.stderr


def test_worker_cli_refuses_a_missing_shared_root(tmp_path: Path) -> None:
    result = run("-m", "rtc_worker", "serve", "--shared-root", str(tmp_path / "nope"))
    assert result.returncode == 2
    assert "not a directory" in result.stderr


def test_demo_runs_end_to_end_in_separate_processes() -> None:
    result = run("-m", "rtc_worker", "demo", "--size-mb", "1", timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "-> SHARED_INPUT_PATH::inputs/train_package.zip" in out
    assert "<- PATH_VALIDATED::input" in out
    assert "<- JOB_COMPLETE::demo-001::outputs/demo-run::1::" in out
    assert "image/png" in out and "audio/x-wav" in out
    # job 2 sent the package over the channel, job 3 found it by its content
    assert "job 2: input train_package.zip: received, " in out
    assert "job 3: input train_package.zip: exists, 0 of " in out
    assert "-> FILE_META::train_package.zip::" in out and "<- FILE_READY::0" in out


def test_client_cli_json_output(tmp_path: Path) -> None:
    """`rtc-client submit --json` against a real server and worker process."""
    from tests.conftest import PACKAGE, free_port, make_zip, worker_subprocess

    root = tmp_path / "shared"
    make_zip(root / "in" / "p.zip", PACKAGE)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "signaling", "--port", str(port)],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"ws://127.0.0.1:{port}/ws"
    worker = None
    try:
        cli = ["-c", "import sys; from rtc_worker.cli import client_main; sys.exit(client_main())"]
        import time

        deadline = time.monotonic() + 15
        while run(*cli, "workers", "--signaling-url", url).returncode != 0:
            assert time.monotonic() < deadline, "signaling server did not start"
            time.sleep(0.2)
        worker = worker_subprocess(url, "cli-worker", root)
        result = run(
            *cli,
            "submit",
            "--signaling-url",
            url,
            "--worker",
            "cli-worker",
            "--input",
            "in/p.zip",
            "--output",
            "out",
            "--wait",
            "20",
            "--json",
        )
        assert result.returncode == 0, result.stderr
        data = json.loads(result.stdout)
        assert data["file_count"] == 1 and data["output_path"] == "out"
        refused = run(
            *cli,
            "submit",
            "--signaling-url",
            url,
            "--worker",
            "cli-worker",
            "--input",
            "../etc/passwd",
            "--output",
            "out",
        )
        assert refused.returncode == 1
        assert "Path outside shared storage: ../etc/passwd" in refused.stderr
        listed = run(*cli, "workers", "--signaling-url", url, "--json")
        assert json.loads(listed.stdout)[0]["peer_id"] == "cli-worker"
    finally:
        for proc in (worker, server):
            if proc is not None:
                proc.terminate()
                proc.wait(10)


def test_placeholders_are_substituted_once(tmp_path: Path) -> None:
    """A path that contains a placeholder's text is passed on as it is."""
    tricky = tmp_path / "x{output}"
    argv = build_argv(
        "run {input} {output}", input_path=tricky, workdir=tmp_path, output=tmp_path / "o"
    )
    assert argv == ["run", str(tricky), str(tmp_path / "o")]
