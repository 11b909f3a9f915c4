#!/usr/bin/env bash
# Conversion speed on PH2 (all 100 shared cases, RGB ~767x576 PNG + 0/255 PNG masks), in cases/s:
#   - nnunet-rs `convert` (PNG -> pseudo-3D .nii.gz, 3 channel files per case + verify), 1 and 2 threads;
# Times are wall and CPU seconds of each whole process (interpreter start-up included).
#   - reference A: nnU-Net v1's 2D recipe `convert_2d_image_to_nifti` (skimage.io.imread + SimpleITK
#     .nii.gz writer, one process), re-implemented below line by line, so the output form is the same as ours;
#   - reference B: the peer harness `convert_to_nnunet.py` (v2 PNG form, as nnunetv2's
#     Dataset120_RoadSegmentation does: PIL read, mask remap, PNG write; no NIfTI).
# Writes bench-results/intake.json and prints a table.
#
#   scripts/bench_intake.sh            # uses ../shared/datasets/ph2_skin_lesion, $NNUNET_SHARED overrides
# Env: PEER_PY (python with nnunetv2/SimpleITK/skimage, default ~/.cache/nnunet-peer-venv/bin/python),
#      REPEATS (default 2; the best run is reported).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$(pwd)
SHARED=${NNUNET_SHARED:-$REPO/../shared}
SRC=$SHARED/datasets/ph2_skin_lesion
PEER_PY=${PEER_PY:-$HOME/.cache/nnunet-peer-venv/bin/python}
REPEATS=${REPEATS:-2}
[ -d "$SRC/images" ] || { echo "PH2 not found at $SRC (set NNUNET_SHARED)"; exit 1; }
export LIBTORCH_USE_PYTORCH=1
cargo build --release -q -p nnunet-common --example intake
BIN=$REPO/target/release/examples/intake
WORK=$(mktemp -d /tmp/bench-intake.XXXXXX)
trap 'rm -rf "$WORK"' EXIT
N=$(ls "$SRC/images" | wc -l)

# Each variant runs REPEATS times under /usr/bin/time; the run with the lowest wall time is kept as
# "wall cpu" (cpu = user + sys of the whole process tree, which is what matters on a shared machine).
timed() { # out_file cmd... ; appends "wall cpu" to out_file
  local out=$1; shift
  /usr/bin/time -f "%e %U %S" -o "$WORK/t" "$@" >/dev/null 2>"$WORK/err" || { cat "$WORK/err" >&2; return 1; }
  awk '{printf "%s %.2f\n", $1, $2 + $3}' "$WORK/t" >> "$out"
}
best() { sort -g "$1" | head -1; }

for th in 1 2; do
  for _ in $(seq "$REPEATS"); do rm -rf "$WORK/ours"; timed "$WORK/ours$th" "$BIN" convert "$SRC/images" "$SRC/masks" "$WORK/ours" 902 PH2 "$th"; done
done
T1=$(best "$WORK/ours1"); T2=$(best "$WORK/ours2")
SIZE_OURS=$(du -sb "$WORK/ours" | cut -f1)

REF_A="null null"; REF_B="null null"; SIZE_A=null
if "$PEER_PY" -c 'import SimpleITK, skimage' 2>/dev/null; then
  cat > "$WORK/v1_2d.py" <<'EOF2'
# nnU-Net v1 nnunet/utilities/file_conversions.py::convert_2d_image_to_nifti, applied to every case
# (images as 3 channel files, masks with the x == 255 -> 1 transform of Task120).
import os, sys
import numpy as np, SimpleITK as sitk
from skimage import io
def convert_2d_image_to_nifti(input_filename, output_filename_truncated, spacing=(999, 1, 1), transform=None, is_seg=False):
    img = io.imread(input_filename)
    if transform is not None:
        img = transform(img)
    if len(img.shape) == 2:
        img = img[None, None]
    else:
        img = img.transpose((2, 0, 1))
        img = img[:, None]
    if is_seg:
        assert img.shape[0] == 1, 'segmentations can only have one color channel, not sure what happened here'
    for j, i in enumerate(img):
        if is_seg:
            i = i.astype(np.uint32)
        itk_img = sitk.GetImageFromArray(i)
        itk_img.SetSpacing(list(spacing)[::-1])
        if not is_seg:
            sitk.WriteImage(itk_img, output_filename_truncated + "_%04.0d.nii.gz" % j)
        else:
            sitk.WriteImage(itk_img, output_filename_truncated + ".nii.gz")
