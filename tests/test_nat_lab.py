"""Peers behind NAT, end to end: ``scripts/nat_lab.sh`` builds a public network (coturn,
rtc-signaling) and two private networks behind their own symmetric NAT (nftables
``masquerade random,fully-random``), and runs the real ``rtc-worker`` and ``rtc-client``
through the TURN relay.

The script does the checks itself (direct paths blocked over TCP and UDP, both NATs
symmetric, relay<->relay pairs in both relay-only peers' logs, a transfer between two peers
with policy ``all`` that still goes through the relay, coturn's sessions from both NAT
addresses, sha256 on both ends, the masquerade counters); these tests run it, show that its
checks fail under a NAT where hole punching could work, and that its teardown leaves no
namespace and no process (probe listeners included) behind when a step fails. They need
root, ``ip``, ``nft`` and ``turnserver`` (Debian: iproute2, nftables, coturn) and are
skipped with the reason otherwise (they fail instead under ``RTC_REQUIRE_E2E=1``).
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.requirements import need

pytestmark = pytest.mark.live

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "nat_lab.sh"
#: rtc-signaling, rtc-worker and rtc-client: beside this interpreter, unless NAT_LAB_BIN says.
BIN = Path(os.environ.get("NAT_LAB_BIN") or Path(sys.executable).parent)
RUN_TIMEOUT_S = 120.0


def _cannot_run() -> str | None:
    """Why the lab cannot run here, or None."""
    if os.geteuid() != 0:
        return "the NAT lab needs root (network namespaces, nftables)"
    missing = [tool for tool in ("ip", "nft", "turnserver") if shutil.which(tool) is None]
    if missing:
        return f"the NAT lab needs {', '.join(missing)} (Debian: iproute2, nftables, coturn)"
    if not (BIN / "rtc-worker").exists():
        return f"no rtc-worker in {BIN} (pip install -e .)"
    return None


@pytest.fixture(autouse=True)
def _requirements() -> None:
    reason = _cannot_run()
    if reason is not None:
        need(reason)


def run_lab(**env: str) -> subprocess.CompletedProcess[str]:
    """Run the script in its own process group; on a timeout, SIGTERM the group (the
    script's trap then tears the lab down) before giving up."""
    proc = subprocess.Popen(
        ["bash", str(SCRIPT)],
        env={**os.environ, "NAT_LAB_BIN": str(BIN), **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"nat_lab.sh ran over {RUN_TIMEOUT_S} s\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def lab_names(output: str) -> tuple[str, Path]:
    """The lab's tag (``rtcnat<pid>``) and folder, from its first line."""
    found = re.search(r"^nat_lab: lab (rtcnat\d+) in (\S+)$", output, re.MULTILINE)
    assert found is not None, output
    return found[1], Path(found[2])


def leftovers(tag: str, lab_dir: Path) -> list[str]:
    """Namespaces of the lab still listed, and processes still running with its folder
    on their command line (every process the lab starts names its folder, the probes and
    their listeners too)."""
    listed = subprocess.run(
        ["ip", "netns", "list"], capture_output=True, text=True, check=True
    ).stdout
    left = [line.split()[0] for line in listed.splitlines() if line.startswith(f"{tag}-")]
    marker = str(lab_dir).encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if marker in cmdline:
            shown = cmdline.replace(b"\0", b" ").decode(errors="replace")[:200]
            left.append(f"pid {proc.name}: {shown}")
    return left


def test_job_and_transfer_between_peers_behind_nat_go_through_turn() -> None:
    done = run_lab()
    print(done.stdout)
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    tag, lab_dir = lab_names(done.stdout)
    # what the script checked, as it reports it
    for kind in ("tcp", "udp"):
        assert re.search(
            rf"{kind} +client -> worker's private address +unreachable +ok", done.stdout
        )
        assert re.search(rf"{kind} +worker reaches its own listener +open +ok", done.stdout)
    assert re.search(
        r"mapping +worker's NAT: one mapping per destination +symmetric +ok", done.stdout
    )
    assert re.search(
        r"mapping +client's NAT: one mapping per destination +symmetric +ok", done.stdout
    )
    assert re.search(r"shared job: manifest of the package's \d+ members", done.stdout)
    assert re.search(r"sha256 \w+… on both ends", done.stdout)
    # policy "all" on both peers: host candidates offered, yet the pair is through the relay
    assert re.search(r"policy all: .*host candidates offered on both sides", done.stdout)
    assert re.search(r"ICE nominated client relay\S*, worker \S*relay", done.stdout)
    assert re.search(r"worker: \d+ sessions from 203\.0\.113\.2", done.stdout)
    assert re.search(r"client: \d+ sessions from 203\.0\.113\.3", done.stdout)
    found = re.search(r"NAT lab passed in ([\d.]+) s", done.stdout)
    assert found is not None and float(found[1]) < 30
    assert leftovers(tag, lab_dir) == []
    assert not lab_dir.exists()


def test_the_checks_fail_under_a_nat_that_keeps_its_mapping() -> None:
    """Under Linux's plain masquerade (an endpoint-independent mapping, where hole punching
    with server-reflexive candidates can work) the lab refuses to go on: its NAT checks
    can fail, so their passing means the NATs really are symmetric."""
    done = run_lab(NAT_LAB_NAT="port-preserving")
    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"
    assert re.search(
        r"mapping +worker's NAT: one mapping per destination +independent +FAIL", done.stdout
    )
    assert "a direct path is not as the lab needs it" in done.stderr
    assert "services up" not in done.stdout
    tag, lab_dir = lab_names(done.stdout)
    assert leftovers(tag, lab_dir) == []
    assert not lab_dir.exists()


@pytest.mark.parametrize("step", ["setup", "checks", "services", "shared"])
def test_a_failed_step_leaves_no_namespace_and_no_process(step: str) -> None:
    done = run_lab(NAT_LAB_FAIL_AFTER=step)
    assert done.returncode == 1, f"{done.stdout}\n{done.stderr}"
    assert f"injected failure after step {step}" in done.stderr
    tag, lab_dir = lab_names(done.stdout)
    if step not in ("setup", "checks"):
        # coturn, rtc-signaling and both workers were running in the lab when it failed
        started = re.findall(
            r"^nat_lab: (?:coturn|rtc-signaling|rtc-worker) pid (\d+)", done.stdout, re.M
        )
        assert len(started) == 4, done.stdout  # the relay-only worker, the "all" one
        assert "services up" in done.stdout
        # the logs of the failed step are printed
        assert "--- logs/worker.log" in done.stderr
    assert leftovers(tag, lab_dir) == []
    assert not lab_dir.exists()
