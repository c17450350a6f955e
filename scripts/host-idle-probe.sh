#!/usr/bin/env bash
# Does this host's CPU keep its caches while a thread sleeps? A probe of
# the machine, not of Portcullis. Where it does not, a server that idles
# between calls pays for cold caches on each: part of why a lone `Check`
# at low rates costs several times the CPU of one in a burst on some
# virtual machines (the README's performance table). At half of
# saturation the server hardly idles, and what it loses there is the
# batching of a burst, which this probe does not measure.
#
# One C program (built with `cc`, which linking Rust needs anyway), pinned
# to PROBE_CPU (0), runs the same work ITERATIONS times (2,000): it reads
# one byte per 64 bytes of a WORKING_SET_KIB buffer at scattered offsets
# (no prefetcher helps) and then 20,000 multiply-adds. It times each
# run, skips the first 10%, and prints the mean in microseconds for four
# ways of spending GAP_US (300) between runs:
#
#   back-to-back   no gap: the buffer stays in the caches it fits
#   busy-wait      the thread spins for the gap (the CPU never idles)
#   sleep          usleep(GAP_US): the CPU idles; a virtual CPU halts, and
#                  its host may run other work on that core meanwhile
#   sleep+spinner  usleep with a SCHED_IDLE spinner on the same CPU
#                  (`chrt -i`), so the CPU never idles but the probe sleeps
#
# and `sleep / back-to-back`. On bare metal the four agree for working sets
# that fit the caches. On the 2-core KVM guest the benchmarks ran on
# (2026-12-07, four runs), 2 MiB (over the 1 MiB L2): 120-133 us
# back-to-back, 124-139 with a busy-wait, 138-278 after a sleep (1.14 to
# 2.32 times back-to-back, varying from run to run as the host's load
# does), 118-162 after a sleep with the spinner: a virtual CPU that halted
# may come back with its caches cold. 64 KiB and 512 KiB: within 6%.
#
#   scripts/host-idle-probe.sh
#   WORKING_SETS_KIB="512 4096" GAP_US=1000 scripts/host-idle-probe.sh
set -euo pipefail

PROBE_CPU=${PROBE_CPU:-0}
GAP_US=${GAP_US:-300}
ITERATIONS=${ITERATIONS:-2000}
WORKING_SETS_KIB=${WORKING_SETS_KIB:-64 512 2048}
die() { printf 'host-idle-probe: %s\n' "$*" >&2; exit 1; }
[[ $GAP_US =~ ^[0-9]+$ && $GAP_US -ge 1 && $GAP_US -le 100000 ]] || die "GAP_US must be 1..100000"
[[ $ITERATIONS =~ ^[0-9]+$ && $ITERATIONS -ge 100 && $ITERATIONS -le 100000 ]] || die "ITERATIONS must be 100..100000"
for ws in $WORKING_SETS_KIB; do
    [[ $ws =~ ^[0-9]+$ && $ws -ge 4 && $ws -le 1048576 ]] || die "each of WORKING_SETS_KIB must be 4..1048576"
done
[[ $PROBE_CPU =~ ^[0-9]+$ ]] && [ "$PROBE_CPU" -lt "$(nproc)" ] || die "PROBE_CPU=$PROBE_CPU: this machine has $(nproc) CPUs"
for c in cc taskset chrt; do command -v "$c" >/dev/null || die "needs $c (Debian: gcc, util-linux)"; done

work=$(mktemp -d -t portcullis-idle-probe.XXXXXX)
spinner=""
cleanup() {
    [ -z "$spinner" ] || kill "$spinner" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

cat >"$work/probe.c" <<'C'
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1e6 + t.tv_nsec / 1e3;
}

/* probe MODE GAP_US WORKING_SET_KIB ITERATIONS; MODE 0 back-to-back,
   1 sleep, 2 busy-wait. Prints the mean microseconds of one run. */
int main(int argc, char **argv) {
    if (argc != 5) return 2;
    int mode = atoi(argv[1]), gap = atoi(argv[2]), n = atoi(argv[4]);
    size_t ws = (size_t)atol(argv[3]) * 1024;
    volatile unsigned char *buf = malloc(ws);
    double *took = malloc(n * sizeof(double));
    if (!buf || !took) return 3;
    memset((void *)buf, 1, ws);
    unsigned long s = 0;
    for (int i = 0; i < n; i++) {
        if (mode == 1) {
            usleep(gap);
        } else if (mode == 2) {
            double until = now_us() + gap;
            while (now_us() < until) {}
        }
        double t = now_us();
        for (size_t j = 0; j < ws; j += 64) s += buf[(j * 7919) % ws];
        for (int k = 0; k < 20000; k++) s = s * 6364136223846793005ULL + 1;
        took[i] = now_us() - t;
    }
    double sum = 0;
    int from = n / 10;
    for (int i = from; i < n; i++) sum += took[i];
    printf("%.1f %lu\n", sum / (n - from), s & 1);
    return 0;
}
C
cc -O2 -o "$work/probe" "$work/probe.c" || die "cc could not build the probe"

run() { # MODE WORKING_SET_KIB: the mean microseconds
    taskset -c "$PROBE_CPU" "$work/probe" "$1" "$GAP_US" "$2" "$ITERATIONS" | cut -d' ' -f1
}

echo "probe pinned to CPU $PROBE_CPU; mean us per run of the work, gap ${GAP_US} us, $ITERATIONS runs"
printf '%-16s %13s %10s %8s %14s %14s\n' "working set" back-to-back busy-wait sleep sleep+spinner "sleep/b2b"
for ws in $WORKING_SETS_KIB; do
    b2b=$(run 0 "$ws")
    busy=$(run 2 "$ws")
    slept=$(run 1 "$ws")
    chrt -i 0 taskset -c "$PROBE_CPU" sh -c 'while :; do :; done' &
    spinner=$!
    spun=$(run 1 "$ws")
    kill "$spinner"
    wait "$spinner" 2>/dev/null || true
    spinner=""
    ratio=$(awk -v a="$slept" -v b="$b2b" 'BEGIN { printf "%.2f", a / b }')
    printf '%-16s %13s %10s %8s %14s %14s\n' "${ws} KiB" "$b2b" "$busy" "$slept" "$spun" "$ratio"
done
