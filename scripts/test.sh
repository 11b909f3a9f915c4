#!/usr/bin/env bash
# The test command (README): sets up what is missing, checks formatting, lints and module cycles,
# builds, and runs every test.
#   unit tests of every crate, the coordinator over real gRPC (auth, TLS, fencing), the worker's
#   libtorch tests, the end-to-end tests (real coordinator + worker processes on loopback training
#   real data), and the deployment tests (a real single-node Slurm; offline Kubernetes validation).
# Tests that need ../shared/datasets skip with a message when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
. scripts/env.sh
export CARGO_TERM_COLOR=never
for tool in fmt clippy; do
  if ! cargo "$tool" --version >/dev/null 2>&1; then
    command -v rustup >/dev/null && rustup component add "$([[ $tool == fmt ]] && echo rustfmt || echo clippy)" \
      || { echo "test.sh: cargo $tool is missing; install the rustfmt and clippy components" >&2; exit 1; }
  fi
done
echo "== format (rustfmt.toml)"
cargo fmt --all -- --check
echo "== lint ([workspace.lints], clippy.toml)"
cargo clippy --workspace --all-targets -- -D warnings
echo "== module cycles"
python3 scripts/check_module_cycles.py
python3 scripts/check_sizes.py
echo "== build"
cargo build --workspace --bins --tests
echo "== tests"
cargo test --workspace --no-fail-fast -- --test-threads=2
echo "== deployment tests"
bash tests/deploy/run.sh
