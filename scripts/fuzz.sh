#!/usr/bin/env bash
# Fuzzes the body validator, the ext_authz CheckRequest mapping and the
# RLS RateLimitRequest mapping
# (fuzz/fuzz_targets) with cargo-fuzz / libFuzzer.
#
#   scripts/fuzz.sh            each target for 30 s, debug build (CI)
#   scripts/fuzz.sh 600        each target for 10 minutes, release build
#   scripts/fuzz.sh 60 body    one target
#
# Needs the nightly toolchain (`rustup toolchain install nightly`) and
# cargo-fuzz, which it installs when missing; it fails loudly when it
# cannot. Builds go to target/fuzz (inside the repository's target dir);
# the corpus grows in fuzz/corpus/<target> (ignored by git), seeded from
# fuzz/seeds/<target>. A crash leaves its input in fuzz/artifacts/<target>
# and exits non-zero.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

seconds=${1:-30}
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(body check_request rate_limit_request)

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz: the nightly toolchain is missing: rustup toolchain install nightly" >&2
  exit 1
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
  echo "fuzz: installing cargo-fuzz (cargo install cargo-fuzz --locked)" >&2
  if ! cargo install cargo-fuzz --locked; then
    echo "fuzz: could not install cargo-fuzz; install it by hand: cargo install cargo-fuzz --locked" >&2
    exit 1
  fi
fi

# Short runs build in debug (a release build of the dependency tree would
# cost minutes); long runs are worth the faster release binary.
profile=(--dev)
[ "$seconds" -le 60 ] || profile=(--release)

for target in "${targets[@]}"; do
  mkdir -p "fuzz/corpus/$target"
  echo "fuzz: $target for ${seconds}s" >&2
  cargo +nightly fuzz run "${profile[@]}" --fuzz-dir fuzz --target-dir "$PWD/target/fuzz" "$target" \
    "fuzz/corpus/$target" "fuzz/seeds/$target" \
    -- -max_total_time="$seconds" -max_len=70000 -timeout=10 -print_final_stats=1
done
