#!/usr/bin/env bash
# Side-by-side benchmark on a multi-core machine: the system under test is
# pinned to one core (SERVER_CPU, default 0) and the load generator to
# another (LOAD_CPU, default 1), and every server gets the same tonic load
# from `portcullis-bench --target` in turn:
#
#   empty        the empty ext_authz + RLS handler (the ceiling; answers OK),
#                on one runtime thread (tokio's current-thread scheduler, as
#                Portcullis runs on one core) and stock tonic connections; EMPTY_TRANSPORT=coalesced serves
#                it on Portcullis's write-coalesced connections instead
#                (src/server/coalesce.rs), to compare on the same transport
#   portcullis   `portcullis serve`, bundled policies with roomy quotas,
#                in-process quota store
#   portcullis-redis   the same with `quotas.store: redis` and a
#                redis-server pinned to the server core as well
#   limitador    with LIMITADOR=/path/to/limitador-server: Limitador's
#                in-memory mode (and LIMITADOR_REDIS=1: its Redis mode) on the
#                same descriptor
#
# It prints one table: each load (ShouldRateLimit with one descriptor and an
# effectively unlimited quota, and with the bundled three-descriptor mix;
# Check with allowed calls, the mixed calls, and a new token per call, that
# is a signature check each) with each server's throughput and p99, and the
# ratio to the empty handler measured in the same run. The empty handler
# stays up throughout, and each server is measured against it in
# interleaved slices (`portcullis-bench --baseline-target`: SLICES pairs of
# DURATION/SLICES seconds per server, in turn the empty handler first and
# the server first): a ratio is the median of the pairs' ratios, and the
# table gives their range. A virtual machine's speed drifts by tens of
# percent within seconds; two long runs one after the other (this script's
# first method) gave Check ratios from 0.52 to 0.85 on one day, the
# interleaved pairs 0.79 to 0.80. The empty handler's row is the mean of
# its slices over every server's run. The CPU column is the share of one
# core each server process used during its own slices (`--baseline-pid`,
# `--target-pid`; Portcullis's alone, not its redis-server's), CPU us the
# microseconds of it per answer (the bench's `us_per_request`), and CPU
# ratio is the empty handler's CPU per answer over the server's: when the
# empty handler's CPU is well under 100%, the load generator, not its
# core, bounded its throughput, and the throughput ratio flatters the
# server by that much. Then an open-loop
# phase (`--rate`): Check allowed calls at half of Portcullis's saturation
# throughput, on both the empty handler and Portcullis, with latency from the
# intended send time and the share of its core each server used meanwhile
# (CPU column): half the saturation throughput is not half the CPU, since
# the writes and wake-ups a saturated server shares between answers are
# paid per answer when they arrive spread out, and each stage runs once
# per answer, with the rest of the path in between, so with colder caches
# (CPU us). The open-loop rows also give
# the load generator's pacer lag (how late it sent; part of the latency).
# The last row is the empty handler at half of its own saturation, the
# same target applied to the ceiling itself.
#
#   scripts/bench-side-by-side.sh                # 5 s per measurement
#   DURATION=10 CONCURRENCY=64 scripts/bench-side-by-side.sh
#   LIMITADOR=~/limitador/target/release/limitador-server scripts/bench-side-by-side.sh
#
# Settings (environment): DURATION (s per server, 5), SLICES (10), WARMUP
# (s, 1), CONCURRENCY (64),
# CONNECTIONS (4), SERVER_CPU (0), LOAD_CPU (1), REDIS (1: include the Redis
# store; needs redis-server), LIMITADOR, LIMITADOR_REDIS, EMPTY_TRANSPORT
# (stock or coalesced; stock).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

DURATION=${DURATION:-5}
SLICES=${SLICES:-10}
WARMUP=${WARMUP:-1}
CONCURRENCY=${CONCURRENCY:-64}
CONNECTIONS=${CONNECTIONS:-4}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
REDIS=${REDIS:-1}
LIMITADOR=${LIMITADOR:-}
LIMITADOR_REDIS=${LIMITADOR_REDIS:-0}
EMPTY_TRANSPORT=${EMPTY_TRANSPORT:-stock}

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench-side-by-side: %s\n' "$*" >&2; exit 1; }

