#!/usr/bin/env bash
# Benchmark: nnunet-rs `nnunet plan-and-preprocess --np 2` vs reference `nnUNetv2_plan_and_preprocess -c 2d
# --verify_dataset_integrity -np 2` (PyPI nnunetv2 in the peer venv) on the same raw datasets, same machine, one
# run. Both are timed by the peer harness's timed_run.py (GNU time -v wall time + summed RSS of the process
# tree, sampled every 0.5 s: the reference spawns worker processes). Then the outputs are compared (fingerprint,
# 2d plan, every preprocessed case: data max abs error, seg and foreground locations exact).
# Prints a table and writes bench-results/preprocess.json.
#
# usage: scripts/bench_preprocess.sh            (env: W work dir, PY peer python, NNUNET_SHARED)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SHARED=${NNUNET_SHARED:-$ROOT/../shared}
PY=${PY:-$HOME/.cache/nnunet-peer-venv/bin/python}
BIN=$(dirname "$PY")
W=${W:-/tmp/bench-preprocess}
OUT=$ROOT/bench-results/preprocess.json
NNUNET=${NNUNET:-$ROOT/target/release/nnunet}
[ -d "$SHARED/datasets" ] || { echo "shared datasets not found at $SHARED (set NNUNET_SHARED)"; exit 1; }
[ -x "$PY" ] || { echo "peer venv python not found at $PY"; exit 1; }
if [ ! -x "$NNUNET" ]; then
  (cd "$ROOT" && LIBTORCH_USE_PYTORCH=1 cargo build --release -p nnunet-coordinator)
fi
TIMED="$PY $SHARED/peer/timed_run.py"
mkdir -p "$W/raw" "$W/logs"
export nnUNet_raw=$W/raw nnUNet_results=$W/results nnUNet_n_proc_DA=2
# the same raw inputs as tests/fixtures/planning (ISBI full size, PH2 downscaled to 256 px, hippocampus volumes)
[ -d "$W/raw/Dataset920_ISBI" ] || "$PY" "$SHARED/peer/convert_to_nnunet.py" "$SHARED/datasets/isbi2012_em" 920 ISBI --raw "$W/raw" >/dev/null
[ -d "$W/raw/Dataset921_PH2" ] || "$PY" "$SHARED/peer/convert_to_nnunet.py" "$SHARED/datasets/ph2_skin_lesion" 921 PH2 --raw "$W/raw" --downscale 256 >/dev/null
[ -d "$W/raw/Dataset922_Hippocampus" ] || "$PY" "$ROOT/tests/fixtures/planning/make_hippo_raw.py" "$SHARED/datasets/msd_hippocampus/volumes" "$W/raw/Dataset922_Hippocampus" >/dev/null

