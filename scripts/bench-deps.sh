#!/usr/bin/env bash
# Installs what the proxy benches need (docs/benchmarks.md) from the
# system packages, and says so: wrk (closed-loop load, and HTTP/1.1 over
# TLS), h2load from nghttp2-client (HTTP/2 over TLS: benches/edge.rs),
# nginx (the trivial upstream and the nginx proxy_pass peer), haproxy
# (the HAProxy + jwt_verify peer; needs >= 2.5 built with OpenSSL) and util-linux
# (taskset, to pin processes to cores). The benches run without any of
# them: a missing peer is skipped with a message, a missing nginx upstream
# or wrk is replaced by the bench's own Rust server or load generator.
# Installing nginx or haproxy does not start them as services here.
set -euo pipefail
declare -A pkg=([wrk]=wrk [h2load]=nghttp2-client [nginx]=nginx-light [haproxy]=haproxy [taskset]=util-linux)
need=()
for bin in wrk h2load nginx haproxy taskset; do
  if command -v "$bin" >/dev/null 2>&1 || [ -x "/usr/sbin/$bin" ]; then
    echo "bench-deps: $bin present"
  else
    need+=("${pkg[$bin]}")
  fi
done
if [ ${#need[@]} -gt 0 ]; then
  echo "bench-deps: installing ${need[*]} (apt-get)"
  SUDO=""
  if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi
# HAProxy's jwt_verify (2.5+, OpenSSL): check a config that uses it.
haproxy=$(command -v haproxy || echo /usr/sbin/haproxy)
if [ -x "$haproxy" ]; then
  cfg=$(mktemp)
  printf 'defaults\n  mode http\n  timeout client 1s\n  timeout server 1s\n  timeout connect 1s\nfrontend f\n  bind 127.0.0.1:1\n  http-request deny unless { http_auth_bearer,jwt_verify("HS256","secret") -m int 1 }\n' >"$cfg"
  if "$haproxy" -c -q -f "$cfg" >/dev/null 2>&1; then
    echo "bench-deps: $("$haproxy" -v | head -1 | cut -d' ' -f1-3) supports jwt_verify"
  else
    echo "bench-deps: this haproxy lacks jwt_verify (needs >= 2.5 with OpenSSL): the bench will skip the HAProxy peer"
  fi
  rm -f "$cfg"
fi
echo "bench-deps: done"
