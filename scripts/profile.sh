#!/usr/bin/env bash
# CPU profile of the `portcullis` server under load: perf samples the
# server process (call graphs by DWARF unwinding) while `portcullis-bench
# --target` loads it with one RPC, and the script writes
#
#   target/profile/<rpc>.folded    collapsed stacks (one line per stack)
#   target/profile/<rpc>.svg       a flame graph of them (inferno)
#   target/profile/<rpc>.top.txt   the functions with the most samples,
#                                  inclusive (children counted), ours first
#   target/profile/<rpc>.stages.txt  the server's sampled CPU per request,
#                                  by stage (scripts/profile-stages.py)
#
#   scripts/profile.sh rls          # ShouldRateLimit, one descriptor
#   scripts/profile.sh check        # Check, allowed calls
#   scripts/profile.sh check-mixed  # Check, the bench's mixed calls
#   scripts/profile.sh check-uncached   # Check, a new token per call (a
#                   signature check each)
#   scripts/profile.sh rls-redis    # ShouldRateLimit, one descriptor, with
#                   `quotas.store: redis` on a redis-server pinned to the
#                   server's CPU (as in bench-side-by-side.sh); Redis's
#                   own CPU time is printed, not sampled
#   DURATION=10 scripts/profile.sh rls
#   SERVER=empty scripts/profile.sh rls   # the empty handler, same load:
#                   target/profile/empty-<rpc>.*, to compare CPU per request
#   RATE=9000 scripts/profile.sh check    # open loop (`portcullis-bench
#                   --rate`): a fixed arrival rate instead of as fast as
#                   answers come back, as for the latency target; the files
#                   are named <rpc>@<rate>.*
#
# scripts/profile-stages.py compares the stage tables of two profiles, e.g.
# the same load at saturation and at a fixed rate:
#   scripts/profile-stages.py target/profile/check target/profile/check@3000
#
# The server is pinned to SERVER_CPU (0) and the load generator to LOAD_CPU
# (1) as in scripts/bench-side-by-side.sh. Needs perf (Debian
# linux-perf) and installs inferno (crates.io) into .tools with cargo.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

rpc=${1:-rls}
DURATION=${DURATION:-6}
SERVER_CPU=${SERVER_CPU:-0}
SERVER=${SERVER:-portcullis}
LOAD_CPU=${LOAD_CPU:-1}
RATE=${RATE:-}
say() { printf '== %s\n' "$*" >&2; }
die() { printf 'profile: %s\n' "$*" >&2; exit 1; }
case $rpc in
    rls | rls-redis) load_args=(--rpc rls --rls-shape one) ;;
    check) load_args=(--rpc check --mix allowed) ;;
    check-mixed) load_args=(--rpc check --mix mixed) ;;
    check-uncached) load_args=(--rpc check --mix uncached) ;;
    *) die "usage: scripts/profile.sh rls|rls-redis|check|check-mixed|check-uncached" ;;
esac
case $SERVER in
    portcullis) name=$rpc ;;
    empty) name=empty-$rpc ;;
    *) die "SERVER must be portcullis or empty" ;;
esac
if [ -n "$RATE" ]; then
    [[ $RATE =~ ^[0-9]+$ && $RATE -ge 1 ]] || die "RATE must be a whole number of requests per second"
    load_args+=(--rate "$RATE")
    name=$name@$RATE
fi
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 120 ]] || die "DURATION must be 1..120 seconds"
command -v perf >/dev/null || die "needs perf (Debian package linux-perf)"
command -v taskset >/dev/null || die "needs taskset (Debian util-linux)"

inferno=$root/.tools/bin/inferno-flamegraph
if [ ! -x "$inferno" ]; then
    say "installing inferno into .tools (cargo install)"
    cargo install --locked --root "$root/.tools" inferno >&2 || die "cargo install inferno failed"
fi

say "building release binaries"
cargo build --release --locked --bin portcullis --bin portcullis-bench >&2
bin=$root/target/release
out=$root/target/profile
mkdir -p "$out"

bench_workdir portcullis-profile
bench_portcullis_config "$work" "$bin" "$root"
key=$work/bench-token.p8
jwks=$("$bin/portcullis-bench" --write-token-key "$key")
bench_trust_load_issuer "$work/portcullis.yaml" "$jwks"

redis_pid=""
if [ "$rpc" = rls-redis ] && [ "$SERVER" = portcullis ]; then
    command -v redis-server >/dev/null || die "needs redis-server (scripts/install-test-tools.sh installs it)"
    rp=$(free_port)
    taskset -c "$SERVER_CPU" redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$work" >"$work/redis.log" 2>&1 &
    redis_pid=$!
    pids+=("$redis_pid")
    wait_listener "$rp" "redis-server" "$redis_pid"
    sed -i -e "/^audit:/i quotas: { store: redis, redis_url: \"redis://127.0.0.1:$rp/0\" }" "$work/portcullis.yaml"
fi

if [ "$SERVER" = empty ]; then
    start_empty empty taskset -c "$SERVER_CPU" "$bin/portcullis-bench" --serve-empty 127.0.0.1:0 \
        --server-threads 1
    server=$empty_pid
    pp=$ep
else
    start_portcullis portcullis taskset -c "$SERVER_CPU" "$bin/portcullis" serve \
        --config "$work/portcullis.yaml"
    server=$p_pid
fi

# Warm up, then sample the server for DURATION seconds under the same load.
taskset -c "$LOAD_CPU" "$bin/portcullis-bench" --target "127.0.0.1:$pp" "${load_args[@]}" \
    --token-key-file "$key" --duration 1 --warmup 0 >/dev/null
perf record -F 499 -g --call-graph dwarf,16384 -p "$server" -o "$work/perf.data" \
    -- sleep "$((DURATION + 1))" >"$work/perf.log" 2>&1 &
perf_pid=$!
sleep 0.5
taskset -c "$LOAD_CPU" "$bin/portcullis-bench" --target "127.0.0.1:$pp" "${load_args[@]}" \
    --token-key-file "$key" --duration "$DURATION" --warmup 0 | tee "$out/$name.load.txt" >&2
wait "$perf_pid" || die "perf record failed: $(tail -3 "$work/perf.log")"
if [ -n "$redis_pid" ]; then
    # CPU seconds (user + system) since start.
    cpu_s() { awk -v t="$(cpu_ticks "$1")" -v hz="$(getconf CLK_TCK)" 'BEGIN { printf "%.2f", t / hz }'; }
    say "CPU since start: portcullis $(cpu_s "$server") s, redis-server $(cpu_s "$redis_pid") s"
fi

say "folding stacks"
perf script -i "$work/perf.data" 2>/dev/null | "$root/.tools/bin/inferno-collapse-perf" >"$out/$name.folded"
"$inferno" --title "$SERVER $rpc (${DURATION}s, $(git rev-parse --short HEAD))" \
    <"$out/$name.folded" >"$out/$name.svg"
perf report -i "$work/perf.data" --children --sort symbol --stdio -g none 2>/dev/null |
    grep '%' | sed 's/  */ /g' | grep -E 'portcullis::|serde|uuid|sha2|malloc|free' | awk 'NR <= 40' >"$out/$name.top.txt"
python3 scripts/profile-stages.py "$out/$name" >"$out/$name.stages.txt" ||
    die "scripts/profile-stages.py failed on $out/$name"
say "wrote $out/$name.svg, $out/$name.folded, $out/$name.top.txt and $out/$name.stages.txt"