[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 600 ]] || die "DURATION must be 1..600 seconds"
[[ $SLICES =~ ^[0-9]+$ && $SLICES -ge 1 && $SLICES -le 100 ]] || die "SLICES must be 1..100"
case $EMPTY_TRANSPORT in stock | coalesced) ;; *) die "EMPTY_TRANSPORT must be stock or coalesced" ;; esac
command -v taskset >/dev/null || die "needs taskset (Debian util-linux)"
cpus=$(nproc)
[ "$SERVER_CPU" != "$LOAD_CPU" ] || die "SERVER_CPU and LOAD_CPU must differ"
[ "$SERVER_CPU" -lt "$cpus" ] && [ "$LOAD_CPU" -lt "$cpus" ] || die "this machine has $cpus CPUs (0..$((cpus - 1)))"
[ -z "$LIMITADOR" ] || [ -x "$LIMITADOR" ] || die "LIMITADOR=$LIMITADOR is not an executable"
if [ "$REDIS" = 1 ] || [ "$LIMITADOR_REDIS" = 1 ]; then
    command -v redis-server >/dev/null || die "needs redis-server (scripts/install-test-tools.sh installs it; REDIS=0 skips the Redis store)"
fi

say "building release binaries"
cargo build --release --locked --bin portcullis --bin portcullis-bench >&2
bin=$root/target/release

bench_workdir portcullis-side-by-side

stop() { # pid port: stop the server and wait until its port is closed
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
    for _ in $(seq 1 200); do
        (exec 3<>"/dev/tcp/127.0.0.1/$2") 2>/dev/null || return 0
        sleep 0.05
    done
    die "port $2 still accepts connections after its server was stopped"
}

# taskset execs the program, so `$!` after `"${on_server_cpu[@]}" prog &` is
# the program's own pid (a shell function here would leave a subshell in
# between, and killing it would leave the server running).
on_server_cpu=(taskset -c "$SERVER_CPU")

# load NAME LABEL PORT ARGS...: one measurement of the server at PORT, as
# results lines "name label rps p99 errors cpu cpu-us lag ratio range cpu-ratio"; with
# `--baseline-target` in ARGS, the empty handler's line for the same
# slices first, and NAME's ratio is the median of the slice pairs'.
results=$work/results.txt
# The load generator's token key, trusted by the Portcullis servers below.
key=$work/bench-token.p8
jwks=$("$bin/portcullis-bench" --write-token-key "$key")
load() {
    local name=$1 label=$2 port=$3
    shift 3
    local out=$work/load-$name-$label.json
    # CPU_OF=PID: also the share of one core that process used during the
    # load (warm-up included), from its utime + stime in /proc.
    local pid=${CPU_OF:-} before=0 after=0 started ended
    [ -z "$pid" ] || before=$(cpu_ticks "$pid")
    started=$(date +%s%N)
    taskset -c "$LOAD_CPU" "$bin/portcullis-bench" --target "127.0.0.1:$port" --json \
        --duration "$DURATION" --warmup "$WARMUP" --concurrency "$CONCURRENCY" \
        --connections "$CONNECTIONS" "$@" >"$out" 2>"$work/load-$name-$label.err" || true
    ended=$(date +%s%N)
    [ -z "$pid" ] || after=$(cpu_ticks "$pid")
    python3 - "$out" "$name" "$label" "$pid" "$((after - before))" "$((ended - started))" "$(getconf CLK_TCK)" >>"$results" <<'PY'
import json, sys
path, name, label, pid, ticks, ns, hz = sys.argv[1:]
share = int(ticks) / int(hz) / (int(ns) / 1e9) if pid else None
cpu = f"{100 * share:.0f}%" if pid else "-"
try:
    report = json.load(open(path))
    phases = report["phases"]
except Exception as e:
    print(f"{name} {label} 0 0 failed {cpu} - - - - -")
    sys.exit(0)
def line(who, p, ratio="-", spread="-", cpu_ratio="-"):
    lag = (p.get("pacing_lag_us") or {}).get("p99", "-")
    server = p.get("server_cpu") or {}
    used = f"{100 * server['share_of_core']:.0f}%" if server else cpu
    # CPU per answer, microseconds: the bench's own figure for its slices;
    # for CPU_OF (an open loop, whose rate is the same in its warm-up) the
    # share over the whole load per answer of the measured phase.
    if server:
        per = f"{server['us_per_request']:.1f}"
    elif share is not None and p["throughput_rps"] > 0:
        per = f"{share * 1e6 / p['throughput_rps']:.1f}"
    else:
        per = "-"
    print(f"{who} {label} {p['throughput_rps']:.0f} {p['latency_us']['p99']} {p['errors']} {used} {per} {lag} {ratio} {spread} {cpu_ratio}")
pairs = report.get("slice_ratios") or []
if pairs:
    line("empty", phases[0])
    cpu_ratio = report.get("cpu_ratio_vs_empty")
    line(name, phases[-1], f"{report['ratio_vs_empty']:.3f}", f"{min(pairs):.3f}..{max(pairs):.3f}",
         f"{cpu_ratio:.3f}" if cpu_ratio is not None else "-")
else:
    line(name, phases[-1])
PY
}

