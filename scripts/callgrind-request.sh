#!/usr/bin/env bash
# User-space instructions per proxied request, counted by callgrind: the
# deterministic figure of docs/benchmarks.md ("Hot path"), steady on a
# loaded machine where requests/s are not.
#
#   scripts/callgrind-request.sh tether BINARY         # a tether release binary
#   scripts/callgrind-request.sh passthrough BENCH_BIN # plain Pingora: a `proxy`
#                                                      # bench binary (target/release/deps/proxy-*)
#
# Builds nothing. Needs valgrind (callgrind_control), nginx, python3.
# Method: an nginx `return 200` upstream; the target under
# `valgrind --tool=callgrind --instr-atstart=no`; a warm-up of WARMUP
# requests with instrumentation off; then, instrumentation on, an idle
# window (background work only: health checks, heartbeats) and a window of
# exactly REQUESTS keep-alive requests over CONNS connections (the token of
# the tether config below in `Authorization` for tether, none for the
# pass-through, which forwards it unread anyway). Instructions per request
# = (loaded window − idle rate × its duration) ÷ REQUESTS; every answer
# must be 200. Heap allocations per request the same way, from the calls
# callgrind records into mimalloc's entry points (mi_malloc_aligned,
# mi_zalloc_aligned, mi_realloc_aligned: what the `mimalloc` crate's
# alloc, alloc_zeroed and realloc call, the three the benches' counting
# allocator counts). Knobs: REQUESTS (3000), WARMUP (500), CONNS (4),
# IDLE_SECS (3), KEEP_DIR=1 (keep the callgrind files for
# callgrind_annotate); for tether's Idempotency-Key cost (docs/idempotency.md,
# "Cost"): REQUEST=post-keyed (each request a JSON POST with a fresh
# Idempotency-Key; default: GET) and IDEMPOTENCY=true|false (writes
# `[idempotency] enabled`; default: the proxy's default).
set -euo pipefail
[ $# -eq 2 ] || { sed -n 2,20p "$0"; exit 2; }
ROLE=$1
BIN=$2
REQUESTS=${REQUESTS:-3000}
WARMUP=${WARMUP:-500}
CONNS=${CONNS:-4}
IDLE_SECS=${IDLE_SECS:-3}
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
[ -x "$NGINX" ] || { echo "nginx missing (scripts/bench-deps.sh)"; exit 1; }
command -v callgrind_control >/dev/null || { echo "valgrind missing (apt-get install valgrind)"; exit 1; }

DIR=$(mktemp -d /tmp/callgrind-request.XXXXXX)
chmod 755 "$DIR"
PIDS=()
cleanup() {
  # An nginx master killed alone leaves its worker running, and one whose
  # worker is killed first starts another: list the children, kill the
  # process, then them.
  for p in "${PIDS[@]:-}"; do
    [ -n "$p" ] || continue
    kids=$(pgrep -P "$p" || true)
    kill -9 "$p" 2>/dev/null || true
    [ -n "$kids" ] && kill -9 $kids 2>/dev/null || true
  done
  wait 2>/dev/null || true
  if [ "${KEEP_DIR:-0}" = 1 ]; then echo "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

UP=$(free_port)
cat >"$DIR/upstream.conf" <<EOF
worker_processes 1;
daemon off;
pid $DIR/upstream.pid;
error_log $DIR/upstream.error.log error;
events { worker_connections 1024; }
http {
    access_log off;
    client_body_temp_path $DIR/b; proxy_temp_path $DIR/p; fastcgi_temp_path $DIR/f;
    uwsgi_temp_path $DIR/u; scgi_temp_path $DIR/s;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$UP; location / { return 200 "hello from upstream\n"; } }
}
EOF
"$NGINX" -p "$DIR" -c "$DIR/upstream.conf" >"$DIR/upstream.log" 2>&1 &
PIDS+=($!)

PORT=$(free_port)
TOKEN=""
VG=(valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$DIR/cg.out")
case "$ROLE" in
  tether)
    SECRET=0f1e2d3c4b5a69788796a5b4c3d2e1f00112233445566778899aabbccddeeff0
    printf 'signing_kid = "bench"\n\n[[keys]]\nkid = "bench"\nalg = "HS256"\nsecret_hex = "%s"\n' \
      "$(printf %s "$SECRET" | od -An -tx1 | tr -d ' \n')" >"$DIR/keyring.toml"
    echo "callgrind-request-cluster-token-0123" >"$DIR/cluster.token"
    cat >"$DIR/proxy.toml" <<EOF
[server]
id = "use1-a"
region = "us-east-1"
public_url = "http://127.0.0.1:$PORT"
listen = "127.0.0.1:$PORT"
admin_listen = "127.0.0.1:$(free_port)"
worker_threads = 1
[upstream]
addresses = ["127.0.0.1:$UP"]
health_path = "/"
health_interval_ms = 1000
[discovery]
url = "http://127.0.0.1:$(free_port)"
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
    if [ -n "${IDEMPOTENCY:-}" ]; then
      printf '[idempotency]\nenabled = %s\n' "$IDEMPOTENCY" >>"$DIR/proxy.toml"
    fi
    TOKEN=$("$BIN" token mint --config "$DIR/proxy.toml" --sub u1 |
      python3 -c 'import sys,json; print(json.load(sys.stdin)["accessToken"])')
    TETHER_LOG=error "${VG[@]}" "$BIN" proxy --config "$DIR/proxy.toml" >"$DIR/target.log" 2>&1 &
    ;;
  passthrough)
    TETHER_BENCH_ROLE=passthrough TETHER_BENCH_LISTEN="127.0.0.1:$PORT" \
      TETHER_BENCH_UPSTREAM="127.0.0.1:$UP" "${VG[@]}" "$BIN" >"$DIR/target.log" 2>&1 &
    ;;
  *) echo "role: tether or passthrough"; exit 2 ;;
