"""``ensure_debian_packages`` (scripts/_debian.sh, used by scripts/test.sh): a package that
cannot be installed is named and the run goes on (its tests skip with the reason), except
under ``RTC_REQUIRE_E2E=1`` (``.ci/run``), where the run stops with status 1 so CI cannot
pass with the browser, TURN and NAT tests skipped.

``dpkg-query`` and ``id`` are replaced by stand-ins on ``PATH`` (a package that is never
installed, a user who is not root), so nothing is installed and no registry is asked.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def not_root_without_the_package(tmp_path: Path) -> dict[str, str]:
    shim = tmp_path / "bin"
    shim.mkdir()
    for name, body in (("dpkg-query", "exit 1"), ("id", "echo 1000")):
        (shim / name).write_text(f"#!/bin/sh\n{body}\n")
        (shim / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "RTC_REQUIRE_E2E"}
    return {**env, "PATH": f"{shim}:{env['PATH']}"}


def _run(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    script = (
        "set -euo pipefail; source scripts/_debian.sh; "
        "ensure_debian_packages chromium coturn; echo went-on"
    )
    return subprocess.run(
        ["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=30
    )


def test_a_missing_package_is_named_and_the_run_goes_on(
    not_root_without_the_package: dict[str, str],
) -> None:
    done = _run(not_root_without_the_package)
    assert done.returncode == 0 and "went-on" in done.stdout, done.stderr
    assert "missing Debian packages: chromium coturn" in done.stderr


def test_under_rtc_require_e2e_a_missing_package_stops_the_run(
    not_root_without_the_package: dict[str, str],
) -> None:
    done = _run({**not_root_without_the_package, "RTC_REQUIRE_E2E": "1"})
    assert done.returncode == 1 and "went-on" not in done.stdout, done.stdout
    assert "RTC_REQUIRE_E2E=1: cannot go on without the Debian packages: chromium coturn" in (
        done.stderr
    )
