#!/usr/bin/env bash
# The long chaos run (issue 12): a five-fold run on CPU workers while a seeded driver SIGKILLs workers
# and the coordinator KILLS times at random moments and restarts them; then every invariant is checked
# (tests/chaos/main.rs). Prints the kills and a summary: kills survived, invariants checked, nothing lost.
#   KILLS=12 SEED=1 EPOCHS=16 bash scripts/chaos_long.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build -q --workspace --bins
export CHAOS_KILLS="${KILLS:-12}" CHAOS_SEED="${SEED:-1}" CHAOS_EPOCHS="${EPOCHS:-16}" CHAOS_ITERS="${ITERS:-3}"
export CHAOS_WORKERS="${WORKERS:-3}" CHAOS_GAP_MIN_S="${GAP_MIN_S:-3}" CHAOS_GAP_MAX_S="${GAP_MAX_S:-12}" CHAOS_TIMEOUT_S="${TIMEOUT_S:-1800}"
cargo test -q -p nnunet-tests --test chaos -- --nocapture --test-threads=1 five_fold_run_survives
