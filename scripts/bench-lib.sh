# Shared by the scripts/bench-*.sh scripts (sourced, not run): a work
# directory whose background servers go with it, servers started on port 0
# that report the address they bound (so no port is chosen before its server
# binds it, when another process may take it), waiting for a server with a
# fixed port, and a Portcullis configuration for benchmarks. The sourcing
# script defines `die MESSAGE`.

# free_port: a loopback port free now. Only for servers that cannot bind
# port 0 and report it (redis-server, Limitador); wait for them with
# wait_listener, which checks that the port is theirs.
free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# await_port WHAT PID FILE PATTERN [SECONDS]: prints the port of the first
# line of FILE that matches PATTERN (extended regex; the line ends with
# HOST:PORT, as a server that bound port 0 reports it); dies with FILE's
# tail when PID exits first or SECONDS (10) pass. Use as
# `port=$(await_port ...)`: under `set -e` the script stops with it.
# Only a whole line counts (its newline written): an unbuffered stderr
# writes a formatted line in pieces, and under valgrind the address came
# seconds after the text before it.
await_port() {
    local what=$1 pid=$2 file=$3 pattern=$4 limit=${5:-10} line n
    local deadline=$((SECONDS + limit))
    while :; do
        n=$(grep -n -m1 -E "$pattern" "$file" 2>/dev/null | cut -d: -f1 || true)
        if [ -n "$n" ] && [ "$n" -le "$(wc -l <"$file")" ]; then
            line=$(sed -n "${n}p" "$file")
            echo "${line##*:}"
            return 0
        fi
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$file" >&2
            die "$what exited before it reported its address (output in $file)"
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            tail -n 20 "$file" >&2
            die "$what did not report its address within $limit s (output in $file)"
        fi
        sleep 0.05
    done
}

# start_portcullis NAME COMMAND...: starts COMMAND (`portcullis serve` on a
# config with port-0 listeners, as bench_portcullis_config writes it,
# perhaps behind taskset) in the background, stdout to $work/NAME.out and
# stderr to $work/NAME.log; sets p_pid, and pp (decision port), pa (admin)
# and ph (HTTP) from the addresses it reports.
start_portcullis() {
    local name=$1
    shift
    "$@" >"$work/$name.out" 2>"$work/$name.log" &
    p_pid=$!
    pids+=("$p_pid")
    pp=$(await_port "Portcullis ($name)" "$p_pid" "$work/$name.out" '^listening decision ')
    pa=$(await_port "Portcullis ($name)" "$p_pid" "$work/$name.out" '^listening admin ')
    ph=$(await_port "Portcullis ($name)" "$p_pid" "$work/$name.out" '^listening http ')
}

# start_empty NAME COMMAND...: starts COMMAND (`portcullis-bench
# --serve-empty 127.0.0.1:0 ...`, perhaps behind taskset) in the
# background, its stderr to $work/NAME.log; sets empty_pid, and ep from the
# address it reports.
start_empty() {
    local name=$1
    shift
    "$@" 2>"$work/$name.log" &
    empty_pid=$!
    pids+=("$empty_pid")
    ep=$(await_port "the empty server ($name)" "$empty_pid" "$work/$name.log" 'server listening on ')
}

# wait_listener PORT WHAT PID: until process PID listens on 127.0.0.1:PORT
# (10 s); dies if PID exits first or another process holds the port (it
# was taken between free_port and the server's bind).
wait_listener() {
    local port=$1 what=$2 pid=$3 owner
    command -v ss >/dev/null || die "needs ss (Debian iproute2) to check who listens on a port"
    for _ in $(seq 1 200); do
        owner=$(ss -ltnpH "sport = :$port" 2>/dev/null || true)
        if [[ $owner == *"pid=$pid,"* ]]; then return 0; fi
        kill -0 "$pid" 2>/dev/null || die "$what exited before listening on 127.0.0.1:$port (taken by another process? logs in $work)"
        sleep 0.05
    done
    die "$what did not listen on 127.0.0.1:$port within 10 s (listeners there: ${owner:-none}; logs in $work)"
}

