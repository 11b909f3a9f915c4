#!/usr/bin/env bash
# Benchmark of the distributed runner (issue 6), on this machine, in one run:
#  1. artifact transfer throughput on loopback (upload/download MB/s) and metrics-report latency
#     (coordinator/examples/bench_transfer.rs);
#  2. time from `nnunet run` to the first training task, and the coordinator's overhead on training:
#     fold 0 of the built-in synthetic dataset trained through the coordinator (metrics and checkpoints
#     streamed every epoch) vs the same fold, data, seed, threads and budget with standalone
#     `nnunet-worker train`, compared on step and epoch time.
# Prints a table and writes bench-results/runner.json.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
mkdir -p bench-results
cargo build --release -p nnunet-coordinator -p nnunet-worker --bins --examples -q
BIN=target/release
"$BIN/examples/bench_transfer" bench-results/runner_transfer.json

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
EPOCHS=${EPOCHS:-4}; ITERS=${ITERS:-10}
# (a) fold 0 through the coordinator: one worker process, metrics + checkpoints streamed every epoch.
t0=$(date +%s.%N)
NNUNET_LOG=info "$BIN/nnunet" run --state-dir "$WORK/state" --epochs "$EPOCHS" --iters "$ITERS" --val-iters 2 --folds 0 --workers 1 --save-every 1 > "$WORK/run.log" 2>&1
t1=$(date +%s.%N)
# (b) the same fold standalone: same preprocessed data, plan, seed, threads, budget, no coordinator.
PRE=$(ls -d "$WORK"/state/runs/*/preprocessed/Dataset999_Synthetic)
"$BIN/nnunet-worker" train --dataset "$PRE" --fold 0 --epochs "$EPOCHS" --iters "$ITERS" --val-iters 2 --save-every 1 --seed 0 \
  --threads "$(nproc)" --skip-validation --out "$WORK/standalone/fold_0" > "$WORK/standalone.log" 2>&1
python3 - "$WORK" "$t0" "$t1" <<'PY'
import json, glob, os, re, sys, datetime
work, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
def ts(line):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
    return datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp() if m else None
first_train, stream_s = None, 0.0
for f in glob.glob(os.path.join(work, "state/runs/*/logs/worker-*.log")):
    for line in open(f):
        if "leased" in line and "Train" in line:
            t = ts(line)
            if t and (first_train is None or t < first_train): first_train = t
        m = re.search(r"checkpoint streamed to the coordinator: ([\d.]+) MB in ([\d.]+)s", line)
        if m: stream_s += float(m.group(2))
def log(path):
    return [json.loads(l) for l in open(path) if l.strip()]
run = log(glob.glob(os.path.join(work, "state/runs/*/results/*/*/fold_0/training_log.jsonl"))[0])
alone = log(os.path.join(work, "standalone/fold_0/training_log.jsonl"))
# epoch 0 includes warm-up; compare the later epochs
mean = lambda xs: sum(xs) / len(xs)
run_ep, alone_ep = mean([m["epoch_seconds"] for m in run[1:]]), mean([m["epoch_seconds"] for m in alone[1:]])
run_st, alone_st = mean([m["step_seconds"] for m in run[1:]]), mean([m["step_seconds"] for m in alone[1:]])
transfer = json.load(open("bench-results/runner_transfer.json"))
res = dict(transfer)
res.update({
    "budget": {"epochs": len(run), "iters": None},
    "run_wall_s": t1 - t0,
    "time_to_first_training_task_s": (first_train - t0) if first_train else None,
    "epoch_seconds_coordinated": run_ep, "epoch_seconds_standalone": alone_ep,
    "step_seconds_coordinated": run_st, "step_seconds_standalone": alone_st,
    "coordinator_overhead_epoch_pct": 100 * (run_ep - alone_ep) / alone_ep,
    "coordinator_overhead_step_pct": 100 * (run_st - alone_st) / alone_st,
    "metrics_report_share_of_epoch_pct": 100 * transfer["metrics_report_ms"] / 1000 / run_ep,
    "checkpoint_stream_seconds_total_background": stream_s,
})
json.dump(res, open("bench-results/runner.json", "w"), indent=1)
print("\n| runner metric (fold 0 of the synthetic 128² dataset, 1 CPU worker, this machine) | value |\n|---|---|")
print(f"| time from `nnunet run` to the first training task (dataset generation, convert, plan, preprocess included) | {res['time_to_first_training_task_s']:.1f} s |")
print(f"| mean step time: through the coordinator / standalone `nnunet-worker train` | {run_st:.3f} s / {alone_st:.3f} s ({res['coordinator_overhead_step_pct']:+.1f} %) |")
print(f"| mean epoch time (epochs 2+): through the coordinator / standalone | {run_ep:.2f} s / {alone_ep:.2f} s ({res['coordinator_overhead_epoch_pct']:+.1f} %) |")
print(f"| blocking metrics report per epoch, share of the epoch | {res['metrics_report_share_of_epoch_pct']:.3f} % |")
print(f"| checkpoint streaming (background thread), total | {stream_s:.1f} s |")
print(f"| upload / download throughput on loopback | {res['upload_mb_per_s']:.0f} / {res['download_mb_per_s']:.0f} MB/s |")
print("wrote bench-results/runner.json")
PY
