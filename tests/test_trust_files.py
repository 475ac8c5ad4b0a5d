"""The client's known-workers file and the worker's authorized-clients file."""

from __future__ import annotations

import stat
import threading
from pathlib import Path

import pytest

from rtc_worker.trust import KnownWorkers, TrustFileError, read_authorized_clients

A, B = "a" * 64, "b" * 64


def test_authorized_clients_are_fingerprints_with_optional_names(tmp_path: Path) -> None:
    path = tmp_path / "authorized_clients"
    path.write_text(f"# lab members\n{A} alice laptop\n\n  {B}   # bob\n")
    assert read_authorized_clients(path) == frozenset({A, B})


@pytest.mark.parametrize("line", ["A" * 64, "a" * 63, "alice " + A, "ssh-ed25519 AAAA", "zz" * 32])
def test_a_bad_authorized_line_is_an_error_never_skipped(tmp_path: Path, line: str) -> None:
    path = tmp_path / "authorized_clients"
    path.write_text(f"{A}\n{line}\n")
    with pytest.raises(TrustFileError, match=r"authorized_clients:2: not a client fingerprint"):
        read_authorized_clients(path)


def test_a_missing_or_unreadable_authorized_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(TrustFileError, match="no such authorized-clients file"):
        read_authorized_clients(tmp_path / "missing")
    (tmp_path / "bin").write_bytes(b"\xff\xfe")
    with pytest.raises(TrustFileError, match="cannot read"):
        read_authorized_clients(tmp_path / "bin")
    (tmp_path / "big").write_bytes(b"#" * (4 * 1024 * 1024 + 1))
    with pytest.raises(TrustFileError, match="larger than"):
        read_authorized_clients(tmp_path / "big")


def test_known_workers_are_pinned_on_first_use(tmp_path: Path) -> None:
    known = KnownWorkers(tmp_path / "cfg" / "known_workers")
    assert known.pinned("gpu-1") is None
    known.record("gpu-1", A)
    known.record("gpu-1", A)  # again: nothing added
    known.record("gpu-2", B)
    assert known.pinned("gpu-1") == A and known.pinned("gpu-2") == B
    assert known.path.read_text().splitlines() == [f"gpu-1 {A}", f"gpu-2 {B}"]
    assert stat.S_IMODE(known.path.stat().st_mode) == 0o600
    with pytest.raises(TrustFileError, match="pinned to"):
        known.record("gpu-1", B)
    with pytest.raises(ValueError):
        known.record("gpu 1", A)


def test_a_damaged_known_workers_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "known_workers"
    path.write_text(f"gpu-1 {A}\ngpu-1 {B}\n")
    with pytest.raises(TrustFileError, match="pinned twice"):
        KnownWorkers(path).pinned("gpu-1")
    path.write_text(f"gpu-1 {A} extra\n")
    with pytest.raises(TrustFileError, match=r"known_workers:1: expected"):
        KnownWorkers(path).pinned("gpu-1")


def test_a_symlinked_known_workers_file_is_not_written_through(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("")
    (tmp_path / "known_workers").symlink_to(target)
    with pytest.raises(TrustFileError, match="cannot write"):
        KnownWorkers(tmp_path / "known_workers").record("gpu-1", A)
    assert target.read_text() == ""


def test_concurrent_first_uses_pin_once(tmp_path: Path) -> None:
    known = KnownWorkers(tmp_path / "known_workers")
    errors: list[Exception] = []

    def pin(fp: str) -> None:
        try:
            known.record("gpu-1", fp)
        except TrustFileError as exc:
            errors.append(exc)

    threads = [threading.Thread(target=pin, args=(A if i % 2 else B,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(known.path.read_text().splitlines()) == 1
    assert len(errors) == 4
