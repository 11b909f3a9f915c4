#!/usr/bin/env bash
# The long chaos run (issue 12): a five-fold run on CPU workers while a seeded driver SIGKILLs workers
# and the coordinator KILLS times at random moments and restarts them; then every invariant is checked
# (tests/chaos/main.rs). Prints the kills and a summary: kills survived, invariants checked, nothing lost.
#   KILLS=12 SEED=1 EPOCHS=80 bash scripts/chaos_long.sh
# The defaults (80 epochs of 3 iterations, 2-8 s between kills) keep the run going past the 12th kill
# on an idle 2-core machine (16 epochs finished after 2 kills).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
cargo build -q --workspace --bins
export CHAOS_KILLS="${KILLS:-12}" CHAOS_SEED="${SEED:-1}" CHAOS_EPOCHS="${EPOCHS:-80}" CHAOS_ITERS="${ITERS:-3}"
export CHAOS_WORKERS="${WORKERS:-3}" CHAOS_GAP_MIN_S="${GAP_MIN_S:-2}" CHAOS_GAP_MAX_S="${GAP_MAX_S:-8}" CHAOS_TIMEOUT_S="${TIMEOUT_S:-1800}"
cargo test -q -p nnunet-tests --test chaos -- --nocapture --test-threads=1 five_fold_run_survives
