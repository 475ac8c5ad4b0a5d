"""Configuration from flags and environment, shared-root detection, job argv, the CLIs
and the demo as a person runs it.

The command lines are generated from the settings models. Here: usage errors exit
with 2, ``--version``, and ``--help`` of every program and subcommand showing every
flag with its description and variables (the programs run as processes where they
must start). What each flag and variable means: ``test_config_flags.py``.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from rtc_worker.cli import client_main, main
from rtc_worker.client_settings import (
    ClientCli,
    ClientSettings,
)
from rtc_worker.jobs import build_argv
from rtc_worker.settings import (
    DEFAULT_SHARED_ROOT_CANDIDATES,
    WorkerCli,
    WorkerSettings,
)
from rtc_worker.settings_sources import CommandLine
from rtc_worker.settings_sources import CommandLine as SignalingCommandLine
from signaling.__main__ import main as signaling_main
from signaling.config import SignalingCli
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
    assert (settings.peer_id, settings.token_value) == ("gpu-7", "t0k")
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
    server = run("-m", "signaling", "--help")
    assert server.returncode == 0
    for name in ("--storage-path", "STORAGE_PATH", "--no-auto-delete", "AUTO_DELETE", "PORT"):
        assert name in server.stdout


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


@pytest.mark.live
def test_demo_serve_keeps_the_page_up_until_stopped() -> None:
    """``demo --serve``: after the jobs the page is served at the printed address, the
    printed token admits a peer, and SIGTERM (like Ctrl-C) stops everything with 0."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtc_worker", "demo", "--size-mb", "1", "--serve"],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines: list[str] = []
        while not any(line.strip().startswith("worker ") for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)[-3000:]
            lines.append(line)
        out = "".join(lines)
        url = re.search(r"open\s+(http://127\.0\.0\.1:\d+/)", out)
        token = re.search(r"token\s+(\S+)", out)
        assert url and token, out[-2000:]
        with urllib.request.urlopen(url.group(1), timeout=10) as response:
            assert response.status == 200
            assert "text/html" in response.headers["Content-Type"]
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=30)
        assert proc.returncode == 0, rest[-3000:]
        assert "stopping" in rest
        assert token.group(1) not in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_demo_runs_end_to_end_in_separate_processes() -> None:
    result = run("-m", "rtc_worker", "demo", "--size-mb", "1", timeout=90)
    assert result.returncode == 0, result.stderr[-3000:]
    out = result.stdout
    assert "-> SHARED_INPUT_PATH::inputs/train_package.zip" in out
    assert "<- PATH_VALIDATED::input" in out
    assert "<- JOB_COMPLETE::demo-001::outputs/demo-run::1::" in out
    assert "image/png" in out and "audio/x-wav" in out
    # job 2 sent the package over the channel, job 3 found it by its content, job 4 sent
    # another package by the road the client picked: the relay road
    assert "job 2: input train_package.zip: received, " in out and " by channel, " in out
    assert "job 3: input train_package.zip: exists, 0 of " in out
    assert "(the worker holds the content)" in out
    assert "job 4: input train_package_2.zip: received, " in out and " by relay, " in out
    assert "road (the worker's JOB_METRICS): relay" in out
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


# ------------------------------------------------------------- generated command lines


def test_usage_errors_exit_with_2(capsys: pytest.CaptureFixture[str]) -> None:
    for program, argv in [
        (main, []),
        (main, ["serve", "--no-such-flag"]),
        (client_main, ["submit"]),
        (client_main, []),
        (client_main, ["download", "--job-id", "j"]),
        (signaling_main, ["--no-such-flag"]),
    ]:
        with pytest.raises(SystemExit) as exited:
            program(argv)
        assert exited.value.code == 2, argv
        assert "usage:" in capsys.readouterr().err
    for program, argv, message in [
        (main, ["serve", "--peer-id", "has space"], "rtc-worker: invalid configuration"),
        (main, ["serve", "--max-file-size", "big"], "rtc-worker: invalid configuration"),
        (client_main, ["workers", "--reply-timeout-s", "0"], "rtc-client: invalid configuration"),
        (client_main, ["submit", "--worker", "w"], "rtc-client submit: give --input and"),
        (client_main, ["submit", "--worker", "w", "--input", "i"], "give --input and --output"),
        (signaling_main, ["--port", "http"], "rtc-signaling: invalid settings"),
        (signaling_main, ["--log-level", "loud"], "rtc-signaling: invalid settings"),
    ]:
        assert program(argv) == 2, argv
        assert message in capsys.readouterr().err


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    from rtc_worker import __version__

    for program, name in [(main, "rtc-worker"), (client_main, "rtc-client")]:
        assert program(["--version"]) == 0
        assert capsys.readouterr().out == f"{name} {__version__}\n"
    assert signaling_main(["--version"]) == 0
    assert capsys.readouterr().out == f"rtc-signaling {__version__}\n"


def _squeezed(text: str) -> str:
    return re.sub(r"\s+", "", text)


@pytest.mark.parametrize(
    ("program", "argv", "line", "command"),
    [
        (main, ["serve"], CommandLine(WorkerCli, "rtc-worker"), "serve"),
        (main, ["demo"], CommandLine(WorkerCli, "rtc-worker"), "demo"),
        (client_main, ["workers"], CommandLine(ClientCli, "rtc-client"), "workers"),
        (client_main, ["submit"], CommandLine(ClientCli, "rtc-client"), "submit"),
        (client_main, ["download"], CommandLine(ClientCli, "rtc-client"), "download"),
        (signaling_main, [], SignalingCommandLine(SignalingCli, "rtc-signaling"), ""),
    ],
)
def test_help_lists_every_flag_with_its_description(
    capsys: pytest.CaptureFixture[str],
    program: Callable[[list[str]], int],
    argv: list[str],
    line: CommandLine[Any],
    command: str,
) -> None:
    with pytest.raises(SystemExit) as exited:
        program([*argv, "--help"])
    assert exited.value.code == 0
    shown = _squeezed(capsys.readouterr().out)
    checked = 0
    for dest, flags in line.flags.items():
        if dest.count(".") != bool(command) or not dest.startswith(command):
            continue
        found = line.field_at(dest)
        assert found is not None, dest
        description = found[0].model_fields[found[1]].description
        assert description, f"{dest} has no description"
        assert _squeezed(description) in shown, dest
        for flag in flags:
            assert flag in shown, flag
        for variable in line.variables[dest]:
            assert variable in shown, variable
        checked += 1
    assert checked >= 3, "too few flags found"


def test_root_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    programs = [(main, ("serve", "demo")), (client_main, ("workers", "submit", "download"))]
    for program, commands in programs:
        with pytest.raises(SystemExit) as exited:
            program(["--help"])
        assert exited.value.code == 0
        out = capsys.readouterr().out
        assert "--version" in out
        for name in commands:
            assert name in out


def test_no_hand_written_parser_is_left() -> None:
    for package in ("rtc_worker", "signaling", "protocol"):
        for path in (REPO / package).rglob("*.py"):
            assert "argparse" not in path.read_text("utf-8"), path
