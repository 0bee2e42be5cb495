#!/usr/bin/env bash
# The independent side-by-side run of shared/notes/independent-bench.md,
# outside `cargo bench`, so that it and the project's bench can be run one
# after the other on the same machine (docs/benchmarks.md, "Method").
#
#   scripts/bench-independent.sh TETHER_BINARY [MORE_TETHER_BINARIES...]
#
# Builds nothing: give it release binaries (`cargo build --release --bin
# tether`, or a copy of an older build for a before/after). Needs nginx,
# haproxy (>= 2.5 with jwt_verify), wrk and taskset (scripts/bench-deps.sh).
#
# Method (the note's): one nginx upstream (`return 200`, one worker,
# keepalive_requests 1000000) on core 0; `wrk -t1 -c32 -d5s` on core 0;
# each proxy started alone on core 1 with one worker right before its run
# and killed right after (nothing else of the bench runs on core 1);
# keep-alive everywhere; rounds interleaved (nginx, HAProxy, tether…,
# then again), medians. Every answer must be 2xx: a run with a non-2xx
# answer or a socket error is marked and left out of the medians.
#
# Knobs (environment): ROUNDS (3), SECS (5), WARMUP_SECS (1: a wrk run
# before the measured one, against the same process), CONNS (32),
# PINGORA_BIN (a `proxy` bench binary, target/release/deps/proxy-*: adds
# the plain Pingora pass-through row, TETHER_BENCH_ROLE=passthrough),
# KEEP_DIR=1 (keep the scratch directory, its configs and logs),
# OPEN_ROUNDS (0; issue 17's tail tier: after the closed rounds, this many
# interleaved open-loop rounds per proxy at 50% of its own median
# maximum, OPEN_SECS (4) each after a 1 s warm-up, from the bench's own
# paced generator with coordinated-omission correction, the one `cargo
# bench --bench peers` uses; it lives in the bench binary, so PINGORA_BIN
# is required. The p99 of one short run is decided by whether a
# disturbance of the machine falls into it; medians over many rounds,
# printed with every round's figure, are what can be compared.)
set -euo pipefail

[ $# -ge 1 ] || { sed -n 2,25p "$0"; exit 2; }
TETHERS=("$@")
ROUNDS=${ROUNDS:-3}
SECS=${SECS:-5}
WARMUP_SECS=${WARMUP_SECS:-1}
CONNS=${CONNS:-32}
LOAD_CORE=0
PROXY_CORE=1

need() { command -v "$1" >/dev/null 2>&1 || [ -x "/usr/sbin/$1" ] || { echo "missing $1 (scripts/bench-deps.sh)"; exit 1; }; }
for b in nginx haproxy wrk taskset; do need "$b"; done
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
HAPROXY=$(command -v haproxy || echo /usr/sbin/haproxy)
for t in "${TETHERS[@]}"; do [ -x "$t" ] || { echo "not an executable: $t"; exit 1; }; done

DIR=$(mktemp -d /tmp/bench-independent.XXXXXX)
chmod 755 "$DIR"
PIDS=()
# SIGKILL (Pingora lingers for its grace period on SIGTERM) and reap, then
# the children it had (an nginx master killed alone leaves its worker
# behind; killing the worker first makes the master start another).
stop() {
  local kids; kids=$(pgrep -P "$1" || true)
  kill -9 "$1" 2>/dev/null || true
  [ -n "$kids" ] && kill -9 $kids 2>/dev/null || true
  wait "$1" 2>/dev/null || true
}
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && stop "$p"; done
  wait 2>/dev/null || true
  if [ "${KEEP_DIR:-0}" = 1 ]; then echo "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT

# A free TCP port on 127.0.0.1 (bound and released; nothing else picks
# ports here).
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# Waits until GET / (with the optional bearer token) answers 200.
wait_200() {
  local port=$1 auth=${2:-} i code
  for i in $(seq 1 200); do
    if [ -n "$auth" ]; then
      code=$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $auth" "http://127.0.0.1:$port/" || true)
    else
      code=$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/" || true)
    fi
    [ "$code" = 200 ] && return 0
    sleep 0.05
  done
  echo "127.0.0.1:$port not answering 200 (last: $code)"; return 1
}
# Starts a command in the background pinned to a core; sets $LAST_PID.
start() {
  local core=$1 log=$2; shift 2
  taskset -c "$core" "$@" >"$log" 2>&1 &
  LAST_PID=$!
  PIDS+=("$LAST_PID")
}

SECRET=0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0
SERVER_ID=use1-a
UP_PORT=$(free_port)
DEAD_PORT=$(free_port)  # discovery: nobody listens here

# The upstream, as in the note (access logging off: the note's line says
# nothing; logging on would only slow the upstream for everyone alike).
cat >"$DIR/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $DIR/upstream.pid;
error_log $DIR/upstream.error.log error;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $DIR/u-body; proxy_temp_path $DIR/u-proxy;
    fastcgi_temp_path $DIR/u-fcgi; uwsgi_temp_path $DIR/u-uwsgi; scgi_temp_path $DIR/u-scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    server {
        listen 127.0.0.1:$UP_PORT;
        location / { return 200 "hello from upstream\n"; }
    }
}
EOF
start $LOAD_CORE "$DIR/upstream.log" "$NGINX" -p "$DIR" -c "$DIR/upstream.conf"
wait_200 "$UP_PORT"

