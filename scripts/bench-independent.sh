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
# KEEP_DIR=1 (keep the scratch directory, its configs and logs).
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
cleanup() {
  for p in "${PIDS[@]:-}"; do [ -n "$p" ] && kill -9 "$p" 2>/dev/null || true; done
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
# SIGKILL (Pingora lingers for its grace period on SIGTERM) and reap.
stop() { kill -9 "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }

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
  run_wrk "$port" "" "$pid"
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
  run_wrk "$port" "$TOKEN" "$pid"
  stop "$pid"
}

measure_tether() { # $1 binary
  local port admin; port=$(free_port); admin=$(free_port)
  tether_conf "$port" "$admin" >"$DIR/tether.$port.toml"
  start $PROXY_CORE "$DIR/tether.$port.log" env TETHER_LOG=error "$1" proxy --config "$DIR/tether.$port.toml"
  local pid=$LAST_PID
  wait_200 "$port" "$TOKEN" >&2
  run_wrk "$port" "$TOKEN" "$pid"
  stop "$pid"
}

measure_pingora() {
  local port; port=$(free_port)
  start $PROXY_CORE "$DIR/pingora.log" env TETHER_BENCH_ROLE=passthrough \
    TETHER_BENCH_LISTEN="127.0.0.1:$port" TETHER_BENCH_UPSTREAM="127.0.0.1:$UP_PORT" "$PINGORA_BIN"
  local pid=$LAST_PID
  wait_200 "$port" >&2
  run_wrk "$port" "" "$pid"
  stop "$pid"
}

NAMES=("nginx proxy_pass" "HAProxy + JWT")
for t in "${TETHERS[@]}"; do NAMES+=("tether $t"); done
[ -n "${PINGORA_BIN:-}" ] && NAMES+=("plain Pingora")
declare -A RESULTS CPU
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for r in $(seq 1 "$ROUNDS"); do
  mint
  i=0
  for name in "${NAMES[@]}"; do
    case "$name" in
      "nginx proxy_pass") v=$(measure_nginx) ;;
      "HAProxy + JWT") v=$(measure_haproxy) ;;
      "plain Pingora") v=$(measure_pingora) ;;
      *) v=$(measure_tether "${name#tether }") ;;
    esac
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
i=0
for name in "${NAMES[@]}"; do
  m=$(echo "${RESULTS[$i]}" | median)
  ratio() { if [[ "$m" =~ ^[0-9]+$ && "$1" =~ ^[0-9]+$ ]]; then awk -v a="$m" -v b="$1" 'BEGIN {printf "%.2f", a/b}'; else echo -; fi; }
  c=$(echo "${CPU[$i]}" | fmedian)
  cr=$(awk -v a="$c" -v b="$HACPU" 'BEGIN {if (a+0 > 0 && b+0 > 0) printf "%.2f", a/b; else print "-"}')
  echo "| $name | $(echo "${RESULTS[$i]}" | sed 's/^ //; s/ /, /g') | $m | $(ratio "$HA") | $(ratio "$NG") | $c | $cr |"
  i=$((i + 1))
done
