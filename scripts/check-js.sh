#!/usr/bin/env bash
# Checks the TypeScript client (clients/js): installs its dev dependencies
# from the committed lockfile when node_modules is missing, then type-checks
# (strict), lints, builds dist/tether.js, checks that the demo page's copy
# (demo/web/tether.js) is that build, and runs the node tests. Prints how
# long each step took.
#
#   bash scripts/check-js.sh
#
# Needs Node 20 or newer with npm; on a Debian machine without them, installs
# Debian's nodejs and npm packages first (root only).
set -euo pipefail
cd "$(dirname "$0")/../clients/js"

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "check-js: node or npm is missing; installing Debian's nodejs and npm"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null
  else
    echo "check-js: node and npm (Node >= 20) are needed" >&2
    exit 1
  fi
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "check-js: Node $(node --version) is too old; 20 or newer is needed" >&2
  exit 1
fi

now_ms() { date +%s%3N; }
total_start="$(now_ms)"
step() {
  local name="$1"
  shift
  local start
  start="$(now_ms)"
  echo "check-js: $name"
  "$@"
  local ms=$(($(now_ms) - start))
  printf 'check-js: %s took %d.%03d s\n' "$name" $((ms / 1000)) $((ms % 1000))
}

if [ ! -d node_modules ]; then
  echo "check-js: node_modules is missing; installing the locked dev dependencies with npm ci"
  step "npm ci" npm ci --no-audit --no-fund
fi
step "tsc --noEmit (strict)" npm run --silent typecheck
step "lint (biome)" npm run --silent lint
step "build (dist/tether.js)" npm run --silent build
# The demo page serves a checked-in copy of the build (demo/web/tether.js,
# embedded in the tether binary); it must be this very build.
same_build() {
  if ! cmp -s dist/tether.js ../../demo/web/tether.js; then
    echo "check-js: demo/web/tether.js differs from a fresh build; run:" >&2
    echo "  (cd clients/js && npm run build) && cp clients/js/dist/tether.js demo/web/tether.js" >&2
    return 1
  fi
}
step "demo/web/tether.js is the fresh build" same_build
step "tests (node --test)" npm test --silent
ms=$(($(now_ms) - total_start))
printf 'check-js: all steps passed in %d.%03d s\n' $((ms / 1000)) $((ms % 1000))