# paired NAME LABEL PORT PID ARGS...: the server at PORT (process PID)
# against the empty handler (at $ep), in interleaved slices; each side's
# CPU share is its process's over its own slices.
paired() {
    local name=$1 label=$2 port=$3 pid=$4
    shift 4
    load "$name" "$label" "$port" --baseline-target "127.0.0.1:$ep" --slices "$SLICES" \
        --baseline-pid "$empty_pid" --target-pid "$pid" "$@"
}

loads() { # name port pid
    paired "$1" rls-one "$2" "$3" --rpc rls --rls-shape one
    paired "$1" rls-bundled "$2" "$3" --rpc rls
    paired "$1" check-allowed "$2" "$3" --rpc check --mix allowed --token-key-file "$key"
    paired "$1" check-mixed "$2" "$3" --rpc check --mix mixed --token-key-file "$key"
    paired "$1" check-uncached "$2" "$3" --rpc check --mix uncached --token-key-file "$key"
}

# --- the empty handler -------------------------------------------------------
start_empty empty "${on_server_cpu[@]}" "$bin/portcullis-bench" --serve-empty 127.0.0.1:0 \
    --empty-transport "$EMPTY_TRANSPORT" --server-threads 1
say "empty handler ($EMPTY_TRANSPORT transport) on CPU $SERVER_CPU, load on CPU $LOAD_CPU"

# --- Portcullis, in-process store ---------------------------------------------
bench_portcullis_config "$work" "$bin" "$root"
# Trust the load generator's issuer too (mixed, allowed and uncached calls).
bench_trust_load_issuer "$work/portcullis.yaml" "$jwks"
start_portcullis portcullis "${on_server_cpu[@]}" "$bin/portcullis" serve --config "$work/portcullis.yaml"
say "portcullis (in-process store)"
loads portcullis "$pp" "$p_pid"
stop "$p_pid" "$pp"

# --- Portcullis, Redis store ----------------------------------------------------
redis_pid=""
if [ "$REDIS" = 1 ] || [ "$LIMITADOR_REDIS" = 1 ]; then
    rp=$(free_port)
    "${on_server_cpu[@]}" redis-server --port "$rp" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$work" >"$work/redis.log" 2>&1 &
    redis_pid=$!
    pids+=("$redis_pid")
    wait_listener "$rp" "redis-server" "$redis_pid"
fi
if [ "$REDIS" = 1 ]; then
    sed -e "/^audit:/i quotas: { store: redis, redis_url: \"redis://127.0.0.1:$rp/0\" }" \
        "$work/portcullis.yaml" >"$work/portcullis-redis.yaml"
    start_portcullis portcullis-redis "${on_server_cpu[@]}" "$bin/portcullis" serve \
        --config "$work/portcullis-redis.yaml"
    say "portcullis (Redis store)"
    paired portcullis-redis rls-one "$pp" "$p_pid" --rpc rls --rls-shape one
    paired portcullis-redis rls-bundled "$pp" "$p_pid" --rpc rls
    # Keys of roomy quotas expire at once (a GCRA key lives until its bucket
    # is full again), so ask Redis how many scripts it ran instead.
    scripts_run=$(redis-cli -p "$rp" info commandstats | sed -n 's/^cmdstat_evalsha:calls=\([0-9]*\).*/\1/p')
    [ "${scripts_run:-0}" -gt 0 ] || die "Redis ran no quota script during the Redis-store run: it did not use the store"
    stop "$p_pid" "$pp"
fi

# --- Limitador (optional) ---------------------------------------------------------
if [ -n "$LIMITADOR" ]; then
    # The same descriptor, an effectively unlimited limit.
    cat >"$work/limits.yaml" <<'EOF'
- namespace: ml_api
  max_value: 1000000000000
  seconds: 60
  conditions: []
  variables: ["descriptors[0].org"]
