#!/usr/bin/env bash
# A walk through Portcullis behind a real Envoy, on this machine only
# (loopback): a demo model server, Portcullis on the bundled policies, Envoy
# with deploy/envoy.yaml. It sends a handful of requests and prints each
# request and response: allow, 401, 403, 400, 422, 404, 429, then an audit
# query.
#
#   scripts/demo.sh            (installs Envoy/grpcurl if missing)
#
# It runs the release binary of the quick start (`cargo run --release --
# serve`): cargo finds it up to date, wherever CARGO_TARGET_DIR or cargo's
# configuration puts it, so there is no second compile. PORTCULLIS_BIN names
# another binary (the tests pass the one they built).
#
# Everything it starts is stopped when it ends; every wait is bounded.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
repo=$PWD

bash scripts/install-test-tools.sh >/dev/null
envoy=$repo/.tools/bin/envoy
grpcurl=$repo/.tools/bin/grpcurl
portcullis=${PORTCULLIS_BIN:-}
if [ -z "$portcullis" ]; then
  # Cargo says where the binary is (the target directory may be anywhere).
  portcullis=$(cargo build --release --quiet --bin portcullis --message-format=json |
    python3 -c 'import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "portcullis":
        print(m["executable"])')
  [ -x "$portcullis" ] || { echo "demo: cargo built no portcullis binary" >&2; exit 1; }
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for DESCRIPTION COMMAND...: up to 30 s
  local what=$1; shift
  for _ in $(seq 1 150); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "demo: $what did not come up within 30 s" >&2
  return 1
}

model_port=$(free_port); gw_port=$(free_port); envoy_admin=$(free_port)

# 1. The demo model server (the upstream).
python3 deploy/demo/model_server.py "$model_port" & pids+=($!)

# 2. Portcullis on the bundled policies, with the test issuer.
sed -e "s#\"\.\./\.\./#\"$repo/#g" -e "s#directory: \"audit\"#directory: \"$work/audit\"#" \
  deploy/demo/portcullis.yaml > "$work/portcullis.yaml"
"$portcullis" serve --config "$work/portcullis.yaml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  > "$work/portcullis.out" 2> "$work/portcullis.log" & pids+=($!)
wait_for "Portcullis" grep -q "listening admin" "$work/portcullis.out"
pdp=$(awk '/listening decision/ {print $3}' "$work/portcullis.out")
admin=$(awk '/listening admin/ {print $3}' "$work/portcullis.out")

# 3. Envoy with deploy/envoy.yaml, its four addresses moved to free ports.
sed -e "s/port_value: 10000/port_value: $gw_port/" -e "s/port_value: 8081/port_value: $model_port/" \
    -e "s/port_value: 50051/port_value: ${pdp##*:}/" -e "s/port_value: 9901/port_value: $envoy_admin/" \
    deploy/envoy.yaml > "$work/envoy.yaml"
"$envoy" -c "$work/envoy.yaml" -l error --disable-hot-restart --use-dynamic-base-id --concurrency 1 \
  > "$work/envoy.log" 2>&1 & pids+=($!)
wait_for "Envoy" sh -c "curl -fsS http://127.0.0.1:$envoy_admin/ready | grep -q LIVE"

gw=http://127.0.0.1:$gw_port
alice=$(scripts/dev-token.sh alice acme)
bob=$(scripts/dev-token.sh bob acme)
carol=$(scripts/dev-token.sh carol acme)
body='{"features":["great product"],"max_tokens":64}'

show() { # show TITLE CURL-ARGS...
  local title=$1; shift
  echo
  echo "=== $title"
  echo "\$ curl $*" | sed -E 's/(Bearer )[A-Za-z0-9_.-]+/\1<token>/g'
  curl -sS -D "$work/headers" -o "$work/body" "$@"
  head -1 "$work/headers" | tr -d '\r'
  grep -iE '^(content-type|www-authenticate|retry-after|ratelimit-[a-z]+|deprecation|sunset|x-portcullis-decision-id):' "$work/headers" | tr -d '\r' || true
  cat "$work/body"; echo
}

show "allowed: alice (invoker, acme) invokes sentiment v2; the model sees who called" \
  -X POST "$gw/v1/models/sentiment/versions/v2:predict" -H "authorization: Bearer $alice" \
  -H 'content-type: application/json' -d "$body"
