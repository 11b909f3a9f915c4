#!/usr/bin/env bash
# Benchmark of the distributed runner (issue 6), on this machine, in one run:
#  1. artifact transfer throughput on loopback (upload/download MB/s) and metrics-report latency
#     (coordinator/examples/bench_transfer.rs);
#  2. time from `nnunet run` to the first training step, and the coordinator's overhead on training
#     (metrics reports + checkpoint streaming, measured in the worker logs) relative to step time,
#     on the built-in synthetic dataset with 2 CPU workers.
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
EPOCHS=${EPOCHS:-3}; ITERS=${ITERS:-10}
t0=$(date +%s.%N)
NNUNET_LOG=info "$BIN/nnunet" run --state-dir "$WORK/state" --epochs "$EPOCHS" --iters "$ITERS" --val-iters 2 --folds 0,1 --workers 2 > "$WORK/run.log" 2>&1
t1=$(date +%s.%N)
python3 - "$WORK" "$t0" "$t1" <<'PY'
import json, glob, os, re, sys, datetime
work, t0, t1 = sys.argv[1], float(sys.argv[2]), float(sys.argv[3])
logs = glob.glob(os.path.join(work, "state/runs/*/logs/worker-*.log"))
def ts(line):
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+)Z", line)
    return datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc).timestamp() if m else None
first_train, stream_s = None, 0.0
for f in logs:
    for line in open(f):
        if "leased" in line and "Train" in line:
            t = ts(line)
            if t and (first_train is None or t < first_train): first_train = t
        m = re.search(r"checkpoint streamed to the coordinator: ([\d.]+) MB in ([\d.]+)s", line)
        if m: stream_s += float(m.group(2))
jsonl = glob.glob(os.path.join(work, "state/runs/*/results/*/*/fold_*/training_log.jsonl"))
steps = epochs_s = 0.0; n_ep = 0
for f in jsonl:
    for l in open(f):
        m = json.loads(l); n_ep += 1; epochs_s += m["epoch_seconds"]; steps += m["step_seconds"]
transfer = json.load(open("bench-results/runner_transfer.json"))
metrics_s = n_ep * transfer["metrics_report_ms"] / 1000
res = dict(transfer)
res.update({
    "run_wall_s": t1 - t0,
    "time_to_first_training_step_s": (first_train - t0) if first_train else None,
    "epochs_measured": n_ep, "train_epoch_seconds_total": epochs_s,
    "checkpoint_stream_seconds_total_background": stream_s,
    "metrics_report_seconds_total": metrics_s,
    "overhead_on_training_blocking_pct": 100 * metrics_s / epochs_s if epochs_s else None,
    "overhead_if_streaming_were_blocking_pct": 100 * (metrics_s + stream_s) / epochs_s if epochs_s else None,
})
json.dump(res, open("bench-results/runner.json", "w"), indent=1)
print("\n| runner metric (2 CPU workers, synthetic 128², 2 folds) | value |\n|---|---|")
print(f"| time from `nnunet run` to the first training task starting on a worker (incl. dataset generation, convert, plan, preprocess) | {res['time_to_first_training_step_s']:.1f} s |")
print(f"| metrics reports, share of training time (blocking) | {res['overhead_on_training_blocking_pct']:.3f} % |")
print(f"| checkpoint streaming, background, as a share of training time (if it were blocking) | {res['overhead_if_streaming_were_blocking_pct']:.2f} % |")
print(f"| upload / download throughput on loopback | {res['upload_mb_per_s']:.0f} / {res['download_mb_per_s']:.0f} MB/s |")
print("wrote bench-results/runner.json")
PY
