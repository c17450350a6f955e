#!/usr/bin/env bash
# Memory of a running Portcullis (RSS from /proc), on the bundled policies
# with roomy quotas and the in-process quota store:
#   1. idle after start;
#   2. after steady Check load (allowed inference calls with one cached
#      token) and RLS load over a few hundred keys;
#   3. after RLS calls that create KEYS distinct quota keys per descriptor
#      (each call: its own client address and principal; default 1,000,000).
# Every load is bounded by a request count and a duration.
#
#   scripts/bench-memory.sh                  # KEYS=1000000 DURATION=10
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh
KEYS=${KEYS:-1000000}
DURATION=${DURATION:-10}
[[ $KEYS =~ ^[0-9]+$ && $KEYS -ge 1 && $KEYS -le 10000000 ]] || { echo "KEYS must be 1..10000000" >&2; exit 2; }

die() { printf 'bench-memory: %s\n' "$*" >&2; exit 1; }
command -v openssl >/dev/null || die "needs openssl (for the dev token)"
cargo build --release --locked --bin portcullis --bin portcullis-bench >&2
bin=$root/target/release

bench_workdir portcullis-bench-memory
# Portcullis: bundled policies with roomy quotas, the test issuer.
bench_portcullis_config "$work" "$bin" "$root"
start_portcullis portcullis "$bin/portcullis" serve --config "$work/portcullis.yaml"
pid=$p_pid

rss() { awk '/^VmRSS/ {printf "%.1f", $2/1024}' "/proc/$pid/status"; }
hwm() { awk '/^VmHWM/ {printf "%.1f", $2/1024}' "/proc/$pid/status"; }

idle=$(rss)
token=$(scripts/dev-token.sh alice acme 3600)
"$bin/portcullis-bench" --target "127.0.0.1:$pp" --mix allowed --bearer "$token" \
    --duration "$DURATION" --requests 2000000 --json >"$work/check.json"
"$bin/portcullis-bench" --target "127.0.0.1:$pp" --rpc rls \
    --duration "$DURATION" --requests 2000000 --json >"$work/rls.json"
steady=$(rss)
"$bin/portcullis-bench" --target "127.0.0.1:$pp" --rpc rls --keys "$KEYS" \
    --requests "$KEYS" --duration 300 --warmup 0 --json >"$work/keys.json"
sent=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["phases"][0]["requests"])' "$work/keys.json")
many=$(rss)
peak=$(hwm)

printf '%-58s %10s\n' "Portcullis RSS (bundled policies, in-process quotas)" "MiB"
printf '%-58s %10s\n' "idle after start" "$idle"
printf '%-58s %10s\n' "after ${DURATION}s Check + ${DURATION}s RLS steady load" "$steady"
printf '%-58s %10s\n' "after $sent RLS calls, 2 new keys each (store cap 1M)" "$many"
printf '%-58s %10s\n' "peak (VmHWM)" "$peak"