# The tether config of the note, and its key ring (HS256, SECRET).
secret_hex=$(printf %s "$SECRET" | od -An -tx1 | tr -d ' \n')
printf 'signing_kid = "bench"\n\n[[keys]]\nkid = "bench"\nalg = "HS256"\nsecret_hex = "%s"\n' "$secret_hex" >"$DIR/keyring.toml"
echo "bench-independent-cluster-token-0123" >"$DIR/cluster.token"
tether_conf() { # $1 port, $2 admin port
  cat <<EOF
[server]
id = "$SERVER_ID"
region = "us-east-1"
public_url = "http://127.0.0.1:$1"
listen = "127.0.0.1:$1"
admin_listen = "127.0.0.1:$2"
worker_threads = 1

[upstream]
addresses = ["127.0.0.1:$UP_PORT"]
health_path = "/"
health_interval_ms = 1000

[discovery]
url = "http://127.0.0.1:$DEAD_PORT"
cluster_token_file = "cluster.token"

[tokens]
issuer = "tether"
audience = "app"
keyring_file = "keyring.toml"

[login]
upstream_path = "/login"
subject = { json_pointer = "/userId" }

[limits]
max_connections_per_ip = 0
EOF
}
tether_conf 1 2 >"$DIR/mint.toml"
# The same token for HAProxy and every tether; minted again each round
# (the default access lifetime is 120 s).
mint() {
  TOKEN=$("${TETHERS[0]}" token mint --config "$DIR/mint.toml" --sub u1 |
    python3 -c 'import sys,json; print(json.load(sys.stdin)["accessToken"])')
}
mint
echo "token: ${#TOKEN} bytes"

# CPU ticks (user + system) of a process and its children (nginx: master
# and worker).
ticks() {
  local t=0 p
  for p in $1 $(ps -o pid= --ppid "$1" 2>/dev/null); do
    t=$((t + $(awk '{print $14 + $15}' "/proc/$p/stat" 2>/dev/null || echo 0)))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)

