#!/usr/bin/env bash
# GPU check of the training path (issue 4). Builds nothing: expects a built `nnunet-worker`
# (NNUNET_WORKER=path, else target/release/nnunet-worker, else target/debug/nnunet-worker) and a Python with
# torch 2.11 (PYTHON=path, else .venv/bin/python, else python3) whose torch/lib provides libtorch at run time.
#
# On a CUDA machine it
#   1. prints what libtorch sees (bench-step reports tch::Cuda::is_available()),
#   2. writes a synthetic 512x512 RGB preprocessed dataset with a real 2D plan (batch 12, 8 stages, 46.3 M params),
#   3. runs two training epochs on cuda:0 (the second, reported, is free of cuDNN autotuning warm-up) with fp16 autocast + grad scaler (CPU augmentation on loader threads),
#      polling nvidia-smi for the peak device memory,
#   4. runs the same with --gpu-augmentation,
#   5. times pure training steps (bench-step, random data),
# and prints s/iteration, data-loader wait, peak memory; JSON goes to $OUT/gpu_check.json when OUT is set.
# Knobs: ITERS (default 40), VAL_ITERS (5), LOADER_THREADS (nproc), WORK (temp dir).
set -euo pipefail
export TORCH_CPP_LOG_LEVEL=${TORCH_CPP_LOG_LEVEL:-ERROR}  # tch 0.24 autocast calls deprecated at::autocast APIs that warn on every call
cd "$(dirname "$0")/.."
BIN=${NNUNET_WORKER:-}
if [ -z "$BIN" ]; then
  for c in target/release/nnunet-worker target/debug/nnunet-worker; do [ -x "$c" ] && BIN=$c && break; done
fi
[ -n "$BIN" ] && [ -x "$BIN" ] || { echo "no nnunet-worker binary: build it (cargo build --release -p nnunet-worker) or set NNUNET_WORKER" >&2; exit 2; }
PY=${PYTHON:-}
if [ -z "$PY" ]; then if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi; fi
TORCH_LIB=$("$PY" -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: this script needs a CUDA machine" >&2; exit 2; }
ITERS=${ITERS:-40}; VAL_ITERS=${VAL_ITERS:-5}; LOADER_THREADS=${LOADER_THREADS:-$(nproc)}
WORK=${WORK:-$(mktemp -d)}
GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | head -1)
echo "gpu: $GPU"
echo "torch lib: $TORCH_LIB"
DS=$WORK/Dataset990_Synth512
"$BIN" synth-preprocessed --out "$DS" --cases 16 --size 512 --channels 3 --batch 12 --stages 8

poll_start() { ( while :; do nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1; sleep 0.2; done ) > "$1" 2>/dev/null & POLL=$!; }
poll_stop() { kill "$POLL" 2>/dev/null || true; wait "$POLL" 2>/dev/null || true; }
BASE_MIB=$(nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits | head -1)

run_epoch() { # $1 = name, rest = extra args
  local name=$1; shift
  poll_start "$WORK/mem_$name.txt"
  local t0=$(date +%s.%N)
  "$BIN" train --dataset "$DS" --fold 0 --epochs 2 --iters "$ITERS" --val-iters "$VAL_ITERS" --save-every 1 \
     --device cuda:0 --loader-threads "$LOADER_THREADS" --skip-validation --out "$WORK/$name/fold_0" "$@" 2>&1 | tee "$WORK/$name.log"
  local t1=$(date +%s.%N)
  poll_stop
  echo "$name wall $(awk "BEGIN{print $t1 - $t0}") s"
}
run_epoch cpu_aug
run_epoch gpu_aug --gpu-augmentation
BENCH=$("$BIN" bench-step --device cuda:0 --patch 512 --stages 8 --batch 12 --channels 3 --warmup 5 --steps 20)
echo "bench-step: $BENCH"

"$PY" - "$WORK" "$BASE_MIB" "$ITERS" "$GPU" "$BENCH" <<'PY'
import json, sys, os
work, base, iters, gpu, bench = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4], json.loads(sys.argv[5])
res = {"gpu": gpu, "iters": iters, "batch": 12, "patch": [512, 512], "stages": 8, "channels": 3,
       "cuda_available": bench.get("cuda_available"), "bench_step_seconds": bench["seconds_per_step"], "runs": {}}
for name in ("cpu_aug", "gpu_aug"):
    m = [json.loads(l) for l in open(os.path.join(work, name, "fold_0", "training_log.jsonl")) if l.strip()][-1]
    mem = [float(x) for x in open(os.path.join(work, f"mem_{name}.txt")) if x.strip().replace('.', '').isdigit()]
    res["runs"][name] = {"step_seconds_mean": m["step_seconds"], "epoch_seconds": m["epoch_seconds"],
        "seconds_per_iteration_incl_wait": (m["epoch_seconds"]) / iters, "epoch": m["epoch"] + 1, "dataloader_wait_seconds": m["dataloader_wait_seconds"],
        "train_loss": m["train_loss"], "pseudo_dice": m["pseudo_dice"],
        "peak_device_memory_mib": (max(mem) - base) if mem else None}
print(json.dumps(res, indent=1))
print("\n| run (epoch 2 of 2) | s/step (mean) | epoch s | loader wait s | peak MiB |")
print("|---|---|---|---|---|")
for k, r in res["runs"].items():
    print(f"| {k} | {r['step_seconds_mean']:.3f} | {r['epoch_seconds']:.1f} | {r['dataloader_wait_seconds']:.1f} | {r['peak_device_memory_mib']} |")
print(f"| bench-step (random data, steady state) | {res['bench_step_seconds']:.3f} | | | |")
out = os.environ.get("OUT")
if out:
    json.dump(res, open(os.path.join(out, "gpu_check.json"), "w"), indent=1)
PY
