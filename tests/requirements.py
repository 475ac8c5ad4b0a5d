"""What an end-to-end test needs from the machine, and what happens when it is missing.

:func:`need` is the one place a browser, TURN, NAT or engine test gives up because
Chromium, Playwright, root, ``ip netns``, coturn, nftables, PostgreSQL or moto is
missing. By default the test is skipped with the reason (pytest runs with ``-ra``, so
the reason is listed). With ``RTC_REQUIRE_E2E=1`` in the environment (``.ci/run`` sets
it) the test fails instead, so a CI run cannot pass with every browser, TURN, NAT and
engine test skipped.
"""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["REQUIRE_E2E_ENV", "e2e_required", "need"]

REQUIRE_E2E_ENV = "RTC_REQUIRE_E2E"
"""Variable that turns a missing requirement of an end-to-end test into a failure."""


def e2e_required() -> bool:
    """True when ``RTC_REQUIRE_E2E`` is ``1`` (or ``true``/``yes``): requirements are fatal."""
    return os.environ.get(REQUIRE_E2E_ENV, "").strip().lower() in {"1", "true", "yes"}


def need(reason: str) -> NoReturn:
    """Give up on the calling test because the machine lacks something (``reason``).

    Raises:
        pytest.skip.Exception: by default (the test is skipped with ``reason``).
        pytest.fail.Exception: when :func:`e2e_required` (the test fails with ``reason``
            and the variable named).
    """
    if e2e_required():
        pytest.fail(
            f"{reason} ({REQUIRE_E2E_ENV}=1: a missing requirement is a failure)", pytrace=False
        )
    pytest.skip(reason)
