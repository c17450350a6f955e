#!/usr/bin/env bash
# Through-Envoy benchmark. Envoy 1.40 runs deploy/envoy.yaml (ext_authz with
# the request body, the ratelimit filter, ext_proc, header mutation) in front
# of an upstream twice: first with the three filters pointed at an empty
# ext_authz + RLS + ext_proc server (same tonic stack as Portcullis, answers
# at once), then at
# Portcullis on the bundled policies (quotas scaled up so that the load never
# runs out; every allowed request is still charged). Both Envoys run at
# once, and wrk loads them with the same allowed inference call in
# alternating slices: ROUNDS pairs of DURATION/ROUNDS seconds per server,
# in turn the empty server's Envoy first and Portcullis's first (ABBA), so
# that a host whose speed drifts during the run moves both sides of a pair
# alike (two 10 s runs one after the other gave ratios from 0.72 to 0.98 on
# one day). The script prints each server's throughput (over all of its
# slices), the median p50/p90/p99 of its slices, the CPU time the decision
# server and the Envoy in front of it spent per request (from
# /proc/PID/stat over the rounds: whether a gap is the decision server's
# own work or Envoy's work on its answers), what Envoy's own counters say
# per request it served (`/stats`, warm-up and probe included on both
# sides): the bytes it read from the decision server(s) (the answers' size)
# and the HTTP/2 stream resets they sent it, and the ratio: the
# median of the pairs' ratios, with their range. Only the ratio is worth
# quoting: on a 2-core machine wrk, Envoy, the upstream and the decision
# server share the cores.
#
#   scripts/bench-envoy.sh                 # 10 s per server
#   DURATION=30 CONNECTIONS=64 scripts/bench-envoy.sh
#   MODE=ext_proc scripts/bench-envoy.sh   # the ext_proc overhead alone
#
# MODE=ext_proc isolates the response side: both runs send ext_authz and
# RLS to Portcullis, and ext_proc (response headers and the STREAMED body)
# first to the empty server, then to Portcullis (on the bundled policies
# the predict route's response checks scan every response); the ratio is
# the throughput with Portcullis's ext_proc over that with an empty one.
#
# Settings (environment): DURATION (s per server, 10), ROUNDS (pairs of
# slices, 5), WARMUP (s, 2), CONNECTIONS (32),
# THREADS (wrk threads, 1), ENVOY_CONCURRENCY (Envoy workers, 1), MODE
# (all: every filter to one server; ext_proc: only ext_proc differs),
# WORKER_THREADS (Portcullis's `server.worker_threads` and the empty
# server's runtime threads; 0: Portcullis's default and 2 for the empty
# server, which is one per CPU on a 2-core machine).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

DURATION=${DURATION:-10}
ROUNDS=${ROUNDS:-5}
WARMUP=${WARMUP:-2}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-1}
ENVOY_CONCURRENCY=${ENVOY_CONCURRENCY:-1}
MODE=${MODE:-all}
WORKER_THREADS=${WORKER_THREADS:-0}
[[ $WORKER_THREADS =~ ^[0-9]+$ && $WORKER_THREADS -le 1024 ]] || { echo "WORKER_THREADS must be 0..1024" >&2; exit 2; }
[[ $MODE == all || $MODE == ext_proc ]] || { echo "MODE must be all or ext_proc" >&2; exit 2; }
[[ $DURATION =~ ^[0-9]+$ && $DURATION -ge 1 && $DURATION -le 600 ]] || { echo "DURATION must be 1..600 seconds" >&2; exit 2; }
[[ $ROUNDS =~ ^[0-9]+$ && $ROUNDS -ge 1 && $ROUNDS -le $DURATION ]] || { echo "ROUNDS must be 1..DURATION (slices of whole seconds)" >&2; exit 2; }

say() { printf '== %s\n' "$*" >&2; }
die() { printf 'bench-envoy: %s\n' "$*" >&2; exit 1; }

# Tools: Envoy from the test-tool installer, wrk from Debian's packages.
scripts/install-test-tools.sh >&2 || die "installing Envoy failed"
envoy=$root/.tools/bin/envoy
[ -x "$envoy" ] || die "no Envoy at $envoy"
if ! command -v wrk >/dev/null; then
    say "installing wrk (apt)"
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get install -y wrk >&2 || die "apt-get install wrk failed"
fi
command -v openssl >/dev/null || die "needs openssl (for the dev token)"

say "building release binaries"
cargo build --release --locked --bin portcullis --bin portcullis-bench >&2
bin=${CARGO_TARGET_DIR:-$root/target}/release

