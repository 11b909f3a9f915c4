#!/usr/bin/env bash
# Load benchmark of one coordinator (issue 12): many simulated workers on loopback register, lease,
# heartbeat, report metrics and log against one real `nnunet serve`; prints requests/s, p50/p99 latency
# per call type and the coordinator's memory, and writes them under LABEL into bench-results/load.json
# (other labels are kept: run it with LABEL=before on the old code and LABEL=after on the new).
#   LABEL=after WORKERS=500 SECS=20 bash scripts/bench_load.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build --release -q -p nnunet-coordinator --bin nnunet --example bench_load
exec target/release/examples/bench_load --workers "${WORKERS:-500}" --secs "${SECS:-20}" --think-ms "${THINK_MS:-100}" \
  --cases "${CASES:-100}" --label "${LABEL:-before}" --out bench-results/load.json "$@"
