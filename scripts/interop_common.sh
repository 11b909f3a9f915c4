# Shared setup of scripts/interop_*.sh (sourced): paths, the reference venv, helpers.
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
SHARED="${SHARED:-$ROOT/../shared}"
PEER_VENV=${PEER_VENV:-$HOME/.cache/nnunet-peer-venv}
PY=$PEER_VENV/bin/python
BIN=${BIN:-$ROOT/target/debug}
[[ -x "$BIN/nnunet" && -x "$BIN/nnunet-worker" ]] || { echo "build first: cargo build -p nnunet-coordinator -p nnunet-worker (BIN=$BIN)"; exit 2; }
[[ -x "$PY" ]] && "$PY" -c 'import nnunetv2' || { echo "the reference venv $PEER_VENV with nnunetv2 is needed"; exit 2; }
[[ -d "$SHARED/datasets" ]] || { echo "shared datasets not found at $SHARED"; exit 2; }
WORK=${WORK:-$(mktemp -d -t nnunet-interop.XXXXXX)}
export nnUNet_raw=$WORK/raw nnUNet_preprocessed=$WORK/preprocessed nnUNet_results=$WORK/results
export nnUNet_n_proc_DA=1 nnUNet_compile=f nnUNet_def_n_proc=1
mkdir -p "$nnUNet_raw" "$nnUNet_preprocessed" "$nnUNet_results"

# to_raw SRC ID NAME DOWNSCALE MAXCASES: an nnU-Net v2 raw PNG dataset (the shared harness's converter)
to_raw() { "$PY" "$SHARED/peer/convert_to_nnunet.py" "$SHARED/datasets/$1" "$2" "$3" --raw "$nnUNet_raw" --downscale "$4" --max-cases "$5" >/dev/null; }

# shrink_plans PLANS_JSON [ARCH_FROM_PLANS_JSON]: small features (8..32) so CPU training takes seconds;
# with a second plans file, copy its 2d architecture and patch size (like nnUNetv2_move_plans_between_datasets).
shrink_plans() {
  python3 - "$@" <<'PYEOF'
import json, sys
p = json.load(open(sys.argv[1]))
c = p['configurations']['2d']
if len(sys.argv) > 2:
    src = json.load(open(sys.argv[2]))['configurations']['2d']
    c['architecture'] = src['architecture']; c['patch_size'] = src['patch_size']
ak = c['architecture']['arch_kwargs']
ak['features_per_stage'] = [min(8 * 2 ** i, 32) for i in range(ak['n_stages'])]
json.dump(p, open(sys.argv[1], 'w'), indent=4)
print('plan', sys.argv[1].split('/')[-2], 'patch', c['patch_size'], 'batch', c['batch_size'], 'features', ak['features_per_stage'])
PYEOF
}
