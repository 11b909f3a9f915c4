#!/usr/bin/env bash
# Parity of one trained fold with the reference nnU-Net v2 (issue 4): same data, same plan, same split, same budget.
#   1. the peer harness converts ISBI 2012 (downscaled, -r) into an nnU-Net v2 raw dataset and plans/preprocesses it;
#   2. reference: nnUNetv2_train ID 2d 0 -tr nnUNetTrainer_Budget -device cpu (budget via NNUNET_BUDGET_*), which ends
#      with nnU-Net's sliding-window validation of fold 0 -> validation/summary.json;
#   3. ours: `nnunet plan-and-preprocess` on a copy of the SAME raw dataset, then `nnunet-worker train` with the same
#      budget (also ending with the fold-0 sliding-window validation). Both use fold 0 of nnU-Net's
#      KFold(5, shuffle, 12345) split (the script checks that the two splits_final.json agree).
# Prints both validation Dice values. Knobs: SRC (isbi2012_em; any ../shared/datasets folder, or an absolute images/ +
# masks/ folder), NAME (ISBI), ID (932), DOWN (128), EPOCHS (6), ITERS (20), VAL_ITERS (5), WORK (/tmp/parity-train),
# PLANNER (default; ResEncM|ResEncL|ResEncXL: both sides plan with nnUNetPlannerResEnc* and train with -p/--plans
# nnUNetResEncUNet*Plans), IGNORE (a mask value that becomes nnU-Net's ignore label on both sides; the Dice is then
# over the annotated pixels only), NNUNET_SHARED, PEER_PY, REUSE_REF=1 (keep an existing reference run in $WORK/ref,
# retrain only ours), MAXC (only the first N sorted cases, the harness's -m), REGIONS (region-based training: a JSON
# object {"labels": {...}, "regions_class_order": [...]} written into the converted dataset.json on both sides before
# preprocessing, e.g. '{"labels": {"background": 0, "whole": [1, 2], "posterior": [2]}, "regions_class_order": [1, 2]}';
# the Dice is then reported per region).
# Needs target/{release,debug}/{nnunet,nnunet-worker}.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
SHARED=${NNUNET_SHARED:-$ROOT/../shared}
PEER_PY=${PEER_PY:-$HOME/.cache/nnunet-peer-venv/bin/python}
DOWN=${DOWN:-128}; EPOCHS=${EPOCHS:-6}; ITERS=${ITERS:-20}; VAL_ITERS=${VAL_ITERS:-5}; WORK=${WORK:-/tmp/parity-train}
BIN_DIR=target/release; [ -x $BIN_DIR/nnunet-worker ] || BIN_DIR=target/debug
SRC=${SRC:-isbi2012_em}; export NAME=${NAME:-ISBI}; ID=${ID:-932}; DS=Dataset${ID}_${NAME}
case "$SRC" in /*) SRC_DIR=$SRC;; *) SRC_DIR=$SHARED/datasets/$SRC;; esac
PLANNER=${PLANNER:-default}
case "$PLANNER" in
  default) PLANS=nnUNetPlans; REF_PLANNER=ExperimentPlanner;;
  ResEncM|ResEncL|ResEncXL) PLANS=nnUNetResEncUNet${PLANNER#ResEnc}Plans; REF_PLANNER=nnUNetPlanner$PLANNER;;
  *) echo "PLANNER=$PLANNER: choose default, ResEncM, ResEncL or ResEncXL" >&2; exit 2;;
esac
export PLANS; IGNORE_ARGS=(); [ -n "${IGNORE:-}" ] && IGNORE_ARGS=(-x "$IGNORE")
[ -n "${MAXC:-}" ] && IGNORE_ARGS+=(-m "$MAXC")
mkdir -p "$WORK"
REF_SUMMARY="$WORK/ref/results/$DS/nnUNetTrainer_Budget__${PLANS}__2d/fold_0/validation/summary.json"
if [ "${REUSE_REF:-0}" = 1 ] && [ -f "$REF_SUMMARY" ]; then
  echo "REUSE_REF=1: keeping the reference run in $WORK/ref (only ours is retrained)"
else
# 1 + 2: harness: convert + plan (reference), no training through the harness (-e 0), then the budget training.
"$SHARED/peer/run_nnunetv2.sh" -s "$SRC_DIR" -d $ID -n $NAME -r "$DOWN" -e 0 "${IGNORE_ARGS[@]}" -w "$WORK/ref" > "$WORK/ref_prepare.log" 2>&1
VARIANTS=$("$PEER_PY" -c "import nnunetv2,os;print(os.path.join(os.path.dirname(nnunetv2.__file__),'training','nnUNetTrainer','variants'))")
cp "$SHARED/peer/nnUNetTrainer_Budget.py" "$VARIANTS/"
REF_ENV=(nnUNet_raw="$WORK/ref/raw" nnUNet_preprocessed="$WORK/ref/preprocessed" nnUNet_results="$WORK/ref/results"
    nnUNet_n_proc_DA=2 nnUNet_compile=f nnUNet_def_n_proc=2 PATH="$(dirname "$PEER_PY"):$PATH")
if [ -n "${REGIONS:-}" ]; then
  # region-based training: the same labels/regions_class_order on both sides, then the reference preprocesses again
  # (its class locations are per region)
  REGIONS="$REGIONS" "$PEER_PY" - "$WORK/ref/raw/$DS/dataset.json" <<'PY'
import json, os, sys
dj = json.load(open(sys.argv[1])); dj.update(json.loads(os.environ["REGIONS"])); json.dump(dj, open(sys.argv[1], "w"), indent=2)
PY
  # nnUNetv2_preprocess does not copy dataset.json (the fingerprint step does): the trainer reads the preprocessed copy
  cp "$WORK/ref/raw/$DS/dataset.json" "$WORK/ref/preprocessed/$DS/dataset.json"
  env "${REF_ENV[@]}" nnUNetv2_preprocess -d $ID -c 2d -np 2 > "$WORK/ref_preprocess_regions.log" 2>&1
fi
if [ "$PLANNER" != default ]; then
  # the ResEnc presets reuse the default plans' preprocessed data (data_identifier nnUNetPlans_2d)
  env "${REF_ENV[@]}" nnUNetv2_plan_experiment -d $ID -pl $REF_PLANNER > "$WORK/ref_plan_resenc.log" 2>&1
fi
env "${REF_ENV[@]}" NNUNET_BUDGET_EPOCHS=$EPOCHS NNUNET_BUDGET_ITERS=$ITERS NNUNET_BUDGET_VAL_ITERS=$VAL_ITERS \
    nnUNetv2_train $ID 2d 0 -tr nnUNetTrainer_Budget -p $PLANS -device cpu > "$WORK/ref_train.log" 2>&1
fi
# 3: ours on a copy of the same raw dataset.
rm -rf "$WORK/ours" && mkdir -p "$WORK/ours/raw" "$WORK/ours/pre" "$WORK/ours/res"
cp -r "$WORK/ref/raw/$DS" "$WORK/ours/raw/"
export nnUNet_raw="$WORK/ours/raw" nnUNet_preprocessed="$WORK/ours/pre" nnUNet_results="$WORK/ours/res"
$BIN_DIR/nnunet plan-and-preprocess $DS --planner "$PLANNER" --quiet > "$WORK/ours_prepare.log" 2>&1
cmp <("$PEER_PY" -c "import json;print(json.dumps(json.load(open('$WORK/ref/preprocessed/$DS/$PLANS.json'))['configurations']['2d'],sort_keys=True))") \
    <("$PEER_PY" -c "import json;print(json.dumps(json.load(open('$WORK/ours/pre/$DS/$PLANS.json'))['configurations']['2d'],sort_keys=True))") \
    || echo "note: the 2d configurations of $PLANS.json differ (see both files)" >&2
cmp <("$PEER_PY" -c "import json;print(json.load(open('$WORK/ref/preprocessed/$DS/splits_final.json'))[0])") \
    <("$PEER_PY" -c "import json;print(json.load(open('$WORK/ours/pre/$DS/splits_final.json'))[0])") || { echo "fold-0 splits differ" >&2; exit 1; }
$BIN_DIR/nnunet-worker train --dataset $DS --plans $PLANS --fold 0 --epochs $EPOCHS --iters $ITERS --val-iters $VAL_ITERS --device cpu > "$WORK/ours_train.log" 2>&1
"$PEER_PY" - "$REF_SUMMARY" \
    "$WORK/ours/res/$DS/nnUNetTrainer__${PLANS}__2d/fold_0/validation/summary.json" "$DOWN" "$EPOCHS" "$ITERS" "$VAL_ITERS" <<'PY'
import json, os, sys
r, o = (json.load(open(p)) for p in sys.argv[1:3])
print(f"{os.environ.get('NAME', 'ISBI')} (-r {sys.argv[3]}, {os.environ.get('PLANS', 'nnUNetPlans')}), fold 0 validation Dice, budget {sys.argv[4]} epochs x {sys.argv[5]} it (+{sys.argv[6]} val it):")
for k in sorted(r["mean"]):
    a, b = r["mean"][k]["Dice"], o["mean"].get(k, {}).get("Dice", float("nan"))
    print(f"  {k}: reference {a:.4f}, ours {b:.4f}, |diff| {abs(a - b):.4f}")
a, b = r["foreground_mean"]["Dice"], o["foreground_mean"]["Dice"]
print(f"  mean: reference {a:.4f}, ours {b:.4f}, |diff| {abs(a - b):.4f} ({'within' if abs(a - b) <= 0.02 else 'OUTSIDE'} 0.02)")
PY
