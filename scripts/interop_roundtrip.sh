#!/usr/bin/env bash
# Round trip to the reference: a model trained by nnunet-rs -> `nnunet export-model` ->
# nnUNetv2_install_pretrained_model_from_zip -> nnUNetv2_predict, compared with `nnunet predict` on the same
# images (pixel agreement and Dice against the test labels).
#   scripts/interop_roundtrip.sh        (env: SHARED, PEER_VENV, BIN=target/debug, EPOCHS=15, ITERS=25, WORK)
set -euo pipefail
. "$(dirname "${BASH_SOURCE[0]}")/interop_common.sh"
DSN=Dataset952_PH2rt
to_raw ph2_skin_lesion 952 PH2rt 64 60
"$BIN/nnunet" plan-and-preprocess $DSN -n 1 --quiet >/dev/null
shrink_plans "$nnUNet_preprocessed/$DSN/nnUNetPlans.json"
MODEL=$nnUNet_results/$DSN/nnUNetTrainer__nnUNetPlans__2d
"$BIN/nnunet-worker" train --dataset "$nnUNet_preprocessed/$DSN" --fold 0 --epochs "${EPOCHS:-15}" --iters "${ITERS:-25}" \
  --val-iters 5 --skip-validation --threads 1 --loader-threads 1 2>&1 | tail -2
"$BIN/nnunet" predict -m "$MODEL" -f 0 -i "$nnUNet_raw/$DSN/imagesTs" -o "$WORK/pred_nnunet_rs" --device cpu | tail -1
"$BIN/nnunet" export-model -m "$MODEL" -o "$WORK/model.zip" | tail -1
PEER_RESULTS=$WORK/peer_results; mkdir -p "$PEER_RESULTS"
nnUNet_results=$PEER_RESULTS "$PEER_VENV/bin/nnUNetv2_install_pretrained_model_from_zip" "$WORK/model.zip"
nnUNet_results=$PEER_RESULTS "$PEER_VENV/bin/nnUNetv2_predict" -i "$nnUNet_raw/$DSN/imagesTs" -o "$WORK/pred_nnunetv2" -d 952 -c 2d \
  -tr nnUNetTrainer -f 0 -device cpu -npp 1 -nps 1 --disable_progress_bar >/dev/null 2>&1
"$PY" - "$WORK/pred_nnunet_rs" "$WORK/pred_nnunetv2" "$nnUNet_raw/$DSN/labelsTs" <<'PYEOF'
import sys, os, numpy as np
from PIL import Image
a, b, gt = sys.argv[1:4]
def dice(p, g):
    fg = [l for l in np.unique(g) if l > 0]
    return np.mean([2 * ((p == l) & (g == l)).sum() / max((p == l).sum() + (g == l).sum(), 1) for l in fg])
same = total = 0; da = []; db = []
names = sorted(f for f in os.listdir(gt) if f.endswith('.png'))
for n in names:
    pa, pb, g = (np.array(Image.open(os.path.join(d, n))) for d in (a, b, gt))
    same += int((pa == pb).sum()); total += pa.size
    da.append(dice(pa, g)); db.append(dice(pb, g))
print(f'round trip: {len(names)} test images, pixel agreement nnunet predict vs nnUNetv2_predict(export-model zip) = '
      f'{same / total:.6f} ({total - same} of {total} pixels differ); mean Dice nnunet-rs {np.mean(da):.6f}, nnUNetv2 {np.mean(db):.6f}')
sys.exit(0 if same / total >= 0.999 else 1)
PYEOF
