#!/usr/bin/env bash
# Ours against the reference (PyPI nnunetv2 2.8.1, `nnUNetv2_train ... -device cuda`) on the same GPU, data and
# number of iterations, plus fold packing. Meant for one call on a GPU machine that cannot reach a registry:
#   here:   bash scripts/gpu_bench_prepare.sh            (binaries, wheels, data into .gpu/, ~52 MiB)
#   there:  bash scripts/gpu_bench.sh 2>&1 | tee $OUT/gpu_bench.log     (with .gpu carried; ~8 min on an H200)
# For ISBI 2012 (512x512, gray) and PH2 (765x572 RGB, full size), with 16 and 4 CPU loader threads:
#   - both sides convert the same pixels (.gpu/data) and plan + preprocess them (ours: `nnunet plan-and-preprocess`,
#     the reference: nnUNetv2_plan_and_preprocess); the script prints both plans' patch and batch size;
#   - ours: `nnunet-worker train ... --loader-threads T`, GPU augmentation by its default (on below 8 cores);
#     the reference: nnUNetTrainer_GpuBench (scripts/gpu_bench_trainer.py: nnUNetTrainer with the budget set)
#     with nnUNet_n_proc_DA=T and torch.compile off unless REF_COMPILE=1 (compiling costs minutes per run);
#   - EPOCHS epochs of ITERS iterations (+ VAL_ITERS validation iterations); the last epoch is reported:
#     s/iteration = epoch wall time / ITERS, mean step time, loader wait, GPU utilisation over that epoch (nvidia-smi
#     every 100 ms), peak device memory over the run (nvidia-smi, above the idle reading);
# then fold packing: `nnunet run` on ISBI with the folds PACK_FOLDS, one epoch of PACK_ITERS iterations,
#   `--gpus 0 --folds-per-gpu 5` against `--gpus 0 --folds-per-gpu 1` (one after another), total wall time.
# Prints a table and writes $OUT/gpu_bench.json (OUT, else the work folder).
# Knobs: DEVICE (cuda; `cpu` runs the same on CPU: the CPU half, for checking the script), ITERS (30), EPOCHS (2),
# VAL_ITERS (2), THREADS ("16 4"), DATASETS ("isbi ph2"), PACK (1), PACK_FOLDS ("0 1 2 3 4"), PACK_ITERS (ITERS),
# OURS_BF16 (0; 1 adds a row of ours with bf16 autocast, NNUNET_AUTOCAST_DTYPE=bf16),
# PYTHON (python3: its torch is the reference's), GPU_BENCH_DIR (.gpu), NNUNET_BIN_DIR (without .gpu/bin.tar.gz), WORK,
# DEADLINE_S (520: later steps are skipped), RUN_TIMEOUT_S (200 per run).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
G=$ROOT/${GPU_BENCH_DIR:-.gpu}
DEVICE=${DEVICE:-cuda}; ITERS=${ITERS:-30}; EPOCHS=${EPOCHS:-2}; VAL_ITERS=${VAL_ITERS:-2}
THREADS=${THREADS:-16 4}; DATASETS=${DATASETS:-isbi ph2}; PACK=${PACK:-1}; PACK_FOLDS=${PACK_FOLDS:-0 1 2 3 4}; PACK_ITERS=${PACK_ITERS:-$ITERS}
WORK=${WORK:-$(mktemp -d)}; RES=${OUT:-$WORK}; PY=${PYTHON:-python3}
mkdir -p "$WORK/runs" "$RES"
log() { echo "[$(date +%T)] $*"; }
# one device call has 10 minutes: steps that would start after DEADLINE_S are skipped (the table shows what ran),
# and each run is cut at RUN_TIMEOUT_S
START=$(date +%s); DEADLINE_S=${DEADLINE_S:-520}; RUN_TIMEOUT_S=${RUN_TIMEOUT_S:-200}
time_left() { [ $(( $(date +%s) - START )) -lt "$DEADLINE_S" ] || { log "skipping $1: past DEADLINE_S=$DEADLINE_S s"; return 1; }; }
export TORCH_CPP_LOG_LEVEL=${TORCH_CPP_LOG_LEVEL:-ERROR} PYTHONUNBUFFERED=1

# binaries: carried, else built
if [ -f "$G/bin.tar.gz" ]; then tar -C "$WORK" -xzf "$G/bin.tar.gz"; BIN=$WORK/bin; else BIN=${NNUNET_BIN_DIR:-$ROOT/target/release}; fi
[ -x "$BIN/nnunet-worker" ] && [ -x "$BIN/nnunet" ] || { echo "no nnunet/nnunet-worker in $BIN: run scripts/gpu_bench_prepare.sh" >&2; exit 2; }
# the reference: installed, else from the carried wheels on top of this Python's torch
if ! "$PY" -c 'import nnunetv2' 2>/dev/null; then
  log "installing the reference from $G/wheels"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$WORK/site" "$G"/wheels/*.whl
  export PYTHONPATH="$WORK/site:$G/stub${PYTHONPATH:+:$PYTHONPATH}"