# One measured run of the target at $1 (pid $3): warm-up, wrk, and the
# target's CPU over the measured run only. Prints "rps cpu_us_per_request"
# or "BAD:<why>".
run_wrk() { # $1 port, $2 auth (or empty), $3 pid
  local args=(-t1 "-c$CONNS")
  [ -n "$2" ] && args+=(-H "Authorization: Bearer $2")
  if [ "$WARMUP_SECS" -gt 0 ]; then
    taskset -c $LOAD_CORE wrk "${args[@]}" "-d${WARMUP_SECS}s" "http://127.0.0.1:$1/" >/dev/null
  fi
  local out t0 t1
  t0=$(ticks "$3")
  out=$(taskset -c $LOAD_CORE wrk "${args[@]}" "-d${SECS}s" "http://127.0.0.1:$1/")
  t1=$(ticks "$3")
  echo "$out" >>"$DIR/wrk.log"
  local bad
  bad=$(echo "$out" | grep -E 'Non-2xx|Socket errors' || true)
  if [ -n "$bad" ]; then echo "BAD:$(echo "$bad" | tr '\n' ' ')"; return; fi
  echo "$out" | awk -v t=$((t1 - t0)) -v hz="$HZ" '
    /requests in/ {n = $1}
    /Requests\/sec:/ {r = $2}
    END {printf "%.0f %.1f\n", r, t / hz * 1e6 / n}'
}

measure_nginx() {
  local port; port=$(free_port)
  cat >"$DIR/nginx-proxy.conf" <<EOF
worker_processes 1;
daemon off;
pid $DIR/proxy.pid;
error_log $DIR/proxy.error.log error;
events { worker_connections 4096; }
http {
    access_log off;
    client_body_temp_path $DIR/p-body; proxy_temp_path $DIR/p-proxy;
    fastcgi_temp_path $DIR/p-fcgi; uwsgi_temp_path $DIR/p-uwsgi; scgi_temp_path $DIR/p-scgi;
    keepalive_requests 1000000;
    upstream up { server 127.0.0.1:$UP_PORT; keepalive 64; }
    server {
        listen 127.0.0.1:$port;
        location / { proxy_pass http://up; proxy_http_version 1.1; proxy_set_header Connection ""; }
    }
}
EOF
  start $PROXY_CORE "$DIR/nginx-proxy.log" "$NGINX" -p "$DIR" -c "$DIR/nginx-proxy.conf"
  local pid=$LAST_PID
  wait_200 "$port" >&2
  $RUN "$port" "" "$pid" nginx
  stop "$pid"
}

measure_haproxy() {
  local port; port=$(free_port)
  cat >"$DIR/haproxy.cfg" <<EOF
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
    option http-keep-alive
    http-reuse always
frontend bench
    bind 127.0.0.1:$port
    http-request set-var(txn.bearer) http_auth_bearer
    http-request set-var(txn.alg) var(txn.bearer),jwt_header_query('\$.alg')
    http-request deny deny_status 401 unless { var(txn.alg) -m str HS256 }
    http-request deny deny_status 401 unless { var(txn.bearer),jwt_verify(txn.alg,"$SECRET") -m int 1 }
    http-request set-var(txn.exp) var(txn.bearer),jwt_payload_query('\$.exp','int')
    http-request set-var(txn.now) date
    http-request deny deny_status 401 if { var(txn.exp),sub(txn.now) -m int lt 0 }
    http-request set-var(txn.srv) var(txn.bearer),jwt_payload_query('\$.srv')
    use_backend local if { var(txn.srv) -m str $SERVER_ID }
    default_backend wrong
backend local
    server up 127.0.0.1:$UP_PORT
backend wrong
    http-request return status 421
EOF
  start $PROXY_CORE "$DIR/haproxy.log" "$HAPROXY" -db -f "$DIR/haproxy.cfg"
  local pid=$LAST_PID
  wait_200 "$port" "$TOKEN" >&2
  $RUN "$port" "$TOKEN" "$pid" haproxy
  stop "$pid"
}

measure_tether() { # $1 binary
  local port admin; port=$(free_port); admin=$(free_port)
  tether_conf "$port" "$admin" >"$DIR/tether.$port.toml"
  start $PROXY_CORE "$DIR/tether.$port.log" env TETHER_LOG=error "$1" proxy --config "$DIR/tether.$port.toml"
  local pid=$LAST_PID
  wait_200 "$port" "$TOKEN" >&2
  $RUN "$port" "$TOKEN" "$pid" "tether $1"
  stop "$pid"
}

measure_pingora() {
  local port; port=$(free_port)
  start $PROXY_CORE "$DIR/pingora.log" env TETHER_BENCH_ROLE=passthrough \
    TETHER_BENCH_LISTEN="127.0.0.1:$port" TETHER_BENCH_UPSTREAM="127.0.0.1:$UP_PORT" "$PINGORA_BIN"
  local pid=$LAST_PID
  wait_200 "$port" >&2
  $RUN "$port" "" "$pid" pingora
  stop "$pid"
}

OPEN_ROUNDS=${OPEN_ROUNDS:-0}
OPEN_SECS=${OPEN_SECS:-4}
if [ "$OPEN_ROUNDS" -gt 0 ] && [ -z "${PINGORA_BIN:-}" ]; then
  echo "OPEN_ROUNDS needs PINGORA_BIN (the open-loop generator is in the bench binary)"; exit 2
fi
# One open-loop run against $1 at $OPEN_RATE req/s (after a 1 s warm-up
# at that rate). Prints "p50 p99 p99.9" in µs, or "BAD:<why>".
run_open() { # $1 port, $2 auth (or empty); $3 pid, $4 name: unused
  local bearer=null
  [ -n "$2" ] && bearer="\"$2\""
  local spec out
  spec=$(printf '{"addr":"127.0.0.1:%s","bearer":%s,"connections":%s,"warmup_ms":1000,"duration_ms":%s,"rate":%s,"post":null}' \
    "$1" "$bearer" "$CONNS" $((OPEN_SECS * 1000)) "$OPEN_RATE")
  out=$(TETHER_BENCH_ROLE=loadgen TETHER_BENCH_LOAD="$spec" taskset -c $LOAD_CORE "$PINGORA_BIN" | tail -1)
  echo "$out" >>"$DIR/open.log"
  echo "$out" | python3 -c '
import json, sys
d = json.load(sys.stdin)
if d["errors"]:
    print("BAD:%d errors" % d["errors"])
else:
    print("%.0f %.0f %.0f" % (d["p50_us"], d["p99_us"], d["p999_us"]))'
}
RUN=run_wrk
TIERS=()

NAMES=("nginx proxy_pass" "HAProxy + JWT")
for t in "${TETHERS[@]}"; do NAMES+=("tether $t"); done
[ -n "${PINGORA_BIN:-}" ] && NAMES+=("plain Pingora")
declare -A RESULTS CPU
measure() { # $1 name
  case "$1" in
    "nginx proxy_pass") measure_nginx ;;
    "HAProxy + JWT") measure_haproxy ;;
    "plain Pingora") measure_pingora ;;
    *) measure_tether "${1#tether }" ;;
  esac
}
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
  mint
  i=0
  for name in "${NAMES[@]}"; do
    v=$(measure "$name")
    printf 'round %d  %-60s %s\n' "$r" "$name" "$v"
    read -r rps cpu <<<"$v"
    RESULTS[$i]="${RESULTS[$i]:-} $rps"
    CPU[$i]="${CPU[$i]:-} ${cpu:-BAD}"
    i=$((i + 1))
  done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

