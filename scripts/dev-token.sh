#!/usr/bin/env bash
# Prints a JWT for local development and the README's examples, signed with
# the TEST issuer's key from tests/fixtures/keys (RS256, kid "test-rs256").
# Only a Portcullis configured to trust that test issuer accepts it (e.g.
# `portcullis serve --config deploy/portcullis.yaml`); never trust the test
# issuer in production, its private key is in this repository.
#
#   scripts/dev-token.sh SUBJECT [ORG] [LIFETIME_SECONDS]
#   TOKEN=$(scripts/dev-token.sh carol)     # carol is an admin in policies/
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

sub="${1:?usage: scripts/dev-token.sh SUBJECT [ORG] [LIFETIME_SECONDS]}"
org="${2:-acme}"
life="${3:-3600}"
key="tests/fixtures/keys/test-rs256.pem"
command -v openssl >/dev/null || { echo "dev-token.sh needs openssl" >&2; exit 1; }

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
json_string() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }

now=$(date +%s)
header='{"alg":"RS256","typ":"JWT","kid":"test-rs256"}'
claims=$(printf '{"iss":"https://idp.test.portcullis/","aud":"portcullis","sub":"%s","org":"%s","iat":%d,"exp":%d}' \
  "$(json_string "$sub")" "$(json_string "$org")" "$now" "$((now + life))")
signing_input="$(printf '%s' "$header" | b64url).$(printf '%s' "$claims" | b64url)"
signature=$(printf '%s' "$signing_input" | openssl dgst -sha256 -sign "$key" -binary | b64url)
printf '%s.%s\n' "$signing_input" "$signature"
