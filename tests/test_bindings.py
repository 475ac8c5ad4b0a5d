"""The peer-id bindings store (signaling.bindings) on a real SQLite file, and the
operator's ``rtc-signaling bindings`` command."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
from pathlib import Path

import pytest

from signaling.__main__ import main as signaling_main
from signaling.bindings import SCHEMA_VERSION, BindingStore, SqliteBindings

A, B, C = "a" * 64, "b" * 64, "c" * 64


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def store(path: Path, **options: object) -> SqliteBindings:
    return SqliteBindings(path / "bindings.db", **options)  # type: ignore[arg-type]


def test_the_first_key_wins_and_another_key_changes_nothing(tmp_path: Path) -> None:
    clock = Clock()
    bindings = store(tmp_path, clock=clock)
    first = bindings.claim_now("gpu-1", A, "worker")
    assert (first.peer_id, first.fingerprint, first.role) == ("gpu-1", A, "worker")
    clock.now += 5
    refused = bindings.claim_now("gpu-1", B, "worker")
    assert refused == first  # the owner's binding, untouched
    assert bindings.get_now("gpu-1") == first
    clock.now += 5
    again = bindings.claim_now("gpu-1", A, "client")
    assert (again.fingerprint, again.role, again.created_at) == (A, "client", first.created_at)
    assert again.last_seen == clock.now


def test_bindings_survive_a_restart(tmp_path: Path) -> None:
    store(tmp_path).claim_now("gpu-1", A, "worker")
    reopened = store(tmp_path)
    assert reopened.claim_now("gpu-1", B, "worker").fingerprint == A
    assert [b.peer_id for b in reopened.entries_now()] == ["gpu-1"]


def test_release_frees_the_id_for_the_next_key(tmp_path: Path) -> None:
    bindings = store(tmp_path)
    bindings.claim_now("gpu-1", A, "worker")
    released = bindings.release_now("gpu-1")
    assert released is not None and released.fingerprint == A
    assert bindings.release_now("gpu-1") is None
    assert bindings.get_now("gpu-1") is None
    assert bindings.claim_now("gpu-1", B, "worker").fingerprint == B


def test_one_key_holds_at_most_its_cap_the_oldest_goes(tmp_path: Path) -> None:
    clock = Clock()
    bindings = store(tmp_path, max_per_key=3, clock=clock)
    bindings.claim_now("other", B, "worker")
    for number in range(5):
        clock.now += 1
        bindings.claim_now(f"client-{number}", A, "client")
    held = sorted(b.peer_id for b in bindings.entries_now() if b.fingerprint == A)
    assert held == ["client-2", "client-3", "client-4"]
    assert bindings.get_now("other") is not None  # another key's binding is never touched
    clock.now += 1
    bindings.claim_now("client-2", A, "client")  # seen again: now the newest
    clock.now += 1
    bindings.claim_now("client-5", A, "client")
    held = sorted(b.peer_id for b in bindings.entries_now() if b.fingerprint == A)
    assert held == ["client-2", "client-4", "client-5"]
    with pytest.raises(ValueError):
        store(tmp_path, max_per_key=0)


def test_idle_client_bindings_expire_and_workers_never(tmp_path: Path) -> None:
    clock = Clock()
    bindings = store(tmp_path, client_ttl_s=100.0, clock=clock)
    bindings.claim_now("app-1", A, "client")
    bindings.claim_now("gpu-1", B, "worker")
    clock.now += 99
    assert bindings.get_now("app-1") is not None
    clock.now += 2
    assert bindings.get_now("app-1") is None
    assert bindings.claim_now("app-1", C, "client").fingerprint == C
    assert bindings.get_now("gpu-1") is not None
    assert [b.peer_id for b in bindings.entries_now()] == ["app-1", "gpu-1"]


def test_concurrent_claims_have_one_winner(tmp_path: Path) -> None:
    bindings = store(tmp_path)
    keys = [f"{n:064x}" for n in range(8)]
    results: dict[str, str] = {}
    start = threading.Barrier(len(keys))

    def claim(key: str) -> None:
        mine = store(tmp_path)  # as separate processes would, each with its connection
        start.wait()
        results[key] = mine.claim_now("gpu-1", key, "worker").fingerprint

    threads = [threading.Thread(target=claim, args=(key,)) for key in keys]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = set(results.values())
    assert len(winners) == 1
    assert bindings.get_now("gpu-1").fingerprint in winners  # type: ignore[union-attr]


async def test_the_async_interface_runs_the_same_calls(tmp_path: Path) -> None:
    bindings: BindingStore = store(tmp_path)
    claimed, other = await asyncio.gather(
        bindings.claim("w", A, "worker"), bindings.claim("x", B, "client")
    )
    assert (claimed.fingerprint, other.fingerprint) == (A, B)
    assert (await bindings.get("w")) == claimed
    assert [b.peer_id for b in await bindings.entries()] == ["w", "x"]
    assert (await bindings.release("w")) == claimed
    assert await bindings.get("w") is None


def test_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "bindings.db"
    SqliteBindings(path)
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.commit()
    conn.close()
    with pytest.raises(sqlite3.DatabaseError, match="schema version"):
        SqliteBindings(path)


def test_the_folder_is_private(tmp_path: Path) -> None:
    SqliteBindings(tmp_path / "state" / "bindings.db")
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700


# --------------------------------------------------------------------------- the CLI


def test_operator_lists_and_releases_bindings(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    bindings = SqliteBindings(data / "bindings.db")
    bindings.claim_now("gpu-1", A, "worker")
    bindings.claim_now("app-1", B, "client")

    assert signaling_main(["bindings", "list", "--data-dir", str(data)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[:3] for line in lines] == [
        ["app-1", "client", B],
        ["gpu-1", "worker", A],
    ]
    assert signaling_main(["bindings", "list", "--data-dir", str(data), "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(b["peer_id"], b["fingerprint"]) for b in listed] == [("app-1", B), ("gpu-1", A)]
    assert listed[0]["created_at"].endswith("+00:00")

    db = str(data / "bindings.db")
    assert signaling_main(["bindings", "release", "gpu-1", "--bindings-db", db]) == 0
    assert capsys.readouterr().out == f"released gpu-1 (was bound to {A})\n"
    assert bindings.get_now("gpu-1") is None
    assert signaling_main(["bindings", "release", "gpu-1", "--bindings-db", db]) == 1
    assert "gpu-1 is not bound" in capsys.readouterr().err


def test_bindings_cli_reads_the_server_settings_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RTC_SIGNALING_DATA_DIR", str(tmp_path))
    assert signaling_main(["bindings", "list"]) == 0
    assert capsys.readouterr().out == f"no bindings in {tmp_path / 'bindings.db'}\n"
    assert not (tmp_path / "bindings.db").exists()  # listing creates nothing
    SqliteBindings(tmp_path / "bindings.db").claim_now("w", A, "worker")
    assert signaling_main(["bindings", "list", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)[0]["peer_id"] == "w"


def test_bindings_cli_usage_errors(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exited:
        signaling_main(["bindings"])
    assert exited.value.code == 2
    assert signaling_main(["bindings", "release", "not an id", "--data-dir", str(tmp_path)]) == 2
    assert "invalid settings" in capsys.readouterr().err
    (tmp_path / "bindings.db").write_bytes(b"not a database" * 100)
    assert signaling_main(["bindings", "list", "--data-dir", str(tmp_path)]) == 1
    assert "cannot use" in capsys.readouterr().err
