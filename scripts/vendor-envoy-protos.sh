#!/usr/bin/env bash
# Copies into proto/third_party/ the .proto files that build.rs compiles into
# the reflection descriptor set: the Envoy services we serve (ext_authz, RLS,
# ext_proc) and everything they import, transitively, and nothing else.
#
# The source is the `proto/` directory of the envoy-types crate in the cargo
# registry (the same protos the Rust types we use were generated from), so a
# build never has to find that crate (no `cargo metadata`, no network).
#
#   scripts/vendor-envoy-protos.sh [ENVOY_TYPES_PROTO_DIR]
#
# Without an argument it takes the envoy-types version Cargo.lock pins, from
# ${CARGO_HOME:-~/.cargo}/registry/src (`cargo fetch` puts it there). After
# bumping envoy-types: run it,
# update proto/third_party/README.md (version), review the diff.
# google/protobuf/*.proto (the well-known types) are not copied: protox
# carries them.
set -euo pipefail

ROOTS=(
    envoy/service/auth/v3/external_auth.proto
    envoy/service/ratelimit/v3/rls.proto
    envoy/service/ext_proc/v3/external_processor.proto
)
# Include trees of the envoy-types crate, searched in this order; each maps
# to proto/third_party/<tree>.
TREES=(data-plane-api xds protoc-gen-validate googleapis cel-spec/proto opentelemetry-proto client_model)

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="$repo/proto/third_party"
src="${1:-}"
if [ -z "$src" ]; then
    version="$(awk '/^name = "envoy-types"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$repo/Cargo.lock")"
    [ -n "$version" ] || { echo "vendor-envoy-protos: Cargo.lock pins no envoy-types" >&2; exit 1; }
    crate="$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/"envoy-types-$version" 2>/dev/null | head -1)"
    [ -n "$crate" ] || { echo "vendor-envoy-protos: envoy-types-$version is not in the cargo registry (run cargo fetch)" >&2; exit 1; }
    src="$crate/proto"
fi

# resolve IMPORT: print "tree<TAB>import" for the first tree that has it.
resolve() {
    local t
    for t in "${TREES[@]}"; do
        if [ -f "$src/$t/$1" ]; then
            printf '%s\t%s\n' "$t" "$1"
            return 0
        fi
    done
    echo "vendor-envoy-protos: $1 is in no include tree of $src" >&2
    return 1
}

declare -A seen=()
queue=("${ROOTS[@]}")
files=()
while [ "${#queue[@]}" -gt 0 ]; do
    f="${queue[0]}"
    queue=("${queue[@]:1}")
    [ -z "${seen[$f]:-}" ] || continue
    seen[$f]=1
    case "$f" in google/protobuf/*) continue ;; esac
    hit="$(resolve "$f")"
    files+=("$hit")
    tree="${hit%%$'\t'*}"
    while IFS= read -r imp; do
        queue+=("$imp")
    done < <(sed -n 's/^[[:space:]]*import[[:space:]]\+\(public[[:space:]]\+\|weak[[:space:]]\+\)\?"\([^"]*\)".*/\2/p' "$src/$tree/$f")
done

# Replace the .proto files only: LICENSE and README.md files stay.
find "$dest" -name '*.proto' -delete 2>/dev/null || true
for hit in "${files[@]}"; do
    tree="${hit%%$'\t'*}"
    f="${hit#*$'\t'}"
    out="$dest/${tree%/proto}/$f"
    mkdir -p "$(dirname "$out")"
    cp "$src/$tree/$f" "$out"
done
find "$dest" -type d -empty -delete
echo "vendor-envoy-protos: ${#files[@]} files from $src into $dest"
