#!/usr/bin/env bash
# Header-only HTTP/2 streams against the portcullis binary (its own
# process): SHAPE=CONNSxSTREAMS clients (default 50x1000) each keep up to
# STREAMS streams open that send a Check's headers and never its body,
# while a normal client's Check latency is measured. Prints the server's
# RSS (before, peak, two seconds after) and the latency ratio, twice in one
# run: with the limits Portcullis had before (1024 streams per connection,
# no request budget), then with the defaults. Bounded: a 20 s ramp-up at
# most and DURATION seconds of measurement per phase.
#
#   scripts/bench-header-streams.sh          # SHAPE=50x1000 DURATION=5
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
SHAPE=${SHAPE:-50x1000}
DURATION=${DURATION:-5}
cargo build --release --locked --bin portcullis --bin portcullis-bench >&2
bin=${CARGO_TARGET_DIR:-$root/target}/release
run() {
    "$bin/portcullis-bench" --hold-streams "$SHAPE" --mix anonymous --concurrency 4 \
        --connections 1 --duration "$DURATION" --policies "$root/policies" "$@"
}
echo "== limits before: 1024 streams per connection, no request budget"
run --server-section '{max_concurrent_streams: 1024, max_pending_requests: 100000000}'
echo "== defaults"
run