bench_workdir portcullis-bench-envoy

# The upstream: a second Envoy answering every request with 200 itself, so
# the upstream costs little and the same in both runs. Its listener and
# admin interface bind port 0 (start_envoy learns the ports).
cat >"$work/upstream.yaml" <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
static_resources:
  listeners:
    - name: upstream
      address: { socket_address: { address: 127.0.0.1, port_value: 0 } }
      filter_chains:
        - filters:
            - name: envoy.filters.network.http_connection_manager
              typed_config:
                "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
                stat_prefix: upstream
                route_config:
                  virtual_hosts:
                    - name: all
                      domains: ["*"]
                      routes:
                        - match: { prefix: "/" }
                          direct_response: { status: 200, body: { inline_string: "{\"ok\":true}" } }
                http_filters:
                  # The whole request body first: Envoy closes an HTTP/1.1
                  # connection whose response ended before its request did,
                  # and a direct response at the headers would cost the
                  # front Envoy a new upstream connection per request.
                  - name: envoy.filters.http.buffer
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.buffer.v3.Buffer
                      max_request_bytes: 65536
                  - name: envoy.filters.http.router
                    typed_config:
                      "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF
start_envoy envoy-upstream "$work/upstream.yaml" --concurrency 1 --log-level error --base-id 71
up_port=$envoy_port

# Portcullis: bundled policies with roomy quotas, the test issuer.
bench_portcullis_config "$work" "$bin" "$root"
empty_threads=2
if [ "$WORKER_THREADS" != 0 ]; then
    printf 'server: { worker_threads: %s }\n' "$WORKER_THREADS" >>"$work/portcullis.yaml"
    empty_threads=$WORKER_THREADS
fi

# The empty ext_authz + RLS + ext_proc server.
start_empty empty "$bin/portcullis-bench" --serve-empty 127.0.0.1:0 --server-threads "$empty_threads"

token=$(scripts/dev-token.sh alice acme 3600)
cat >"$work/request.lua" <<EOF
wrk.method = "POST"
wrk.path = "/v1/models/sentiment/versions/v2:predict"
wrk.body = '{"features": ["the delivery was quick"], "max_tokens": 16}'
wrk.headers["content-type"] = "application/json"
wrk.headers["authorization"] = "Bearer $token"
EOF

# The Envoy in front of the decision server at $2 (ext_proc at $3, when
# given), started, probed with the benchmark request and warmed up; its
# listener's port goes to envoy_ports[NAME]. Run in this shell (not in a
# command substitution), so that a failure stops the script and the
# cleanup stops the servers it started.
declare -A envoy_ports envoy_pids
front() { # name, decision port[, ext_proc port]
    local name=$1 port=$2 ext_proc=${3:-} lp
    # Envoy's own listener and admin interface on port 0 (start_envoy
    # learns the ports); the upstream and the decision server where they
    # are.
    sed -e "s/address: 127.0.0.1, port_value: 10000 /address: 127.0.0.1, port_value: 0 /" \
        -e "s/address: 127.0.0.1, port_value: 9901 /address: 127.0.0.1, port_value: 0 /" \
        -e "s/address: 127.0.0.1, port_value: 8081 /address: 127.0.0.1, port_value: $up_port /" \
        -e "s/address: 127.0.0.1, port_value: 50051 /address: 127.0.0.1, port_value: $port /" \
        deploy/envoy.yaml >"$work/envoy-$name.yaml"
    for p in 0 "$up_port" "$port"; do
        grep -q "port_value: $p " "$work/envoy-$name.yaml" || die "deploy/envoy.yaml: could not point an address at port $p"
    done
    [ "$(grep -c "address: 127.0.0.1, port_value: 0 " "$work/envoy-$name.yaml")" = 2 ] ||
        die "deploy/envoy.yaml: could not put the listener and the admin interface on port 0"
    if [ -n "$ext_proc" ]; then
        # ext_proc to a cluster of its own at $ext_proc.
        python3 - "$work/envoy-$name.yaml" "$ext_proc" <<'PY' || die "deploy/envoy.yaml: could not give ext_proc a cluster of its own"
import sys
path, port = sys.argv[1], sys.argv[2]
s = open(path).read()
f = s.index("- name: envoy.filters.http.ext_proc")
c = s.index("cluster_name: portcullis", f)
s = s[:c] + "cluster_name: extproc" + s[c + len("cluster_name: portcullis"):]
start = s.index("    - name: portcullis\n")
cluster = s[start:]
cluster = cluster.replace("name: portcullis", "name: extproc").replace("cluster_name: portcullis", "cluster_name: extproc")
import re
cluster = re.sub(r"port_value: \d+ ", f"port_value: {port} ", cluster)
s = s.rstrip("\n") + "\n" + cluster
open(path, "w").write(s)
PY
    fi
    start_envoy "envoy-$name" "$work/envoy-$name.yaml" --concurrency "$ENVOY_CONCURRENCY" \
        --log-level error --base-id "$((72 + RANDOM % 1000))"
    lp=$envoy_port
    envoy_ports[$name]=$lp
    envoy_pids[$name]=$envoy_pid
    local status
    status=$(curl -s -o "$work/probe-$name.body" -w '%{http_code}' -X POST \
        -H 'content-type: application/json' -H "authorization: Bearer $token" \
        --data '{"features": ["the delivery was quick"], "max_tokens": 16}' \
        "http://127.0.0.1:$lp/v1/models/sentiment/versions/v2:predict")
    [ "$status" = 200 ] || die "$name: the benchmark request is not allowed (HTTP $status: $(head -c 300 "$work/probe-$name.body"))"
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "${WARMUP}s" -s "$work/request.lua" "http://127.0.0.1:$lp" >/dev/null
}

