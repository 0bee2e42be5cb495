#!/usr/bin/env bash
# Checks every /metrics endpoint against Prometheus' exposition conventions
# with `promtool check metrics`: starts discovery and one proxy (with a
# tiny upstream) on ephemeral ports from the built `tether` binary, scrapes
# both, and fails on any finding. promtool comes from Debian's
# `prometheus` package, installed when missing (the script says so).
#
#   bash scripts/check-metrics.sh            # target/release or target/debug
#   TETHER_BIN=path/to/tether bash scripts/check-metrics.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"

if ! command -v promtool >/dev/null; then
    echo "check-metrics: promtool missing: installing Debian's prometheus package"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus >/dev/null
fi

bin="${TETHER_BIN:-}"
if [ -z "$bin" ]; then
    for b in target/release/tether target/debug/tether; do
        [ -x "$b" ] && bin="$b" && break
    done
fi
if [ -z "$bin" ]; then
    cargo build --quiet --bin tether
    bin=target/debug/tether
fi
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"

work="$(mktemp -d)"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() {
    for _ in $(seq 1 100); do
        curl -fsS -o /dev/null "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "check-metrics: $1 did not answer" >&2
    return 1
}

"$bin" keygen --dir "$work/secrets" >/dev/null
d_port="$(free_port)"; p_port="$(free_port)"; a_port="$(free_port)"; u_port="$(free_port)"

# A tiny upstream that answers /health, so the proxy starts healthy.
python3 - "$u_port" >"$work/upstream.log" 2>&1 <<'PY' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.send_header("content-length", "3"); self.end_headers(); self.wfile.write(b"ok\n")
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()
PY
pids+=($!)

sed -e "s|^listen *=.*|listen = \"127.0.0.1:$d_port\"|" "$ROOT/conf/discovery.toml" >"$work/discovery.toml"
sed -e "s|^listen *=.*|listen = \"127.0.0.1:$p_port\"|" \
    -e "s|^admin_listen *=.*|admin_listen = \"127.0.0.1:$a_port\"|" \
    -e "s|^public_url *=.*|public_url = \"http://127.0.0.1:$p_port\"|" \
    -e "s|^addresses *=.*|addresses = [\"127.0.0.1:$u_port\"]|" \
    -e "s|^url *=.*|url = \"http://127.0.0.1:$d_port\"|" \
    "$ROOT/conf/proxy.eu.toml" >"$work/proxy.toml"

TETHER_LOG=warn "$bin" discovery --config "$work/discovery.toml" >"$work/discovery.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$d_port/metrics"
TETHER_LOG=warn "$bin" proxy --config "$work/proxy.toml" >"$work/proxy.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$a_port/metrics"

failed=0
for target in "discovery http://127.0.0.1:$d_port/metrics" "proxy http://127.0.0.1:$a_port/metrics"; do
    name="${target%% *}"; url="${target#* }"
    curl -fsS "$url" >"$work/$name.metrics"
    if out="$(promtool check metrics <"$work/$name.metrics" 2>&1)"; then
        echo "check-metrics: $name /metrics: ok ($(grep -vc '^#' "$work/$name.metrics") samples)"
    else
        echo "check-metrics: $name /metrics: promtool found problems:"
        echo "$out" | sed 's/^/  /'
        failed=1
    fi
done
exit "$failed"
