#!/usr/bin/env bash
# Overhead of the web dashboard (issue 15): the coordinator's CPU time and memory over a 5-fold run
# (one CPU worker, tiny budget) with no dashboard open vs 5 open dashboards. Each dashboard holds
# what a browser on the run page and the runs/workers pages holds: the run's event stream
# (/api/runs/<id>/events) and the live snapshot stream (/api/live). Arms alternate; REPEAT each.
# SAVE_EVERY (default 1, a checkpoint upload every epoch as `nnunet run` does) set above EPOCHS leaves only the
# final checkpoints, so the coordinator's own per-epoch upload work (most of its CPU time here) drops out.
# Writes RESULT (bench-results/dashboard.json).
#   REPEAT=2 EPOCHS=5 ITERS=3 bash scripts/bench_dashboard.sh
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
BIN=${BIN:-target/debug}
[[ -x "$BIN/nnunet" && -x "$BIN/nnunet-worker" ]] || cargo build -q -p nnunet-coordinator -p nnunet-worker --bins
REPEAT=${REPEAT:-1}; EPOCHS=${EPOCHS:-5}; ITERS=${ITERS:-3}; CLIENTS=${CLIENTS:-5}; SAVE_EVERY=${SAVE_EVERY:-1}
RESULT=${RESULT:-bench-results/dashboard.json}
WORK=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$WORK"; }
trap cleanup EXIT
TOKEN=bench-token-0123456789abcdef0123456789
echo "$TOKEN" > "$WORK/token"
TCK=$(getconf CLK_TCK)

# A tiny dataset: 12 grayscale 64x64 PNGs with a bright disc, masks 0/1 (Python stdlib only).
python3 - "$WORK/data" <<'PY'
import os, random, struct, sys, zlib
out = sys.argv[1]
def png(path, rows):
    raw = b"".join(b"\0" + bytes(r) for r in rows)
    chunk = lambda t, d: struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    with open(path, "wb") as f:
        f.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 64, 64, 8, 0, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))
rng = random.Random(0)
for d in ("images", "masks"): os.makedirs(os.path.join(out, d), exist_ok=True)
for i in range(12):
    cx, cy, r = rng.randint(16, 48), rng.randint(16, 48), rng.randint(6, 14)
    inside = lambda x, y: (x - cx) ** 2 + (y - cy) ** 2 <= r * r
    img = [[min(255, max(0, (170 if inside(x, y) else 60) + rng.randint(-25, 25))) for x in range(64)] for y in range(64)]
    png(os.path.join(out, "images", f"case_{i:03}.png"), img)
    png(os.path.join(out, "masks", f"case_{i:03}.png"), [[1 if inside(x, y) else 0 for x in range(64)] for y in range(64)])
PY
"$BIN/nnunet" convert --images "$WORK/data/images" --masks "$WORK/data/masks" --out "$WORK/raw" --id 8 --name Bench > /dev/null
DS="$WORK/raw/Dataset008_Bench"
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

