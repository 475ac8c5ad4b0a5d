"""The browser page through a TURN relay: "Relay only" in the page, coturn with the
shared secret, ``rtc-signaling`` handing out time-limited credentials in its
``registered`` frame, and a real worker (all inside the browser tests' namespace).

The page gathers relay candidates only, so every byte of the shared job and of the
upload goes through coturn: the selected candidate pair's local side is ``relay``, and
coturn's own accounting shows the page's allocation received at least the file.
Skipped, with the reason, where coturn is missing.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.browser_env import Stack
from tests.netns import Process
from tests.requirements import need

pytestmark = pytest.mark.live

MiB = 1024 * 1024
TURN_PORT = 3478


def _unavailable() -> str | None:
    if shutil.which("turnserver") is None or shutil.which("stdbuf") is None:
        return "coturn is not installed (no turnserver, or no stdbuf): apt-get install coturn"
    return None


@pytest.fixture(scope="module")
def coturn(
    browser_netns: Any, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, str, Process]]:
    """coturn inside the namespace on its veth address: (turn URL, secret, process).
    The secret is in a mode-0600 configuration file, as a deployment keeps it."""
    reason = _unavailable()
    if reason:
        need(reason)
    folder = tmp_path_factory.mktemp("coturn")
    secret = secrets.token_urlsafe(24)
    conf = folder / "turnserver.conf"
    conf.touch(0o600)
    conf.write_text(f"use-auth-secret\nstatic-auth-secret={secret}\nrealm=page.test\n")
    address = browser_netns.address
    argv = ["stdbuf", "-oL", "-eL", "turnserver", "-c", str(conf), "--no-cli", "--no-tls"]
    argv += ["--no-dtls", f"--listening-ip={address}", f"--relay-ip={address}"]
    argv += [f"--listening-port={TURN_PORT}", "--min-port=49152", "--max-port=49252"]
    argv += ["--fingerprint", "--log-file=stdout", "--simple-log", "--no-software-attribute"]
    argv += ["--verbose", f"--pidfile={folder / 'turnserver.pid'}"]
    proc = browser_netns.start("turnserver", argv, folder / "coturn.log")
    try:
        proc.wait_for_line("Total General servers", 10)
        yield f"turn:{address}:{TURN_PORT}", secret, proc
    finally:
        proc.stop(5)


@pytest.fixture(scope="module")
def browser_stack_module(
    browser_netns: Any, coturn: tuple[str, str, Process], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    """Signaling with the TURN server and its secret (from the environment), a worker."""
    url, secret, _ = coturn
    stack = Stack(
        browser_netns,
        tmp_path_factory.mktemp("relay-stack"),
        signaling_args=("--turn-url", url),
        env={"RTC_TURN_SECRET": secret},
    )
    (stack.shared_root / "inputs" / "data.txt").write_text("through the relay\n")
    try:
        yield stack
    finally:
        stack.close()


def relayed_bytes(log: str, peer_id: str) -> int:
    """What coturn received from ``peer_id``'s allocations (its ``usage:`` lines)."""
    pattern = rf"usage: realm=<[^>]*>, username=<\d+:{re.escape(peer_id)}>, rp=\d+, rb=(\d+),"
    return sum(int(n) for n in re.findall(pattern, log))


SELECTED_PAIR_JS = """async () => {
  const stats = await window.rtcPage.session.pc.getStats();
  let pair = null;
  stats.forEach((s) => {
    if (s.type === 'transport' && s.selectedCandidatePairId) {
      pair = stats.get(s.selectedCandidatePairId);
    }
  });
  const type = (id) => stats.get(id).candidateType;
  return {local: type(pair.localCandidateId), remote: type(pair.remoteCandidateId)};
}"""


