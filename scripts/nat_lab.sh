#!/usr/bin/env bash
# Peers behind NAT: a worker and a client that cannot reach each other run a shared-storage
# job and a channel transfer through a TURN relay, with the project's own command lines.
#
#   worker 10.10.0.2 ── NAT (wan 203.0.113.2) ──┐
#                                               ├── public bridge 203.0.113.1: coturn :3478,
#   client 10.20.0.2 ── NAT (wan 203.0.113.3) ──┘   rtc-signaling :8765
#
# Each NAT namespace is a symmetric NAT: it masquerades lan -> wan with a random source port
# per flow (nftables "masquerade random,fully-random") and forwards nothing else but the
# replies (ct state established,related); the public side routes to neither private network.
# The script first shows that direct paths are blocked (TCP and UDP probes) and that both
# NATs map each destination to its own port (so hole punching cannot work), then runs
# rtc-signaling (handing out TURN credentials), rtc-worker and rtc-client, both relay-only
# (--ice-transport-policy relay), and checks from their logs, coturn's session lines and the
# NAT counters that the relay carried the job and the transfer. Last, a second worker and
# the client, both with policy "all" (host candidates and the relay), transfer a file: it
# still succeeds, and ICE nominates a pair through the relay, since no direct path exists.
# Exit status 0 when every check passed, 1 otherwise (with the logs of what failed), 2 when
# it cannot run here (not root, a tool missing).
#
#   sudo scripts/nat_lab.sh
#
# Namespaces are named rtcnat<pid>-{pub,natw,natc,w,c}; the script touches no other, and an
# EXIT trap stops every process in them and deletes them, whatever failed (only SIGKILL of
# the script itself leaves them: `ip netns pids NS | xargs -r kill; ip netns del NS`). Secrets (the
# signaling token, the TURN shared secret) live in 0600 files in the lab folder, never on a
# command line. Environment:
#   NAT_LAB_BIN          folder of rtc-signaling, rtc-worker, rtc-client (default .venv/bin)
#   NAT_LAB_SIZE_MIB     size of the transferred file, MiB (default 4)
#   NAT_LAB_KEEP=1       keep the lab folder (logs, files) after the run
#   NAT_LAB_FAIL_AFTER   setup|checks|services|shared: fail on purpose after that step
#                        (tests use it to show the teardown)
#   NAT_LAB_NAT          symmetric (default) | port-preserving (Linux's plain masquerade,
#                        an endpoint-independent mapping: the checks then fail, as they
#                        should; a test shows it)
# Helpers are in scripts/nat_lab_lib.sh (sourced).
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TAG="rtcnat$$"
NS_PUB="$TAG-pub" NS_NATW="$TAG-natw" NS_NATC="$TAG-natc" NS_W="$TAG-w" NS_C="$TAG-c"
ALL_NS=("$NS_W" "$NS_C" "$NS_NATW" "$NS_NATC" "$NS_PUB")
PUB_IP=203.0.113.1 NATW_IP=203.0.113.2 NATC_IP=203.0.113.3
W_IP=10.10.0.2 C_IP=10.20.0.2
TURN_PORT=3478 SIG_PORT=8765 PROBE_PORT=7000 MAP_PORT=7100
WORKER_ID=nat-worker ALL_WORKER_ID=nat-worker-all
SIZE_MIB="${NAT_LAB_SIZE_MIB:-4}"
FAIL_AFTER="${NAT_LAB_FAIL_AFTER:-}"
BIN="${NAT_LAB_BIN:-$ROOT/.venv/bin}"
# What the peers log once ICE has nominated a relay<->relay pair (rtc_worker/rtc.py), and
# a pair with a relay on either end ("host<->relay"-like).
RELAY_LINE='connected via relay$'
VIA_RELAY='connected via (relay|[a-z]+<->relay|relay<->[a-z]+)$'

LAB="" STEP="start" STEP_LOGS=() FAILED_AT="" T0=$(date +%s%N)

# shellcheck source=scripts/nat_lab_lib.sh
source "$ROOT/scripts/nat_lab_lib.sh"

# ---------------------------------------------------------------- preflight

if [ "$(id -u)" -ne 0 ]; then
  echo "nat_lab: needs root (network namespaces, nftables): sudo $0" >&2
  exit 2
