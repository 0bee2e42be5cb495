#!/usr/bin/env bash
# Runs `tether demo --json` N times (default 50; release build) and prints,
# per run, the failed workflows of the tether phases (phase 2: tether,
# phase 3: tether with a proxy killed) with their causes, then one summary
# line. Phase 1 (geo routing alone) fails workflows by design and is not
# counted. Takes ~25 s a run. Not a CI step: run it by hand.
#
#   scripts/demo-50.sh            # 50 runs
#   scripts/demo-50.sh 10 --no-fast-failover   # 10 runs, extra demo flags
set -euo pipefail
cd "$(dirname "$0")/.."
runs="${1:-50}"
shift || true
command -v jq >/dev/null || { echo "demo-50: needs jq (apt-get install jq)" >&2; exit 2; }
cargo build --quiet --release --bin tether
bin=./target/release/tether
out="$(mktemp -d)"
failed_runs=0
failed_total=0
errored=0
for i in $(seq 1 "$runs"); do
    if ! "$bin" demo --json "$@" >"$out/run-$i.json" 2>"$out/run-$i.log"; then
        errored=$((errored + 1))
        echo "run $i: the demo itself failed (log: $out/run-$i.log)"
        continue
    fi
    n=$(jq '[.phases[1:][].failed] | add' "$out/run-$i.json")
    causes=$(jq -c '[.phases[1:][] | {(.name): .failureCauses}] | add' "$out/run-$i.json")
    echo "run $i: $n failed workflows (tether phases) $causes"
    if [ "$n" -gt 0 ]; then
        failed_runs=$((failed_runs + 1))
        failed_total=$((failed_total + n))
    fi
done
echo "summary: $failed_runs of $runs runs had a failed workflow in the tether phases ($failed_total failed workflows in all); $errored runs errored; JSON in $out"
[ "$failed_runs" -eq 0 ] && [ "$errored" -eq 0 ]
