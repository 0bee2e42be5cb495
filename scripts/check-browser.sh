#!/usr/bin/env bash
# End-to-end test of the live demo page (`tether demo --serve`) in headless
# Chromium: e2e/demo.test.mjs, run with node's test runner and driven by
# the npm package playwright-core (e2e/package-lock.json).
#
#   bash scripts/check-browser.sh
#
# Installs what is missing, saying so: Debian's chromium (root only) and
# the locked playwright-core. No tool ever downloads a browser of its own:
# the test starts /usr/bin/chromium (or $CHROMIUM). Builds the tether
# binary (debug) unless $TETHER_BIN names one. The screenshot goes to
# target/e2e/demo.png. Prints how long each step took; the test itself is
# cut at 3 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$(pwd)"

now_ms() { date +%s%3N; }
total_start="$(now_ms)"
step() {
  local name="$1"
  shift
  local start
  start="$(now_ms)"
  echo "check-browser: $name"
  "$@"
  local ms=$(($(now_ms) - start))
  printf 'check-browser: %s took %d.%03d s\n' "$name" $((ms / 1000)) $((ms % 1000))
}
apt_install() {
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
  else
    echo "check-browser: $* missing, and this is not a root Debian shell to install them" >&2
    exit 1
  fi
}

if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "check-browser: node or npm is missing; installing Debian's nodejs and npm"
  step "apt-get install nodejs npm" apt_install nodejs npm
fi
major="$(node -p 'process.versions.node.split(".")[0]')"
if [ "$major" -lt 20 ]; then
  echo "check-browser: Node $(node --version) is too old; 20 or newer is needed" >&2
  exit 1
fi

export CHROMIUM="${CHROMIUM:-/usr/bin/chromium}"
if [ ! -x "$CHROMIUM" ]; then
  echo "check-browser: $CHROMIUM is missing; installing Debian's chromium"
  step "apt-get install chromium" apt_install chromium
fi
echo "check-browser: $("$CHROMIUM" --version 2>/dev/null || echo "$CHROMIUM")"

# playwright-core alone never downloads browsers; this makes sure of it.
export PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1
if [ ! -d e2e/node_modules/playwright-core ]; then
  echo "check-browser: e2e/node_modules is missing; installing the locked playwright-core with npm ci"
  step "npm ci (e2e)" npm --prefix e2e ci --no-audit --no-fund
fi

if [ -z "${TETHER_BIN:-}" ]; then
  step "cargo build --bin tether" cargo build --quiet --bin tether
  export TETHER_BIN="${CARGO_TARGET_DIR:-$root/target}/debug/tether"
fi
step "e2e: demo page in Chromium (node --test)" timeout 180 npm --prefix e2e test --silent
ms=$(($(now_ms) - total_start))
printf 'check-browser: all steps passed in %d.%03d s; screenshot: %s\n' \
  $((ms / 1000)) $((ms % 1000)) "$root/target/e2e/demo.png"
