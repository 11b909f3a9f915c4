#!/usr/bin/env bash
# Slurm deployment tests against the real single-node Slurm of scripts/slurm-up.sh and the real
# nnunet / nnunet-worker binaries (NNUNET_BIN_DIR, else the newer of target/release and target/debug):
#
#   cv       deploy/slurm/nnunet.sbatch with 2 CPU workers on 10 real ISBI 2012 EM slices downscaled
#            to 64 px in the test (10 synthetic cases of `nnunet synth` where ../shared is absent),
#            2 epochs x 2 iterations: the job COMPLETES and the 5-fold CV
#            summary.json exists (with per-fold training logs collected).
#   preempt  the same script, longer budget; once a fold has uploaded a checkpoint the test sends the
#            preemption signal (`scancel --signal=USR1 --batch`, what `--signal=B:USR1@120` delivers at
#            the time limit); the trap stops the worker step and requeues the job; the requeued job
#            does not submit again and its worker logs "resuming fold K from checkpoint at epoch N"
#            with N > 0; the job completes with Restarts=1 and the CV summary exists.
#   array    the job-array variant: deploy/slurm/submit-array.sh with NNUNET_FOLDS=0-1 submits the
#            prepare job, a two-task array (fold 0 and fold 1, one per task) and the finalize job; all
#            complete, each task trained and validated its own fold in nnU-Net's layout under
#            $nnUNet_results, and the CV summary over folds 0 and 1 exists.
#   array-preempt  the job array with one task (fold 0) and a longer budget: once the fold has written
#            checkpoint_latest the test sends `scancel --signal=USR1 --batch JOB_0`; the task stops the
#            trainer, requeues itself, and its second start logs "resuming fold 0 from ... at epoch N"
#            with N > 0; the task completes with Restarts=1 and the finalize job writes the CV summary.
#
# usage: tests/deploy/test_slurm.sh [cv] [preempt] [array] [array-preempt]      (default: all)
# Ends with the line "N passed, N failed". Exit code 0 iff nothing failed.
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
SHARED=${NNUNET_SHARED:-$REPO/../shared}
ISBI=$SHARED/datasets/isbi2012_em
TIMEOUT=${NNUNET_SLURM_TEST_TIMEOUT:-900}
tests=("$@")
[[ ${#tests[@]} -eq 0 ]] && tests=(cv preempt array array-preempt)

passed=0 failed=0
say() { echo "test_slurm: $*"; }
fail() { say "FAIL [$CURRENT]: $*"; return 1; }

# ---- preconditions --------------------------------------------------------------------------------
find_bins() {
  # $NNUNET_BIN_DIR, else the newer of target/release and target/debug (a stale build is not used)
  local d best='' best_t=0 t
  if [[ -n ${NNUNET_BIN_DIR:-} ]]; then
    [[ -x $NNUNET_BIN_DIR/nnunet && -x $NNUNET_BIN_DIR/nnunet-worker ]] || return 1
    BIN_DIR=$(cd "$NNUNET_BIN_DIR" && pwd)
    return 0
  fi
  for d in "$REPO/target/release" "$REPO/target/debug"; do
    [[ -x $d/nnunet && -x $d/nnunet-worker ]] || continue
    t=$(stat -c %Y "$d/nnunet-worker")
    if ((t > best_t)); then best=$d best_t=$t; fi
  done
  [[ -n $best ]] && BIN_DIR=$best
}
if ! find_bins; then
  say "no nnunet + nnunet-worker binaries in \$NNUNET_BIN_DIR, target/release or target/debug;"
  say "build them first: cargo build --release -p nnunet-coordinator -p nnunet-worker"
  echo "0 passed, ${#tests[@]} failed"
  exit 1
fi
for sub in serve submit status; do
  if ! "$BIN_DIR/nnunet" "$sub" --help >/dev/null 2>&1; then
    say "$BIN_DIR/nnunet $sub --help fails: the binary does not implement the distributed CLI yet"
    echo "0 passed, ${#tests[@]} failed"
    exit 1
  fi
done
if ! sinfo -h >/dev/null 2>&1; then
  say "Slurm is not up: run scripts/slurm-up.sh first"
  echo "0 passed, ${#tests[@]} failed"
  exit 1
fi
say "binaries from $BIN_DIR"
# The data: the real ISBI slices where ../shared has them, else the built-in synthetic dataset.
REAL_DATA=0
if [[ -d $ISBI/images ]]; then
  REAL_DATA=1
else
  say "real data $ISBI not found (set NNUNET_SHARED to the shared/ folder): the built-in synthetic dataset instead"
fi

# shellcheck source=tests/deploy/venv.sh
source "$REPO/tests/deploy/venv.sh"

WORK=$(mktemp -d /tmp/nnunet-slurm-test.XXXXXX)
say "work dir $WORK (kept on failure)"

# ---- helpers --------------------------------------------------------------------------------------
# make_dataset DIR: 10 real ISBI slices at 64 px (or, without ../shared, 10 cases of the built-in
# synthetic dataset at 64 px) -> raw nnU-Net dataset; echoes the dataset folder
make_dataset() {
  local dir=$1
  if [[ $REAL_DATA == 1 ]]; then
    "$DEPLOY_PY" "$REPO/tests/deploy/make_isbi_tiny.py" "$ISBI" "$dir/png" 10 64 >&2 || return 1
  else
    "$BIN_DIR/nnunet" synth --cases 10 --size 64 --out "$dir/png" >&2 || return 1
  fi
  "$BIN_DIR/nnunet" convert --images "$dir/png/images" --masks "$dir/png/masks" --out "$dir/raw" \
    --id 951 --name DeployTiny --quiet >&2 || return 1
  local ds
  ds=$(find "$dir/raw" -maxdepth 2 -name dataset.json -printf '%h\n' | head -n1)
  [[ -n $ds ]] || { say "nnunet convert wrote no dataset.json under $dir/raw" >&2; return 1; }
  echo "$ds"
}

# write_config FILE DATASET STATE LOGS EPOCHS ITERS [SUBMIT_ARGS]
write_config() {
  cat >"$1" <<EOF
NNUNET_DATASET=$2
NNUNET_RUN_NAME=deploy-test
NNUNET_EPOCHS=$5
NNUNET_ITERS=$6
NNUNET_VAL_ITERS=1
NNUNET_SUBMIT_ARGS=${7:-}
NNUNET_PORT=auto
NNUNET_METRICS_PORT=auto
NNUNET_STATE_DIR=$3
NNUNET_TOKEN_FILE=token
NNUNET_LOG_DIR=$4
NNUNET_DEVICE=cpu
NNUNET_COORDINATOR_HOST=127.0.0.1
NNUNET_LISTEN_HOST=127.0.0.1
EOF
}

# submit CONFIG: sbatch the real script with CPU workers; echoes the job id
submit() {
  (cd "$WORK" && NNUNET_CONFIG=$1 NNUNET_BIN_DIR=$BIN_DIR NNUNET_FINALIZE_TIMEOUT=300 \
    sbatch --parsable --gpus-per-task=0 --ntasks=2 --cpus-per-task=1 --mem-per-cpu=2G \
    --time=30 --output="$WORK/job-%j.out" "$REPO/deploy/slurm/nnunet.sbatch")
}

job_field() { scontrol show job "$1" -o 2>/dev/null | grep -o -E "(^| )$2=[^ ]*" | head -n1 | cut -d= -f2; }

# wait_job JOB: until the job leaves the queue for good; echoes its final state
wait_job() {
  local job=$1 state deadline=$((SECONDS + TIMEOUT))
  while ((SECONDS < deadline)); do
    state=$(job_field "$job" JobState)
    case $state in
      COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL | DEADLINE)
        echo "$state"; return 0 ;;
      PENDING)
        # a requeued job is held ~2 min (BeginTime); start it now
        [[ $(job_field "$job" Reason) == BeginTime ]] && scontrol update JobId="$job" StartTime=now 2>/dev/null ;;
    esac
    sleep 2
  done
  echo "TIMEOUT_WAITING"
}

show_job_logs() {
  local job=$1
  say "---- job output ($WORK/job-$job.out)"
  tail -n 40 "$WORK/job-$job.out" 2>/dev/null
  local f
  for f in "$WORK"/logs*/nnunet-"$job"/*.log; do
    [[ -f $f ]] || continue
    say "---- $f"
    tail -n 15 "$f"
  done
}

summary_file() { compgen -G "$1/runs/*/results/*/nnUNetTrainer__nnUNetPlans__2d/crossval_results_folds_0_1_2_3_4/summary.json" | head -n1; }

check_summary() {
  local state=$1 s
  s=$(summary_file "$state")
  [[ -n $s ]] || { fail "no CV summary under $state/runs/*/results/*/nnUNetTrainer__nnUNetPlans__2d/crossval_results_folds_0_1_2_3_4/"; return 1; }
  "$DEPLOY_PY" - "$s" <<'PY' || { fail "CV summary $s is not an nnU-Net summary"; return 1; }
import json, sys
s = json.load(open(sys.argv[1]))
assert "foreground_mean" in s and "metric_per_case" in s, sorted(s)
assert len(s["metric_per_case"]) == 10, len(s["metric_per_case"])
print(f"test_slurm: CV summary {sys.argv[1]}: foreground mean Dice {s['foreground_mean']['Dice']:.3f}")
PY
}

# ---- tests ----------------------------------------------------------------------------------------
test_cv() {
  local dir=$WORK/cv ds job state
  mkdir -p "$dir"
  ds=$(make_dataset "$dir") || { fail "could not build the test dataset"; return 1; }
  write_config "$dir/config.env" "$ds" "$dir/state" "$dir/logs" 2 2
  job=$(submit "$dir/config.env") || { fail "sbatch refused the script"; return 1; }
  say "[cv] submitted job $job"
  state=$(wait_job "$job")
  say "[cv] job $job ended: $state, exit code $(job_field "$job" ExitCode)"
  [[ $state == COMPLETED ]] || { show_job_logs "$job"; fail "job $job ended $state, want COMPLETED"; return 1; }
  check_summary "$dir/state" || { show_job_logs "$job"; return 1; }
  local logs=$dir/logs/nnunet-$job
  [[ -s $logs/coordinator.log ]] || { fail "no coordinator log in $logs"; return 1; }
  [[ -f $logs/worker-r0-0.log && -f $logs/worker-r0-1.log ]] || { fail "no per-worker logs in $logs"; return 1; }
  local n
  n=$(compgen -G "$logs/fold_*.training_log.txt" | wc -l)
  [[ $n == 5 ]] || { fail "want 5 per-fold training logs in $logs, found $n"; return 1; }
  [[ $(stat -c %a "$dir/state/token") == 600 ]] || { fail "token file is not mode 600"; return 1; }
}

test_preempt() {
  local dir=$WORK/preempt ds job state extra=
  mkdir -p "$dir"
  ds=$(make_dataset "$dir") || { fail "could not build the test dataset"; return 1; }
  # checkpoint every epoch where the CLI allows it, so a checkpoint exists early
  if "$BIN_DIR/nnunet" submit --help 2>/dev/null | grep -q -- '--save-every'; then extra="--save-every 1"; fi
  write_config "$dir/config.env" "$ds" "$dir/state" "$dir/logs" 8 3 "$extra"
  job=$(submit "$dir/config.env") || { fail "sbatch refused the script"; return 1; }
  say "[preempt] submitted job $job (8 epochs x 3 iterations, submit args '$extra')"

  # wait for the first checkpoint uploaded to the coordinator
  local deadline=$((SECONDS + TIMEOUT)) ckpt=
  while ((SECONDS < deadline)); do
    ckpt=$(find "$dir/state/runs" -path '*/fold_*/checkpoint_latest.json' 2>/dev/null | head -n1)
    [[ -n $ckpt ]] && break
    [[ $(job_field "$job" JobState) == RUNNING || $(job_field "$job" JobState) == PENDING ]] || break
    sleep 1
  done
  [[ -n $ckpt ]] || { show_job_logs "$job"; fail "no checkpoint_latest.json appeared while job $job ran"; return 1; }
  say "[preempt] checkpoint $ckpt exists: sending USR1 to the batch script"
  scancel --signal=USR1 --batch "$job" || { fail "scancel --signal=USR1 --batch $job failed"; return 1; }

  state=$(wait_job "$job")
  local restarts
  restarts=$(job_field "$job" Restarts)
  say "[preempt] job $job ended: $state, restarts $restarts, exit code $(job_field "$job" ExitCode)"
  [[ $state == COMPLETED ]] || { show_job_logs "$job"; fail "job $job ended $state, want COMPLETED"; return 1; }
  [[ $restarts == 1 ]] || { show_job_logs "$job"; fail "job $job was not requeued once (Restarts=$restarts)"; return 1; }
  local logs=$dir/logs/nnunet-$job out=$WORK/job-$job.out
  grep -q 'got SIGUSR1' "$out" || { fail "the batch script did not log the preemption signal"; return 1; }
  grep -q 'not submitting again' "$out" || { show_job_logs "$job"; fail "the requeued job did not find its run again"; return 1; }
  local runs
  runs=$(find "$dir/state/runs" -mindepth 1 -maxdepth 1 -type d | wc -l)
  [[ $runs == 1 ]] || { fail "want exactly one run dir after the requeue, found $runs"; return 1; }
  local resume
  resume=$(grep -h -o -E 'resuming fold [0-9]+ from checkpoint at epoch [0-9]+' "$logs"/worker-r1-*.log 2>/dev/null |
    awk '$NF > 0' | head -n1)
  [[ -n $resume ]] || { show_job_logs "$job"; fail "no worker of the requeued job logged 'resuming fold K from checkpoint at epoch N' with N > 0"; return 1; }
  say "[preempt] requeued worker: '$resume'"
  check_summary "$dir/state" || { show_job_logs "$job"; return 1; }
}

# submit_array CONFIG: deploy/slurm/submit-array.sh with CPU tasks; sets PREP, TRAIN, FINAL (job ids)
submit_array() {
  local out
  out=$(cd "$WORK" && NNUNET_CONFIG=$1 NNUNET_BIN_DIR=$BIN_DIR \
    bash "$REPO/deploy/slurm/submit-array.sh" --gpus-per-task=0 --cpus-per-task=1 --mem-per-cpu=2G --time=30) ||
    { fail "submit-array.sh failed: $out"; return 1; }
  PREP=$(awk '$1 == "prepare" { print $2 }' <<<"$out")
  TRAIN=$(awk '$1 == "train" { print $2 }' <<<"$out")
  FINAL=$(awk '$1 == "finalize" { print $2 }' <<<"$out")
  [[ -n $PREP && -n $TRAIN && -n $FINAL ]] || { fail "submit-array.sh did not print three job ids: $out"; return 1; }
}

test_array() {
  local dir=$WORK/array ds prep train final state
  mkdir -p "$dir"
  ds=$(make_dataset "$dir") || { fail "could not build the test dataset"; return 1; }
  write_config "$dir/config.env" "$ds" "$dir/state" "$dir/logs" 2 2
  echo "NNUNET_FOLDS=0-1" >>"$dir/config.env"
  submit_array "$dir/config.env" || return 1
  prep=$PREP train=$TRAIN final=$FINAL
  say "[array] submitted prepare $prep, train array $train (folds 0-1), finalize $final"
  [[ $(scontrol show job "$train" -o | grep -c 'ArrayTaskId=') -ge 1 ]] || { fail "job $train is not an array"; return 1; }
  state=$(wait_job "$final")
  say "[array] finalize job $final ended: $state"
  local k task_state
  for k in 0 1; do
    task_state=$(scontrol show job "${train}_$k" -o 2>/dev/null | grep -o 'JobState=[A-Z_]*' | head -n1 | cut -d= -f2)
    say "[array] task ${train}_$k: ${task_state:-unknown}"
    [[ $task_state == COMPLETED ]] || { tail -n 30 "$WORK/nnunet-array-${train}_$k.out" 2>/dev/null; fail "array task ${train}_$k ended ${task_state:-unknown}"; return 1; }
    grep -q "training fold $k of " "$WORK/nnunet-array-${train}_$k.out" ||
      { fail "array task $k's output does not say it trained fold $k"; return 1; }
  done
  [[ $state == COMPLETED ]] || { tail -n 30 "$WORK"/nnunet-array-"$final"-finalize.out "$WORK"/nnunet-array-"$prep"-prepare.out 2>/dev/null; fail "finalize job $final ended $state"; return 1; }
  local model
  model=$(compgen -G "$dir/state/nnUNet_results/Dataset*/nnUNetTrainer__nnUNetPlans__2d" | head -n1)
  [[ -n $model ]] || { fail "no model folder under $dir/state/nnUNet_results"; return 1; }
  for k in 0 1; do
    [[ -f $model/fold_$k/checkpoint_final.safetensors || -n $(compgen -G "$model/fold_$k/checkpoint_final*") ]] ||
      { fail "fold $k has no final checkpoint in $model/fold_$k"; return 1; }
    [[ -f $model/fold_$k/validation/summary.json ]] || { fail "fold $k has no validation/summary.json"; return 1; }
  done
  [[ ! -d $model/fold_2 ]] || { fail "fold 2 was trained although NNUNET_FOLDS=0-1"; return 1; }
  "$DEPLOY_PY" - "$model/crossval_results_folds_0_1/summary.json" <<'PY' || { fail "no valid CV summary over folds 0 and 1"; return 1; }
import json, sys
s = json.load(open(sys.argv[1]))
# 10 cases in 5 folds: folds 0 and 1 validate 4 of them
assert len(s["metric_per_case"]) == 4, len(s["metric_per_case"])
print(f"test_slurm: [array] CV summary {sys.argv[1]}: foreground mean Dice {s['foreground_mean']['Dice']:.3f}")
PY
}

test_array_preempt() {
  local dir=$WORK/array-preempt ds state task out model
  mkdir -p "$dir"
  ds=$(make_dataset "$dir") || { fail "could not build the test dataset"; return 1; }
  write_config "$dir/config.env" "$ds" "$dir/state" "$dir/logs" 8 2
  printf 'NNUNET_FOLDS=0\nNNUNET_TRAIN_ARGS=--save-every 1\n' >>"$dir/config.env"
  submit_array "$dir/config.env" || return 1
  task=${TRAIN}_0 out=$WORK/nnunet-array-${TRAIN}_0.out
  say "[array-preempt] submitted prepare $PREP, train $task (8 epochs x 2 iterations, checkpoint every epoch), finalize $FINAL"
  local deadline=$((SECONDS + TIMEOUT)) ckpt=
  while ((SECONDS < deadline)); do
    ckpt=$(compgen -G "$dir/state/nnUNet_results/*/nnUNetTrainer__nnUNetPlans__2d/fold_0/checkpoint_latest.json" | head -n1)
    [[ -n $ckpt ]] && break
    case $(job_field "$PREP" JobState) in FAILED | CANCELLED | TIMEOUT) break ;; esac
    case $(job_field "$task" JobState) in COMPLETED | FAILED | CANCELLED | TIMEOUT) break ;; esac
    sleep 0.5
  done
  [[ -n $ckpt ]] || { tail -n 30 "$out"; fail "no checkpoint_latest appeared while $task ran"; return 1; }
  say "[array-preempt] $ckpt exists: sending USR1 to the batch script of $task"
  scancel --signal=USR1 --batch "$task" || { fail "scancel --signal=USR1 --batch $task failed"; return 1; }
  state=$(wait_job "$task")
  local restarts
  restarts=$(job_field "$task" Restarts)
  say "[array-preempt] task $task ended: $state, restarts $restarts"
  [[ $state == COMPLETED ]] || { tail -n 30 "$out"; fail "array task $task ended $state"; return 1; }
  [[ $restarts == 1 ]] || { tail -n 30 "$out"; fail "array task $task was not requeued once (Restarts=$restarts)"; return 1; }
  { grep -q 'got SIGUSR1' "$out" && grep -q "requeueing $task" "$out"; } ||
    { tail -n 30 "$out"; fail "the array script did not log the signal and the requeue"; return 1; }
  local resume
  resume=$(grep -o -E 'resuming fold 0 from [^ ]+ at epoch [0-9]+' "$out" | awk '$NF > 0' | head -n1)
  [[ -n $resume ]] || { tail -n 30 "$out"; fail "the requeued task did not log 'resuming fold 0 from ... at epoch N' with N > 0"; return 1; }
  say "[array-preempt] requeued task: '$resume'"
  state=$(wait_job "$FINAL")
  [[ $state == COMPLETED ]] || { fail "finalize job $FINAL ended $state"; return 1; }
  model=$(compgen -G "$dir/state/nnUNet_results/Dataset*/nnUNetTrainer__nnUNetPlans__2d" | head -n1)
  [[ -f $model/crossval_results_folds_0/summary.json && -f $model/fold_0/validation/summary.json ]] ||
    { fail "no validation or CV summary of fold 0 in $model"; return 1; }
}

# ---- run ------------------------------------------------------------------------------------------
for t in "${tests[@]}"; do
  CURRENT=$t
  case $t in
    cv | preempt | array | array-preempt) ;;
    *) say "unknown test '$t' (cv, preempt, array, array-preempt)"; failed=$((failed + 1)); continue ;;
  esac
  start=$SECONDS
  if "test_${t//-/_}"; then
    say "PASS [$t] ($((SECONDS - start)) s)"
    passed=$((passed + 1))
  else
    say "FAIL [$t] ($((SECONDS - start)) s); work dir kept: $WORK"
    failed=$((failed + 1))
  fi
done
[[ $failed == 0 && -z ${NNUNET_KEEP_WORK:-} ]] && rm -rf "$WORK"
echo "$passed passed, $failed failed"
[[ $failed == 0 ]]