# host_ticks: the whole host's idle and total CPU time so far, as
# "IDLE TOTAL" clock ticks over all CPUs (/proc/stat's first line; idle
# includes iowait, total is user to steal).
host_ticks() {
    awk '$1 == "cpu" { print $5 + $6, $2 + $3 + $4 + $5 + $6 + $7 + $8 + $9; exit }' /proc/stat
}

# slice NAME ROUND: one slice of wrk on NAME's Envoy, its figures appended
# to $work/slices.txt as "name round rps p50 p90 p99 non2xx socket-errors
# idle-ticks total-ticks" (the host's, during the slice). wrk takes whole
# seconds.
slice_seconds=$((DURATION / ROUNDS))
slice() {
    local name=$1 round=$2 out=$work/wrk-$1-$2.txt before after
    before=$(host_ticks)
    wrk -t "$THREADS" -c "$CONNECTIONS" -d "${slice_seconds}s" --latency -s "$work/request.lua" \
        "http://127.0.0.1:${envoy_ports[$name]}" >"$out" 2>&1 || die "wrk failed on $name's Envoy: $(tail -3 "$out")"
    after=$(host_ticks)
    python3 - "$out" "$name" "$round" $before $after >>"$work/slices.txt" <<'PY'
import re, sys
path, name, rnd = sys.argv[1:4]
idle0, total0, idle1, total1 = map(int, sys.argv[4:8])
text = open(path).read()
def us(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 1, "ms": 1e3, "s": 1e6}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
lat = {p: us(v) for p, v in re.findall(r"^\s+(50|90|99)%\s+(\S+)", text, re.M)}
bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
errs = re.search(r"Socket errors:.*", text)
print(f"{name} {rnd} {rps:.0f} {lat['50']:.0f} {lat['90']:.0f} {lat['99']:.0f} {int(bad.group(1)) if bad else 0} {'yes' if errs else 'no'} {idle1 - idle0} {total1 - total0}")
PY
}

start_portcullis portcullis "$bin/portcullis" serve --config "$work/portcullis.yaml"

if [ "$MODE" = ext_proc ]; then
    say "Envoy -> Portcullis (ext_authz, RLS), empty ext_proc; and Envoy -> Portcullis (ext_authz, RLS, ext_proc)"
    front empty "$pp" "$ep"
    front portcullis "$pp" "$pp"
    label="ext_proc server"
    ratio=ext_proc_ratio_vs_empty_through_envoy
else
    say "Envoy -> empty ext_authz/RLS/ext_proc server; and Envoy -> Portcullis, bundled policies"
    front empty "$ep"
    front portcullis "$pp"
    label="decision server"
    ratio=ratio_vs_empty_through_envoy
fi
say "$ROUNDS rounds of ${slice_seconds}s per server, $CONNECTIONS connections, in turn each first"
: >"$work/slices.txt"
# CPU time of each side's decision server and Envoy over the rounds (each
# works only in its own slices, apart from the upstream, which serves both).
if [ "$MODE" = ext_proc ]; then
    decision_pids=("$p_pid" "$p_pid")
else
    decision_pids=("$empty_pid" "$p_pid")
