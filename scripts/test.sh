#!/usr/bin/env bash
# The whole test suite: lint, type check, then every test (end-to-end tests use real
# aiortc peers and a real signaling server on loopback) with branch coverage of the
# protocol core.
#
#   bash scripts/test.sh                  # everything; protocol/ must be 100% covered
#   bash scripts/test.sh -k transfer -x   # arguments go to pytest; coverage is still
#                                         # reported but not enforced (a subset of the
#                                         # tests cannot cover everything)
set -euo pipefail
source "$(dirname "$0")/_env.sh" test
# The tests in a real browser (Chromium), through TURN (coturn) and behind NAT
# (namespaces, nftables/iptables), on Redis (redis-server) and PostgreSQL; each skips
# with the reason when its package is absent.
ensure_debian_packages chromium fonts-liberation iproute2 coturn nftables iptables redis-server postgresql
echo "== ruff" >&2
"$ROOT/.venv/bin/ruff" check protocol rtc_worker signaling tests scripts
echo "== mypy" >&2
# Files, strictness and plugins come from [tool.mypy] in pyproject.toml.
"$VENV_PY" -m mypy
cov=(--cov=protocol --cov-branch --cov-report=term-missing)
if [ "$#" -eq 0 ]; then
  # Two passes: the unit and property tests with branch coverage of protocol/ (held
  # at 100%), then the end-to-end tests (marker "live") without coverage tracing.
  echo "== pytest: unit and property tests, coverage of protocol/" >&2
  # A fixed hypothesis seed: the generated examples, and so the branches they reach,
  # are the same on every run, and a landing never depends on luck. Run pytest without
  # it (or with another seed) to explore new examples.
  "$VENV_PY" -m pytest -m "not live" "${cov[@]}" --cov-fail-under=100 --hypothesis-seed=0
  echo "== pytest: end-to-end tests (real peers, servers and processes)" >&2
  exec "$VENV_PY" -m pytest -m live -p no:cov
fi
echo "== pytest" >&2
exec "$VENV_PY" -m pytest "${cov[@]}" --cov-fail-under=0 "$@"
