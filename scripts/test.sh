#!/usr/bin/env bash
# Runs every test: installs what the tests need when missing (redis-server,
# Envoy 1.40, grpcurl 1.8.6; see scripts/install-test-tools.sh), then runs
# formatting and lint checks (the fuzz targets' too) and the whole cargo
# test suite (unit,
# integration, end-to-end through a real Envoy). Extra arguments go to
# `cargo test`. Exits non-zero when anything fails.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

bash scripts/install-test-tools.sh
export PATH="$PWD/.tools/bin:$PATH"

cargo fmt --all -- --check
cargo clippy --locked --all-targets -- -D warnings
# The fuzz targets are a workspace of their own (fuzz/Cargo.toml), which the
# two lines above do not reach.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --locked --manifest-path fuzz/Cargo.toml --target-dir target/fuzz-check \
    --all-targets -- -D warnings
cargo test --locked "$@"

# Fuzz the body validator and the CheckRequest and RateLimitRequest
# mappings briefly (20 s per target, debug build; needs the nightly
# toolchain, installs cargo-fuzz when missing and fails loudly when it
# cannot). Longer runs on demand: scripts/fuzz.sh 600.
bash scripts/fuzz.sh 20
