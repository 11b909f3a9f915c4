#!/usr/bin/env bash
# Load benchmark of one coordinator (issue 12): many simulated workers on loopback register, lease,
# heartbeat, report metrics and log against one real `nnunet serve`; prints requests/s, p50/p99 latency
# per call type and the coordinator's memory, and writes them under LABEL into bench-results/load.json
# (other labels are kept: run it with LABEL=before on the old code and LABEL=after on the new, with the
# same PROFILE, WORKERS, SECS and THINK_MS; the JSON records them).
#   LABEL=after WORKERS=500 SECS=20 bash scripts/bench_load.sh
# PROFILE=dev uses the dev build (dependencies at opt-level 3, workspace crates at 1) where a release
# build is not at hand.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
if [[ "${PROFILE:-release}" == release ]]; then
  cargo build --release -q -p nnunet-coordinator --bin nnunet --example bench_load
  BIN=target/release
else
  cargo build -q -p nnunet-coordinator --bin nnunet --example bench_load
  BIN=target/debug
fi
exec "$BIN/examples/bench_load" --nnunet "$BIN/nnunet" --workers "${WORKERS:-500}" --secs "${SECS:-20}" \
  --think-ms "${THINK_MS:-100}" --cases "${CASES:-100}" --label "${LABEL:-before}" --out bench-results/load.json "$@"