median() { tr ' ' '\n' | grep -E '^[0-9]+$' | sort -n | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else printf "%.0f\n", (a[NR/2]+a[NR/2+1])/2}'; }
echo
echo "| path | rounds (req/s) | median | ÷ HAProxy | ÷ nginx | CPU µs/req (median) | CPU ÷ HAProxy |"
echo "|---|---|---|---|---|---|---|"
NG=$(echo "${RESULTS[0]}" | median)
HA=$(echo "${RESULTS[1]}" | median)
fmedian() { tr ' ' '\n' | grep -E '^[0-9.]+$' | sort -g | awk '{a[NR]=$1} END {if (NR==0) print "-"; else if (NR%2) print a[(NR+1)/2]; else printf "%.1f\n", (a[NR/2]+a[NR/2+1])/2}'; }
HACPU=$(echo "${CPU[1]}" | fmedian)
# $1 ÷ $2 to two places, "-" unless both are whole numbers and $2 > 0.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {if (a ~ /^[0-9]+$/ && b ~ /^[0-9]+$/ && b > 0) printf "%.2f", a / b; else print "-"}'; }
i=0
for name in "${NAMES[@]}"; do
  m=$(echo "${RESULTS[$i]}" | median)
  c=$(echo "${CPU[$i]}" | fmedian)
  cr=$(awk -v a="$c" -v b="$HACPU" 'BEGIN {if (a+0 > 0 && b+0 > 0) printf "%.2f", a/b; else print "-"}')
  echo "| $name | $(echo "${RESULTS[$i]}" | sed 's/^ //; s/ /, /g') | $m | $(ratio "$m" "$HA") | $(ratio "$m" "$NG") | $c | $cr |"
  i=$((i + 1))
