#!/usr/bin/env bash
# Instructions per request, counted by valgrind's callgrind: the empty
# handler and Portcullis each run under callgrind with the same load, and
# the script prints the instructions each executed per request and their
# ratio. Unlike the load figures, which move by 10-30% between runs on a
# shared machine, these counts repeat within a fraction of a percent, so a
# change of a few percent in the decision path shows (compare two builds by
# running the script on each).
#
#   scripts/instructions.sh check     # Check, allowed calls (cached tokens)
#   scripts/instructions.sh mixed     # Check, the bench's mixed calls (denials too)
#   scripts/instructions.sh rls       # ShouldRateLimit, one descriptor
#   scripts/instructions.sh rls-bundled  # ShouldRateLimit, the bench's bundle of descriptors
#   REQUESTS=4000 WARMUP=1500 scripts/instructions.sh check
#
# Each server is pinned to SERVER_CPU (0) and `portcullis-bench --target`
# to LOAD_CPU (1), at CONCURRENCY (16) in-flight requests: WARMUP requests
# (1,500; token and decision caches filled), then the counters are zeroed
# (`callgrind_control -z`), REQUESTS requests (4,000) are sent and the
# counts dumped (`callgrind_control -d`). Both runs send the same bearer
# tokens (`--reuse-tokens`): the measured requests find them in the token
# cache, and no signature is verified in the count. Portcullis serves the
# bundled policies with roomy quotas, its audit trail on, as in
# scripts/profile.sh.
#
# What the counts leave out: system calls (reads, writes, epoll) run in the
# kernel and are not counted, nor is any waiting. valgrind hides SHA-NI
# from the program, so SHA-256 (audit hashes, the token cache's key) runs
# sha2's portable code and costs several times what it does natively: the
# script prints its share apart. Under callgrind a request takes about 50
# times longer, so fewer answers share one write than at full speed.
#
# Writes target/profile/<name>.callgrind (the dump; `callgrind_annotate`
# reads it) and <name>.callgrind.txt (functions by inclusive count), name
# being <rpc> or empty-<rpc>. Needs valgrind (Debian package; installed with
# apt when missing).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
# shellcheck source=scripts/bench-lib.sh
. scripts/bench-lib.sh

rpc=${1:-check}
REQUESTS=${REQUESTS:-4000}
WARMUP=${WARMUP:-1500}
CONCURRENCY=${CONCURRENCY:-16}
SERVER_CPU=${SERVER_CPU:-0}
LOAD_CPU=${LOAD_CPU:-1}
say() { printf '== %s\n' "$*" >&2; }
die() { printf 'instructions: %s\n' "$*" >&2; exit 1; }
case $rpc in
    rls) load_args=(--rpc rls --rls-shape one) ;;
    rls-bundled) load_args=(--rpc rls --rls-shape bundled) ;;
    check) load_args=(--rpc check --mix allowed) ;;
    mixed) load_args=(--rpc check --mix mixed) ;;
    *) die "usage: scripts/instructions.sh check|mixed|rls|rls-bundled" ;;
esac
for n in REQUESTS WARMUP CONCURRENCY; do
    [[ ${!n} =~ ^[0-9]+$ && ${!n} -ge 1 && ${!n} -le 1000000 ]] || die "$n must be 1..1000000"
done
command -v taskset >/dev/null || die "needs taskset (Debian util-linux)"
if ! command -v valgrind >/dev/null || ! command -v callgrind_control >/dev/null; then
    say "installing valgrind (apt)"
    sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
    $sudo_ apt-get install -y valgrind >&2 || die "apt-get install valgrind failed"
fi

say "building release binaries"
cargo build --release --locked --bin portcullis --bin portcullis-bench >&2
bin=$root/target/release
out=$root/target/profile
mkdir -p "$out"

bench_workdir portcullis-instructions
bench_portcullis_config "$work" "$bin" "$root"
key=$work/bench-token.p8
jwks=$("$bin/portcullis-bench" --write-token-key "$key")
bench_trust_load_issuer "$work/portcullis.yaml" "$jwks"

load() { # REQUESTS
    taskset -c "$LOAD_CPU" "$bin/portcullis-bench" --target "127.0.0.1:$pp" "${load_args[@]}" \
        --token-key-file "$key" --reuse-tokens "$work/tokens.txt" \
        --concurrency "$CONCURRENCY" --requests "$1" --duration 600 \
        --warmup 0 >"$work/load.txt" || die "the load failed: $(tail -3 "$work/load.txt")"
    awk '$1 == "portcullis" && $3 != 0 { bad = 1 } END { exit bad }' "$work/load.txt" ||
        die "some calls failed: $(tail -1 "$work/load.txt")"
}

# count NAME REPORT PATTERN COMMAND...: runs COMMAND (a server on port 0)
# under callgrind, learns its port from the line of its output REPORT (out:
# stdout, log: stderr) that matches PATTERN, loads it, writes
# "instructions-per-request sha-share" to $work/NAME.result.
count() {
    local name=$1 report=$2 pattern=$3
    shift 3
    local dump=$work/$name.callgrind
    taskset -c "$SERVER_CPU" valgrind --tool=callgrind --callgrind-out-file="$dump" "$@" \
        >"$work/$name.out" 2>"$work/$name.log" &
    local server=$!
    pids+=("$server")
    # valgrind starts slowly: up to 60 s.
    pp=$(await_port "$name under valgrind" "$server" "$work/$name.$report" "$pattern" 60)
    load "$WARMUP"
    callgrind_control -z "$server" >/dev/null || die "callgrind_control -z failed"
    load "$REQUESTS"
    callgrind_control -d "$server" >/dev/null || die "callgrind_control -d failed"
    kill "$server"
    wait "$server" 2>/dev/null || true
    [ -s "$dump.1" ] || die "no callgrind dump for $name"
    mv "$dump.1" "$out/$name.callgrind"
    callgrind_annotate --inclusive=yes --threshold=99 "$out/$name.callgrind" >"$out/$name.callgrind.txt" 2>/dev/null
    python3 - "$out/$name.callgrind" "$out/$name.callgrind.txt" "$REQUESTS" >"$work/$name.result" <<'PY'
import re, sys
dump, text, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
total = next(int(l.split()[1]) for l in open(dump) if l.startswith(("summary:", "totals:")))
sha = max((int(m.group(1).replace(",", "")) for l in open(text)
           for m in [re.match(r"\s*([\d,]+) .*sha2::sha256::compress256", l)] if m), default=0)
print(f"{total / n:.0f} {100 * sha / total:.1f}")
PY
}

say "empty handler under callgrind ($WARMUP + $REQUESTS $rpc calls)"
count "empty-$rpc" log 'server listening on ' "$bin/portcullis-bench" --serve-empty 127.0.0.1:0
say "portcullis under callgrind ($WARMUP + $REQUESTS $rpc calls)"
count "$rpc" out '^listening decision ' "$bin/portcullis" serve --config "$work/portcullis.yaml"

read -r e_n e_sha <"$work/empty-$rpc.result"
read -r p_n p_sha <"$work/$rpc.result"
printf '%-12s %14s %14s\n' server "instr/request" "SHA-256 share"
printf '%-12s %14s %13s%%\n' empty "$e_n" "$e_sha" portcullis "$p_n" "$p_sha"
python3 -c "print(f'instructions_ratio_vs_empty {$p_n / $e_n:.3f} (empty / portcullis: {$e_n / $p_n:.3f})')"
say "wrote $out/$rpc.callgrind(.txt) and $out/empty-$rpc.callgrind(.txt)"
