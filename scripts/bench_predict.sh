#!/usr/bin/env bash
# Benchmark: images/s of `nnunet-worker predict` (what `nnunet predict` runs) vs the reference
# `nnUNetv2_predict -device cpu` on the same test images, with the SAME plan and the SAME weights
# (the reference checkpoint converted to our safetensors + sidecar format), with and without TTA.
# Also reports the agreement of the two predictions (same weights -> same masks) and both Dice
# scores against the test labels. Prints a table and writes bench-results/predict.json.
#
# Prerequisite: a reference model trained with the peer harness (tiny budget), e.g.
#   /work/shared/peer/run_nnunetv2.sh -s ../shared/datasets/ph2_skin_lesion -d 940 -n PH2 -r 256 -e 1 -i 2 -v 1 -S -w /tmp/peer-infer
# Usage: scripts/bench_predict.sh [WORK=/tmp/peer-infer] [DSN=Dataset940_PH2] [ID=940]
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
WORK=${WORK:-/tmp/peer-infer}
DSN=${DSN:-Dataset940_PH2}
ID=${ID:-940}
TR=${TR:-nnUNetTrainer_Budget}
PEER_VENV=${PEER_VENV:-$HOME/.cache/nnunet-peer-venv}
PY=$PEER_VENV/bin/python
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/preprocessed nnUNet_results=$WORK/results
REF_MODEL=$nnUNet_results/$DSN/${TR}__nnUNetPlans__2d
IN=$nnUNet_raw/$DSN/imagesTs
LABELS=$nnUNet_raw/$DSN/labelsTs
OURS_MODEL=$WORK/ours_model
OUT=$WORK/bench_predict
[[ -f $REF_MODEL/fold_0/checkpoint_final.pth ]] || { echo "no reference model at $REF_MODEL; run the peer harness first (see the header)"; exit 1; }

export LIBTORCH_USE_PYTORCH=1 PATH=$REPO/.venv/bin:$PATH
cargo build -q -p nnunet-worker --bin nnunet-worker
BIN=$REPO/target/debug/nnunet-worker

# 1. Reference checkpoint -> our format (weights under the same state_dict names, sidecar with init_args).
rm -rf "$OURS_MODEL"; mkdir -p "$OURS_MODEL/fold_0"
cp "$REF_MODEL/plans.json" "$REF_MODEL/dataset.json" "$OURS_MODEL/"
"$PY" - "$REF_MODEL" "$OURS_MODEL" <<'EOF'
import hashlib, json, sys, torch
from safetensors.torch import save
ref, ours = sys.argv[1], sys.argv[2]
ck = torch.load(f"{ref}/fold_0/checkpoint_final.pth", map_location="cpu", weights_only=False)
sd = {k.replace("_orig_mod.", ""): v.float().contiguous() for k, v in ck["network_weights"].items()
      if ".all_modules." not in k and not k.startswith("decoder.encoder.")}
data = save(sd)
open(f"{ours}/fold_0/checkpoint_final.safetensors", "wb").write(data)
plans = json.load(open(f"{ref}/plans.json")); dj = json.load(open(f"{ref}/dataset.json"))
meta = {
    "format_version": 1, "trainer_name": "nnUNetTrainer", "kind": "final", "epoch": ck["current_epoch"],
    "epochs_total": ck["current_epoch"], "lr": 0.0, "ema_fg_dice": None, "best_ema": None, "logging": [],
    "rng": {"seed": 0, "next_epoch": ck["current_epoch"]}, "grad_scaler": None,
    "weights_file": "checkpoint_final.safetensors", "sha256": hashlib.sha256(data).hexdigest(),
    "init_args": {"configuration": plans["configurations"]["2d"], "configuration_name": "2d", "dataset_json": dj,
                  "fold": 0, "num_input_channels": len(dj["channel_names"]), "num_classes": len(dj["labels"]),
                  "inference_allowed_mirroring_axes": list(ck.get("inference_allowed_mirroring_axes") or [0, 1])},
    "training_config": None,
}
json.dump(meta, open(f"{ours}/fold_0/checkpoint_final.json", "w"), indent=1)
print(f"converted {len(sd)} tensors")
EOF

N=$(ls "$IN" | wc -l)
declare -A WALL
run_timed() { # name cmd... -> wall seconds in WALL[name]
  local name=$1; shift
  local t0 t1
  t0=$(date +%s.%N)
  "$@" > "$OUT/$name.log" 2>&1 || { echo "$name failed, see $OUT/$name.log"; tail -20 "$OUT/$name.log"; exit 1; }
  t1=$(date +%s.%N)
  WALL[$name]=$(python3 -c "print(round($t1 - $t0, 2))")
}
rm -rf "$OUT"; mkdir -p "$OUT"
for mode in tta notta; do
  flag_ref=(); flag_ours=()
  [[ $mode == notta ]] && flag_ref=(--disable_tta) && flag_ours=(--disable-tta)
  run_timed "ref_$mode" "$PEER_VENV/bin/nnUNetv2_predict" -i "$IN" -o "$OUT/ref_$mode" -d "$ID" -c 2d -tr "$TR" -f 0 \
      -device cpu -npp 2 -nps 2 --disable_progress_bar "${flag_ref[@]}"
  run_timed "ours_$mode" "$BIN" predict -i "$IN" -o "$OUT/ours_$mode" -m "$OURS_MODEL" --folds 0 --device cpu "${flag_ours[@]}"
