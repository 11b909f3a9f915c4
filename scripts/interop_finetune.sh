#!/usr/bin/env bash
# Fine-tuning check on a matched pair: PH2 dermoscopy (RGB, downscaled to 64 px) split by case into two
# disjoint datasets; pretrain on the first PRE_CASES cases, then train on the other cases from scratch and from
# the pretrained weights (`--pretrained-weights`, segmentation heads fresh) with the same seed, plans and
# budget; prints both curves (train loss, val loss, pseudo-Dice per epoch). Then shows that a checkpoint of
# another shape (PH2 RGB weights on gray ISBI) is refused with the list of mismatching parameters.
# (An earlier ISBI -> hippocampus pair did not converge faster: gray EM membranes share little with MRI.)
#   scripts/interop_finetune.sh   (env: SHARED, PEER_VENV, BIN, PRE_CASES=60, PRE_EPOCHS=20, EPOCHS=8, ITERS=25, WORK)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/interop_common.sh"
PRE=Dataset971_PH2pre; FT=Dataset972_PH2ft
split_src() {  # split_src DATASET FIRST_N: two source folders of links, the first N sorted cases and the rest
  local src=$SHARED/datasets/$1 n=$2 i=0
  for part in pre ft; do mkdir -p "$WORK/src_$part/images" "$WORK/src_$part/masks"; done
  for f in $(ls "$src/images" | sort); do
    local part=ft; [[ $i -lt $n ]] && part=pre
    ln -sf "$src/images/$f" "$WORK/src_$part/images/$f"; ln -sf "$src/masks/$f" "$WORK/src_$part/masks/$f"
    i=$((i + 1))
  done
}
split_src ph2_skin_lesion "${PRE_CASES:-60}"
"$PY" "$SHARED/peer/convert_to_nnunet.py" "$WORK/src_pre" 971 PH2pre --raw "$nnUNet_raw" --downscale 64 --test-frac 0 >/dev/null
"$PY" "$SHARED/peer/convert_to_nnunet.py" "$WORK/src_ft" 972 PH2ft --raw "$nnUNet_raw" --downscale 64 --test-frac 0 >/dev/null
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
print('epoch | scratch: train_loss val_loss pseudo_dice | pretrained: train_loss val_loss pseudo_dice')
for a, b in zip(s, f):
    print(f"{a['epoch']:5d} | {a['train_loss']:8.4f} {a['val_loss']:8.4f} {a['mean_fg_dice']:.4f}        | {b['train_loss']:8.4f} {b['val_loss']:8.4f} {b['mean_fg_dice']:.4f}")
print(f"mean pseudo-Dice over the epochs: scratch {sum(a['mean_fg_dice'] for a in s)/len(s):.4f}, pretrained {sum(b['mean_fg_dice'] for b in f)/len(f):.4f}")
PYEOF
echo "--- a checkpoint of another network shape (PH2's RGB network on gray ISBI needs 1 input channel):"
to_raw isbi2012_em 963 ISBImis 64 10
"$BIN/nnunet" plan-and-preprocess Dataset963_ISBImis -n 1 --quiet >/dev/null
shrink_plans "$nnUNet_preprocessed/Dataset963_ISBImis/nnUNetPlans.json" "$nnUNet_preprocessed/$PRE/nnUNetPlans.json"
"$BIN/nnunet-worker" train --dataset "$nnUNet_preprocessed/Dataset963_ISBImis" --fold 0 --out "$WORK/mismatch/fold_0" --epochs 1 --iters 1 \
  --val-iters 1 --skip-validation --threads 1 --pretrained-weights "$WORK/pretrain/fold_0/checkpoint_final.safetensors" 2>&1 | grep -A4 "error" || true