done

[ "$OPEN_ROUNDS" -gt 0 ] || exit 0

# Open loop at 50% of each one's own median maximum (issue 17's tail
# tier), rounds interleaved as above.
echo
RUN=run_open
declare -A P50 P99 P999 RATE
i=0
for name in "${NAMES[@]}"; do
  m=$(echo "${RESULTS[$i]}" | median)
  [[ "$m" =~ ^[0-9]+$ ]] && RATE[$i]=$((m / 2)) || RATE[$i]=""
  i=$((i + 1))
done
for r in $(seq 1 "$OPEN_ROUNDS"); do
  mint
  i=0
  for name in "${NAMES[@]}"; do
    if [ -n "${RATE[$i]}" ]; then
      OPEN_RATE=${RATE[$i]}
      v=$(measure "$name")
      printf 'open round %d  %-55s %6s req/s  %s\n' "$r" "$name" "$OPEN_RATE" "$v"
      read -r a b c <<<"$v"
      P50[$i]="${P50[$i]:-} $a"
      P99[$i]="${P99[$i]:-} $b"
      P999[$i]="${P999[$i]:-} $c"
    fi
    i=$((i + 1))
  done
done
echo "load average after the open rounds: $(cut -d' ' -f1-3 /proc/loadavg)"
ms() { awk -v u="$1" 'BEGIN {if (u ~ /^[0-9]+$/) printf "%.2f", u / 1000; else print "-"}'; }
echo
echo "Open loop at 50% of each one's median maximum, $OPEN_ROUNDS rounds of $OPEN_SECS s, medians (ms); p99 of every round, sorted"
echo
echo "| path | req/s | p50 | p99 | p99.9 | p99 ÷ HAProxy's | p99.9 ÷ HAProxy's | p99 by round (ms) |"
echo "|---|---|---|---|---|---|---|---|"
HA99=$(echo "${P99[1]:-}" | median)
HA999=$(echo "${P999[1]:-}" | median)
i=0
for name in "${NAMES[@]}"; do
  if [ -n "${RATE[$i]}" ]; then
    a=$(echo "${P50[$i]}" | median)
    b=$(echo "${P99[$i]}" | median)
    c=$(echo "${P999[$i]}" | median)
    byround=$(echo "${P99[$i]}" | tr ' ' '\n' | grep -E '^[0-9]+$' | sort -n | awk '{printf "%s%.1f", (NR > 1 ? ", " : ""), $1 / 1000}')
    echo "| $name | ${RATE[$i]} | $(ms "$a") | $(ms "$b") | $(ms "$c") | $(ratio "$b" "$HA99") | $(ratio "$c" "$HA999") | $byround |"
    case "$name" in
      "tether "*)
        if [[ "$b" =~ ^[0-9]+$ && "$c" =~ ^[0-9]+$ && "$HA99" =~ ^[0-9]+$ && "$HA999" =~ ^[0-9]+$ ]]; then
          if [ "$b" -le "$HA99" ] && [ "$c" -le "$HA999" ]; then verdict=met; else verdict="not met"; fi
          TIERS+=("must: open-loop p99 and p99.9 at 50% load <= HAProxy's ($name): $(ms "$b") / $(ms "$c") ms vs $(ms "$HA99") / $(ms "$HA999") ms -> $verdict")
        fi
        ;;
    esac
  fi
  i=$((i + 1))
done
echo
for t in "${TIERS[@]:-}"; do [ -n "$t" ] && echo "$t"; done
