#!/usr/bin/env bash
# Submits nnunet-rs as a Slurm job array (deploy/slurm/nnunet-array.sbatch): three jobs chained with
# --dependency=afterok, so each starts only when the one before succeeded:
#   1. prepare   plan + preprocess (CPU only, no GPU requested);
#   2. train     the array, one task per fold of NNUNET_FOLDS (default 0-4; any Slurm array spec, e.g.
#                0-4%2 for at most two folds at a time), one GPU each, on any node;
#   3. finalize  the cross-validation summary over those folds (CPU only).
# Every argument is passed to all three sbatch calls (e.g. --partition=gpu --account=proj); settings
# come from deploy/config.env (or NNUNET_CONFIG), the environment winning over the file.
# Prints the three job ids ("prepare JOB", "train JOB", "finalize JOB").
#
# usage: bash deploy/slurm/submit-array.sh [SBATCH_OPTION ...]
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
SCRIPT=$HERE/nnunet-array.sbatch

folds=${NNUNET_FOLDS:-}
if [[ -z $folds ]]; then
  config=${NNUNET_CONFIG:-$PWD/deploy/config.env}
  [[ -f $config ]] && folds=$(sed -n 's/^NNUNET_FOLDS=\([^[:space:]]*\).*/\1/p' "$config" | tail -n1)
fi
folds=${folds:-0-4}
[[ $folds =~ ^[0-9,:%-]+$ ]] || { echo "submit-array: NNUNET_FOLDS='$folds' is not a Slurm array spec (e.g. 0-4, 0,2, 0-4%2)" >&2; exit 2; }
export NNUNET_FOLDS=$folds

# prepare and finalize need no GPU: the options after the user's win over the script's #SBATCH lines
cpu_only=(--gpus-per-task=0 --signal=B:USR1@120)
prep=$(sbatch --parsable --job-name=nnunet-prepare --output=nnunet-array-%j-prepare.out "$@" "${cpu_only[@]}" "$SCRIPT" prepare)
echo "prepare $prep"
train=$(sbatch --parsable --array="$folds" --dependency="afterok:$prep" --kill-on-invalid-dep=yes "$@" "$SCRIPT" train)
echo "train $train"
final=$(sbatch --parsable --job-name=nnunet-finalize --output=nnunet-array-%j-finalize.out --dependency="afterok:$train" \
  --kill-on-invalid-dep=yes "$@" "${cpu_only[@]}" "$SCRIPT" finalize)
echo "finalize $final"
