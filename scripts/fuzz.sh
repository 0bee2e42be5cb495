#!/usr/bin/env bash
# Runs every cargo-fuzz target in fuzz/ for a bounded time and fails on the
# first crash (a panic, a failed invariant, an out-of-memory or a timeout).
#
#   bash scripts/fuzz.sh [seconds-per-target]     (default 20)
#
# Each target starts from its checked-in seeds (fuzz/corpus/<target>/,
# read only) plus what earlier runs found (fuzz/target/corpus/<target>/,
# ignored by git). A crash leaves its input in fuzz/artifacts/<target>/;
# reproduce it with `RUSTC_BOOTSTRAP=1 cargo fuzz run <target> <file>`.
#
# Why RUSTC_BOOTSTRAP=1: cargo-fuzz builds with `-Zsanitizer=address` and
# other `-Z` flags that only a nightly compiler accepts, and this machine
# (and CI) has only the stable toolchain, with no network to fetch nightly.
# RUSTC_BOOTSTRAP=1 lets the stable compiler accept those flags (it is how
# the Rust project builds its own compiler); it affects only the fuzz
# build, never the shipped binary. The sanitizer runtimes ship with the
# stable x86_64 Linux standard library.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
if ! [[ "$seconds" =~ ^[0-9]+$ ]] || [ "$seconds" -lt 1 ]; then
  echo "fuzz: seconds-per-target must be a positive whole number, got '$seconds'" >&2
  exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "fuzz: cargo-fuzz is missing; installing it from crates.io (takes a few minutes)"
  cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1
mapfile -t targets < <(cargo fuzz list)

echo "fuzz: building ${#targets[@]} targets (release, debug assertions, AddressSanitizer)"
cargo fuzz build

for t in "${targets[@]}"; do
  work="fuzz/target/corpus/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  echo "fuzz: $t for ${seconds}s"
  # -rss_limit_mb / -timeout turn memory blow-ups and hangs into failures;
  # -max_len keeps inputs near the size the services accept (16 KiB token
  # header, 64 KiB bodies).
  if ! cargo fuzz run "$t" "$work" "fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -max_len=70000 \
      -print_final_stats=1 2> "fuzz/target/$t.log"; then
    tail -n 60 "fuzz/target/$t.log" >&2
    echo "fuzz: $t FAILED; the crashing input is in fuzz/artifacts/$t/" >&2
    exit 1
  fi
  grep -E "^Done [0-9]+ runs" "fuzz/target/$t.log" | sed "s/^/fuzz: $t: /" || true
done
echo "fuzz: all ${#targets[@]} targets ran ${seconds}s each without a crash"
