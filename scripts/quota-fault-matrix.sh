#!/usr/bin/env bash
# The quota fault matrix of issue 17: 3 Portcullis replicas (release
# binary, `quotas: {store: redis | redis_sentinel | redis_cluster,
# replicas: 3}`, default timeout and breaker settings, a limit of 100 per
# hour on descriptor k)
# x {single Redis (failover: a primary, its replica and one Sentinel),
#    Redis Cluster of 3 primaries + 3 replicas}
# x {healthy, killed, paused, read-only, failover}
# x one burst of 1,000 concurrent ShouldRateLimit calls on one value,
# round-robin over the replicas (`portcullis-bench --burst`).
#
# Faults, injected after every replica has a live Redis connection and
# just before the burst (on the Cluster: on the primary that owns the
# burst key's slot, "the key's primary"):
#   killed     SIGKILL of redis-server (single) / of the key's primary.
#   paused     SIGSTOP before the burst, SIGCONT after it.
#   read-only  single: `REPLICAOF 127.0.0.1 <closed port>` (the primary
#              is demoted to a replica of a dead address: READONLY
#              errors); Cluster (REPLICAOF is refused there): `CONFIG SET
#              min-replicas-to-write 2` on the key's primary, which has
#              one replica (NOREPLICAS errors).
#   failover   single: the primary has a replica and one Redis Sentinel
#              watches it (`store: redis_sentinel`; quorum 1,
#              down-after-milliseconds 1000, failover-timeout 3000);
#              SIGKILL of the primary just before the burst, then the
#              Sentinel promotes the replica. Cluster: `CLUSTER FAILOVER
#              TAKEOVER` on the key's primary's replica, sent just before
#              the burst.
#
# Per cell: admitted calls; charged units (the counter in Redis after the
# burst, `n/a` when the key's Redis is killed); keys without a TTL; p99
# latency; UNKNOWN answers and gRPC errors; `quota_unavailable` refusals;
# degraded decisions (from the replicas' metrics: the `local` fallback,
# plus refused late calls); store errors; and, on the Cluster, how 30
# calls on a key served by another primary were answered while the fault
# lasted (a healthy primary's keys should stay with the store); on single
# failover instead, how long after the kill a burst of 30 calls on a fresh
# key was decided by the store alone again, on the promoted replica (whose
# counter of the burst key is then *charged*). Prints one Markdown table.
#
# Usage: scripts/quota-fault-matrix.sh [--calls N] [--only single|cluster]
#            [--fault healthy|killed|paused|read-only|failover] [--bin-dir DIR]
# (--only and --fault select the cells: `--only single --fault failover`
# runs that one cell.)
# Needs: redis-server, redis-cli, ss (iproute2), and release binaries: built here with
# `cargo build --release --bins` into $CARGO_TARGET_DIR (or ./target), or
# taken as they are from --bin-dir (e.g. a copy of an earlier build, to
# compare before and after a change).
# Everything listens on 127.0.0.1 and is stopped on exit.

set -euo pipefail

die() { echo "quota-fault-matrix: $*" >&2; exit 1; }

root=$(cd "$(dirname "$0")/.." && pwd)
# shellcheck source=scripts/bench-lib.sh
source "$root/scripts/bench-lib.sh"

calls=1000
only=""
only_fault=""
bin=""
while [[ $# -gt 0 ]]; do
    case $1 in
        --calls) calls=${2:?--calls needs a number}; shift 2 ;;
        --only) only=${2:?--only needs single or cluster}; shift 2 ;;
        --fault) only_fault=${2:?--fault needs a fault name}; shift 2 ;;
        --bin-dir) bin=${2:?--bin-dir needs a directory}; shift 2 ;;
        *) die "unknown argument $1 (usage: $0 [--calls N] [--only single|cluster] [--fault NAME] [--bin-dir DIR])" ;;
    esac
done
[[ $calls =~ ^[0-9]+$ && $calls -ge 1 && $calls -le 100000 ]] || die "--calls must be 1..100000"
[[ -z $only || $only == single || $only == cluster ]] || die "--only takes single or cluster"
faults=(healthy killed paused read-only failover)
[[ -z $only_fault || " ${faults[*]} " == *" $only_fault "* ]] ||
    die "--fault takes one of: ${faults[*]}"
command -v redis-server >/dev/null || die "redis-server not found (apt-get install redis-server)"
command -v redis-cli >/dev/null || die "redis-cli not found (apt-get install redis-tools)"
command -v ss >/dev/null || die "ss not found (apt-get install iproute2)"

