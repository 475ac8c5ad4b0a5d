#!/usr/bin/env bash
# The whole test suite: lint, then every test (end-to-end tests use real aiortc
# peers and a real signaling server on loopback).
set -euo pipefail
source "$(dirname "$0")/_env.sh" test
echo "== ruff" >&2
"$ROOT/.venv/bin/ruff" check protocol rtc_worker signaling tests scripts
echo "== pytest" >&2
exec "$VENV_PY" -m pytest "$@"
