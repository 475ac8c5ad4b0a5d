# Helpers of scripts/nat_lab.sh (sourced by it; not a script of its own): messages and
# steps, teardown, the NAT namespaces, the probes of the direct paths, the verdict over
# coturn's log. They use the variables nat_lab.sh sets (LAB, TAG, ALL_NS, NS_*, BIN, PY).
# shellcheck shell=bash

say() { printf 'nat_lab: %s\n' "$*"; }
now_ms() { echo $((($(date +%s%N) - T0) / 1000000)); }
secs() { awk -v ms="$1" 'BEGIN { printf "%.1f", ms / 1000 }'; }
fail() {
  FAILED_AT="${FAILED_AT:-$STEP: $*}"
  printf 'nat_lab: FAILED (%s): %s\n' "$STEP" "$*" >&2
  exit 1
}
begin() { STEP="$1"; STEP_LOGS=("${@:2}"); STEP_T0=$(now_ms); say "== $STEP"; }
took() { secs $(($(now_ms) - STEP_T0)); }
maybe_fail() { [ "$FAIL_AFTER" != "$1" ] || fail "injected failure after step $1 (NAT_LAB_FAIL_AFTER)"; }

# ---------------------------------------------------------------- teardown

teardown() {
  local ns pids left=() i
  for ns in "${ALL_NS[@]}"; do
    [ -e "/run/netns/$ns" ] || continue
    left+=("$ns")
    pids=$(ip netns pids "$ns" 2>/dev/null || true)
    [ -z "$pids" ] || kill -TERM $pids 2>/dev/null || true
  done
  [ ${#left[@]} -gt 0 ] || return 0
  for i in $(seq 40); do  # up to 3 s for a clean exit, then SIGKILL and 1 s more
    pids=""
    for ns in "${left[@]}"; do pids+=" $(ip netns pids "$ns" 2>/dev/null || true)"; done
    [ -n "${pids// /}" ] || break
    [ "$i" -ne 30 ] || kill -KILL $pids 2>/dev/null || true
    sleep 0.1
  done
  for ns in "${left[@]}"; do ip netns del "$ns" 2>/dev/null || true; done
}

show_logs() {
  local log shown=" "
  for log in "${STEP_LOGS[@]}"; do
    [ -f "$log" ] || continue
    printf '\n--- %s (step %s)\n' "${log#"$LAB"/}" "$STEP" >&2
    tail -n 80 "$log" >&2
    shown+="$log "
  done
  for log in "$LAB"/logs/*.log; do
    [ -f "$log" ] && [[ "$shown" != *" $log "* ]] || continue
    printf '\n--- %s (last lines)\n' "${log#"$LAB"/}" >&2
    tail -n 15 "$log" >&2
  done
}

on_exit() {
  local rc=$?
  trap - EXIT ERR INT TERM
  set +e
  if [ "$rc" -ne 0 ]; then
    [ -n "$FAILED_AT" ] || FAILED_AT="$STEP: exit status $rc"
    [ -z "$LAB" ] || show_logs
  fi
  teardown
  if [ -n "$LAB" ] && [ -d "$LAB" ]; then
    if [ "${NAT_LAB_KEEP:-}" = 1 ]; then say "lab folder kept: $LAB"; else rm -rf "$LAB"; fi
  fi
  if [ "$rc" -ne 0 ]; then
    printf 'nat_lab: FAILED at %s (namespaces %s-* removed)\n' "$FAILED_AT" "$TAG" >&2
  fi
  exit "$rc"
}
on_err() {  # the first failing command, with its line (set -E carries this into functions)
  [ -n "$FAILED_AT" ] || FAILED_AT="$STEP: line $1: $2 (status $3)"
}

# ---------------------------------------------------------------- namespaces and NAT

# nat NAT_NS HOST_NS BRIDGE_PORT WAN_IP LAN_PREFIX (e.g. 10.10.0): a host behind a
# symmetric NAT. "masquerade random,fully-random" gives every flow (every destination)
# its own random source port on the wan side, so the mapping a peer learns for one
# destination is worth nothing for another: UDP hole punching fails, as between the
# symmetric NATs of many clouds and offices, and only a relay can carry the data.
# NAT_LAB_NAT=port-preserving keeps Linux's default (source ports kept where free: an
# endpoint-independent mapping).
nat() {
  local nat_ns=$1 host_ns=$2 port=$3 wan=$4 lan=$5
  # veths are created straight into the namespaces: deleting them deletes the links
  ip link add wan netns "$nat_ns" type veth peer name "$port" netns "$NS_PUB"
  ip -n "$NS_PUB" link set "$port" master br0
  ip -n "$NS_PUB" link set "$port" up
  ip -n "$nat_ns" addr add "$wan/24" dev wan
  ip -n "$nat_ns" link set wan up
  ip link add lan netns "$nat_ns" type veth peer name eth0 netns "$host_ns"
  ip -n "$nat_ns" addr add "$lan.1/24" dev lan
  ip -n "$nat_ns" link set lan up
  ip -n "$host_ns" addr add "$lan.2/24" dev eth0
  ip -n "$host_ns" link set eth0 up
  ip -n "$host_ns" route add default via "$lan.1"
  ip -n "$nat_ns" route add default via "$PUB_IP"
  ip netns exec "$nat_ns" sysctl -qw net.ipv4.ip_forward=1
  local flags=" random,fully-random"
  [ "${NAT_LAB_NAT:-symmetric}" = symmetric ] || flags=""
  ip netns exec "$nat_ns" nft -f - <<NFT
table ip rtcnat {
  chain post {
    type nat hook postrouting priority srcnat; policy accept;
    oifname "wan" counter masquerade$flags
  }
  chain forward {
    type filter hook forward priority filter; policy drop;
    iifname "lan" oifname "wan" counter accept comment "out"
    ct state established,related counter accept comment "back"
  }
}
NFT
}

# ---------------------------------------------------------------- probes of the direct paths

# Every probe process names the lab folder on its command line (its last argument), so a
# leaked one is found like any other process of the lab.
# PROBE tcp|udp IP PORT SECONDS LAB -> open | refused | unreachable. TCP: connect. UDP: a
# connected socket sends "probe" every 0.2 s and waits for the echo; an ICMP port
# unreachable comes back as ECONNREFUSED (refused); no route, another ICMP error or
# silence is unreachable.
PROBE='
import socket, sys, time
proto, ip, port, wait = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
if proto == "tcp":
    s = socket.socket()
    s.settimeout(wait)
    try:
        s.connect((ip, port))
        print("open")
    except ConnectionRefusedError:
        print("refused")
    except OSError:
        print("unreachable")
    sys.exit()
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(0.2)
end, got = time.monotonic() + wait, "unreachable"
try:
    s.connect((ip, port))
except OSError:  # no route at all
    end = 0
while time.monotonic() < end:
    try:
        s.send(b"probe")
        if s.recv(64) == b"probe":
            got = "open"
            break
    except ConnectionRefusedError:
        got = "refused"
        break
    except TimeoutError:
        pass
    except OSError:  # host or network unreachable (ICMP)
        break
print(got)
'
# LISTEN PORT LAB: a TCP listener (accepts and closes) and a UDP echo on PORT.
LISTEN='
import socket, sys, threading
port = int(sys.argv[1])
tcp = socket.create_server(("0.0.0.0", port))
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("0.0.0.0", port))
def accept():
    while True:
        tcp.accept()[0].close()
threading.Thread(target=accept, daemon=True).start()
print("listening", flush=True)
while True:
    data, sender = udp.recvfrom(64)
    udp.sendto(data, sender)
'
# REFLECT PORT LAB: on the public side, UDP on PORT+1 and PORT+2 answering each datagram
# with the address it came from ("IP:PORT"), as a STUN server does (RFC 8489).
REFLECT='
import select, socket, sys
port = int(sys.argv[1])
socks = []
for p in (port + 1, port + 2):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", p))
    socks.append(s)
print("reflecting", flush=True)
while True:
    for s in select.select(socks, [], [])[0]:
        data, sender = s.recvfrom(64)
        s.sendto(f"{sender[0]}:{sender[1]}".encode(), sender)
'
# MAPPING IP PORT SECONDS LAB: the NAT's mapping behaviour (RFC 4787 section 4.1, tested as
# RFC 5780 section 4.3 does): from one local PORT, ask the reflector at IP:PORT+1 and
# IP:PORT+2 which address they see. The same address and port for both destinations is an
# endpoint-independent mapping (what hole punching with server-reflexive candidates needs):
# "independent"; a different one per destination is a symmetric NAT: "symmetric".
MAPPING='
import socket, sys, time
ip, port, wait = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(("0.0.0.0", port))
s.settimeout(0.1)
seen, end = {}, time.monotonic() + wait
while len(seen) < 2 and time.monotonic() < end:
    for dest in (port + 1, port + 2):
        if dest not in seen:
            s.sendto(b"map", (ip, dest))
    try:
        data, sender = s.recvfrom(64)
        seen[sender[1]] = data.decode()
    except OSError:
        pass
if len(seen) < 2:
    print("unreachable")
else:
    print("independent" if len(set(seen.values())) == 1 else "symmetric")
'

# run_probes CHECK...: each CHECK is "what|namespace|kind|ip|port|want" with kind tcp, udp
# or mapping (IP is the reflector's, PORT the local one), want open, refused, unreachable,
# closed (refused or unreachable: not open), symmetric or independent; runs them all at
# once, prints a table, returns 1 when one is not as wanted.
run_probes() {
  local i what ns kind ip port want got mark bad=0 pids=()
  mkdir -p "$LAB/probes"
  for i in $(seq 0 $(($# - 1))); do
    IFS='|' read -r _ ns kind ip port _ <<<"${@:$((i + 1)):1}"
    case "$kind" in
      mapping) ip netns exec "$ns" python3 -I -c "$MAPPING" "$ip" "$port" 1.5 "$LAB" ;;
      *) ip netns exec "$ns" python3 -I -c "$PROBE" "$kind" "$ip" "$port" 1.5 "$LAB" ;;
    esac >"$LAB/probes/$i" 2>&1 &
    pids+=($!)
  done
  for i in "${pids[@]}"; do wait "$i" || true; done
  for i in $(seq 0 $(($# - 1))); do
    IFS='|' read -r what ns kind ip port want <<<"${@:$((i + 1)):1}"
    got=$(cat "$LAB/probes/$i" 2>/dev/null || true)
    case "$want:$got" in
      open:open | refused:refused | unreachable:unreachable | closed:refused | closed:unreachable) mark=ok ;;
      symmetric:symmetric | independent:independent) mark=ok ;;
      *) mark=FAIL bad=1 ;;
    esac
    printf 'nat_lab:   %-7s %-50s %-12s %s\n' "$kind" "$what" "${got:-no answer}" "$mark"
  done
  return "$bad"
}

# ---------------------------------------------------------------- services and peers

peer_env() {  # peer_env NAME -> env -i arguments
  printf '%s\0' env -i "PATH=$PATH" "HOME=$LAB/$1/home" "LANG=C.UTF-8" PYTHONUNBUFFERED=1 \
    "XDG_CONFIG_HOME=$LAB/$1/home/.config" "XDG_CACHE_HOME=$LAB/$1/home/.cache" \
    "RTC_SIGNALING_TOKEN_FILE=$LAB/secrets/token"
}
wait_for() {  # wait_for SECONDS WHAT PID COMMAND...: poll COMMAND while PID runs
  local seconds=$1 what=$2 pid=$3 until_ms=$(($(now_ms) + $1 * 1000))
  shift 3
  until "$@"; do
    kill -0 "$pid" 2>/dev/null || fail "$what exited before it was ready"
    [ "$(now_ms)" -lt "$until_ms" ] || fail "$what not ready after $seconds s"
    sleep 0.1
  done
}
json() { "$PY" -c 'import json, sys
value = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    value = value[key]
print(value)' "$@"; }

# ---------------------------------------------------------------- evidence

# SESSIONS LOG WORKER_IDS WORKER_NAT CLIENT_NAT: one verdict over coturn's --verbose log:
# every session of a worker (WORKER_IDS comma-separated) came from the workers' NAT
# address, every other from the client's, none from a private address; the closing
# "usage" lines give the bytes each side sent.
SESSIONS='
import re, sys
log, workers, worker_nat, client_nat = sys.argv[1:5]
workers = workers.split(",")
sessions = {}
for line in open(log, errors="replace"):
    m = re.search(r"session (\d+): (.*)", line)
    if not m:
        continue
    s = sessions.setdefault(m[1], {"user": None, "remote": None, "rb": 0, "binds": 0})
    body = m[2]
    if u := re.search(r"new, realm=<[^>]*>, username=<\d+:([^>]+)>", body):
        s["user"] = u[1]
    elif c := re.search(r"closed .*remote ([\d.]+):\d+", body):
        s["remote"] = c[1]
    elif body.startswith("usage: "):
        s["rb"] += int(re.search(r", rb=(\d+),", body)[1])
    elif "CHANNEL_BIND processed, success" in body:
        s["binds"] += 1
mine = [s for s in sessions.values() if s["user"]]
open_ = [s["user"] for s in mine if s["remote"] is None]
if open_:
    sys.exit(f"sessions not closed yet: {open_}")
wrong = [
    "{} from {}".format(s["user"], s["remote"])
    for s in mine
    if s["remote"] != (worker_nat if s["user"] in workers else client_nat)
]
if wrong:
    sys.exit("sessions from unexpected addresses: " + ", ".join(wrong))
w = [s for s in mine if s["user"] in workers]
c = [s for s in mine if s["user"] not in workers]
if len(w) < 2 or len(c) < 2 or any(s["binds"] < 1 for s in mine):
    sys.exit(f"expected two bound sessions per side, got worker {len(w)}, client {len(c)}")
print(len(w), len(c), sum(s["rb"] for s in c), sum(s["rb"] for s in w))
'
counter() {  # counter NS CHAIN COMMENT -> "packets bytes"
  ip netns exec "$1" nft list chain ip rtcnat "$2" |
    sed -nE "/$3/ s/.*counter packets ([0-9]+) bytes ([0-9]+).*/\1 \2/p" | head -n 1
}
mb() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1e6 }'; }
