#!/usr/bin/env bash
# Sets up everything nnunet-rs needs to build on a fresh Debian/Ubuntu machine, idempotently:
#  - a project-local Python venv (.venv) with torch==2.11.0 from PyPI (the libtorch tch 0.24 links
#    against; LIBTORCH_USE_PYTORCH=1 makes torch-sys read its paths from this Python), plus numpy
#    and nibabel for the tests' independent NIfTI checks;
#  - a C++ compiler (torch-sys compiles its wrapper).
# A user who has libtorch 2.11 unpacked can skip the venv: export LIBTORCH=/path/to/libtorch.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION=2.11.0
PY=${PYTHON:-python3}

if ! command -v c++ >/dev/null 2>&1; then
  echo "setup: installing a C++ compiler"
  apt-get update -qq && apt-get install -y -qq g++ >/dev/null
fi
if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust from your package manager or rustup" >&2
  exit 1
fi

if [[ -n "${LIBTORCH:-}" ]]; then
  echo "setup: using LIBTORCH=$LIBTORCH (no venv)"
  exit 0
fi

have_torch() { .venv/bin/python -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' else 1)" 2>/dev/null; }
if [[ -x .venv/bin/python ]] && have_torch && .venv/bin/python -c 'import nibabel, numpy' 2>/dev/null; then
  echo "setup: .venv has torch $TORCH_VERSION (reused)"
else
  echo "setup: creating .venv with torch==$TORCH_VERSION (about 4.6 GB of wheels, ~2 minutes)"
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q "torch==$TORCH_VERSION" numpy nibabel
  have_torch || { echo "setup: torch $TORCH_VERSION did not install into .venv" >&2; exit 1; }
fi
if ! .venv/bin/python -c 'import tensorboard' 2>/dev/null; then
  echo "setup: installing tensorboard into .venv (the dashboard test reads the TensorBoard event files with it)"
  .venv/bin/python -m pip install -q tensorboard
fi
echo "setup: done. Build with: export LIBTORCH_USE_PYTORCH=1 PATH=$PWD/.venv/bin:\$PATH; cargo build --release"