fi
# Without NAT_LAB_BIN: the project's .venv and the Debian packages, set up as scripts/test.sh does.
if [ -z "${NAT_LAB_BIN:-}" ]; then
  if [ ! -x "$BIN/rtc-worker" ] || ! command -v nft >/dev/null || ! command -v turnserver >/dev/null; then
    # shellcheck source=scripts/_env.sh
    source "$ROOT/scripts/_env.sh" uvloop
    ensure_debian_packages iproute2 nftables coturn
  fi
fi
missing=()
for tool in ip nft turnserver stdbuf python3; do
  command -v "$tool" >/dev/null || missing+=("$tool")
done
for tool in rtc-signaling rtc-worker rtc-client; do
  [ -x "$BIN/$tool" ] || missing+=("$BIN/$tool")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "nat_lab: missing ${missing[*]} (Debian: iproute2 nftables coturn; the project: " \
    "python3 -m venv .venv && .venv/bin/pip install -e '.[uvloop]')" >&2
  exit 2
fi
PY="$BIN/python"
[ -x "$PY" ] || PY=python3

trap 'on_err "$LINENO" "$BASH_COMMAND" "$?"' ERR
trap on_exit EXIT
trap 'exit 130' INT TERM

LAB=$(mktemp -d "/tmp/$TAG.XXXXXX")
chmod 700 "$LAB"
mkdir -p "$LAB"/{logs,secrets,signaling,worker/{data,home,shared/inputs},client/{home,downloads}}
mkdir -p "$LAB"/worker-all/{data,home,shared}
say "lab $TAG in $LAB"

# ---------------------------------------------------------------- 1. namespaces and NAT

begin setup
teardown  # idempotent: nothing of ours should exist, but a reused pid would find it
for ns in "${ALL_NS[@]}"; do
  ip netns add "$ns"
  ip -n "$ns" link set lo up
done
ip -n "$NS_PUB" link add br0 type bridge
ip -n "$NS_PUB" addr add "$PUB_IP/24" dev br0
ip -n "$NS_PUB" link set br0 up

nat "$NS_NATW" "$NS_W" natw "$NATW_IP" 10.10.0
nat "$NS_NATC" "$NS_C" natc "$NATC_IP" 10.20.0
say "namespaces up in $(took) s"
maybe_fail setup


# ---------------------------------------------------------------- 2. direct paths are blocked

begin checks "$LAB/logs/probe-listeners.log"
# A TCP listener and a UDP echo on each private host: what a direct host candidate would
# have to reach (ICE is UDP).
for ns in "$NS_W" "$NS_C"; do
  ip netns exec "$ns" python3 -I -c "$LISTEN" "$PROBE_PORT" "$LAB" >>"$LAB/logs/probe-listeners.log" 2>&1 &
done
for _ in $(seq 50); do
  [ "$(grep -c listening "$LAB/logs/probe-listeners.log" || true)" -eq 2 ] && break
  sleep 0.05
done
CHECKS=()
for kind in tcp udp; do
  CHECKS+=(
    "worker reaches its own listener|$NS_W|$kind|$W_IP|$PROBE_PORT|open"
    "worker reaches the public side|$NS_W|$kind|$PUB_IP|9|refused"
    "client reaches the public side|$NS_C|$kind|$PUB_IP|9|refused"
    "client -> worker's private address|$NS_C|$kind|$W_IP|$PROBE_PORT|unreachable"
    "worker -> client's private address|$NS_W|$kind|$C_IP|$PROBE_PORT|unreachable"
    "public side -> worker's private address|$NS_PUB|$kind|$W_IP|$PROBE_PORT|unreachable"
    "public side -> client's private address|$NS_PUB|$kind|$C_IP|$PROBE_PORT|unreachable"
    "client -> worker's NAT address (no port forward)|$NS_C|$kind|$NATW_IP|$PROBE_PORT|closed"
    "worker -> client's NAT address (no port forward)|$NS_W|$kind|$NATC_IP|$PROBE_PORT|closed"
  )
done
# The NATs' mapping behaviour, seen by a reflector on the public side: symmetric, so a
# server-reflexive candidate (the address a STUN server sees) is worth nothing to the peer.
ip netns exec "$NS_PUB" python3 -I -c "$REFLECT" "$MAP_PORT" "$LAB" >>"$LAB/logs/probe-listeners.log" 2>&1 &
for _ in $(seq 50); do
  grep -q reflecting "$LAB/logs/probe-listeners.log" && break
  sleep 0.05
