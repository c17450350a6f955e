# Shared by the scripts/bench-*.sh scripts (sourced, not run): a free
# loopback port, a work directory whose background servers go with it,
# waiting for a port, and a Portcullis configuration for benchmarks. The
# sourcing script defines `die MESSAGE`.

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_portcullis_config WORK BIN ROOT: writes WORK/portcullis.yaml serving
# a copy of the bundled policies with roomy quotas (WORK/policies) and
# trusting the test issuer, on free loopback ports; sets pp (decision
# port), pa (admin port) and ph (HTTP port).
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

# wait_tcp PORT WHAT: until 127.0.0.1:PORT accepts a connection (10 s).
wait_tcp() {
    for _ in $(seq 1 200); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    die "$2 did not listen on 127.0.0.1:$1 within 10 s (logs in $work)"
}

bench_portcullis_config() {
    local work=$1 bin=$2 root=$3
    pp=$(free_port)
    pa=$(free_port)
    ph=$(free_port)
    "$bin/portcullis-bench" --policies "$root/policies" --prepare-policies "$work/policies" >/dev/null
    cat >"$work/portcullis.yaml" <<EOF
listen: "127.0.0.1:$pp"
admin_listen: "127.0.0.1:$pa"
http_listen: "127.0.0.1:$ph"
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