show "401: no credentials" \
  -X POST "$gw/v1/models/sentiment/versions/v2:predict" -H 'content-type: application/json' -d "$body"
show "401: a token that is not ours" \
  -X POST "$gw/v1/models/sentiment/versions/v2:predict" -H "authorization: Bearer eyJhbGciOiJub25lIn0.e30." \
  -H 'content-type: application/json' -d "$body"
show "403: bob is a viewer, not an invoker" \
  -X POST "$gw/v1/models/sentiment/versions/v2:predict" -H "authorization: Bearer $bob" \
  -H 'content-type: application/json' -d "$body"
show "allowed, with Deprecation and Sunset: sentiment v1 is deprecated (models.yaml)" \
  -X POST "$gw/v1/models/sentiment/versions/v1:predict" -H "authorization: Bearer $alice" \
  -H 'content-type: application/json' -d "$body"
show "400: the body is not well-formed JSON (truncated)" \
  -X POST "$gw/v1/models/sentiment/versions/v2:predict" -H "authorization: Bearer $alice" \
  -H 'content-type: application/json' -d '{"features":["great product"'
show "422: well-formed, but sentiment v2 takes exactly one feature; the error points at it" \
  -X POST "$gw/v1/models/sentiment/versions/v2:predict" -H "authorization: Bearer $alice" \
  -H 'content-type: application/json' -d '{"features":["great product","and more"]}'
show "422: a card number on a route that refuses personal data (the number is never echoed)" \
  -X POST "$gw/v1/models/sentiment/versions/v2:predict" -H "authorization: Bearer $alice" \
  -H 'content-type: application/json' -d '{"features":["charge 4111 1111 1111 1111"]}'
show "404: sentiment has no v9; the answer names the versions that exist" \
  -X POST "$gw/v1/models/sentiment/versions/v9:predict" -H "authorization: Bearer $alice" \
  -H 'content-type: application/json' -d "$body"
show "400: the token budget cost (x-max-tokens) must be a number" \
  -X POST "$gw/v1/models/sentiment/versions/v2:predict" -H "authorization: Bearer $alice" \
  -H 'x-max-tokens: lots' -H 'content-type: application/json' -d '{"features":["x"]}'
show "400: more tokens than alice's budget ever allows at once (no Retry-After: waiting cannot help)" \
  -X POST "$gw/v1/models/sentiment/versions/v2:predict" -H "authorization: Bearer $alice" \
  -H 'x-max-tokens: 50000' -H 'content-type: application/json' -d '{"features":["x"]}'
show "allowed: 15000 tokens fit in alice's budget (20000 at once)" \
  -X POST "$gw/v1/models/sentiment/versions/v2:predict" -H "authorization: Bearer $alice" \
  -H 'x-max-tokens: 15000' -H 'content-type: application/json' -d '{"features":["x"]}'
show "429: another 15000 do not fit yet; Retry-After says when they will" \
  -X POST "$gw/v1/models/sentiment/versions/v2:predict" -H "authorization: Bearer $alice" \
  -H 'x-max-tokens: 15000' -H 'content-type: application/json' -d '{"features":["x"]}'
show "404: no such route" "$gw/v2/nothing-here"

echo
echo "=== the audit trail: bob's denials, asked as carol (admin) over the admin API"
echo "\$ grpcurl -plaintext -H 'authorization: Bearer <carol>' -d '{\"principal\":\"User::\\\"bob\\\"\",\"decision\":\"deny\"}' $admin portcullis.admin.v1.AuditService/Query"
"$grpcurl" -plaintext -max-time 10 -H "authorization: Bearer $carol" \
  -d '{"principal":"User::\"bob\"","decision":"deny"}' "$admin" portcullis.admin.v1.AuditService/Query
echo
echo "=== and the chain verifies"
"$grpcurl" -plaintext -max-time 10 -H "authorization: Bearer $carol" -d '{}' "$admin" \
  portcullis.admin.v1.AuditService/Verify
echo
http=$(awk '/listening http/ {print $3}' "$work/portcullis.out")
echo "=== the metrics after this traffic (decisions by outcome and reason, quota rejections)"
echo "\$ curl -s http://$http/metrics | grep -E '^portcullis_(decisions|quota_rejections)_total'"
curl -s --max-time 10 "http://$http/metrics" | grep -E '^portcullis_(decisions|quota_rejections)_total'
echo
echo "demo: done"
