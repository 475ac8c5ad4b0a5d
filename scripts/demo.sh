#!/usr/bin/env bash
# The main job end to end on loopback: signaling server, worker and client as
# three processes, a training package on a temporary shared root, one job.
set -euo pipefail
source "$(dirname "$0")/_env.sh" uvloop
exec "$VENV_PY" -m rtc_worker demo "$@"
