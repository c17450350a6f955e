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

# Every server binds port 0 and reports the address it got, so no port is
# chosen before it is bound (a port picked free can be taken by another
# process before the server binds it).
wait_for() { # wait_for DESCRIPTION PID LOG COMMAND...: up to 30 s, or until PID exits
  local what=$1 pid=$2 log=$3; shift 3
  for _ in $(seq 1 150); do
    "$@" >/dev/null 2>&1 && return 0
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "demo: $what exited before it was ready; its log ends:" >&2
      tail -n 40 "$log" >&2
      return 1
    fi
    sleep 0.2
  done
  echo "demo: $what did not come up within 30 s; its log ends:" >&2
  tail -n 40 "$log" >&2
  return 1
}

# 1. The demo model server (the upstream), on a port the kernel picks.
python3 deploy/demo/model_server.py 0 > "$work/model.out" 2>&1 & pids+=($!)
wait_for "the model server" "$!" "$work/model.out" grep -q "^listening " "$work/model.out"
model=$(awk '/^listening / {print $2; exit}' "$work/model.out")

# 2. Portcullis on the bundled policies, with the test issuer.
sed -e "s#\"\.\./\.\./#\"$repo/#g" -e "s#directory: \"audit\"#directory: \"$work/audit\"#" \
  deploy/demo/portcullis.yaml > "$work/portcullis.yaml"
"$portcullis" serve --config "$work/portcullis.yaml" --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 --http-listen 127.0.0.1:0 \
  > "$work/portcullis.out" 2> "$work/portcullis.log" & pids+=($!)
wait_for "Portcullis" "$!" "$work/portcullis.log" grep -q "listening admin" "$work/portcullis.out"
pdp=$(awk '/listening decision/ {print $3}' "$work/portcullis.out")
admin=$(awk '/listening admin/ {print $3}' "$work/portcullis.out")

# 3. Envoy with deploy/envoy.yaml: the model server and Portcullis at the
# addresses they reported; its own listener and admin interface on port 0.
# Envoy writes the admin address to --admin-address-path, and its admin
# /listeners reports the address the listener was bound to.
sed -e "s/port_value: 10000/port_value: 0/" -e "s/port_value: 8081/port_value: ${model##*:}/" \
    -e "s/port_value: 50051/port_value: ${pdp##*:}/" -e "s/port_value: 9901/port_value: 0/" \
    deploy/envoy.yaml > "$work/envoy.yaml"
"$envoy" -c "$work/envoy.yaml" -l error --disable-hot-restart --use-dynamic-base-id --concurrency 1 \
  --admin-address-path "$work/envoy-admin" > "$work/envoy.log" 2>&1 & pids+=($!)
envoy_ready() {
  [ -s "$work/envoy-admin" ] && curl -fsS --max-time 2 "http://$(cat "$work/envoy-admin")/ready" | grep -q LIVE
}
wait_for "Envoy" "$!" "$work/envoy.log" envoy_ready
gw_addr=$(curl -fsS --max-time 5 "http://$(cat "$work/envoy-admin")/listeners?format=json" | python3 -c 'import json, sys
a = json.load(sys.stdin)["listener_statuses"][0]["local_address"]["socket_address"]
print("%s:%d" % (a["address"], a["port_value"]))')

gw=http://$gw_addr
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