one_arm() { # $1 = number of open dashboards, $2 = output json line file
  local n=$1 st="$WORK/state-$1-$RANDOM" grpc web cpid wpid run state samples=0 rss_sum=0 rss_max=0 t0 t1
  grpc=$(port); web=$(port)
  "$BIN/nnunet" serve --listen "127.0.0.1:$grpc" --http-listen "127.0.0.1:$web" --state-dir "$st" --token-file "$WORK/token" --threads 1 \
    > "$st.serve.log" 2>&1 & cpid=$!; PIDS+=("$cpid")
  until curl -sf "http://127.0.0.1:$web/healthz" > /dev/null; do sleep 0.2; done
  "$BIN/nnunet-worker" --coordinator "http://127.0.0.1:$grpc" --token-file "$WORK/token" --device cpu --threads 1 --exit-when-idle \
    --cache-dir "$st.cache" > "$st.worker.log" 2>&1 & wpid=$!; PIDS+=("$wpid")
  t0=$(date +%s.%N)
  run=$("$BIN/nnunet" submit --coordinator "http://127.0.0.1:$grpc" --token-file "$WORK/token" --dataset "$DS" \
    --epochs "$EPOCHS" --iters "$ITERS" --val-iters 1 --save-every "$SAVE_EVERY")
  local clients=()
  for ((i = 0; i < n; i++)); do
    curl -sN -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$web/api/runs/$run/events" > "$st.sse-run-$i" & clients+=($!)
    curl -sN -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$web/api/live" > "$st.sse-live-$i" & clients+=($!)
  done
  PIDS+=("${clients[@]}")
  while :; do
    state=$(curl -sf -H "Authorization: Bearer $TOKEN" "http://127.0.0.1:$web/api/runs/$run" | jq -r .state)
    local rss; rss=$(awk '/VmRSS/ {print $2}' "/proc/$cpid/status")
    samples=$((samples + 1)); rss_sum=$((rss_sum + rss)); ((rss > rss_max)) && rss_max=$rss
    [[ "$state" == DONE || "$state" == FAILED || "$state" == CANCELLED ]] && break
    sleep 1
  done
  t1=$(date +%s.%N)
  local ticks hwm events_bytes=0 live_bytes=0
  ticks=$(awk '{print $14 + $15}' "/proc/$cpid/stat")
  hwm=$(awk '/VmHWM/ {print $2}' "/proc/$cpid/status")
  for ((i = 0; i < n; i++)); do
    events_bytes=$((events_bytes + $(stat -c %s "$st.sse-run-$i"))); live_bytes=$((live_bytes + $(stat -c %s "$st.sse-live-$i")))
  done
  for c in "${clients[@]}"; do kill "$c" 2>/dev/null || true; done
  kill "$cpid" "$wpid" 2>/dev/null || true; wait "$cpid" 2>/dev/null || true
  python3 -c 'import json,sys; a=sys.argv[1:]; print(json.dumps({"dashboards": int(a[0]), "run_state": a[1], "wall_s": float(a[3])-float(a[2]),
    "coordinator_cpu_s": int(a[4])/int(a[5]), "coordinator_rss_mean_mb": int(a[6])/int(a[7])/1024, "coordinator_rss_peak_mb": int(a[8])/1024,
    "coordinator_rss_max_sampled_mb": int(a[9])/1024, "sse_run_stream_bytes_received": int(a[10]), "sse_live_stream_bytes_received": int(a[11])}))' \
    "$n" "$state" "$t0" "$t1" "$ticks" "$TCK" "$rss_sum" "$samples" "$hwm" "$rss_max" "$events_bytes" "$live_bytes" >> "$2"
  tail -1 "$2"
}

: > "$WORK/arms.jsonl"
for ((r = 0; r < REPEAT; r++)); do
  one_arm 0 "$WORK/arms.jsonl"
  one_arm "$CLIENTS" "$WORK/arms.jsonl"
done
mkdir -p bench-results
python3 - "$WORK/arms.jsonl" "$EPOCHS" "$ITERS" "$CLIENTS" "$SAVE_EVERY" "$RESULT" <<'PY'
import json, sys, platform, os
arms = [json.loads(l) for l in open(sys.argv[1])]
epochs, iters, clients, save_every = map(int, sys.argv[2:6])
none = [a for a in arms if a["dashboards"] == 0]; five = [a for a in arms if a["dashboards"] == clients]
mean = lambda xs: sum(xs) / len(xs)
def pct(k): return 100 * (mean([a[k] for a in five]) - mean([a[k] for a in none])) / mean([a[k] for a in none])
res = {
    "what": f"coordinator (nnunet serve) CPU time and memory over one 5-fold run (1 CPU worker, {epochs} epochs x {iters} iterations, 12 cases 64x64, a checkpoint every {save_every} epoch(s)), with 0 vs {clients} open dashboards (each: the run's SSE event stream + the live SSE stream)",
    "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
    "arms": arms,
    "coordinator_cpu_s": {"none": mean([a["coordinator_cpu_s"] for a in none]), "dashboards": mean([a["coordinator_cpu_s"] for a in five])},
    "coordinator_rss_mean_mb": {"none": mean([a["coordinator_rss_mean_mb"] for a in none]), "dashboards": mean([a["coordinator_rss_mean_mb"] for a in five])},
    "coordinator_rss_peak_mb": {"none": mean([a["coordinator_rss_peak_mb"] for a in none]), "dashboards": mean([a["coordinator_rss_peak_mb"] for a in five])},
    "coordinator_cpu_s_range": {"none": [min(a["coordinator_cpu_s"] for a in none), max(a["coordinator_cpu_s"] for a in none)],
                                "dashboards": [min(a["coordinator_cpu_s"] for a in five), max(a["coordinator_cpu_s"] for a in five)]},
    "cpu_overhead_pct": pct("coordinator_cpu_s"),
    "cpu_per_wall_overhead_pct": 100 * (mean([a["coordinator_cpu_s"] / a["wall_s"] for a in five]) - mean([a["coordinator_cpu_s"] / a["wall_s"] for a in none])) / mean([a["coordinator_cpu_s"] / a["wall_s"] for a in none]),
    "rss_mean_overhead_pct": pct("coordinator_rss_mean_mb"),
    "rss_peak_overhead_pct": pct("coordinator_rss_peak_mb"),
}
json.dump(res, open(sys.argv[6], "w"), indent=2)
print(json.dumps({k: v for k, v in res.items() if k != "arms"}, indent=2))
PY