fi
NNU=$("$PY" -c 'import nnunetv2,os;print(os.path.dirname(nnunetv2.__file__))')
cp scripts/gpu_bench_trainer.py "$NNU/training/nnUNetTrainer/nnUNetTrainer_GpuBench.py"
TORCH_LIB=$("$PY" -c 'import torch,os;print(os.path.join(os.path.dirname(torch.__file__),"lib"))')
export LD_LIBRARY_PATH="$TORCH_LIB:${LD_LIBRARY_PATH:-}"
if [ "$DEVICE" = cuda ]; then OURS_DEV=cuda:0; else OURS_DEV=cpu; fi
GPU=$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)
"$PY" - "$WORK/env.json" "$GPU" "$DEVICE" "$ITERS" "$EPOCHS" "$VAL_ITERS" "${REF_COMPILE:-0}" <<'PY'
import json, sys, os, importlib.metadata as m, torch
out, gpu, dev, iters, epochs, val, comp = sys.argv[1:]
json.dump({"gpu": gpu, "device": dev, "iters": int(iters), "epochs": int(epochs), "val_iters": int(val), "reference_compile": comp == "1",
           "torch": torch.__version__, "nnunetv2": m.version("nnunetv2"), "cpus": os.cpu_count()}, open(out, "w"), indent=1)
PY
log "env: $(cat "$WORK/env.json" | tr -d '\n ')"
ours_env() { export nnUNet_raw=$WORK/ours/raw nnUNet_preprocessed=$WORK/ours/pre nnUNet_results=$WORK/ours/res; }
ref_env() { export nnUNet_raw=$WORK/ref/raw nnUNet_preprocessed=$WORK/ref/pre nnUNet_results=$WORK/ref/res; }
base_mib() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1 || echo null; }

prepare() { # $1 dataset key, $2 id, $3 name
  log "$1: convert + plan + preprocess (ours)"
  ( ours_env; mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed"
    "$BIN/nnunet" convert --images "$G/data/$1/images" --masks "$G/data/$1/masks" --id "$2" --name "$3" --out "$nnUNet_raw" >/dev/null
    "$BIN/nnunet" plan-and-preprocess "$2" >/dev/null )
  log "$1: convert + plan + preprocess (reference)"
  ( ref_env; mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed"
    "$PY" scripts/gpu_bench.py to-raw "$G/data/$1" "$nnUNet_raw" "$2" "$3" >/dev/null
    "$PY" -c 'from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_and_preprocess_entry as m; m()' \
      -d "$2" -c 2d -np "$(nproc)" > "$WORK/ref_plan_$1.log" 2>&1 || { tail -20 "$WORK/ref_plan_$1.log"; exit 1; } )
  "$PY" - "$WORK/ours/pre" "$WORK/ref/pre" "$2" <<'PY'
import json, glob, sys
o, r, i = sys.argv[1:]
c = lambda root: json.load(open(glob.glob(f"{root}/Dataset{int(i):03d}_*/nnUNetPlans.json")[0]))["configurations"]["2d"]
a, b = c(o), c(r)
keys = ("patch_size", "batch_size")
print("plans: ours " + ", ".join(f"{k} {a[k]}" for k in keys) + " | reference " + ", ".join(f"{k} {b[k]}" for k in keys)
      + (" (same)" if all(a[k] == b[k] for k in keys) and a["architecture"] == b["architecture"] else " (DIFFERENT)"))
PY
}

# sampler: nvidia-smi + the epoch log's line count; $1 run dir, $2 the epoch log it watches
sampler_start() { "$PY" scripts/gpu_bench.py sample "$1/samples.jsonl" "$2" & SAMPLER=$!; }
sampler_stop() { kill "$SAMPLER" 2>/dev/null || true; wait "$SAMPLER" 2>/dev/null || true; }
meta() { # dir kind dataset threads who wall base [extra json]
  printf '{"kind":"%s","dataset":"%s","threads":%s,"who":"%s","wall_seconds":%s,"base_mib":%s,"iters":%s,"epochs":%s%s}\n' \
    "$2" "$3" "$4" "$5" "$6" "$7" "$ITERS" "$EPOCHS" "${8:-}" > "$1/meta.json"
}