done
CHECKS+=(
  "worker's NAT: one mapping per destination|$NS_W|mapping|$PUB_IP|$MAP_PORT|symmetric"
  "client's NAT: one mapping per destination|$NS_C|mapping|$PUB_IP|$MAP_PORT|symmetric"
)
probes_ok=1
run_probes "${CHECKS[@]}" || probes_ok=0
for ns in "$NS_W" "$NS_C" "$NS_PUB"; do
  pids=$(ip netns pids "$ns" || true)
  [ -z "$pids" ] || kill $pids 2>/dev/null || true
done
[ "$probes_ok" = 1 ] || fail "a direct path is not as the lab needs it (see the table above)"
say "direct paths blocked (TCP, UDP), both NATs symmetric, public side reachable ($(took) s)"
maybe_fail checks

# ---------------------------------------------------------------- 3. coturn, signaling, worker

begin services "$LAB/logs/coturn.log" "$LAB/logs/signaling.log" "$LAB/logs/worker.log" \
  "$LAB/logs/worker-all.log"
secret() { head -c 32 /dev/urandom | base64 | tr -d '/+=\n'; }
umask 077
secret >"$LAB/secrets/token"
secret >"$LAB/secrets/turn_secret"
# coturn reads its shared secret from a 0600 config file, not from its command line; the
# config is the README's deployment one (never relay into private networks), on the lab's
# addresses.
cat >"$LAB/secrets/turnserver.conf" <<EOF
listening-ip=$PUB_IP
relay-ip=$PUB_IP
listening-port=$TURN_PORT
min-port=49152
max-port=49407
realm=rtcnat.test
use-auth-secret
static-auth-secret=$(cat "$LAB/secrets/turn_secret")
fingerprint
no-tls
no-dtls
no-cli
no-multicast-peers
denied-peer-ip=10.0.0.0-10.255.255.255
denied-peer-ip=172.16.0.0-172.31.255.255
denied-peer-ip=192.168.0.0-192.168.255.255
denied-peer-ip=100.64.0.0-100.127.255.255
denied-peer-ip=169.254.0.0-169.254.255.255
no-software-attribute
userdb=$LAB/turndb
pidfile=$LAB/turnserver.pid
log-file=stdout
simple-log
verbose
EOF
umask 022
# The environment of each CLI: its own HOME and data folders, secrets by file.
mapfile -d '' SIG_ENV < <(peer_env signaling)
mapfile -d '' W_ENV < <(peer_env worker)
mapfile -d '' WA_ENV < <(peer_env worker-all)
mapfile -d '' C_ENV < <(peer_env client)
mkdir -p "$LAB/signaling/home" "$LAB/client/home"
SIGNALING_URL="ws://$PUB_IP:$SIG_PORT/ws"
TURN_URL="turn:$PUB_IP:$TURN_PORT"

ip netns exec "$NS_PUB" stdbuf -oL -eL turnserver -c "$LAB/secrets/turnserver.conf" \
  >"$LAB/logs/coturn.log" 2>&1 &
COTURN_PID=$!
say "coturn pid $COTURN_PID on $TURN_URL"
ip netns exec "$NS_PUB" "${SIG_ENV[@]}" "$BIN/rtc-signaling" --host "$PUB_IP" --port "$SIG_PORT" \
  --data-dir "$LAB/signaling" --token-file "$LAB/secrets/token" \
  --turn-url "$TURN_URL" --turn-secret-file "$LAB/secrets/turn_secret" --turn-ttl-s 600 \
  >"$LAB/logs/signaling.log" 2>&1 &
SIGNALING_PID=$!
say "rtc-signaling pid $SIGNALING_PID on $SIGNALING_URL"
wait_for 10 coturn "$COTURN_PID" grep -q "Total General servers" "$LAB/logs/coturn.log"
wait_for 10 rtc-signaling "$SIGNALING_PID" grep -q "listening on" "$LAB/logs/signaling.log"

