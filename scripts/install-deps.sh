#!/usr/bin/env bash
# Installs the system packages tether's build and tests need on a fresh
# machine: cmake (Pingora's build), protoc (the etcd-client crate compiles
# etcd's gRPC definitions at build time), etcd (the discovery tests over
# etcd start their own members) and redis-server (the idempotency tests
# start a private one). The packaged system services are never used, and
# are disabled after install. Says what it installs; does nothing when
# everything is already there.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
[ -x /usr/bin/redis-server ] || need+=(redis-server)
if [ ${#need[@]} -eq 0 ]; then
  echo "install-deps: cmake, a C compiler, protoc, etcd and redis-server are present"
  exit 0
fi
echo "install-deps: installing ${need[*]} from the system packages"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
for svc in etcd redis-server; do
  if [[ " ${need[*]} " == *" ${svc/etcd/etcd-server} "* ]] && command -v systemctl >/dev/null 2>&1; then
    # Debian starts the packaged service; tether only runs its own.
    $SUDO systemctl disable --now "$svc" >/dev/null 2>&1 || true
  fi
done
# Without systemd (containers), a packaged service may still have been
# started by its init script: stop it so it holds no port.
pkill -x etcd >/dev/null 2>&1 || true
pkill -x redis-server >/dev/null 2>&1 || true
echo "install-deps: done"