if [[ -z $bin ]]; then
    bin="${CARGO_TARGET_DIR:-$root/target}/release"
    (cd "$root" && cargo build --release --bins --quiet) || die "cargo build --release failed"
fi
[[ -x $bin/portcullis && -x $bin/portcullis-bench ]] || die "no portcullis and portcullis-bench in $bin"

bench_workdir quota-matrix
redis_pids=()
cleanup() {
    # A stopped redis-server keeps a SIGTERM pending: resume it first.
    for p in "${redis_pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -KILL "$p" 2>/dev/null || true; done
    bench_cleanup
}
trap cleanup EXIT

limit=100
emission_us=$((3600000000 / limit))
mkdir -p "$work/policies"
cp -r "$root/policies/." "$work/policies/"
mkdir -p "$work/policies/quotas"
cat >"$work/policies/quotas/burst.yaml" <<EOF
domain: burst
descriptors:
  - key: k
    rate_limit: {unit: hour, requests_per_unit: $limit}
EOF

rcli() { timeout 5 redis-cli -h 127.0.0.1 -p "$@"; }

# closed_port: sets closed to a loopback port that refuses every connection
# until the cell ends: a python3 process holds it bound without listening
# (so no other process can take it, as one could a free_port), stopped
# with the cell's servers (stop_redis), and reports it as await_port reads
# it. The read-only fault demotes the primary to a replica of this dead
# address.
closed=""
closed_port() {
    local out=$work/closed-port
    python3 -c 'import socket, time
s = socket.socket()
s.bind(("127.0.0.1", 0))
print("closed 127.0.0.1:%d" % s.getsockname()[1], flush=True)
time.sleep(86400)' >"$out" 2>&1 &
    local pid=$!
    redis_pids+=("$pid")
    closed=$(await_port "the closed-port holder (python3)" "$pid" "$out" '^closed ')
}

# start_redis NAME [--conf FILE] EXTRA...: a redis-server on a free port
# (below 55536 with --cluster-enabled, whose bus port is the port +
# 10000), FILE its config file (a Sentinel needs one); sets port.
# A port taken meanwhile by someone else (the server exits, or another
# process listens there): another one (5 tries).
start_redis() {
    local name=$1; shift
    local conf=()
    if [[ ${1:-} == --conf ]]; then conf=("$2"); shift 2; fi
    local i
    for _ in 1 2 3 4 5; do
        for i in $(seq 1 50); do
            port=$(free_port)
            [[ $* != *cluster-enabled* || $port -lt 55536 ]] && break
        done
        mkdir -p "$work/$name"
        (cd "$work/$name" && exec redis-server "${conf[@]}" --port "$port" --bind 127.0.0.1 --save "" \
            --appendonly no "$@" >"$work/$name/log" 2>&1) &
        local pid=$!
        for i in $(seq 1 100); do
            # Ours, not another server that took the port meanwhile.
            if [[ $(ss -ltnpH "sport = :$port" 2>/dev/null) == *"pid=$pid,"* ]] &&
                [[ $(rcli "$port" PING 2>/dev/null) == PONG ]]; then
                redis_pids+=("$pid")
                eval "pid_$port=$pid"
                return 0
            fi
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    die "redis-server $name did not start in 5 tries (last log: $work/$name/log)"
}
redis_pid() { local v="pid_$1"; echo "${!v}"; }

# Topology state: seeds (quota config), node_ports, key_port (the node
# holding the burst key), replica_port (its replica, Cluster only).
start_single() {
    start_redis single
    node_ports=("$port")
    key_port=$port
    replica_port=""
    quota_section="quotas: {store: redis, redis_url: \"redis://127.0.0.1:$port/0\", replicas: 3}"
}

# wait_for WHAT CMD...: polls CMD every 0.1 s for at most 30 s.
wait_for() {
    local what=$1; shift
    for _ in $(seq 1 300); do
        "$@" && return 0
        sleep 0.1
    done
    die "$what: not within 30 s"
}

in_sync() { rcli "$replica_port" INFO replication | grep -q 'master_link_status:up'; }
knows_replica() { [[ -n $(rcli "$sentinel_port" SENTINEL REPLICAS mymaster) ]]; }

# sentinel_primary: the port of the primary the Sentinel names to clients
# (`SENTINEL MASTER`, as `SENTINEL MASTERS` lists it, which the redis crate
# asks).
sentinel_primary() {
    rcli "$sentinel_port" SENTINEL MASTER mymaster | awk 'prev == "port" { print; exit } { prev = $0 }'
}
switched() { [[ $(sentinel_primary) == "$replica_port" ]]; }