# The workers' identities, pinned by the client (as an operator would hand them over).
worker_key() {  # worker_key NAME -> the fingerprint of the worker whose folder is NAME
  "${W_ENV[@]}" "$BIN/rtc-worker" id --data-dir "$LAB/$1/data" >"$LAB/logs/$1-id.log" 2>&1 ||
    fail "rtc-worker id failed"
  head -n 1 "$LAB/logs/$1-id.log"
}
WORKER_KEY=$(worker_key worker)
ALL_WORKER_KEY=$(worker_key worker-all)
[[ "$WORKER_KEY$ALL_WORKER_KEY" =~ ^[0-9a-f]{128}$ ]] || fail "rtc-worker id printed no fingerprint"
# A training package on the worker's shared root (the shared job's input).
"$PY" -c 'import sys; from pathlib import Path; from rtc_worker.demo import build_training_package
build_training_package(Path(sys.argv[1]), size_mb=1.0)' "$LAB/worker/shared/inputs/package.zip"
ip netns exec "$NS_W" "${W_ENV[@]}" "$BIN/rtc-worker" serve --signaling-url "$SIGNALING_URL" \
  --peer-id "$WORKER_ID" --shared-root "$LAB/worker/shared" --data-dir "$LAB/worker/data" \
  --ice-transport-policy relay --log-level INFO >"$LAB/logs/worker.log" 2>&1 &
WORKER_PID=$!
say "rtc-worker pid $WORKER_PID ($WORKER_ID, key ${WORKER_KEY:0:16}…), relay only"
# A second worker with policy "all": it gathers host candidates as well as the relay.
ip netns exec "$NS_W" "${WA_ENV[@]}" "$BIN/rtc-worker" serve --signaling-url "$SIGNALING_URL" \
  --peer-id "$ALL_WORKER_ID" --shared-root "$LAB/worker-all/shared" \
  --data-dir "$LAB/worker-all/data" --ice-transport-policy all --log-level INFO \
  >"$LAB/logs/worker-all.log" 2>&1 &
ALL_WORKER_PID=$!
say "rtc-worker pid $ALL_WORKER_PID ($ALL_WORKER_ID, key ${ALL_WORKER_KEY:0:16}…), policy all"
wait_for 15 rtc-worker "$WORKER_PID" grep -q "registered with signaling" "$LAB/logs/worker.log"
wait_for 15 rtc-worker "$ALL_WORKER_PID" grep -q "registered with signaling" "$LAB/logs/worker-all.log"
for id in "$WORKER_ID" "$ALL_WORKER_ID"; do
  grep -q "registered with signaling as $id (worker, key [0-9a-f]*, 1 TURN server(s))" \
    "$LAB/logs/worker.log" "$LAB/logs/worker-all.log" || fail "signaling handed $id no TURN server"
done
# No secret on a command line of the lab (coturn's is in its 0600 config file).
for ns in "${ALL_NS[@]}"; do
  for pid in $(ip netns pids "$ns"); do
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null |
      grep -qF -e "$(cat "$LAB/secrets/token")" -e "$(cat "$LAB/secrets/turn_secret")"; then
      fail "a secret is on the command line of pid $pid"
    fi
  done
done
say "services up ($(took) s); no secret on a command line"
maybe_fail services

# ---------------------------------------------------------------- 4. the client's two jobs

# client LOGNAME ARGS...: rtc-client submit in the client namespace, to WORKER (default
# the relay-only worker) with POLICY (default relay)
client() {
  local name=$1 worker=${WORKER:-$WORKER_ID} key=${KEY:-$WORKER_KEY} policy=${POLICY:-relay}
  shift
  ip netns exec "$NS_C" "${C_ENV[@]}" timeout 60 "$BIN/rtc-client" submit \
    --signaling-url "$SIGNALING_URL" --worker "$worker" --worker-key "$key" \
    --wait 15 --no-progress --json --ice-transport-policy "$policy" --log-level INFO \
    --key-file "$LAB/client/identity.key" --cache-dir "$LAB/client/cache" "$@" \
    >"$LAB/logs/$name.json" 2>"$LAB/logs/$name.log"
}

begin shared-job "$LAB/logs/shared-job.log" "$LAB/logs/shared-job.json" "$LAB/logs/worker.log"
client shared-job --input inputs/package.zip --output outputs/nat-shared --job-id nat-shared ||
  fail "rtc-client submit (shared storage) exited with status $?"
