#!/bin/bash
# Container health check for the tether image (Dockerfile HEALTHCHECK).
#
# The runtime image has no curl; bash's /dev/tcp is enough for one HTTP/1.1
# request to the process's own /healthz:
#   proxy (default): the admin listener, 200 when an upstream is healthy,
#                    503 when none is (then the container reports unhealthy,
#                    as Route 53 would see it);
#   discovery:       run the container with TETHER_HEALTH_PORT=7070.
# Exit 0 on a 200, 1 otherwise.
set -u
port="${TETHER_HEALTH_PORT:-9081}"
path="${TETHER_HEALTH_PATH:-/healthz}"
host="${TETHER_HEALTH_HOST:-127.0.0.1}"

exec 3<>"/dev/tcp/${host}/${port}" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: %s:%s\r\nConnection: close\r\n\r\n' "$path" "$host" "$port" >&3
IFS= read -r -t 3 status <&3 || exit 1
exec 3<&-
case "$status" in
  "HTTP/1."[01]" 200"*) exit 0 ;;
  *) echo "unhealthy: ${status%$'\r'}" >&2; exit 1 ;;
esac