for spec in 920:Dataset920_ISBI 921:Dataset921_PH2 922:Dataset922_Hippocampus; do
  id=${spec%%:*}; ds=${spec#*:}
  rm -rf "$W/ref/$ds" "$W/ours/$ds"
  echo "== $ds: reference nnUNetv2_plan_and_preprocess -np 2"
  nnUNet_preprocessed=$W/ref $TIMED "ref_$id" "$W/logs" -- "$BIN/nnUNetv2_plan_and_preprocess" -d "$id" -c 2d --verify_dataset_integrity -np 2 >/dev/null
  echo "== $ds: nnunet plan-and-preprocess --np 2"
  nnUNet_preprocessed=$W/ours $TIMED "ours_$id" "$W/logs" -- "$NNUNET" plan-and-preprocess "$W/raw/$ds" --preprocessed "$W/ours" --np 2 --quiet >/dev/null
  "$PY" - "$W/ref/$ds" "$W/ours/$ds" > "$W/logs/parity_$id.json" <<'PYEOF'
import json, os, pickle, sys
import numpy as np
import blosc2
ref, ours = sys.argv[1], sys.argv[2]
out = {}
fr = json.load(open(os.path.join(ref, 'dataset_fingerprint.json')))
fo = json.load(open(os.path.join(ours, 'dataset_fingerprint.json')))
err = 0.0
for ch, pr in fr['foreground_intensity_properties_per_channel'].items():
    po = fo['foreground_intensity_properties_per_channel'][ch]
    for k, v in pr.items():
        err = max(err, abs(v - po[k]) / max(abs(v), 1e-12))
out['fingerprint_max_rel_err'] = err
out['fingerprint_shapes_spacings_equal'] = fr['shapes_after_crop'] == fo['shapes_after_crop'] and \
    fr['spacings'] == fo['spacings'] and fr['median_relative_size_after_cropping'] == fo['median_relative_size_after_cropping']
pr = json.load(open(os.path.join(ref, 'nnUNetPlans.json')))['configurations']['2d']
po = json.load(open(os.path.join(ours, 'nnUNetPlans.json')))['configurations']['2d']
out['plan_2d_equal'] = pr == po
dr, do = os.path.join(ref, 'nnUNetPlans_2d'), os.path.join(ours, 'nnUNetPlans_2d')
cases = sorted(f[:-4] for f in os.listdir(dr) if f.endswith('.pkl'))
max_err, seg_bad, loc_bad, missing = 0.0, [], [], []
for c in cases:
    if not os.path.isfile(os.path.join(do, c + '.json')):
        missing.append(c); continue
    a = blosc2.open(os.path.join(dr, c + '.b2nd'), mode='r')[:]
    b = np.load(os.path.join(do, c + '.npy'))
    if a.shape != b.shape:
        seg_bad.append(c + ' (shape)'); continue
    max_err = max(max_err, float(np.abs(a - b).max()))
    s1 = blosc2.open(os.path.join(dr, c + '_seg.b2nd'), mode='r')[:]
    if not np.array_equal(s1.astype(np.int16), np.load(os.path.join(do, c + '_seg.npy')).astype(np.int16)):
        seg_bad.append(c)
    p1 = pickle.load(open(os.path.join(dr, c + '.pkl'), 'rb'))['class_locations']
    p2 = json.load(open(os.path.join(do, c + '.json')))['class_locations']
    for k, v in p1.items():
        if not np.array_equal(np.asarray(v).reshape(-1, 4), np.asarray(p2[str(k)], dtype=np.int64).reshape(-1, 4)):
            loc_bad.append(f'{c}:{k}')
out.update({'n_cases': len(cases), 'data_max_abs_err': max_err, 'seg_mismatch': seg_bad,
            'locations_mismatch': loc_bad, 'missing_cases': missing})
print(json.dumps(out))
PYEOF
done

"$PY" - "$W/logs" "$OUT" <<'PYEOF'
import json, os, platform, subprocess, sys
logs, out = sys.argv[1], sys.argv[2]
rows = []
for id_, ds in [(920, 'isbi2012_em (24 x 512x512 gray PNG)'), (921, 'ph2_skin_lesion (80 RGB PNG, 256 px)'),
                (922, 'msd_hippocampus (260 NIfTI volumes)')]:
    r = json.load(open(os.path.join(logs, f'ref_{id_}.json')))
    o = json.load(open(os.path.join(logs, f'ours_{id_}.json')))
    p = json.load(open(os.path.join(logs, f'parity_{id_}.json')))
    rows.append({'dataset': ds, 'ref_wall_s': r['wall_s'], 'ours_wall_s': o['wall_s'],
                 'speedup': round(r['wall_s'] / o['wall_s'], 1),
                 'ref_peak_rss_mb': r['tree_peak_rss_mb'], 'ours_peak_rss_mb': o['tree_peak_rss_mb'],
                 'ref_max_single_rss_mb': r.get('max_rss_mb'), 'ours_max_single_rss_mb': o.get('max_rss_mb'),
                 'memory_ratio': round(o['tree_peak_rss_mb'] / r['tree_peak_rss_mb'], 3), 'rc': [r['rc'], o['rc']],
                 'parity': p})
hdr = f"{'dataset':40} {'ref s':>7} {'ours s':>7} {'speedup':>8} {'ref MB':>8} {'ours MB':>8} {'mem':>6}  parity"
print(hdr); print('-' * len(hdr))
for x in rows:
    p = x['parity']
    ok = p['plan_2d_equal'] and not p['seg_mismatch'] and not p['locations_mismatch'] and not p['missing_cases']
    print(f"{x['dataset']:40} {x['ref_wall_s']:7.1f} {x['ours_wall_s']:7.1f} {x['speedup']:7.1f}x {x['ref_peak_rss_mb']:8.0f} "
          f"{x['ours_peak_rss_mb']:8.0f} {x['memory_ratio']:6.3f}  plan {'=' if p['plan_2d_equal'] else '!='}, "
          f"data err {p['data_max_abs_err']:.1e}, seg {'exact' if not p['seg_mismatch'] else 'DIFF'}, "
          f"fp rel err {p['fingerprint_max_rel_err']:.1e}" + ('' if ok else '  <-- MISMATCH'))
try:
    import nnunetv2, importlib.metadata as md
    ver = md.version('nnunetv2')
except Exception:
    ver = '?'
res = {'benchmark': 'plan+preprocess: nnunet plan-and-preprocess --np 2 vs nnUNetv2_plan_and_preprocess -c 2d --verify_dataset_integrity -np 2',
       'machine': f"{platform.machine()}, {os.cpu_count()} cores", 'reference': f'nnunetv2 {ver} (PyPI, CPU)',
       'peak_rss': 'summed RSS of the process tree, sampled every 0.5 s (timed_run.py)', 'rows': rows,
       'targets': {'speedup_min': 5, 'memory_ratio_max': 0.333}}
os.makedirs(os.path.dirname(out), exist_ok=True)
json.dump(res, open(out, 'w'), indent=1)
print('wrote', out)
PYEOF