done

# Numerical parity on two images: saved probabilities of both, no TTA (the reference accumulates in fp16).
mkdir -p "$OUT/parity_in"; ls "$IN" | head -2 | while read -r f; do cp "$IN/$f" "$OUT/parity_in/"; done
"$PEER_VENV/bin/nnUNetv2_predict" -i "$OUT/parity_in" -o "$OUT/parity_ref" -d "$ID" -c 2d -tr "$TR" -f 0 -device cpu \
    --save_probabilities --disable_tta --disable_progress_bar > "$OUT/parity_ref.log" 2>&1
"$BIN" predict -i "$OUT/parity_in" -o "$OUT/parity_ours" -m "$OURS_MODEL" --folds 0 --device cpu --disable-tta \
    --save-probabilities > "$OUT/parity_ours.log" 2>&1

"$PY" - "$OUT" "$LABELS" "$N" "$REPO/bench-results/predict.json" \
  "${WALL[ref_tta]}" "${WALL[ours_tta]}" "${WALL[ref_notta]}" "${WALL[ours_notta]}" "$DSN" <<'EOF'
import json, os, sys, platform, numpy as np
from PIL import Image
out, labels, n, dst = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
walls = dict(zip(["ref_tta", "ours_tta", "ref_notta", "ours_notta"], map(float, sys.argv[5:9])))
dsn = sys.argv[9]
def load(d): return {f: np.array(Image.open(os.path.join(d, f))) for f in sorted(os.listdir(d)) if f.endswith(".png")}
def dice(a, b):
    a, b = a > 0, b > 0; s = a.sum() + b.sum()
    return float("nan") if s == 0 else 2 * (a & b).sum() / s
gt = load(labels)
rows = {}
for mode in ["tta", "notta"]:
    ref, ours = load(f"{out}/ref_{mode}"), load(f"{out}/ours_{mode}")
    assert ref.keys() == ours.keys() == gt.keys(), "prediction folders differ"
    same = np.mean([np.mean(ref[k] == ours[k]) for k in ref])
    rows[mode] = {
        "ref_wall_s": walls[f"ref_{mode}"], "ours_wall_s": walls[f"ours_{mode}"],
        "ref_images_per_s": n / walls[f"ref_{mode}"], "ours_images_per_s": n / walls[f"ours_{mode}"],
        "speedup": walls[f"ref_{mode}"] / walls[f"ours_{mode}"],
        "pixel_agreement_ours_vs_ref": float(same),
        "dice_ours_vs_ref_masks": float(np.nanmean([dice(ours[k], ref[k]) for k in ref])),
        "test_dice_ref": float(np.nanmean([dice(ref[k], gt[k]) for k in gt])),
        "test_dice_ours": float(np.nanmean([dice(ours[k], gt[k]) for k in gt])),
    }
pr, po = f"{out}/parity_ref", f"{out}/parity_ours"
npz = sorted(f for f in os.listdir(pr) if f.endswith(".npz"))
dp = [np.abs(np.load(f"{pr}/{f}")["probabilities"] - np.load(f"{po}/{f}")["probabilities"]) for f in npz]
parity = {"images": len(npz), "max_abs_prob_diff": float(max(d.max() for d in dp)),
          "mean_abs_prob_diff": float(np.mean([d.mean() for d in dp])),
          "note": "same weights, no TTA; the reference accumulates logits in fp16 (spacing 0.0078 near |logit| 8-16), we in f32"}
res = {
    "what": "nnunet-worker predict vs nnUNetv2_predict -device cpu, same plan and same weights (reference checkpoint converted), fold 0",
    "dataset": dsn, "n_images": n, "image_size": list(next(iter(gt.values())).shape),
    "machine": f"{platform.machine()}, {os.cpu_count()} cores (shared with other jobs)",
    "timing": "wall time of the whole command: process start, model load, preprocessing, prediction, export",
    "modes": rows,
    "probability_parity": parity,
}
# Keep the speedups of earlier runs: the 2-core machine is shared, so single runs are noisy.
if os.path.exists(dst):
    old = json.load(open(dst))
    res["previous_runs"] = old.get("previous_runs", []) + [
        {m: {k: r[k] for k in ("ref_wall_s", "ours_wall_s", "speedup")} for m, r in old["modes"].items()}]
os.makedirs(os.path.dirname(dst), exist_ok=True)
json.dump(res, open(dst, "w"), indent=2)
print(f"\n{n} images {res['image_size']} ({dsn}), CPU, fold 0, same weights")
print(f"{'mode':<7}{'nnUNetv2 s':>11}{'img/s':>8}{'ours s':>9}{'img/s':>8}{'speedup':>9}{'px agree':>10}{'Dice ref':>10}{'Dice ours':>10}")
for m, r in rows.items():
    print(f"{m:<7}{r['ref_wall_s']:>11.1f}{r['ref_images_per_s']:>8.3f}{r['ours_wall_s']:>9.1f}{r['ours_images_per_s']:>8.3f}"
          f"{r['speedup']:>8.2f}x{r['pixel_agreement_ours_vs_ref']:>10.5f}{r['test_dice_ref']:>10.4f}{r['test_dice_ours']:>10.4f}")
print(f"probabilities vs reference ({parity['images']} images, no TTA): max |dp| {parity['max_abs_prob_diff']:.4g}, mean |dp| {parity['mean_abs_prob_diff']:.3g}")
print(f"wrote {dst}")
EOF