EOF
    modes=(memory)
    [ "$LIMITADOR_REDIS" = 1 ] && modes+=("redis redis://127.0.0.1:$rp/1")
    for mode in "${modes[@]}"; do
        lp=$(free_port)
        lh=$(free_port)
        # shellcheck disable=SC2086 # the mode is words on purpose
        "${on_server_cpu[@]}" "$LIMITADOR" --rls-ip 127.0.0.1 --rls-port "$lp" --http-ip 127.0.0.1 \
            --http-port "$lh" "$work/limits.yaml" $mode >"$work/limitador.log" 2>&1 &
        l_pid=$!
        pids+=("$l_pid")
        wait_listener "$lp" "Limitador ($mode)" "$l_pid"
        say "limitador ($mode)"
        paired "limitador-${mode%% *}" rls-one "$lp" "$l_pid" --rpc rls --rls-shape one
        stop "$l_pid" "$lp"
    done
fi

# --- open loop: Check at half of Portcullis's saturation -----------------------------
sat=$(awk '$1 == "portcullis" && $2 == "check-allowed" { print $3 }' "$results")
[ -n "$sat" ] && [ "$sat" != 0 ] || die "no saturation figure for Portcullis's Check (see $work)"
half=$((sat / 2))
say "open loop: Check allowed at $half req/s (half of Portcullis's $sat)"
CPU_OF=$empty_pid load empty check-open-loop "$ep" --rpc check --mix allowed --token-key-file "$key" --rate "$half"
start_portcullis portcullis-open-loop "${on_server_cpu[@]}" "$bin/portcullis" serve --config "$work/portcullis.yaml"
CPU_OF=$p_pid load portcullis check-open-loop "$pp" --rpc check --mix allowed --token-key-file "$key" --rate "$half"
stop "$p_pid" "$pp"
# The same target for the ceiling: the empty handler at half of its own
# saturation (the mean of its Check allowed slices above).
empty_sat=$(awk '$1 == "empty" && $2 == "check-allowed" { s += $3; n++ } END { if (n) printf "%d", s / n }' "$results")
empty_half=$((${empty_sat:-0} / 2))
[ "$empty_half" -gt 0 ] || die "no saturation figure for the empty handler's Check (see $work)"
say "open loop: the empty handler's Check allowed at $empty_half req/s (half of its own $empty_sat)"
CPU_OF=$empty_pid load empty check-open-loop-own "$ep" --rpc check --mix allowed --token-key-file "$key" --rate "$empty_half"

# --- the table -------------------------------------------------------------------------
echo "server pinned to CPU $SERVER_CPU, load generator to CPU $LOAD_CPU; concurrency $CONCURRENCY, $CONNECTIONS connections, ${DURATION}s each"
python3 - "$results" "$half" "$empty_half" <<'PY'
import sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
# The empty handler's slices per load, over every server's run: its
# throughput and the share of its core it used.
runs, cpus, pers = {}, {}, {}
for name, label, rps, p99, errors, cpu, per, lag, ratio, spread, cpu_ratio in rows:
    if name == "empty" and errors != "failed" and not label.startswith("check-open-loop"):
        runs.setdefault(label, []).append(float(rps))
        if cpu.endswith("%"):
            cpus.setdefault(label, []).append(float(cpu[:-1]))
        if per != "-":
            pers.setdefault(label, []).append(float(per))
print(f"{'load':<18} {'server':<20} {'req/s':>9} {'ratio':>7} {'p99 us':>8} {'errors':>7} {'CPU':>5} {'CPU us':>6} {'CPU ratio':>9}  note")
failed = False
shown = set()
for name, label, rps, p99, errors, cpu, per, lag, ratio, spread, cpu_ratio in rows:
    failed |= errors != "0"
    note = ""
    if label.startswith("check-open-loop"):
        rate = sys.argv[3] if label.endswith("-own") else sys.argv[2]
        note = f"  load generator's pacer lag p99 {lag} us"
        if label.endswith("-own"):
            note += "; half of the empty handler's own saturation"
        label, ratio = f"check@{rate}/s", "-"
    elif name == "empty":
        if label in shown:
            continue
        shown.add(label)
        v = runs.get(label, [])
        rps, ratio = (f"{sum(v) / len(v):.0f}", "1.000") if v else (rps, "-")
        c = cpus.get(label, [])
        if c:
            cpu, cpu_ratio = f"{sum(c) / len(c):.0f}%", "1.000"
        u = pers.get(label, [])
        if u:
            per = f"{sum(u) / len(u):.1f}"
        if len(v) > 1:
            note = f"  mean of its runs: {min(v):.0f}..{max(v):.0f}"
    elif spread != "-":
        note = f"  median of slice pairs {spread}"
    print(f"{label:<18} {name:<20} {float(rps):>9.0f} {ratio:>7} {p99:>8} {errors:>7} {cpu:>5} {per:>6} {cpu_ratio:>9}{note}")
sys.exit(1 if failed else 0)
PY