src, out = sys.argv[1], sys.argv[2]
os.makedirs(out + "/imagesTr", exist_ok=True); os.makedirs(out + "/labelsTr", exist_ok=True)
for f in sorted(os.listdir(src + "/images")):
    c = os.path.splitext(f)[0]
    convert_2d_image_to_nifti(src + "/images/" + f, out + "/imagesTr/" + c)
    convert_2d_image_to_nifti(src + "/masks/" + f, out + "/labelsTr/" + c, is_seg=True, transform=lambda x: (x == 255).astype(int))
EOF2
  for _ in $(seq "$REPEATS"); do rm -rf "$WORK/refa"; timed "$WORK/refa.t" "$PEER_PY" "$WORK/v1_2d.py" "$SRC" "$WORK/refa"; done
  REF_A=$(best "$WORK/refa.t")
  SIZE_A=$(du -sb "$WORK/refa" | cut -f1)
fi
if "$PEER_PY" -c 'import PIL, numpy' 2>/dev/null && [ -f "$SHARED/peer/convert_to_nnunet.py" ]; then
  for _ in $(seq "$REPEATS"); do
    rm -rf "$WORK/refb"; mkdir -p "$WORK/refb"
    timed "$WORK/refb.t" "$PEER_PY" "$SHARED/peer/convert_to_nnunet.py" "$SRC" 902 PH2 --raw "$WORK/refb" --test-frac 0
  done
  REF_B=$(best "$WORK/refb.t")
fi
LOAD=$(cut -d' ' -f1-3 /proc/loadavg)

python3 - "$N" "$T1" "$T2" "$REF_A" "$REF_B" "$SIZE_OURS" "$SIZE_A" "$LOAD" <<'EOF'
import json, os, platform, subprocess, sys
n = int(sys.argv[1])
def pair(s):
    w, c = s.split()
    return (None, None) if w == "null" else (float(w), float(c))
(t1, c1), (t2, c2), (ra, ca), (rb, cb) = pair(sys.argv[2]), pair(sys.argv[3]), pair(sys.argv[4]), pair(sys.argv[5])
so = int(sys.argv[6]); sa = None if sys.argv[7] == "null" else int(sys.argv[7])
cpu = {"nnunet-rs 1 thread": c1, "nnunet-rs 2 threads": c2, "v1 reference": ca, "peer PNG": cb}
rows = [
    ("nnunet-rs convert, 1 thread (.nii.gz, includes verify)", t1),
    ("nnunet-rs convert, 2 threads (.nii.gz, includes verify)", t2),
    ("reference: nnU-Net v1 convert_2d_image_to_nifti (skimage+SimpleITK, 1 process)", ra),
    ("reference: peer convert_to_nnunet.py (v2 PNG form, no NIfTI)", rb),
]
cpus = [c1, c2, ca, cb]
res = {
    "dataset": "ph2_skin_lesion (shared subset, 100 RGB cases ~767x576, masks 0/255)",
    "cases": n,
    "machine": f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}",
    "repeats_best_of": int(os.environ.get("REPEATS", "2")),
    "load_average_at_end": sys.argv[8],
    "note": "wall and CPU (user+sys) seconds of the whole process, interpreter start-up included; best wall time of the repeats; the machine is shared, so wall times vary with other users' load",
    "results": [{"what": w, "wall_seconds": t, "cpu_seconds": c, "cases_per_s": (n / t if t else None),
                 "cases_per_cpu_s": (n / c if c else None)} for (w, t), c in zip(rows, cpus)],
    "output_bytes": {"nnunet-rs": so, "reference_v1_sitk": sa},
    "speedup_vs_v1_reference_1thread": (ra / t1 if ra else None),
    "speedup_vs_v1_reference_2threads": (ra / t2 if ra else None),
}
os.makedirs("bench-results", exist_ok=True)
json.dump(res, open("bench-results/intake.json", "w"), indent=2)
print(f"{'conversion of PH2 (' + str(n) + ' cases)':<82} {'wall s':>7} {'cases/s':>8} {'cpu s':>7} {'cases/cpu-s':>11}")
nan = float('nan')
for (w, t), c in zip(rows, cpus):
    print(f"{w:<82} {t or nan:>7.2f} {(n / t) if t else nan:>8.1f} {c or nan:>7.2f} {(n / c) if c else nan:>11.1f}")
print(f"load average at the end: {sys.argv[8]}")
print(f"output size: nnunet-rs {so/1e6:.1f} MB" + (f", v1 reference {sa/1e6:.1f} MB" if sa else ""))
print("wrote bench-results/intake.json")
EOF
