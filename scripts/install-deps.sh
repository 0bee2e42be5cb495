#!/usr/bin/env bash
# Installs the system packages tether's build and tests need on a fresh
# machine: cmake (Pingora's build), protoc (the etcd-client crate compiles
# etcd's gRPC definitions at build time) and etcd itself (the discovery
# tests over etcd start their own members; the system service is never
# used). Says what it installs; does nothing when everything is already
# there.
set -euo pipefail
need=()
command -v cmake >/dev/null 2>&1 || need+=(cmake)
command -v cc >/dev/null 2>&1 || need+=(build-essential)
command -v protoc >/dev/null 2>&1 || need+=(protobuf-compiler)
command -v etcd >/dev/null 2>&1 || need+=(etcd-server)
if [ ${#need[@]} -eq 0 ]; then
  echo "install-deps: cmake, a C compiler, protoc and etcd are present"
  exit 0
fi
echo "install-deps: installing ${need[*]} from the system packages"
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq "${need[@]}" >/dev/null
if [[ " ${need[*]} " == *" etcd-server "* ]]; then
  # Debian starts the packaged service; tether only runs its own members.
  $SUDO systemctl disable --now etcd >/dev/null 2>&1 || true
fi
echo "install-deps: done"
