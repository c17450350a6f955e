# Shared by scripts/bench-envoy.sh and scripts/bench-memory.sh (sourced, not
# run): a free loopback port, and a Portcullis configuration for benchmarks.

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# bench_portcullis_config WORK BIN ROOT: writes WORK/portcullis.yaml serving
# a copy of the bundled policies with roomy quotas (WORK/policies) and
# trusting the test issuer, on free loopback ports; sets pp (decision
# port), pa (admin port) and ph (HTTP port).
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
