#!/usr/bin/env bash
# Parity of one trained fold with the reference nnU-Net v2 (issue 4): same data, same plan, same split, same budget.
#   1. the peer harness converts ISBI 2012 (downscaled, -r) into an nnU-Net v2 raw dataset and plans/preprocesses it;
#   2. reference: nnUNetv2_train ID 2d 0 -tr nnUNetTrainer_Budget -device cpu (budget via NNUNET_BUDGET_*), which ends
#      with nnU-Net's sliding-window validation of fold 0 -> validation/summary.json;
#   3. ours: `nnunet plan-and-preprocess` on a copy of the SAME raw dataset, then `nnunet-worker train` with the same
#      budget (also ending with the fold-0 sliding-window validation). Both use fold 0 of nnU-Net's
#      KFold(5, shuffle, 12345) split (the script checks that the two splits_final.json agree).
# Prints both validation Dice values. Knobs: SRC (isbi2012_em; any ../shared/datasets folder), NAME (ISBI), ID (932), DOWN (128), EPOCHS (6), ITERS (20), VAL_ITERS (5), WORK (/tmp/parity-train),
# NNUNET_SHARED, PEER_PY, REUSE_REF=1 (keep an existing reference run in $WORK/ref, retrain only ours).
# Needs target/{release,debug}/{nnunet,nnunet-worker}.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SHARED=${NNUNET_SHARED:-$ROOT/../shared}
PEER_PY=${PEER_PY:-$HOME/.cache/nnunet-peer-venv/bin/python}
DOWN=${DOWN:-128}; EPOCHS=${EPOCHS:-6}; ITERS=${ITERS:-20}; VAL_ITERS=${VAL_ITERS:-5}; WORK=${WORK:-/tmp/parity-train}
BIN_DIR=target/release; [ -x $BIN_DIR/nnunet-worker ] || BIN_DIR=target/debug
SRC=${SRC:-isbi2012_em}; export NAME=${NAME:-ISBI}; ID=${ID:-932}; DS=Dataset${ID}_${NAME}
mkdir -p "$WORK"
REF_SUMMARY="$WORK/ref/results/$DS/nnUNetTrainer_Budget__nnUNetPlans__2d/fold_0/validation/summary.json"
if [ "${REUSE_REF:-0}" = 1 ] && [ -f "$REF_SUMMARY" ]; then
  echo "REUSE_REF=1: keeping the reference run in $WORK/ref (only ours is retrained)"
else
# 1 + 2: harness: convert + plan (reference), no training through the harness (-e 0), then the budget training.
"$SHARED/peer/run_nnunetv2.sh" -s "$SHARED/datasets/$SRC" -d $ID -n $NAME -r "$DOWN" -e 0 -w "$WORK/ref" > "$WORK/ref_prepare.log" 2>&1
VARIANTS=$("$PEER_PY" -c "import nnunetv2,os;print(os.path.join(os.path.dirname(nnunetv2.__file__),'training','nnUNetTrainer','variants'))")
cp "$SHARED/peer/nnUNetTrainer_Budget.py" "$VARIANTS/"
env nnUNet_raw="$WORK/ref/raw" nnUNet_preprocessed="$WORK/ref/preprocessed" nnUNet_results="$WORK/ref/results" \
    nnUNet_n_proc_DA=2 nnUNet_compile=f nnUNet_def_n_proc=2 NNUNET_BUDGET_EPOCHS=$EPOCHS NNUNET_BUDGET_ITERS=$ITERS \
    NNUNET_BUDGET_VAL_ITERS=$VAL_ITERS PATH="$(dirname "$PEER_PY"):$PATH" \
    nnUNetv2_train $ID 2d 0 -tr nnUNetTrainer_Budget -device cpu > "$WORK/ref_train.log" 2>&1
fi
# 3: ours on a copy of the same raw dataset.
rm -rf "$WORK/ours" && mkdir -p "$WORK/ours/raw" "$WORK/ours/pre" "$WORK/ours/res"
cp -r "$WORK/ref/raw/$DS" "$WORK/ours/raw/"
export nnUNet_raw="$WORK/ours/raw" nnUNet_preprocessed="$WORK/ours/pre" nnUNet_results="$WORK/ours/res"
$BIN_DIR/nnunet plan-and-preprocess $DS --quiet > "$WORK/ours_prepare.log" 2>&1
cmp <("$PEER_PY" -c "import json;print(json.load(open('$WORK/ref/preprocessed/$DS/splits_final.json'))[0])") \
    <("$PEER_PY" -c "import json;print(json.load(open('$WORK/ours/pre/$DS/splits_final.json'))[0])") || { echo "fold-0 splits differ" >&2; exit 1; }
$BIN_DIR/nnunet-worker train --dataset $DS --fold 0 --epochs $EPOCHS --iters $ITERS --val-iters $VAL_ITERS --device cpu > "$WORK/ours_train.log" 2>&1
"$PEER_PY" - "$WORK/ref/results/$DS/nnUNetTrainer_Budget__nnUNetPlans__2d/fold_0/validation/summary.json" \
    "$WORK/ours/res/$DS/nnUNetTrainer__nnUNetPlans__2d/fold_0/validation/summary.json" "$DOWN" "$EPOCHS" "$ITERS" "$VAL_ITERS" <<'PY'
import json, os, sys
r, o = (json.load(open(p))["foreground_mean"]["Dice"] for p in sys.argv[1:3])
print(f"{os.environ.get('NAME', 'ISBI')} (-r {sys.argv[3]}), fold 0 validation Dice, budget {sys.argv[4]} epochs x {sys.argv[5]} it (+{sys.argv[6]} val it):"
      f" reference {r:.4f}, ours {o:.4f}, |diff| {abs(r - o):.4f} ({'within' if abs(r - o) <= 0.02 else 'OUTSIDE'} 0.02)")
PY
