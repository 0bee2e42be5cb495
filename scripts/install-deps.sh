#!/usr/bin/env bash
# Installs the system packages tether's build and tests need on a fresh
# machine: cmake (Pingora's build). Says what it installs; does nothing
# when everything is already there.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
if [ ${#need[@]} -eq 0 ]; then
  echo "install-deps: cmake and a C compiler are present"
  exit 0
fi
echo "install-deps: installing ${need[*]} from the system packages"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
echo "install-deps: done"