# start_sentinel: a primary, its replica (in sync) and one Sentinel that
# knows both.
start_sentinel() {
    start_redis "primary-$cell"
    node_ports=("$port")
    key_port=$port
    start_redis "replica-$cell" --replicaof 127.0.0.1 "$key_port"
    node_ports+=("$port")
    replica_port=$port
    wait_for "the replica is in sync" in_sync
    mkdir -p "$work/sentinel-$cell"
    printf '%s\n' "sentinel monitor mymaster 127.0.0.1 $key_port 1" \
        "sentinel down-after-milliseconds mymaster 1000" \
        "sentinel failover-timeout mymaster 3000" >"$work/sentinel-$cell/sentinel.conf"
    start_redis "sentinel-$cell" --conf "$work/sentinel-$cell/sentinel.conf" --sentinel
    sentinel_port=$port
    wait_for "the Sentinel knows the replica" knows_replica
    quota_section="quotas: {store: redis_sentinel, redis_sentinels: [\"redis://127.0.0.1:$sentinel_port\"], redis_master_name: mymaster, replicas: 3}"
}

# after_failover: waits until the Sentinel names the replica, then sends
# bursts of 30 calls on fresh keys (at most 100, 0.1 s apart) until one
# is decided by the store alone; describes that burst, with the time since
# the kill. The burst key's counter is then read on the promoted replica.
# What these calls add to the degraded decisions and store errors is kept
# apart (after_degraded, after_errors): the burst's columns leave it out.
after_failover() {
    wait_for "the Sentinel promotes the replica" switched
    local i d0 out elapsed start_degraded start_errors
    start_degraded=$(metric portcullis_quota_degraded_decisions_total)
    start_errors=$(metric portcullis_quota_store_errors_total)
    for i in $(seq 1 100); do
        d0=$(metric portcullis_quota_degraded_decisions_total)
        out=$(timeout 60 "$bin/portcullis-bench" --rpc rls --burst 30 "${targets[@]}" \
            --burst-entry "k=after$cell-$i" --json) || die "the calls after the failover failed: $out"
        if [[ $(metric portcullis_quota_degraded_decisions_total) == "$d0" ]]; then
            elapsed=$((($(date +%s%N) - killed_at) / 100000000))
            after_degraded=$(($(metric portcullis_quota_degraded_decisions_total) - start_degraded))
            after_errors=$(($(metric portcullis_quota_store_errors_total) - start_errors))
            bystander="single: 30 calls on a fresh key decided by the store alone again $((elapsed / 10)).$((elapsed % 10)) s after the kill, try $i of bursts 0.1 s apart once the Sentinel switched (the tries before: $after_degraded degraded, $after_errors store errors): $(summary "$out")"
            key_port=$replica_port
            return
        fi
        sleep 0.1
    done
    die "no burst decided by the store alone within 100 tries after the failover"
}

# summary JSON: admitted, unavailable and p99 of a portcullis-bench burst.
summary() {
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); print("%d admitted, %d unavailable, p99 %.1f ms" % (r["admitted"], r["unavailable"], r["p99_us"]/1000))' "$1"
}

start_cluster() {
    node_ports=()
    local addrs=() urls=()
    for i in 1 2 3 4 5 6; do
        start_redis "cluster$i-$cell" --cluster-enabled yes --cluster-config-file nodes.conf \
            --cluster-node-timeout 3000
        node_ports+=("$port")
        addrs+=("127.0.0.1:$port")
        urls+=("\"redis://127.0.0.1:$port\"")
    done
    timeout 30 redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes \
        >"$work/cluster-create-$cell.log" 2>&1 || die "redis-cli --cluster create failed (see $work)"
    local ok
    for _ in $(seq 1 200); do
        ok=1
        for p in "${node_ports[@]}"; do
            rcli "$p" CLUSTER INFO | grep -q cluster_state:ok || ok=0
            if rcli "$p" ROLE | head -1 | grep -q slave; then
                rcli "$p" INFO replication | grep -q 'master_link_status:up' || ok=0
            fi
        done
        [[ $ok == 1 ]] && break
        sleep 0.1
    done
    [[ $ok == 1 ]] || die "the cluster did not reach cluster_state:ok with replicas in sync"
    quota_section="quotas: {store: redis_cluster, redis_urls: [$(IFS=,; echo "${urls[*]}")], replicas: 3}"
    locate_key
}

