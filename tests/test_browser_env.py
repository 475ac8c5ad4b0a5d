"""The browser-test harness itself (tests/browser_env.py, tests/netns.py): Chromium runs
inside the namespace in a secure context, the real worker registers, restarts keep its
identity, a page reaches a real aiortc peer over a data channel, teardown leaves no
namespace and no process behind, and a missing Chromium is a skip with its reason."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.browser_env import CHROMIUM_ENV, REPO, Chromium, Stack
from tests.netns import NetNs, netns, netns_names, netns_unavailable_reason
from tests.requirements import REQUIRE_E2E_ENV, need

pytestmark = pytest.mark.live


def test_chromium_runs_in_the_namespace_in_a_secure_context(
    browser_stack: Stack, browser_page: object, artifacts_dir: Path
) -> None:
    from playwright.sync_api import Page

    assert isinstance(browser_page, Page)
    # The server listens on 127.0.0.1 inside the namespace only: the page loads only if
    # Chromium runs in there too.
    response = browser_page.goto(f"{browser_stack.page_url}health")
    assert response is not None and response.status == 200
    assert browser_page.evaluate("window.isSecureContext") is True
    assert browser_page.evaluate("typeof crypto.subtle.generateKey") == "function"
    health = browser_page.evaluate("fetch('/health').then((r) => r.json())")
    assert health["workers"] == 1
    browser_page.screenshot(path=str(artifacts_dir / "health.png"))
    assert (artifacts_dir / "health.png").stat().st_size > 0


def test_the_worker_registered_with_its_key(browser_stack: Stack) -> None:
    assert browser_stack.health()["workers"] == 1
    assert "registered with signaling as worker-1" in browser_stack.worker.log()
    assert f"key {browser_stack.fingerprint[:16]}" in browser_stack.worker.log()
    # The token went through the environment, never the command line.
    assert browser_stack.token not in " ".join(browser_stack.worker.popen.args)  # type: ignore[arg-type]
    assert browser_stack.token not in " ".join(browser_stack.signaling.popen.args)  # type: ignore[arg-type]


def test_a_killed_worker_comes_back_with_the_same_identity(browser_stack: Stack) -> None:
    first = browser_stack.worker
    browser_stack.kill_worker()
    assert not first.alive
    deadline = time.monotonic() + 10
    while browser_stack.health()["workers"] != 0:
        assert time.monotonic() < deadline, "signaling still lists the killed worker"
        time.sleep(0.1)
    second = browser_stack.start_worker()
    assert second is not first and second.alive
    assert browser_stack.health()["workers"] == 1
    assert browser_stack.fingerprint[:16] in second.log()
    third = browser_stack.restart_worker()
    assert third.alive and not second.alive
    assert browser_stack.health()["workers"] == 1


def test_a_page_opens_a_data_channel_to_an_aiortc_peer(
    browser_netns: NetNs, browser_page: object, tmp_path: Path
) -> None:
    from playwright.sync_api import Page

    assert isinstance(browser_page, Page)
    peer = browser_netns.start(
        "echo-peer",
        [sys.executable, "-m", "tests.browser_rtc_echo"],
        tmp_path / "echo.log",
        cwd=REPO,
    )
    try:
        url = peer.wait_for_line(r"listening on (http://\S+)")[1]
        browser_page.goto(url)
        browser_page.wait_for_function("window.ready === true")
        result = browser_page.evaluate("echo('hello through the data channel')")
    finally:
        peer.stop(5)
    assert result["reply"] == "hello through the data channel"
    # A default route in the namespace: Chromium signals a host candidate (mDNS name).
    assert any(" typ host" in line for line in result["localCandidates"]), result


def test_persistent_profile_keeps_indexeddb_across_a_restart(
    browser_stack: Stack, chromium: Chromium, tmp_path: Path
) -> None:
    profile = tmp_path / "profile"
    put = """() => new Promise((done, fail) => {
      const open = indexedDB.open("t", 1);
      open.onupgradeneeded = () => open.result.createObjectStore("s");
      open.onsuccess = () => {
        const tx = open.result.transaction("s", "readwrite");
        tx.objectStore("s").put("kept", "k");
        tx.oncomplete = () => { open.result.close(); done(true); };
        tx.onerror = () => fail(tx.error);
      };
      open.onerror = () => fail(open.error);
    })"""
    get = """() => new Promise((done, fail) => {
      const open = indexedDB.open("t", 1);
      open.onupgradeneeded = () => open.result.createObjectStore("s");
      open.onsuccess = () => {
        const req = open.result.transaction("s").objectStore("s").get("k");
        req.onsuccess = () => done(req.result ?? null);
        req.onerror = () => fail(req.error);
      };
    })"""
    for step in ("put", "get"):
        context = chromium.launch_persistent(profile)
        page = context.pages[0] if context.pages else context.new_page()
        page.goto(f"{browser_stack.page_url}health")
        if step == "put":
            assert page.evaluate(put) is True
        else:
            assert page.evaluate(get) == "kept"
        context.close()


def test_teardown_kills_what_runs_inside_and_deletes_the_namespace(tmp_path: Path) -> None:
    reason = netns_unavailable_reason()
    if reason is not None:
        pytest.skip(reason)
    with pytest.raises(RuntimeError, match="a failing test"), netns() as ns:
        name = ns.name
        sleeper = ns.start("sleeper", ["sleep", "600"], tmp_path / "sleep.log")
        stray = subprocess.Popen(ns.argv("sleep", "600"))  # not known to the NetNs
        assert name in netns_names()
        raise RuntimeError("a failing test")
    assert name not in netns_names()
    assert not sleeper.alive
    assert stray.wait(5) == -9


def _run_without_chromium(**env: str) -> subprocess.CompletedProcess[str]:
    """Run one browser test in a child pytest whose Chromium path does not exist."""
    base = {k: v for k, v in os.environ.items() if k != REQUIRE_E2E_ENV}
    target = "tests/test_browser_env.py::test_chromium_runs_in_the_namespace_in_a_secure_context"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", target],
        capture_output=True,
        text=True,
        env={**base, CHROMIUM_ENV: "/nonexistent/chromium", **env},
        cwd=REPO,
        timeout=120,
        check=False,
    )


def test_a_missing_chromium_is_a_skip_with_its_reason() -> None:
    before = set(netns_names()) if netns_unavailable_reason() is None else set()
    result = _run_without_chromium()
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 skipped" in result.stdout, result.stdout
    assert "SKIPPED" in result.stdout and "no Chromium at /nonexistent/chromium" in result.stdout
    if netns_unavailable_reason() is None:
        assert set(netns_names()) <= before


def test_under_rtc_require_e2e_a_missing_chromium_fails_the_run() -> None:
    # .ci/run sets RTC_REQUIRE_E2E=1: a CI run without a browser cannot pass by skipping.
    result = _run_without_chromium(**{REQUIRE_E2E_ENV: "1"})
    assert result.returncode == 1, result.stdout + result.stderr
    assert "skipped" not in result.stdout, result.stdout
    assert "1 error" in result.stdout, result.stdout
    assert "no Chromium at /nonexistent/chromium" in result.stdout
    assert f"{REQUIRE_E2E_ENV}=1" in result.stdout


def test_only_namespaces_of_dead_runs_with_nothing_inside_are_deleted(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from tests.netns import _delete_stale

    reason = netns_unavailable_reason()
    if reason is not None:
        need(reason)
    gone = subprocess.Popen(["true"])
    gone.wait()  # a pid that no longer exists (a run killed before its teardown)
    dead, busy, live = f"rtcb{gone.pid}-900", f"rtcb{gone.pid}-901", f"rtcb{os.getppid()}-902"
    sleeper = None
    try:
        for name in (dead, busy, live):
            subprocess.run(["ip", "netns", "add", name], check=True)
        # something still runs in "busy" (a live run seen from another pid namespace)
        sleeper = subprocess.Popen(["ip", "netns", "exec", busy, "sleep", "600"])
        time.sleep(0.2)
        _delete_stale()
        names = netns_names()
        assert dead not in names and busy in names and live in names
        err = capsys.readouterr().err
        assert f"deleting stale namespace {dead} (pid {gone.pid} is gone)" in err
        assert f"keeping {busy}" in err and live not in err
    finally:
        if sleeper is not None:
            sleeper.kill()
            sleeper.wait()
        for name in (dead, busy, live):
            subprocess.run(["ip", "netns", "del", name], capture_output=True, check=False)
