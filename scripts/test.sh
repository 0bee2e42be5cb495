#!/usr/bin/env bash
# The test command of the README: every unit, integration and end-to-end
# test of the workspace. Installs cmake first when it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cargo test --workspace "$@"
