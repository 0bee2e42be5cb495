#!/usr/bin/env bash
# Checks Cargo.lock against the RustSec advisory database with cargo-audit.
# The network is closed, so the database is the snapshot beside the repo:
# <repo>/../shared/advisory-db (CI runs in a clone placed beside shared/).
#
#   bash scripts/audit.sh
#
# Policy (docs/security-testing.md, "Dependency audit"):
# - a vulnerability advisory fails, unless its id is in ACCEPTED below: an
#   exception a maintainer reviewed and justified in
#   docs/security-testing.md (the vulnerable code is unreachable in tether
#   and no fixed release exists);
# - an "unsound" advisory fails, with the same exception list;
# - "unmaintained" and "yanked" warnings are listed and do not fail: an
#   unmaintained crate is a prompt to plan a replacement, not a hole. Each
#   one present is named and justified in docs/security-testing.md.
set -euo pipefail
cd "$(dirname "$0")/.."

# Advisories reviewed and accepted, one id a line with the reason; each is
# justified in docs/security-testing.md. Keep this list empty unless a
# maintainer signed off.
ACCEPTED=(
  RUSTSEC-2023-0071  # rsa (Marvin timing attack) via jsonwebtoken's rust_crypto backend: tether's key ring allows HS256 and EdDSA only, so no RSA operation ever runs; no fixed rsa release exists
)

db="$(git rev-parse --show-toplevel)/../shared/advisory-db"
if [ ! -d "$db/crates" ]; then
  echo "audit: no advisory database at $db (expected the RustSec snapshot in ../shared/advisory-db beside the repo)" >&2
  exit 1
fi
if ! cargo audit --version >/dev/null 2>&1; then
  echo "audit: cargo-audit is missing; installing it from crates.io (about 4 minutes)"
  cargo install cargo-audit --locked
fi
[ -f "$db/SNAPSHOT" ] && echo "audit: $(head -n 1 "$db/SNAPSHOT")"

args=(audit --db "$db" --no-fetch --deny unsound)
for id in "${ACCEPTED[@]}"; do
  args+=(--ignore "$id")
done
# cargo-audit exits non-zero on any vulnerability and, with --deny unsound,
# on any unsound advisory (minus ACCEPTED); unmaintained and yanked warnings
# are printed only. Offline (--no-fetch) it cannot ask crates.io for yanked
# versions, so yanked crates are not checked here.
if cargo "${args[@]}"; then
  echo "audit: no vulnerabilities and no unsound advisories outside the accepted list (${#ACCEPTED[@]} accepted)"
else
  echo "audit: FAILED (vulnerable or unsound dependency; see above and docs/security-testing.md)" >&2
  exit 1
fi