SHARED_S=$(took)
manifest="$LAB/worker/shared/outputs/nat-shared/manifest.json"
[ -f "$manifest" ] || fail "the shared job wrote no manifest at outputs/nat-shared"
SHARED_MEMBERS=$("$PY" -c 'import json, sys, zipfile
listed = {entry["path"] for entry in json.load(open(sys.argv[1]))["files"]}
members = {name for name in zipfile.ZipFile(sys.argv[2]).namelist() if not name.endswith("/")}
print(len(members) if listed == members else "differ")' \
  "$manifest" "$LAB/worker/shared/inputs/package.zip")
[ "$SHARED_MEMBERS" != differ ] || fail "the manifest does not list the package's members"
[ "$(json "$LAB/logs/shared-job.json" output_path)" = outputs/nat-shared ] ||
  fail "the client reports another output path"
grep -Eq "$RELAY_LINE" "$LAB/logs/shared-job.log" ||
  fail "the client did not log a relay<->relay path ('$RELAY_LINE')"
say "shared job: manifest of the package's $SHARED_MEMBERS members, ${SHARED_S} s, client connected via relay"
maybe_fail shared

begin transfer "$LAB/logs/transfer.log" "$LAB/logs/transfer.json" "$LAB/logs/worker.log"
payload="$LAB/client/payload.bin"
head -c $((SIZE_MIB * 1024 * 1024)) /dev/urandom >"$payload"
PAYLOAD_SHA=$(sha256sum "$payload" | cut -d' ' -f1)
PAYLOAD_BYTES=$(stat -c %s "$payload")
client transfer --file "$payload" --download "$LAB/client/downloads" --job-id nat-transfer ||
  fail "rtc-client submit (channel transfer) exited with status $?"
TRANSFER_S=$(took)
[ "$(json "$LAB/logs/transfer.json" upload.sha256)" = "$PAYLOAD_SHA" ] ||
  fail "the worker's sha256 of the file is not the client's ($PAYLOAD_SHA)"
[ "$(json "$LAB/logs/transfer.json" upload.bytes_sent)" -ge "$PAYLOAD_BYTES" ] ||
  fail "fewer bytes than the file crossed the channel (was it already held?)"
stored="$LAB/worker/shared/.rtc-store/objects/${PAYLOAD_SHA:0:2}/$PAYLOAD_SHA"
[ -f "$stored" ] || fail "the worker's store holds no object $PAYLOAD_SHA"
WORKER_SHA=$(sha256sum "$stored" | cut -d' ' -f1)
[ "$WORKER_SHA" = "$PAYLOAD_SHA" ] || fail "the worker's stored file hashes to $WORKER_SHA"
CHANNEL_MBPS=$(json "$LAB/logs/transfer.json" upload.mb_per_s)
grep -Eq "$RELAY_LINE" "$LAB/logs/transfer.log" ||
  fail "the client did not log a relay<->relay path ('$RELAY_LINE')"
say "transfer: $PAYLOAD_BYTES bytes, sha256 ${PAYLOAD_SHA:0:16}… on both ends, $CHANNEL_MBPS MB/s, ${TRANSFER_S} s with the job and the results"

# ---------------------------------------------------------------- 5. policy "all" on both peers

# Both peers offer host candidates too; with no direct path between the symmetric NATs, ICE
# can only nominate a pair through the relay, and the transfer still succeeds.
begin policy-all "$LAB/logs/policy-all.log" "$LAB/logs/policy-all.json" "$LAB/logs/worker-all.log" \
  "$LAB/logs/coturn.log"
small="$LAB/client/small.bin"
head -c $((1024 * 1024)) /dev/urandom >"$small"
SMALL_SHA=$(sha256sum "$small" | cut -d' ' -f1)
WORKER="$ALL_WORKER_ID" KEY="$ALL_WORKER_KEY" POLICY=all client policy-all --file "$small" \
  --download "$LAB/client/downloads-all" --job-id nat-all ||
  fail "rtc-client submit (policy all) exited with status $?"
[ "$(json "$LAB/logs/policy-all.json" upload.sha256)" = "$SMALL_SHA" ] ||
  fail "the worker's sha256 of the file is not the client's ($SMALL_SHA)"
ALL_PATHS=()
for log in policy-all worker-all; do
  line=$(grep -Eo "connected via \S+$" "$LAB/logs/$log.log" | head -n 1 || true)
  [ -n "$line" ] || fail "$log logged no nominated pair"
  [[ "$line" =~ $VIA_RELAY ]] || fail "$log: ICE nominated a pair without the relay ($line)"
  ALL_PATHS+=("${line#connected via }")
done
# Both offered host candidates: coturn refused to bind a channel from each side's relay to
# the other's private address (denied-peer-ip), which only a host candidate names.
for who in "$ALL_WORKER_ID" client-; do
  grep -Eq "user <[0-9]+:$who[^>]*>: incoming packet CHANNEL_BIND processed, error 403" \
    "$LAB/logs/coturn.log" || fail "no host candidate of the other side reached $who's relay"
done
say "policy all: sha256 ${SMALL_SHA:0:16}… on both ends, host candidates offered on both sides" \
  "(coturn refused to relay to them), ICE nominated client ${ALL_PATHS[0]}, worker ${ALL_PATHS[1]}" \
  "($(took) s)"

# ---------------------------------------------------------------- 6. what the relay and the NATs saw

begin relay-evidence "$LAB/logs/worker.log" "$LAB/logs/coturn.log"
# The worker's connections, both relay (one per job).
relays=$(grep -Ec "$RELAY_LINE" "$LAB/logs/worker.log" || true)
[ "$relays" -ge 2 ] || fail "the worker logged $relays relay connections, expected 2"
if grep -E "connected via " "$LAB/logs/worker.log" "$LAB/logs/shared-job.log" "$LAB/logs/transfer.log" |
  grep -Ev "$RELAY_LINE"; then
  fail "a peer connection took another path than relay<->relay"
fi
# Stop the workers so coturn closes their allocations and logs each session's remote address.
kill -TERM "$WORKER_PID" "$ALL_WORKER_PID"
for _ in $(seq 50); do
  kill -0 "$WORKER_PID" 2>/dev/null || kill -0 "$ALL_WORKER_PID" 2>/dev/null || break
  sleep 0.1
done
# One verdict over coturn's --verbose log: every session of the worker came from the
# worker's NAT address, every session of the client from the client's, none from a
# private address; the closing "usage" lines give the bytes each side sent.
verdict=""
for _ in $(seq 50); do  # coturn logs a session's end about a second after it
  if verdict=$("$PY" -c "$SESSIONS" "$LAB/logs/coturn.log" "$WORKER_ID,$ALL_WORKER_ID" "$NATW_IP" "$NATC_IP" \
    2>"$LAB/logs/coturn-verdict.log"); then
    break
  fi
  sleep 0.1
done
[ -n "$verdict" ] || fail "coturn's sessions: $(tail -n 1 "$LAB/logs/coturn-verdict.log")"
read -r W_SESSIONS C_SESSIONS C_RELAYED W_RELAYED <<<"$verdict"
[ "$C_RELAYED" -ge "$PAYLOAD_BYTES" ] ||
  fail "coturn received $C_RELAYED bytes from the client, less than the file"
declare -A NAT_OUT NAT_FLOWS
for nat in "worker:$NS_NATW" "client:$NS_NATC"; do
  read -r flows _ <<<"$(counter "${nat#*:}" post masquerade)"
  read -r _ out_bytes <<<"$(counter "${nat#*:}" forward '"out"')"
  [ "${flows:-0}" -gt 0 ] || fail "the ${nat%%:*}'s NAT masqueraded no connection"
  NAT_FLOWS[${nat%%:*}]=$flows NAT_OUT[${nat%%:*}]=$out_bytes
done
[ "${NAT_OUT[client]}" -ge "$PAYLOAD_BYTES" ] ||
  fail "the client's NAT forwarded ${NAT_OUT[client]} bytes out, less than the file"

if grep -rlF -e "$(cat "$LAB/secrets/token")" -e "$(cat "$LAB/secrets/turn_secret")" "$LAB/logs"; then
  fail "a secret appears in the logs above"
fi

TOTAL_S=$(secs "$(now_ms)")
cat <<EOF

NAT lab passed in $TOTAL_S s before teardown ($TAG)
  direct paths  private addresses unreachable (TCP and UDP) across the NATs and from the
                public side; both NATs symmetric (a new source port per destination)
  shared job    outputs/nat-shared, manifest of $SHARED_MEMBERS members, $SHARED_S s, relay<->relay
  transfer      $(mb "$PAYLOAD_BYTES") MB at $CHANNEL_MBPS MB/s through the relay (client's figure),
                sha256 equal on both ends; with the job and its results: $TRANSFER_S s
  policy all    both peers with host candidates too: the transfer succeeds, ICE nominated
                ${ALL_PATHS[0]} (client) and ${ALL_PATHS[1]} (worker)
  coturn        worker: $W_SESSIONS sessions from $NATW_IP, $(mb "$W_RELAYED") MB in;
                client: $C_SESSIONS sessions from $NATC_IP, $(mb "$C_RELAYED") MB in
  NATs          worker side: ${NAT_FLOWS[worker]} flows masqueraded, $(mb "${NAT_OUT[worker]}") MB out;
                client side: ${NAT_FLOWS[client]} flows masqueraded, $(mb "${NAT_OUT[client]}") MB out
EOF