# owner KEY: the port of the primary owning KEY's slot, and of one of
# its replicas.
owner() {
    local slot nodes id primary replica
    slot=$(rcli "${node_ports[0]}" CLUSTER KEYSLOT "$1")
    nodes=$(rcli "${node_ports[0]}" CLUSTER NODES)
    read -r id primary < <(awk -v s="$slot" '$3 ~ /master/ {
        for (i = 9; i <= NF; i++) { n = split($i, r, "-"); lo = r[1]; hi = (n == 2 ? r[2] : r[1]);
            if (s >= lo && s <= hi) { split($2, a, "[:@]"); print $1, a[2]; exit } } }' <<<"$nodes")
    replica=$(awk -v m="$id" '$4 == m { split($2, a, "[:@]"); print a[2]; exit }' <<<"$nodes")
    [[ -n $primary && -n $replica ]] || die "no primary and replica found for slot $slot"
    echo "$primary $replica"
}

# locate_key: key_port and replica_port for the burst key.
locate_key() {
    read -r key_port replica_port < <(owner "$key")
}

# other_value: a value of k whose counter lives on another primary than
# the burst key's (bounded search).
other_value() {
    local i primary replica
    for i in $(seq 0 63); do
        read -r primary replica < <(owner "portcullis:q:{burst|k=o$cell-$i}")
        if [[ $primary != "$key_port" ]]; then echo "o$cell-$i"; return; fi
    done
    die "no value of 64 tried lives on another primary"
}

# start_replicas: three Portcullis processes sharing the topology.
start_replicas() {
    targets=()
    metrics_ports=()
    for r in 1 2 3; do
        local pp pa ph p_pid
        mkdir -p "$work/r$r-$cell"
        cat >"$work/r$r-$cell/portcullis.yaml" <<EOF
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
http_listen: "127.0.0.1:0"
policies: "$work/policies"
reload: { watch: false }
$quota_section
audit: { directory: "$work/r$r-$cell/audit" }
log: { format: text, level: warn }
EOF
        start_portcullis "r$r-$cell/portcullis" "$bin/portcullis" serve \
            --config "$work/r$r-$cell/portcullis.yaml"
        replica_pids+=("$p_pid")
        targets+=("--target" "127.0.0.1:$pp")
        metrics_ports+=("$ph")
    done
}

stop_replicas() {
    for p in "${replica_pids[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${replica_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    replica_pids=()
}

stop_redis() {
    for p in "${redis_pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -KILL "$p" 2>/dev/null || true; done
    for p in "${redis_pids[@]}"; do wait "$p" 2>/dev/null || true; done
    redis_pids=()
}

# metric NAME: the sum over the replicas of a counter from /metrics.
metric() {
    local total=0 v p
    for p in "${metrics_ports[@]}"; do
        v=$(curl -fsS --max-time 5 "http://127.0.0.1:$p/metrics" 2>/dev/null |
            awk -v n="$1" '$1 ~ "^"n"(\\{|$)" { s += $2 } END { printf "%d", s }')
        total=$((total + ${v:-0}))
    done
    echo "$total"
}

# redis_time PORT: the server's time in microseconds.
redis_time() { rcli "$1" TIME | tr '\n' ' ' | awk '{ printf "%d%06d", $1, $2 }'; }

# no_ttl: keys without a TTL over every live node.
no_ttl() {
    local n=0 p k
    for p in "${node_ports[@]}"; do
        [[ $(rcli "$p" PING 2>/dev/null) == PONG ]] || continue
        while read -r k; do
            [[ -z $k ]] && continue
            [[ $(rcli "$p" PTTL "$k") == -1 ]] && n=$((n + 1))
        done < <(rcli "$p" --scan)
    done
    echo "$n"
}

# charged: units the burst key holds (GCRA: its arrival time past `since`).
charged() {
    local port=$1 tat
    if [[ $fault == killed ]]; then
        echo "n/a (the key's Redis was killed: its counters died with it)"
        return
    fi
    [[ $topology == cluster ]] && locate_key && port=$key_port
    tat=$(rcli "$port" GET "$key" 2>&1) || { echo "n/a (GET failed: $tat)"; return; }
    if [[ -z $tat ]]; then echo 0; return; fi
    [[ $tat =~ ^[0-9]+$ ]] || { echo "n/a (GET: $tat)"; return; }
    echo $(((tat - since + emission_us / 2) / emission_us))
}

