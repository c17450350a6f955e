#!/usr/bin/env bash
# kill -9 under load, N times (default 20), in the `written` audit
# durability: each run starts `portcullis serve`, drives 8 streams of Check
# calls (half allowed), kills the process with SIGKILL mid-run, then checks
# that every answered decision has its record on disk, that
# `portcullis audit verify` passes, and that after a restart on the same
# directory the chain continues and verifies. One line of figures per run.
#
#   scripts/audit-kill9.sh        20 runs
#   scripts/audit-kill9.sh 50     50 runs
#
# It is the e2e test kill_9_under_load_in_written_mode_loses_no_answered_decision
# (3 runs in CI) with PORTCULLIS_KILL9_RUNS set; it exits non-zero on the
# first answered decision without a record.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

runs=${1:-20}
case "$runs" in
  '' | *[!0-9]*) echo "audit-kill9: the run count must be a number, got '$runs'" >&2; exit 2 ;;
esac
PORTCULLIS_KILL9_RUNS=$runs cargo test --test e2e \
  kill_9_under_load_in_written_mode_loses_no_answered_decision -- --nocapture 2>&1 |
  grep -E '^kill -9|^test |test result|panicked|answered without'