# start_envoy NAME CONFIG ARGS...: starts Envoy ($envoy) on CONFIG, whose
# admin interface and first listener may be on port 0, with ARGS, its
# output to $work/NAME.log; waits until it is ready (10 s) and sets
# envoy_pid, envoy_admin (HOST:PORT, from --admin-address-path) and
# envoy_port (the port its first listener bound, from the admin's
# /listeners).
start_envoy() {
    local name=$1 config=$2
    shift 2
    rm -f "$work/$name.admin"
    "$envoy" -c "$config" --admin-address-path "$work/$name.admin" "$@" >"$work/$name.log" 2>&1 &
    envoy_pid=$!
    pids+=("$envoy_pid")
    for _ in $(seq 1 200); do
        if [ -s "$work/$name.admin" ] &&
            [ "$(curl -s "http://$(cat "$work/$name.admin")/ready" 2>/dev/null)" = "LIVE" ]; then
            envoy_admin=$(cat "$work/$name.admin")
            envoy_port=$(curl -fsS --max-time 5 "http://$envoy_admin/listeners?format=json" | python3 -c 'import json, sys
print(json.load(sys.stdin)["listener_statuses"][0]["local_address"]["socket_address"]["port_value"])') ||
                die "Envoy ($name): could not read its listener's address from its admin /listeners"
            return 0
        fi
        if ! kill -0 "$envoy_pid" 2>/dev/null; then
            tail -n 20 "$work/$name.log" >&2
            die "Envoy ($name) exited before it was ready (log: $work/$name.log)"
        fi
        sleep 0.05
    done
    tail -n 20 "$work/$name.log" >&2
    die "Envoy ($name) was not ready within 10 s (log: $work/$name.log)"
}

# bench_workdir PREFIX: makes $work (a temporary directory) and $pids (the
# background servers), both cleaned up when the script exits.
bench_workdir() {
    work=$(mktemp -d -t "$1.XXXXXX")
    pids=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}

# cpu_ticks PID: the process's CPU time so far (utime + stime from
# /proc/PID/stat), in clock ticks (`getconf CLK_TCK` a second).
cpu_ticks() {
    awk '{ print $14 + $15 }' "/proc/$1/stat"
}

# bench_portcullis_config WORK BIN ROOT: writes WORK/portcullis.yaml serving
# a copy of the bundled policies with roomy quotas (WORK/policies) and
# trusting the test issuer, its listeners on loopback port 0 (start it with
# start_portcullis, which learns the ports).
bench_portcullis_config() {
    local work=$1 bin=$2 root=$3
    "$bin/portcullis-bench" --policies "$root/policies" --prepare-policies "$work/policies" >/dev/null
    cat >"$work/portcullis.yaml" <<EOF
listen: "127.0.0.1:0"
admin_listen: "127.0.0.1:0"
http_listen: "127.0.0.1:0"
policies: "$work/policies"
reload: { watch: false }
authentication:
  jwt:
    - issuer: "https://idp.test.portcullis/"
      audiences: ["portcullis"]
      jwks_file: "$root/tests/fixtures/keys/test-issuer.jwks.json"
      algorithms: ["ES256", "RS256"]
      org_claim: org
audit: { directory: "$work/audit" }
log: { format: text, level: warn }
EOF
}

# bench_trust_load_issuer CONFIG JWKS: adds the load generator's issuer
# (`portcullis-bench --write-token-key` wrote JWKS) to the issuers of the
# config bench_portcullis_config wrote, so that its mixed, allowed and
# uncached `Check` calls authenticate.
bench_trust_load_issuer() {
    python3 - "$1" "$2" <<'PY'
import sys
path, jwks = sys.argv[1:]
text = open(path).read()
issuer = (f'    - issuer: "https://bench.portcullis.invalid/"\n'
          f'      audiences: ["portcullis-bench"]\n'
          f'      jwks_file: "{jwks}"\n'
          f'      algorithms: ["ES256"]\n'
          f'      org_claim: org\n')
marker = "      org_claim: org\n"
assert marker in text, "bench_portcullis_config's issuer block changed"
open(path, "w").write(text.replace(marker, marker + issuer, 1))
PY
}
