#!/usr/bin/env bash
# Installs the system packages tether's build and tests need on a fresh
# machine: cmake (Pingora's build) and redis-server (the idempotency
# tests start a private one; the system service is not used). Says what
# it installs; does nothing when everything is already there.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
[ -x /usr/bin/redis-server ] || need+=(redis-server)
if [ ${#need[@]} -eq 0 ]; then
  echo "install-deps: cmake, a C compiler and redis-server are present"
  exit 0
fi
echo "install-deps: installing ${need[*]} from the system packages"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
if [[ " ${need[*]} " == *" redis-server "* ]] && command -v systemctl >/dev/null 2>&1; then
  # The package enables a system service; the tests never use it.
  $SUDO systemctl disable --now redis-server >/dev/null 2>&1 || true
fi
echo "install-deps: done"
