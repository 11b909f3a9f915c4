#!/usr/bin/env bash
# More samples of one parity_train.sh comparison: re-runs of the reference (nnU-Net picks its own seeds) and our
# training with other --seed values, on the same preprocessed data, plan, split and budget as the first run; then a
# table of every sample and the mean of each side. Run after scripts/parity_train.sh with the same WORK, ID, NAME and
# budget. Knobs: WORK, ID, NAME, EPOCHS (20), ITERS (25), VAL_ITERS (4), REF_RUNS ("2 3"; empty: none), SEEDS ("3 4"; empty: none), BIN_DIR.
set -u
EPOCHS=${EPOCHS:-20}; ITERS=${ITERS:-25}; VAL_ITERS=${VAL_ITERS:-4}; ID=${ID:-943}
W=${WORK:-/tmp/parity-regions}; DS=Dataset${ID}_${NAME:-HippoR}; PEER_PY=${PEER_PY:-$HOME/.cache/nnunet-peer-venv/bin/python}
BIN=${BIN_DIR:-$(cd "$(dirname "$0")/.." && pwd)/target/debug}
REF_RES=$W/ref/results/$DS/nnUNetTrainer_Budget__nnUNetPlans__2d/fold_0/validation/summary.json
mkdir -p $W/samples
[ -f $W/samples/ref1.json ] || cp $REF_RES $W/samples/ref1.json
cp $W/ours/res/$DS/nnUNetTrainer__nnUNetPlans__2d/fold_0/validation/summary.json $W/samples/ours_seed_default.json
ref_run() {
  env nnUNet_raw=$W/ref/raw nnUNet_preprocessed=$W/ref/preprocessed nnUNet_results=$W/ref/results nnUNet_n_proc_DA=2 nnUNet_compile=f nnUNet_def_n_proc=2 \
    PATH="$(dirname $PEER_PY):$PATH" NNUNET_BUDGET_EPOCHS=$EPOCHS NNUNET_BUDGET_ITERS=$ITERS NNUNET_BUDGET_VAL_ITERS=$VAL_ITERS \
    nice -n 10 nnUNetv2_train $ID 2d 0 -tr nnUNetTrainer_Budget -p nnUNetPlans -device cpu > $W/ref_train_$1.log 2>&1 && cp $REF_RES $W/samples/ref$1.json
  echo "ref $1 done $(date +%T)"
}
ours_run() {
  rm -rf $W/ours$1
  env nnUNet_raw=$W/ours/raw nnUNet_preprocessed=$W/ours/pre nnUNet_results=$W/ours$1/res \
    nice -n 10 $BIN/nnunet-worker train --dataset $DS --plans nnUNetPlans --fold 0 --epochs $EPOCHS --iters $ITERS --val-iters $VAL_ITERS --device cpu --seed $1 > $W/ours${1}_train.log 2>&1 \
    && cp $W/ours$1/res/$DS/nnUNetTrainer__nnUNetPlans__2d/fold_0/validation/summary.json $W/samples/ours_seed$1.json
  echo "ours $1 done $(date +%T)"
}
for i in ${REF_RUNS-2 3}; do ref_run $i; done; for s in ${SEEDS-3 4}; do ours_run $s; done
"$PEER_PY" - "$W/samples" <<'PY'
import glob, json, os, statistics as st, sys
rows = {}
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    d = json.load(open(f))
    rows[os.path.basename(f)] = {**{k: v["Dice"] for k, v in d["mean"].items()}, "mean": d["foreground_mean"]["Dice"]}
keys = list(next(iter(rows.values())))
print("sample".ljust(26) + "".join(k.rjust(10) for k in keys))
for f, r in rows.items():
    print(f.ljust(26) + "".join(f"{r[k]:10.4f}" for k in keys))
for side in ("ref", "ours"):
    v = [r for f, r in rows.items() if f.startswith(side)]
    print(f"{side} mean of {len(v)}".ljust(26) + "".join(f"{st.mean(x[k] for x in v):10.4f}" for k in keys))
PY
