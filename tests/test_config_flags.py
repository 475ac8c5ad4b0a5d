"""The generated command lines accept every spelling the hand-written ones did.

Real argument lists are parsed with the parsers pydantic-settings generates from the
settings models, in this process: one test per family of old flags, a flag over the
environment over the default, every variable the README documented, and the
canonical ``RTC_`` variable over an older name.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from rtc_worker.client_settings import (
    ClientCli,
    ClientCommand,
    ClientSettings,
    DownloadCommand,
    SubmitCommand,
    WorkersCommand,
)
from rtc_worker.settings import (
    DemoCommand,
    WorkerCli,
    WorkerSettings,
)
from rtc_worker.settings_sources import CommandLine
from rtc_worker.settings_sources import env_names as signaling_env_names
from rtc_worker.settings_sources import env_names as worker_env_names
from signaling.__main__ import settings_from_args
from signaling.config import SignalingCli

ALL_MODELS = (WorkerSettings, ClientSettings, DemoCommand, DownloadCommand, SubmitCommand)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No variable any setting reads is set, so defaults show through."""
    for model in ALL_MODELS:
        for name in model.model_fields:
            for variable in worker_env_names(model, name):
                monkeypatch.delenv(variable, raising=False)
    for name in SignalingCli.model_fields:
        for variable in signaling_env_names(SignalingCli, name):
            monkeypatch.delenv(variable, raising=False)
    return monkeypatch


def worker_command(*argv: str) -> object:
    line = CommandLine(WorkerCli, "rtc-worker")
    return line.command(line.parse(argv))


def client_command(*argv: str) -> object:
    line = CommandLine(ClientCli, "rtc-client")
    return line.command(line.parse(argv))