inject() {
    case $fault in
        healthy) ;;
        killed) kill -KILL "$(redis_pid "$key_port")" ;;
        paused) kill -STOP "$(redis_pid "$key_port")" ;;
        read-only)
            if [[ $topology == single ]]; then
                closed_port
                rcli "$key_port" REPLICAOF 127.0.0.1 "$closed" >/dev/null
            else
                rcli "$key_port" CONFIG SET min-replicas-to-write 2 >/dev/null
            fi ;;
        failover)
            if [[ $topology == single ]]; then
                killed_at=$(date +%s%N)
                kill -KILL "$(redis_pid "$key_port")"
            else
                rcli "$replica_port" CLUSTER FAILOVER TAKEOVER >/dev/null
            fi ;;
    esac
}

heal() {
    case $fault in
        paused) kill -CONT "$(redis_pid "$key_port")" ;;
        failover) if [[ $topology == single ]]; then after_failover; fi ;;
        *) ;;
    esac
}

rows=()
cell=0
run_cell() {
    topology=$1 fault=$2
    cell=$((cell + 1))
    key_value="v$cell-$$"
    key="portcullis:q:{burst|k=$key_value}"
    replica_pids=()
    if [[ $topology == cluster ]]; then
        start_cluster
    elif [[ $fault == failover ]]; then
        start_sentinel
    else
        start_single
    fi
    start_replicas
    # Every replica makes its Redis connection before the fault (one
    # call each, on a key of its own).
    "$bin/portcullis-bench" --rpc rls --burst 3 "${targets[@]}" --burst-entry "k=warm" --json \
        >"$work/warm-$cell.json" || die "warm-up calls failed (see $work)"
    since=$(redis_time "$key_port")
    local degraded0 errors0
    degraded0=$(metric portcullis_quota_degraded_decisions_total)
    errors0=$(metric portcullis_quota_store_errors_total)
    bystander="-"
    after_degraded=0
    after_errors=0
    local other=""
    [[ $topology == cluster ]] && other=$(other_value)
    inject
    local out
    out=$(timeout 120 "$bin/portcullis-bench" --rpc rls --burst "$calls" "${targets[@]}" \
        --burst-entry "k=$key_value" --json) || die "the burst failed: $out"
    if [[ -n $other ]]; then
        # While the fault lasts: 30 calls on a key of a healthy primary.
        local d0 bout
        d0=$(metric portcullis_quota_degraded_decisions_total)
        bout=$(timeout 60 "$bin/portcullis-bench" --rpc rls --burst 30 "${targets[@]}" \
            --burst-entry "k=$other" --json) || die "the bystander calls failed: $bout"
        bystander="$(summary "$bout"), $(($(metric portcullis_quota_degraded_decisions_total) - d0)) degraded"
    fi
    heal
    # Late answers and their refunds settle (bounded: the store's own
    # response bound is 2 s).
    sleep 2.5
    local degraded errors charged_units ttl
    degraded=$(($(metric portcullis_quota_degraded_decisions_total) - degraded0 - after_degraded))
    errors=$(($(metric portcullis_quota_store_errors_total) - errors0 - after_errors))
    charged_units=$(charged "$key_port")
    ttl=$(no_ttl)
    local admitted over unavailable unknown grpc p99
    read -r admitted over unavailable unknown grpc p99 < <(python3 -c '
import json, sys
r = json.loads(sys.argv[1])
print(r["admitted"], r["over_limit"], r["unavailable"], r["unknown"], r["errors"], "%.1f" % (r["p99_us"] / 1000))
' "$out")
    rows+=("| $topology | $fault | $admitted | $charged_units | $ttl | $p99 | $unknown / $grpc | $over / $unavailable | $degraded | $errors | $bystander |")
    echo "cell $cell: $topology $fault: $out degraded=$degraded store_errors=$errors charged=$charged_units" >&2
    stop_replicas
    stop_redis
}

for topology in single cluster; do
    [[ -n $only && $only != "$topology" ]] && continue
    for fault in "${faults[@]}"; do
        [[ -n $only_fault && $only_fault != "$fault" ]] && continue
        run_cell "$topology" "$fault"
    done
done

echo "Quota fault matrix, $(date -u +%Y-%m-%d), $calls concurrent calls over 3 replicas, limit $limit/hour, default quota settings"
echo
echo "| Redis | fault | admitted | charged (units) | keys without TTL | p99 (ms) | UNKNOWN / gRPC errors | over limit / unavailable | degraded decisions | store errors | 30 calls on another primary's key, during the fault |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
