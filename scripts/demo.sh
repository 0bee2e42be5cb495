#!/usr/bin/env bash
# The demo command of the README: installs what a fresh machine lacks
# (cmake, for Pingora's build), builds tether and runs `tether demo`.
# Extra arguments go to `tether demo` (e.g. --json, --serve).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo build --quiet --bin tether
exec ./target/debug/tether demo "$@"