def test_serve_accepts_every_old_flag(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    serve = worker_command(
        "serve",
        "--signaling-url", "ws://signal.example:8765/ws",
        "--peer-id", "gpu-1",
        "--token", "t0k",
        "--shared-root", str(tmp_path),
        "--job-command", "python train.py {input} {output}",
        "--ice-server", "stun:stun.example:3478",
        "--ice-server", "turn:turn.example:3478",
        "--log-level", "DEBUG",
        "--storage-url", "http://127.0.0.1:8765",
        "--storage-api-key", "k3y",
    )  # fmt: skip
    assert isinstance(serve, WorkerSettings)
    assert serve.signaling_url == "ws://signal.example:8765/ws"
    assert (serve.peer_id, serve.token_value, serve.shared_root) == ("gpu-1", "t0k", tmp_path)
    assert serve.job_command == "python train.py {input} {output}"
    assert serve.ice_servers == ["stun:stun.example:3478", "turn:turn.example:3478"]
    assert (serve.log_level, serve.storage_url) == ("DEBUG", "http://127.0.0.1:8765")
    assert serve.storage_api_key_value == "k3y"


def test_every_worker_setting_has_a_generated_flag(clean_env: pytest.MonkeyPatch) -> None:
    serve = worker_command(
        "serve", "--zip-max-ratio", "50", "--keep-workdir", "--max-file-size", "1000",
        "--shared-root-candidates", "/a,/b", "--data-dir", "~/rtc-data",
    )  # fmt: skip
    assert isinstance(serve, WorkerSettings)
    assert (serve.zip_max_ratio, serve.keep_workdir, serve.max_file_size) == (50.0, True, 1000)
    assert serve.shared_root_candidates == ["/a", "/b"]
    assert serve.data_dir == Path.home() / "rtc-data"
    off = worker_command("serve", "--no-keep-workdir")
    assert isinstance(off, WorkerSettings) and off.keep_workdir is False


def test_ice_servers_repeat_or_comma_separate(clean_env: pytest.MonkeyPatch) -> None:
    serve = worker_command("serve", "--ice-server", "stun:a", "--ice-servers", "stun:b,turn:c")
    assert isinstance(serve, WorkerSettings)
    assert serve.ice_servers == ["stun:a", "stun:b", "turn:c"]
    clean_env.setenv("RTC_ICE_SERVERS", "stun:env-1, stun:env-2")
    from_env = client_command("workers")
    assert isinstance(from_env, WorkersCommand)
    assert from_env.ice_servers == ["stun:env-1", "stun:env-2"]
    flag = client_command("workers", "--ice-server", "stun:flag")
    assert isinstance(flag, WorkersCommand) and flag.ice_servers == ["stun:flag"]


@pytest.mark.parametrize("command", ["workers", "submit"])
def test_client_connection_flags(clean_env: pytest.MonkeyPatch, command: str) -> None:
    extra = ["--worker", "w"] if command == "submit" else []
    parsed = client_command(
        command, *extra,
        "--signaling-url", "ws://signal.example:1/ws",
        "--token", "t0k",
        "--ice-server", "stun:a",
        "--log-level", "DEBUG",
        "--json",
    )  # fmt: skip
    assert isinstance(parsed, ClientCommand)
    assert (parsed.signaling_url, parsed.token_value) == ("ws://signal.example:1/ws", "t0k")
    assert (parsed.ice_servers, parsed.log_level, parsed.json_output) == (["stun:a"], "DEBUG", True)


def test_submit_accepts_every_old_argument(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    submit = client_command(
        "submit",
        "--worker", "gpu-1",
        "--input", "packages/run7.zip",
        "--output", "results/run7",
        "--file", str(tmp_path / "run7.zip"),
        "--download", str(tmp_path / "results"),
        "--no-progress",
        "--job-id", "run-7",
        "--wait", "20",
        "--job-timeout", "600",
        "--trace",
        "--via-storage",
        "--json",
    )  # fmt: skip
    assert isinstance(submit, SubmitCommand)
    assert (submit.worker, submit.input, submit.output) == (
        "gpu-1",
        "packages/run7.zip",
        "results/run7",
    )
    assert (submit.file, submit.download) == (tmp_path / "run7.zip", tmp_path / "results")
    assert (submit.progress, submit.job_id, submit.wait, submit.job_timeout) == (
        False,
        "run-7",
        20.0,
        600.0,
    )
    assert submit.trace and submit.via_storage and submit.json_output
    plain = client_command("submit", "--worker", "gpu-1")
    assert isinstance(plain, SubmitCommand)
    assert (plain.progress, plain.trace, plain.via_storage, plain.json_output) == (
        True,
        False,
        False,
        False,
    )
    assert (plain.wait, plain.job_timeout, plain.job_id) == (0.0, None, None)


def test_download_accepts_every_old_argument(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    argv = ["download", "--job-id", "dl-1", "--storage-url", "http://s:1"]
    argv += ["--output", str(tmp_path)]
    clean_env.setenv("STORAGE_API_KEY", "env-key")
    from_env = client_command(*argv)
    assert isinstance(from_env, DownloadCommand)
    assert (from_env.job_id, from_env.storage_url) == ("dl-1", "http://s:1")
    assert from_env.output == tmp_path
    assert (from_env.storage_api_key_value, from_env.sha256, from_env.keep) == (
        "env-key",
        None,
        False,
    )
    assert from_env.log_level == "WARNING"
    given = client_command(
        *argv, "--storage-api-key", "flag-key", "--sha256", "ab" * 32, "--keep",
        "--log-level", "DEBUG",
    )  # fmt: skip
    assert isinstance(given, DownloadCommand)
    assert (given.storage_api_key_value, given.sha256, given.keep) == ("flag-key", "ab" * 32, True)
    assert given.log_level == "DEBUG"


def test_demo_arguments(clean_env: pytest.MonkeyPatch) -> None:
    demo = worker_command("demo", "--keep", "--size-mb", "1.5", "--timeout", "9")
    assert isinstance(demo, DemoCommand)
    assert (demo.keep, demo.size_mb, demo.timeout) == (True, 1.5, 9.0)
    default = worker_command("demo")
    assert isinstance(default, DemoCommand)
    assert (default.keep, default.size_mb, default.timeout) == (False, 8.0, 60.0)


def test_signaling_accepts_every_old_flag(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = settings_from_args(
        [
            "--host", "0.0.0.0",
            "--port", "9000",
            "--token", "t0k",
            "--max-frame-bytes", "5000",
            "--log-level", "debug",
            "--storage-path", str(tmp_path),
            "--storage-api-key", "k3y",
            "--database-path", str(tmp_path / "db.sqlite"),
            "--no-auto-delete",
            "--storage-max-file-size", "1000",
            "--upload-chunk-size", "100",
            "--upload-ttl-s", "60",
            "--cleanup-interval-s", "30",
        ]
    )  # fmt: skip
    assert (settings.host, settings.port, settings.token_value) == ("0.0.0.0", 9000, "t0k")
    assert (settings.max_frame_bytes, settings.log_level) == (5000, "DEBUG")
    assert (settings.storage_path, settings.storage_api_key_value) == (tmp_path, "k3y")
    assert (settings.database_file, settings.auto_delete) == (tmp_path / "db.sqlite", False)
    assert (settings.storage_max_file_size, settings.upload_chunk_size) == (1000, 100)
    assert (settings.upload_ttl_s, settings.cleanup_interval_s) == (60.0, 30.0)
    assert settings.cleanup_once is False
    assert settings_from_args(["--auto-delete"]).auto_delete is True
    # A cleanup pass needs no API key; serving the store does.
    assert settings_from_args(["--storage-path", str(tmp_path), "--cleanup-once"]).cleanup_once
    with pytest.raises(ValidationError, match="STORAGE_API_KEY"):
        settings_from_args(["--storage-path", str(tmp_path)])


@pytest.mark.parametrize(
    ("parse", "flag", "variable", "value", "read"),
    [
        (lambda a: worker_command("serve", *a), "--peer-id", "RTC_WORKER_ID", "w-", "peer_id"),
        (lambda a: worker_command("serve", *a), "--chunk-size", "RTC_CHUNK_SIZE", 2048,
         "chunk_size"),
        (lambda a: client_command("workers", *a), "--reply-timeout-s", "RTC_REPLY_TIMEOUT_S", 7.5,
         "reply_timeout_s"),
        (lambda a: client_command("download", "--job-id", "j", "--storage-url", "u", "--output",
                                  "o", *a), "--log-level", "RTC_LOG_LEVEL", "ERROR", "log_level"),
        (lambda a: settings_from_args(a), "--port", "RTC_SIGNALING_PORT", 4242, "port"),
        (lambda a: settings_from_args(a), "--heartbeat-seconds", "RTC_SIGNALING_HEARTBEAT_SECONDS",
         3.5, "heartbeat_seconds"),
    ],
)  # fmt: skip
def test_a_flag_beats_the_environment_which_beats_the_default(
    clean_env: pytest.MonkeyPatch,
    parse: Callable[[list[str]], object],
    flag: str,
    variable: str,
    value: object,
    read: str,
) -> None:
    default = getattr(parse([]), read)
    from_env = value + "env" if isinstance(value, str) else value
    from_flag = value + "flag" if isinstance(value, str) else value * 2  # type: ignore[operator]
    assert default not in (from_env, from_flag)
    clean_env.setenv(variable, str(from_env))
    assert getattr(parse([]), read) == from_env
    assert getattr(parse([flag, str(from_flag)]), read) == from_flag


#: Every variable the README documented before the command lines were generated, with
#: a value and where it must arrive. The unprefixed ones are now older names of an
#: RTC_ variable and must keep working.
DOCUMENTED_VARIABLES: list[tuple[str, str, str, object]] = [
    ("RTC_SIGNALING_HOST", "signaling", "host", "0.0.0.0"),
    ("RTC_SIGNALING_PORT", "signaling", "port", 1234),
    ("PORT", "signaling", "port", 4321),
    ("RTC_SIGNALING_TOKEN", "signaling", "token_value", "s3cret"),
    ("RTC_SIGNALING_MAX_FRAME_BYTES", "signaling", "max_frame_bytes", 5000),
    ("RTC_SIGNALING_HEARTBEAT_SECONDS", "signaling", "heartbeat_seconds", 3.0),
    ("RTC_LOG_LEVEL", "signaling", "log_level", "ERROR"),
    ("STORAGE_PATH", "signaling", "storage_path", Path("/srv/store")),
    ("STORAGE_API_KEY", "signaling", "storage_api_key_value", "key"),
    ("DATABASE_PATH", "signaling", "database_path", Path("/x/db.sqlite")),
    ("AUTO_DELETE", "signaling", "auto_delete", False),
    ("STORAGE_MAX_FILE_SIZE", "signaling", "storage_max_file_size", 99),
    ("UPLOAD_CHUNK_SIZE", "signaling", "upload_chunk_size", 1000),
    ("UPLOAD_TTL_S", "signaling", "upload_ttl_s", 60.0),
    ("CLEANUP_INTERVAL_S", "signaling", "cleanup_interval_s", 30.0),
    ("RTC_SIGNALING_URL", "serve", "signaling_url", "ws://e:1/ws"),
    ("RTC_WORKER_ID", "serve", "peer_id", "gpu-9"),
    ("RTC_SIGNALING_TOKEN", "serve", "token_value", "s3cret"),
    ("SHARED_STORAGE_ROOT", "serve", "shared_root", Path("/srv/shared")),
    ("RTC_SHARED_ROOT_CANDIDATES", "serve", "shared_root_candidates", ["/a", "/b"]),
    ("RTC_JOB_COMMAND", "serve", "job_command", "run {input}"),
    ("RTC_ICE_SERVERS", "serve", "ice_servers", ["stun:a", "stun:b"]),
    ("RTC_LOG_LEVEL", "serve", "log_level", "DEBUG"),
    ("RTC_WORK_DIR_NAME", "serve", "work_dir_name", ".work"),
    ("RTC_KEEP_WORKDIR", "serve", "keep_workdir", True),
    ("RTC_ZIP_MAX_TOTAL_BYTES", "serve", "zip_max_total_bytes", 1000),
    ("RTC_ZIP_MAX_RATIO", "serve", "zip_max_ratio", 20.0),
    ("RTC_ZIP_MAX_MEMBERS", "serve", "zip_max_members", 10),
    ("RTC_MAX_TEXT_FRAME_BYTES", "serve", "max_text_frame_bytes", 2048),
    ("RTC_MAX_PATH_BYTES", "serve", "max_path_bytes", 100),
    ("RTC_MAX_FIELDS", "serve", "max_fields", 10),
    ("RTC_CANCEL_GRACE_S", "serve", "cancel_grace_s", 1.0),
    ("RTC_STORAGE_URL", "serve", "storage_url", "http://s:1"),
    ("STORAGE_API_KEY", "serve", "storage_api_key_value", "key"),
    ("RTC_STORAGE_RETRIES", "serve", "storage_retries", 2),
    ("RTC_STORAGE_BACKOFF_S", "serve", "storage_backoff_s", 0.1),
    ("RTC_RECONNECT_MAX_DELAY_S", "serve", "reconnect_max_delay_s", 2.0),
    ("RTC_SLOW_VALIDATION_S", "serve", "slow_validation_warning_s", 3.0),
    ("RTC_DATA_DIR", "serve", "data_dir", Path("/srv/data")),
    ("RTC_MAX_FILE_SIZE", "serve", "max_file_size", 1000),
    ("RTC_CHUNK_SIZE", "serve", "chunk_size", 2048),
    ("RTC_PARTIAL_TTL_S", "serve", "partial_ttl_s", 60.0),
    ("RTC_CLEANUP_INTERVAL_S", "serve", "cleanup_interval_s", 60.0),
    ("RTC_SIGNALING_URL", "submit", "signaling_url", "ws://e:1/ws"),
    ("RTC_SIGNALING_TOKEN", "submit", "token_value", "s3cret"),
    ("RTC_ICE_SERVERS", "submit", "ice_servers", ["stun:a"]),
    ("RTC_REPLY_TIMEOUT_S", "submit", "reply_timeout_s", 5.0),
    ("RTC_CONNECT_TIMEOUT_S", "submit", "connect_timeout_s", 5.0),
    ("RTC_CLIENT_CACHE_DIR", "submit", "cache_dir", Path("/srv/cache")),
    ("RTC_MAX_FILE_SIZE", "submit", "max_file_size", 1000),
    ("STORAGE_API_KEY", "download", "storage_api_key_value", "key"),
]


def _parsed(program: str) -> object:
    if program == "signaling":
        return settings_from_args([])
    if program == "serve":
        return worker_command("serve")
    if program == "submit":
        return client_command("submit", "--worker", "w")
    return client_command("download", "--job-id", "j", "--storage-url", "u", "--output", "o")


@pytest.mark.parametrize(("variable", "program", "read", "value"), DOCUMENTED_VARIABLES)
def test_every_documented_variable_still_works(
    clean_env: pytest.MonkeyPatch, variable: str, program: str, read: str, value: object
) -> None:
    before = getattr(_parsed(program), read)
    if program == "signaling" and variable in ("STORAGE_PATH", "STORAGE_API_KEY"):
        # The store is on with a path and refused without a key: set both.
        clean_env.setenv("STORAGE_PATH", "/srv/store")
        clean_env.setenv("STORAGE_API_KEY", "key")
    shown = ",".join(value) if isinstance(value, list) else str(value).lower()
    clean_env.setenv(variable, shown if isinstance(value, bool | list) else str(value))
    assert getattr(_parsed(program), read) == value != before


@pytest.mark.parametrize(
    ("model", "field", "canonical", "older"),
    [
        (WorkerSettings, "shared_root", "RTC_SHARED_ROOT", "SHARED_STORAGE_ROOT"),
        (WorkerSettings, "storage_api_key", "RTC_STORAGE_API_KEY", "STORAGE_API_KEY"),
        (DownloadCommand, "storage_api_key", "RTC_STORAGE_API_KEY", "STORAGE_API_KEY"),
        (SignalingCli, "port", "RTC_SIGNALING_PORT", "PORT"),
        (SignalingCli, "storage_path", "RTC_SIGNALING_STORAGE_PATH", "STORAGE_PATH"),
        (SignalingCli, "database_path", "RTC_SIGNALING_DATABASE_PATH", "DATABASE_PATH"),
        (SignalingCli, "auto_delete", "RTC_SIGNALING_AUTO_DELETE", "AUTO_DELETE"),
        (SignalingCli, "storage_max_file_size", "RTC_SIGNALING_STORAGE_MAX_FILE_SIZE",
         "STORAGE_MAX_FILE_SIZE"),
        (SignalingCli, "upload_chunk_size", "RTC_SIGNALING_UPLOAD_CHUNK_SIZE", "UPLOAD_CHUNK_SIZE"),
        (SignalingCli, "upload_ttl_s", "RTC_SIGNALING_UPLOAD_TTL_S", "UPLOAD_TTL_S"),
        (SignalingCli, "cleanup_interval_s", "RTC_SIGNALING_CLEANUP_INTERVAL_S",
         "CLEANUP_INTERVAL_S"),
    ],
)  # fmt: skip
def test_the_canonical_variable_wins_over_the_older_name(
    clean_env: pytest.MonkeyPatch, model: type[Any], field: str, canonical: str, older: str
) -> None:
    names = signaling_env_names if model is SignalingCli else worker_env_names
    assert names(model, field) == (canonical, older)
    values = {"auto_delete": ("false", "true")}.get(field, ("21", "12"))

    def read() -> str:
        value = getattr(model(**required), field)
        value = value.get_secret_value() if isinstance(value, SecretStr) else value
        return str(int(value) if isinstance(value, float) else value).lower()

    required = {"job_id": "j", "storage_url": "u", "output": "o"}
    required = required if model is DownloadCommand else {}
    clean_env.setenv("RTC_SIGNALING_STORAGE_API_KEY", "key")  # for the store's fields
    clean_env.setenv(older, values[1])
    assert read() == values[1]
    clean_env.setenv(canonical, values[0])
    assert read() == values[0]
