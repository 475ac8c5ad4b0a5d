"""``rtc-worker id`` and ``rtc-client id``, and where the worker and the client keep their
keys: created on first use with mode 0600, the same key every time after."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from rtc_worker.cli import client_main, main
from rtc_worker.identity import Identity, IdentityError, default_client_key_file
from rtc_worker.settings import WorkerSettings


def printed(capsys: pytest.CaptureFixture[str]) -> tuple[str, Path]:
    fingerprint, where = capsys.readouterr().out.splitlines()
    assert where.startswith("key file: ")
    return fingerprint, Path(where.removeprefix("key file: "))


def test_rtc_worker_id_creates_the_key_once_and_serve_uses_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "worker-data"
    assert main(["id", "--data-dir", str(data)]) == 0
    fingerprint, path = printed(capsys)
    assert path == data / "identity.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert main(["id", "--data-dir", str(data)]) == 0
    assert printed(capsys) == (fingerprint, path)  # created once

    from rtc_worker.worker import RTCWorkerClient

    worker = RTCWorkerClient(WorkerSettings(data_dir=data, shared_root_candidates=[]))
    assert worker.identity.fingerprint == fingerprint


def test_the_worker_key_file_setting_and_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "keys" / "gpu-1.key"
    assert main(["id", "--key-file", str(key)]) == 0
    assert printed(capsys)[1] == key
    monkeypatch.setenv("RTC_WORKER_KEY_FILE", str(key))
    settings = WorkerSettings()
    assert settings.identity_file == key
    assert main(["id"]) == 0
    assert printed(capsys)[1] == key
    monkeypatch.setenv("RTC_WORKER_KEY_FILE", "")
    assert WorkerSettings(data_dir=tmp_path).identity_file == tmp_path / "identity.key"


def test_rtc_client_id_uses_the_xdg_config_folder(
    _private_home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    assert client_main(["id"]) == 0
    fingerprint, path = printed(capsys)
    assert path == _private_home / ".config" / "rtc-client" / "identity.key"
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    monkeypatch.delenv("XDG_CONFIG_HOME")
    assert default_client_key_file() == path  # ~/.config without the variable
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/not/allowed")
    assert default_client_key_file() == path
    monkeypatch.setenv("XDG_CONFIG_HOME", str(_private_home / "elsewhere"))
    assert client_main(["id"]) == 0
    other, other_path = printed(capsys)
    assert other_path == _private_home / "elsewhere" / "rtc-client" / "identity.key"
    assert other != fingerprint


def test_the_client_loads_or_creates_its_key(_private_home: Path, tmp_path: Path) -> None:
    from rtc_worker.client import RTCClient

    first = RTCClient("ws://127.0.0.1:9/ws")
    assert first.identity is not None
    assert first.identity.path == default_client_key_file()
    assert RTCClient("ws://127.0.0.1:9/ws").identity.fingerprint == first.identity.fingerprint  # type: ignore[union-attr]
    assert RTCClient("ws://127.0.0.1:9/ws", anonymous=True).identity is None
    given = Identity.generate()
    assert RTCClient("ws://127.0.0.1:9/ws", identity=given).identity is given
    elsewhere = RTCClient("ws://127.0.0.1:9/ws", key_file=tmp_path / "k")
    assert elsewhere.identity is not None and elsewhere.identity.path == tmp_path / "k"
    with pytest.raises(ValueError):
        RTCClient("ws://127.0.0.1:9/ws", identity=given, anonymous=True)


def test_a_key_readable_by_others_is_refused_with_its_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = tmp_path / "identity.key"
    Identity.load_or_create(key)
    key.chmod(0o644)
    assert client_main(["id", "--key-file", str(key)]) == 2
    assert "KEY_PERMISSIONS" in capsys.readouterr().err
    assert main(["id", "--key-file", str(key)]) == 2
    with pytest.raises(IdentityError):
        from rtc_worker.worker import RTCWorkerClient

        RTCWorkerClient(WorkerSettings(key_file=key, data_dir=tmp_path))