fi
cpu_all() {
    cpu_ticks "${decision_pids[0]}"
    cpu_ticks "${decision_pids[1]}"
    cpu_ticks "${envoy_pids[empty]}"
    cpu_ticks "${envoy_pids[portcullis]}"
}
mapfile -t cpu_before < <(cpu_all)
for round in $(seq 1 "$ROUNDS"); do
    if [ $((round % 2)) = 1 ]; then
        slice empty "$round"
        slice portcullis "$round"
    else
        slice portcullis "$round"
        slice empty "$round"
    fi
done

mapfile -t cpu_after < <(cpu_all)
# Each Envoy's counters: requests served, and per decision-server cluster
# (portcullis, and extproc in MODE=ext_proc) the bytes read and the resets
# received.
for name in empty portcullis; do
    curl -fsS --max-time 5 "http://$(cat "$work/envoy-$name.admin")/stats" |
        grep -E '^(cluster\.(portcullis|extproc)\.(upstream_cx_rx_bytes_total|http2\.rx_reset)|http\.ingress_http\.downstream_rq_completed): ' \
            >"$work/stats-$name.txt" || die "Envoy ($name): could not read its /stats"
done
cpu_used=()
for i in 0 1 2 3; do cpu_used+=("$((cpu_after[i] - cpu_before[i]))"); done

python3 - "$work/slices.txt" "$label" "$ratio" "$slice_seconds" "$MODE" "$(getconf CLK_TCK)" "${cpu_used[@]}" <<'PY'
import os, statistics, sys
path, label, ratio, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
mode, hz = sys.argv[5], float(sys.argv[6])
decision_ticks = dict(zip(("empty", "portcullis"), map(int, sys.argv[7:9])))
envoy_ticks = dict(zip(("empty", "portcullis"), map(int, sys.argv[9:11])))
rows = [l.split() for l in open(path) if l.strip()]
by = {"empty": {}, "portcullis": {}}
for name, rnd, rps, p50, p90, p99, bad, sock, idle, total in rows:
    by[name][rnd] = (float(rps), float(p50), float(p90), float(p99), int(bad), int(idle), int(total))
# CPU per request (us): the decision server's and its Envoy's, over all
# of the side's slices. In ext_proc mode both sides share one Portcullis,
# so its column is left out. Host idle: the share of all CPUs' time idle
# during the side's slices (with cores to spare, what bounds throughput is
# waiting, not work).
def envoy_counters(name):
    # Per request the Envoy served: bytes read from its decision server(s),
    # and the stream resets they sent it.
    c = {}
    for line in open(os.path.join(os.path.dirname(path), f"stats-{name}.txt")):
        k, v = line.rsplit(":", 1)
        c[k] = int(v)
    served = c.get("http.ingress_http.downstream_rq_completed", 0)
    if not served:
        return "-", "-"
    rx = sum(v for k, v in c.items() if k.endswith(".upstream_cx_rx_bytes_total"))
    resets = sum(v for k, v in c.items() if k.endswith(".http2.rx_reset"))
    return f"{rx / served:.0f}", f"{resets / served:.2f}"
print(f"{label:<28} {'req/s':>10} {'p50 us':>9} {'p90 us':>9} {'p99 us':>9} {'non-2xx':>8} {'server cpu us/req':>18} {'envoy cpu us/req':>17} {'host idle':>10} {'answer bytes/req':>17} {'resets rx/req':>14}")
bad = 0
for name in ("empty", "portcullis"):
    v = list(by[name].values())
    med = lambda i: statistics.median(x[i] for x in v)
    bad += sum(x[4] for x in v)
    served = sum(x[0] for x in v) * seconds
    per = lambda ticks: f"{ticks / hz * 1e6 / served:.0f}" if served else "-"
    server = per(decision_ticks[name]) if mode != "ext_proc" else "-"
    total = sum(x[6] for x in v)
    idle = f"{100 * sum(x[5] for x in v) / total:.0f}%" if total else "-"
    answer_bytes, resets = envoy_counters(name)
    print(f"{name:<28} {statistics.mean(x[0] for x in v):>10.0f} {med(1):>9.0f} {med(2):>9.0f} {med(3):>9.0f} {sum(x[4] for x in v):>8} {server:>18} {per(envoy_ticks[name]):>17} {idle:>10} {answer_bytes:>17} {resets:>14}")
pairs = [by["portcullis"][r][0] / by["empty"][r][0] for r in by["empty"] if r in by["portcullis"]]
print(f"{ratio} {statistics.median(pairs):.3f} (median of {len(pairs)} pairs of {seconds:g} s slices: {min(pairs):.3f}..{max(pairs):.3f})")
if bad:
    print("bench-envoy: some responses were not 2xx (see the non-2xx column): the figures do not measure allowed requests", file=sys.stderr)
    sys.exit(1)
PY