def test_job_and_upload_through_the_relay(
    browser_page: Any, browser_stack: Stack, coturn: tuple[str, str, Process], tmp_path: Path
) -> None:
    page = browser_page
    page.goto(browser_stack.page_url)
    page.wait_for_selector("body[data-state=idle]", state="attached")
    page.fill("#token", browser_stack.token)
    page.check("#relay-only")
    page.click("#connect")
    page.click(f"li.worker[data-peer-id='{browser_stack.worker_id}'] button.pick")
    page.wait_for_selector("#peer-status[data-state=ready]", timeout=30000)
    assert "(relay only)" in (page.text_content("#peer-status") or "")
    assert page.evaluate(SELECTED_PAIR_JS)["local"] == "relay"
    offer = page.evaluate("window.rtcPage.session.pc.localDescription.sdp")
    kinds = set(re.findall(r"^a=candidate:.* typ (\w+)", offer, re.M))
    assert kinds == {"relay"}, offer

    page.fill("#input-path", "inputs/data.txt")
    page.fill("#output-path", "outputs/relay-1")
    page.click("#run-job")
    page.wait_for_selector("#job-complete.ok", timeout=30000)

    data = os.urandom(8 * MiB)
    path = tmp_path / "relay.bin"
    path.write_bytes(data)
    page.set_input_files("#file-input", str(path))
    page.wait_for_selector("#transfer-status[data-phase=received]", timeout=120000)
    sha = hashlib.sha256(data).hexdigest()
    store = browser_stack.shared_root / ".rtc-store"
    held = [p for p in store.rglob("*") if p.is_file() and sha in str(p)]
    assert any(hashlib.sha256(p.read_bytes()).hexdigest() == sha for p in held)
    peer_id = page.evaluate("window.rtcPage.registered.peer_id")
    _, _, proc = coturn
    deadline = page.wait_for_timeout
    for _ in range(30):  # coturn logs its usage once a second
        if relayed_bytes(proc.log(), peer_id) >= len(data):
            break
        deadline(200)
    assert relayed_bytes(proc.log(), peer_id) >= len(data)


def test_a_refused_turn_credential_is_a_readable_error(
    browser_netns: Any, browser_page: Any, coturn: tuple[str, str, Process], tmp_path: Path
) -> None:
    """Signaling hands out credentials coturn refuses (another secret): the page says
    so with NO_RELAY_CANDIDATE instead of waiting for a channel that cannot open."""
    url, _, _ = coturn
    stack = Stack(
        browser_netns,
        tmp_path / "stack",
        worker_id="worker-2",
        signaling_args=("--turn-url", url),
        env={"RTC_TURN_SECRET": "not-the-secret-coturn-holds"},
    )
    try:
        page = browser_page
        page.goto(stack.page_url)
        page.wait_for_selector("body[data-state=idle]", state="attached")
        page.fill("#token", stack.token)
        page.check("#relay-only")
        page.click("#connect")
        page.click(f"li.worker[data-peer-id='{stack.worker_id}'] button.pick")
        error = page.wait_for_selector("#errors li[data-code=NO_RELAY_CANDIDATE]", timeout=30000)
        assert (error.text_content() or "").startswith("NO_RELAY_CANDIDATE: Relay only was chosen")
        assert page.get_attribute("#peer-status", "data-state") == "failed"
        assert "answered offer" not in stack.worker.log()  # no offer was sent
    finally:
        stack.close()


def test_a_tab_past_its_credentials_lifetime_registers_again_and_relays(
    browser_netns: Any, browser_page: Any, coturn: tuple[str, str, Process], tmp_path: Path
) -> None:
    """Credentials that live 2 s (``--turn-ttl-s 2``) have expired by the time the person
    picks a worker; coturn would refuse them, so the page registers again for fresh ones
    and the channel still opens through the relay."""
    url, secret, _ = coturn
    stack = Stack(
        browser_netns,
        tmp_path / "stack",
        worker_id="worker-3",
        signaling_args=("--turn-url", url, "--turn-ttl-s", "2"),
        env={"RTC_TURN_SECRET": secret},
    )
    try:
        page = browser_page
        page.goto(stack.page_url)
        page.wait_for_selector("body[data-state=idle]", state="attached")
        page.fill("#token", stack.token)
        page.check("#relay-only")
        page.click("#connect")
        page.wait_for_selector(f"li.worker[data-peer-id='{stack.worker_id}']")
        assert page.evaluate("window.rtcPage.registrations") == 1
        page.wait_for_timeout(3000)  # the credentials of that registration expire
        page.click(f"li.worker[data-peer-id='{stack.worker_id}'] button.pick")
        page.wait_for_selector("#peer-status[data-state=ready]", timeout=30000)
        assert page.evaluate("window.rtcPage.registrations") == 2
        assert page.evaluate(SELECTED_PAIR_JS)["local"] == "relay"
    finally:
        stack.close()
