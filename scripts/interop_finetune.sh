#!/usr/bin/env bash
# Fine-tuning check: pretrain on ISBI 2012 (gray, downscaled to 64 px), then train on MSD hippocampus slices
# (gray, 3 labels) from scratch and from the pretrained weights (`--pretrained-weights`, segmentation heads fresh)
# with the same seed and budget; prints both curves (train loss, pseudo-Dice per epoch). Then shows that a
# checkpoint of another shape is refused with the list of mismatching parameters.
#   scripts/interop_finetune.sh        (env: SHARED, PEER_VENV, BIN, PRE_EPOCHS=20, EPOCHS=8, ITERS=25, WORK)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/interop_common.sh"
PRE=Dataset961_ISBItiny; FT=Dataset962_Hippo
to_raw isbi2012_em 961 ISBItiny 64 0
to_raw msd_hippocampus 962 Hippo 0 400
"$BIN/nnunet" plan-and-preprocess $PRE -n 1 --quiet >/dev/null
"$BIN/nnunet" plan-and-preprocess $FT -n 1 --quiet >/dev/null
shrink_plans "$nnUNet_preprocessed/$PRE/nnUNetPlans.json"
shrink_plans "$nnUNet_preprocessed/$FT/nnUNetPlans.json" "$nnUNet_preprocessed/$PRE/nnUNetPlans.json"
train() {  # train DATASET OUT EPOCHS [extra...]
  "$BIN/nnunet-worker" train --dataset "$nnUNet_preprocessed/$1" --fold 0 --out "$2" --epochs "$3" --iters "${ITERS:-25}" \
    --val-iters 5 --skip-validation --threads 1 --loader-threads 1 --seed 7 "${@:4}" 2>&1 | grep -E "pretrained|done|error" || true
}
train $PRE "$WORK/pretrain/fold_0" "${PRE_EPOCHS:-20}"
train $FT "$WORK/scratch/fold_0" "${EPOCHS:-8}"
train $FT "$WORK/finetune/fold_0" "${EPOCHS:-8}" --pretrained-weights "$WORK/pretrain/fold_0/checkpoint_final.safetensors"
python3 - "$WORK/scratch/fold_0/training_log.jsonl" "$WORK/finetune/fold_0/training_log.jsonl" <<'PYEOF'
import json, sys
s, f = ([json.loads(l) for l in open(p)] for p in sys.argv[1:3])
print('epoch | scratch: train_loss pseudo_dice | pretrained: train_loss pseudo_dice')
for a, b in zip(s, f):
    print(f"{a['epoch']:5d} | {a['train_loss']:8.4f} {a['mean_fg_dice']:.4f}      | {b['train_loss']:8.4f} {b['mean_fg_dice']:.4f}")
print(f"mean pseudo-Dice over the epochs: scratch {sum(a['mean_fg_dice'] for a in s)/len(s):.4f}, pretrained {sum(b['mean_fg_dice'] for b in f)/len(f):.4f}")
PYEOF
echo "--- a checkpoint of another network shape (ISBI's own plan on PH2 RGB needs 3 input channels):"
to_raw ph2_skin_lesion 963 PH2mis 64 30
"$BIN/nnunet" plan-and-preprocess Dataset963_PH2mis -n 1 --quiet >/dev/null
shrink_plans "$nnUNet_preprocessed/Dataset963_PH2mis/nnUNetPlans.json" "$nnUNet_preprocessed/$PRE/nnUNetPlans.json"
"$BIN/nnunet-worker" train --dataset "$nnUNet_preprocessed/Dataset963_PH2mis" --fold 0 --out "$WORK/mismatch/fold_0" --epochs 1 --iters 1 \
  --val-iters 1 --skip-validation --threads 1 --pretrained-weights "$WORK/pretrain/fold_0/checkpoint_final.safetensors" 2>&1 | grep -A4 "error" || true
