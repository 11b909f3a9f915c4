#!/usr/bin/env bash
# Prepares what scripts/gpu_bench.sh needs on a GPU machine that cannot reach a package registry, into one
# git-ignored folder to carry (default .gpu/, at most ~60 MiB):
#   .gpu/bin.tar.gz   stripped `nnunet` and `nnunet-worker` (release build; PROFILE=debug takes target/debug as is)
#   .gpu/wheels/      PyPI nnunetv2 and the dependencies the GPU machine's Python lacks (cp312, manylinux x86-64),
#                     NOT torch: the GPU machine's own torch 2.11 is used (its site-packages stay visible)
#   .gpu/stub/        an import stub for SimpleITK (its 50 MB wheel does not fit; PNG datasets never call it)
#   .gpu/data/        ISBI 2012 (PNG, 512x512) and PH2 (images as JPEG quality $JPEG_QUALITY, full size) from
#                     ../shared/datasets: both sides convert the same decoded pixels
# Run it here (with network), then on the GPU machine: `bash scripts/gpu_bench.sh` with `.gpu` carried.
# Knobs: GPU_BENCH_DIR (.gpu), PROFILE (release), PIP_PY (python3 with pip), IMG_PY (a python with Pillow: the
# reference venv by default), JPEG_QUALITY (92), NNUNET_SHARED (../shared).
set -euo pipefail
cd "$(dirname "$0")/.."
G=${GPU_BENCH_DIR:-.gpu}
PROFILE=${PROFILE:-release}
SHARED=${NNUNET_SHARED:-$PWD/../shared}
PIP_PY=${PIP_PY:-python3}
IMG_PY=${IMG_PY:-$HOME/.cache/nnunet-peer-venv/bin/python}
mkdir -p "$G"
grep -qxF "/$G/" .gitignore 2>/dev/null || grep -qxF "/$G/" .git/info/exclude 2>/dev/null \
  || { echo "warning: $G is not git-ignored; add /$G/ to .git/info/exclude so it travels only when carried" >&2; }

# 1. binaries
if [ "$PROFILE" = release ]; then
  . scripts/env.sh
  cargo build --release -p nnunet-coordinator -p nnunet-worker --bins
fi
BIN=target/$PROFILE
rm -rf "$G/bin" && mkdir -p "$G/bin"
for b in nnunet nnunet-worker; do strip -o "$G/bin/$b" "$BIN/$b"; done
tar -C "$G" -czf "$G/bin.tar.gz" bin && rm -rf "$G/bin"

# 2. wheels: the versions of the reference venv this project compares against (nnunetv2 2.8.1 on torch 2.11)
rm -rf "$G/wheels" && mkdir -p "$G/wheels"
PLAT=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_34_x86_64)
WHEELS=(nnunetv2==2.8.1 acvl-utils==0.2.6 dynamic-network-architectures==0.4.4 batchgenerators==0.25.5 batchgeneratorsv2==0.3.6
        blosc2==4.14.1 ndindex numexpr connected-components-3d nibabel graphviz yacs future unittest2 linecache2 traceback2
        pydantic==2.14.4 pydantic-core==2.50.5 annotated-types typing-inspection)
for w in "${WHEELS[@]}"; do
  # a binary wheel for the GPU machine's Python, else (pure-Python projects that publish only a source archive)
  # a wheel built here from the source archive
  "$PIP_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLAT[@]}" -d "$G/wheels" "$w" 2>/dev/null \
    || "$PIP_PY" -m pip wheel -q --no-deps -w "$G/wheels" "$w"
done
for f in "$G"/wheels/*.whl; do case $f in *-py2.py3-none-any.whl|*-py3-none-any.whl|*cp312*manylinux*x86_64.whl|*abi3*manylinux*x86_64.whl) ;;
  *) echo "$f will not install on the GPU machine's CPython 3.12 x86-64" >&2; exit 1;; esac; done

# 3. SimpleITK stub: nnU-Net imports it at module level; the PNG reader (NaturalImage2DIO) never calls it.
mkdir -p "$G/stub/SimpleITK"
cat > "$G/stub/SimpleITK/__init__.py" <<'PY'
"""Import stub (scripts/gpu_bench_prepare.sh): the real SimpleITK wheel is too large to carry; PNG data never calls it."""
def __getattr__(name):
    raise ImportError(f"SimpleITK.{name}: SimpleITK is not installed on this machine (gpu_bench carries an import stub only)")
PY

# 4. data
rm -rf "$G/data"
"$IMG_PY" scripts/gpu_bench.py shrink "$SHARED/datasets/isbi2012_em" "$G/data/isbi" "${JPEG_QUALITY:-92}"
"$IMG_PY" scripts/gpu_bench.py shrink "$SHARED/datasets/ph2_skin_lesion" "$G/data/ph2" "${JPEG_QUALITY:-92}"

du -sh "$G"/* && SIZE=$(du -sm "$G" | cut -f1)
echo "$G: $SIZE MiB (the working tree travels too: keep the sum under 64 MiB)"
[ "$SIZE" -le 58 ] || { echo "$G is too large to carry" >&2; exit 1; }