esac
TPID=$!
PIDS+=("$TPID")

# The client: exactly N keep-alive GETs over CONNS connections, round
# robin, each answer read in full and checked to be 200.
cat >"$DIR/client.py" <<'EOF'
import socket, sys, time, uuid
port, n, conns, token, kind = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
auth = f"Authorization: Bearer {token}\r\n" if token else ""
body = b'{"userId":"u1","sku":"bench","qty":1}'
def req():
    if kind == "post-keyed":
        head = (f"POST /orders HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nIdempotency-Key: {uuid.uuid4()}\r\n\r\n")
        return head.encode() + body
    return f"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}\r\n".encode()
deadline = time.time() + 120
while True:
    try:
        socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in range(conns)]
        break
    except OSError:
        if time.time() > deadline: raise
        time.sleep(0.2)
bufs = [b""] * conns
def answer(i):
    s = socks[i]
    while b"\r\n\r\n" not in bufs[i]:
        d = s.recv(65536)
        if not d: raise SystemExit("connection closed")
        bufs[i] += d
    head, rest = bufs[i].split(b"\r\n\r\n", 1)
    status = int(head.split(b" ", 2)[1])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"content-length": length = int(v)
    while len(rest) < length:
        d = s.recv(65536)
        if not d: raise SystemExit("connection closed")
        rest += d
    bufs[i] = rest[length:]
    if status != 200: raise SystemExit(f"status {status}")
sent = 0
t0 = time.time()
while sent < n:
    k = min(conns, n - sent)
    for i in range(k): socks[i].sendall(req())
    for i in range(k): answer(i)
    sent += k
print(f"{time.time() - t0:.3f}")
EOF
client() { python3 "$DIR/client.py" "$PORT" "$1" "$CONNS" "$TOKEN" "${REQUEST:-get}"; }
ir() { # total instructions of one dump file
  awk '/^(summary|totals):/ {print $2; exit}' "$1"
}
allocs() { # calls into mimalloc's allocation entry points in one dump file
  python3 - "$1" <<'PY'
import re, sys
names, total, cur = {}, 0, None
want = {"mi_malloc_aligned", "mi_zalloc_aligned", "mi_realloc_aligned"}
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"(c?fn)=\((\d+)\)(?: (.*))?", line)
    if m:
        if m.group(3):
            names[m.group(2)] = m.group(3).strip()
        cur = names.get(m.group(2), "") if m.group(1) == "cfn" else None
        continue
    if line.startswith("calls=") and cur is not None:
        if cur.split(" ")[0] in want:
            total += int(line[6:].split()[0])
        cur = None
print(total)
PY
}
client "$WARMUP" >/dev/null   # waits for the listener (valgrind starts slowly)
callgrind_control -i on "$TPID" >/dev/null
callgrind_control -z "$TPID" >/dev/null
sleep "$IDLE_SECS"
callgrind_control -d idle "$TPID" >/dev/null
secs=$(client "$REQUESTS")
callgrind_control -d load "$TPID" >/dev/null
callgrind_control -i off "$TPID" >/dev/null
files=$(ls "$DIR"/cg.out.* | sort -t. -k3 -n)
idle_file=$(echo "$files" | sed -n 1p)
load_file=$(echo "$files" | sed -n 2p)
idle=$(ir "$idle_file")
load=$(ir "$load_file")
idle_a=$(allocs "$idle_file")
load_a=$(allocs "$load_file")
python3 - "$idle" "$IDLE_SECS" "$load" "$secs" "$REQUESTS" "$ROLE" "$BIN" "$idle_a" "$load_a" <<'EOF'
import sys
idle, idle_s, load, secs, n, role, binary = int(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5]), sys.argv[6], sys.argv[7]
idle_a, load_a = int(sys.argv[8]), int(sys.argv[9])
per = (load - idle / idle_s * secs) / n
per_a = (load_a - idle_a / idle_s * secs) / n
print(f"{role} {binary}: {n} requests in {secs:.1f} s; idle {idle/idle_s:,.0f} instr/s; "
      f"{per:,.0f} instructions per request; {per_a:.1f} allocations per request")
EOF
if [ "${KEEP_DIR:-0}" = 1 ]; then echo "load window: $load_file (callgrind_annotate --inclusive=yes $load_file)"; fi