train_ours() { # dataset id threads [who [env assignment]]
  local who=${4:-ours}
  local d=$WORK/runs/$1_$3_$who; mkdir -p "$d"; local base; base=$(base_mib)
  log "$1, $3 loader threads: $who"
  sampler_start "$d" "$d/fold_0/training_log.jsonl"; local t0; t0=$(date +%s.%N)
  ( ours_env; [ -z "${5:-}" ] || export "${5?}"; timeout "$RUN_TIMEOUT_S" "$BIN/nnunet-worker" train --dataset "$2" --fold 0 --epochs "$EPOCHS" --iters "$ITERS" --val-iters "$VAL_ITERS" \
      --device "$OURS_DEV" --loader-threads "$3" --skip-validation --out "$d/fold_0" > "$d/log" 2>&1 ) || { tail -20 "$d/log"; sampler_stop; return 1; }
  local t1; t1=$(date +%s.%N); sampler_stop
  cp "$d/fold_0/training_log.jsonl" "$d/epochs.jsonl"
  local aug=cpu; grep -q "augmenting on the GPU" "$d/log" && aug=gpu
  meta "$d" train "$1" "$3" "$who" "$(awk "BEGIN{print $t1 - $t0}")" "$base" ",\"augmentation\":\"$aug\""
}

train_ref() { # dataset id threads
  local d=$WORK/runs/$1_$3_reference; mkdir -p "$d"; local base; base=$(base_mib)
  log "$1, $3 loader threads: reference"
  sampler_start "$d" "$d/epochs.jsonl"; local t0; t0=$(date +%s.%N)
  ( ref_env; export nnUNet_n_proc_DA=$3 nnUNet_compile=$([ "${REF_COMPILE:-0}" = 1 ] && echo t || echo f) \
      GPU_BENCH_EPOCHS=$EPOCHS GPU_BENCH_ITERS=$ITERS GPU_BENCH_VAL_ITERS=$VAL_ITERS GPU_BENCH_LOG=$d/epochs.jsonl
    timeout "$RUN_TIMEOUT_S" "$PY" -c 'from nnunetv2.run.run_training import run_training_entry as m; m()' "$2" 2d 0 -tr nnUNetTrainer_GpuBench -device "$DEVICE" \
      > "$d/log" 2>&1 ) || { tail -20 "$d/log"; sampler_stop; return 1; }
  local t1; t1=$(date +%s.%N); sampler_stop
  meta "$d" train "$1" "$3" reference "$(awk "BEGIN{print $t1 - $t0}")" "$base" ",\"augmentation\":\"cpu\""
}

pack() { # who folds-per-device
  local d=$WORK/runs/pack_$1; mkdir -p "$d"
  local place=(--gpus 0 --folds-per-gpu "$2"); [ "$DEVICE" = cuda ] || place=(--workers "$2" --device cpu)
  log "fold packing: $1 (${place[*]})"
  local t0; t0=$(date +%s.%N)
  # shellcheck disable=SC2086
  env -u nnUNet_raw -u nnUNet_preprocessed -u nnUNet_results timeout "$RUN_TIMEOUT_S" "$BIN/nnunet" run "$(ls -d "$WORK"/ours/raw/Dataset901_*)" --folds $PACK_FOLDS \
    --epochs 1 --iters "$PACK_ITERS" --val-iters "$VAL_ITERS" "${place[@]}" --state-dir "$d/state" > "$d/log" 2>&1 || { tail -30 "$d/log"; return 1; }
  local t1; t1=$(date +%s.%N)
  grep -E "^(workers:|device )" "$d/log" || true
  printf '{"kind":"packing","who":"%s","folds":%s,"folds_per_device":%s,"wall_seconds":%s}\n' "$1" "$(echo $PACK_FOLDS | wc -w)" "$2" "$(awk "BEGIN{print $t1 - $t0}")" > "$d/meta.json"
}

declare -A IDS=([isbi]=901 [ph2]=902) NAMES=([isbi]=ISBI [ph2]=PH2)
for ds in $DATASETS; do
  time_left "$ds" || continue
  prepare "$ds" "${IDS[$ds]}" "${NAMES[$ds]}" || { log "preparing $ds failed"; continue; }
  for t in $THREADS; do
    time_left "ours $ds $t" && { train_ours "$ds" "${IDS[$ds]}" "$t" || true; }
    [ "${OURS_BF16:-0}" != 1 ] || { time_left "ours-bf16 $ds $t" && { train_ours "$ds" "${IDS[$ds]}" "$t" ours-bf16 NNUNET_AUTOCAST_DTYPE=bf16 || true; }; }
    time_left "reference $ds $t" && { train_ref "$ds" "${IDS[$ds]}" "$t" || true; }
  done
done
if [ "$PACK" = 1 ] && time_left "fold packing"; then
  case " $DATASETS " in *" isbi "*) ;; *) prepare isbi 901 ISBI;; esac
  N=$(echo $PACK_FOLDS | wc -w)
  pack packed "$N" || true
  time_left "sequential folds" && { pack sequential 1 || true; }
fi
"$PY" scripts/gpu_bench.py summarize "$WORK" "$RES/gpu_bench.json"
