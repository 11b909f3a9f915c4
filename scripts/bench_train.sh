#!/usr/bin/env bash
# Training benchmark (issue 4), CPU, one run, same machine:
#   1. seconds per training iteration (forward + backward + SGD step, fp32) for the ISBI 2012 plan at full size
#      (patch 512x512, batch 2, 8 stages 32..512, 1 channel, 2 classes, 46.3 M parameters):
#      ours = `nnunet-worker bench-step`; reference = the same step in the peer venv as nnUNetTrainer.train_step does it
#      (scripts/bench_train_ref_step.py: dynamic_network_architectures PlainConvUNet, DC_and_CE_loss + deep supervision,
#      SGD nesterov, clip 12), interleaved ours/reference for ROUNDS rounds, best of each (the machine is shared, so
#      only interleaved numbers are comparable). With REF_PROBE_JSON (or PROBE=1) the peer harness's
#      `nnUNetv2_train ... -device cpu` probe (../shared/peer/run_nnunetv2.sh -P, median train_step_s) is added;
#   2. augmented training patches per second per core (512 patch from the 602 crop, full get_training_transforms pipeline, one thread):
#      ours = `nnunet-worker bench-aug`; reference = nnUNetTrainer.get_training_transforms (batchgeneratorsv2) with
#      torch.set_num_threads(1) (scripts/bench_train_ref_aug.py in the peer venv).
#      Interleaved ours/reference for AUG_ROUNDS rounds, gray (1 channel) and RGB (3 channels); the ratio is median over
#      median (best over best is reported too).
# Prints a table and updates bench-results/train.json (other keys, e.g. the parity runs and an earlier gpu_check, are
# kept). Knobs: NNUNET_WORKER (binary with the hidden bench-step/bench-aug subcommands), PEER_PY (peer venv python),
# ROUNDS (2), STEPS (2), REF_PROBE_JSON (a harness result JSON holding the probe), PROBE=1 (run the harness probe),
# PROBE_ITERS (3), AUG_SAMPLES (400), AUG_ROUNDS (3), AUG_CHANNELS ("1 3"), AUG_ONLY=1 (skip the training step),
# GPU_JSON (a scripts/gpu_check.sh JSON).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
BIN=${NNUNET_WORKER:-}
if [ -z "$BIN" ]; then for c in target/release/nnunet-worker target/debug/nnunet-worker; do [ -x "$c" ] && BIN=$c && break; done; fi
"$BIN" bench-step --help >/dev/null 2>&1 || { echo "$BIN has no bench-step subcommand; set NNUNET_WORKER" >&2; exit 2; }
PEER_PY=${PEER_PY:-$HOME/.cache/nnunet-peer-venv/bin/python}
SHARED=${NNUNET_SHARED:-$ROOT/../shared}
PROBE_ITERS=${PROBE_ITERS:-3}; AUG_SAMPLES=${AUG_SAMPLES:-400}; AUG_ROUNDS=${AUG_ROUNDS:-3}; AUG_CHANNELS=${AUG_CHANNELS:-1 3}
WORK=${WORK:-/tmp/peer-training}
mkdir -p bench-results "$WORK"

# 1. optional: the harness probe at full size.
if [ "${AUG_ONLY:-0}" != 1 ] && [ -z "${REF_PROBE_JSON:-}" ] && [ "${PROBE:-0}" = 1 ]; then
  [ -d "$SHARED/datasets/isbi2012_em" ] || { echo "no $SHARED/datasets/isbi2012_em (set NNUNET_SHARED)" >&2; exit 2; }
  OUT="$WORK/results-json" "$SHARED/peer/run_nnunetv2.sh" -s "$SHARED/datasets/isbi2012_em" -d 931 -n ISBIPROBE -e 0 -P "$PROBE_ITERS" -w "$WORK" > "$WORK/bench_probe.log" 2>&1
  REF_PROBE_JSON=$WORK/results-json/ISBIPROBE_probe${PROBE_ITERS}.json
fi
# interleaved steps, same plan, same thread count (nnU-Net: torch.set_num_threads(cpu_count)).
ROUNDS=${ROUNDS:-2}; STEPS=${STEPS:-2}; OURS_STEPS=(); REF_STEPS=()
if [ "${AUG_ONLY:-0}" != 1 ]; then
  for _ in $(seq "$ROUNDS"); do
    OURS_STEPS+=("$("$BIN" bench-step --device cpu --patch 512 --stages 8 --batch 2 --channels 1 --classes 2 --warmup 1 --steps "$STEPS" --threads "$(nproc)")")
    REF_STEPS+=("$("$PEER_PY" scripts/bench_train_ref_step.py 512 8 2 1 1 "$STEPS" "$(nproc)")")
  done
fi
# 2. augmentation throughput, one thread each, interleaved ours/reference.
AUG_LINES=()
for ch in $AUG_CHANNELS; do
  for _ in $(seq "$AUG_ROUNDS"); do
    AUG_LINES+=("O $("$BIN" bench-aug --patch 512 --channels "$ch" --samples "$AUG_SAMPLES")")
    AUG_LINES+=("R $("$PEER_PY" scripts/bench_train_ref_aug.py 512 "$ch" 8 $((AUG_SAMPLES / 3)))")
  done
done

STEPS_JSON=$(printf '%s\n' "${OURS_STEPS[@]}" | sed 's/^/O /'; printf '%s\n' "${REF_STEPS[@]}" | sed 's/^/R /')
AUG_JSON=$(printf '%s\n' "${AUG_LINES[@]}")
"$PEER_PY" - "${REF_PROBE_JSON:-}" "$STEPS_JSON" "$AUG_JSON" "${GPU_JSON:-}" <<'PY'
import json, sys, os, statistics
ref_path, steps_text, aug_text, gpu_path = sys.argv[1:5]
out_path = "bench-results/train.json"
res = json.load(open(out_path)) if os.path.exists(out_path) else {}
lines = [l for l in steps_text.splitlines() if len(l.strip()) > 2]
ours_steps = [json.loads(l[2:])["seconds_per_step"] for l in lines if l.startswith("O ")]
ref_steps = [json.loads(l[2:])["seconds_per_step"] for l in lines if l.startswith("R ")]
aug = {}
for l in aug_text.splitlines():
    if not l.strip():
        continue
    d = json.loads(l[2:])
    aug.setdefault(d["channels"], {"O": [], "R": []})[l[0]].append(d["patches_per_second"])
def find(d, key):
    if isinstance(d, dict):
        for k, v in d.items():
            if k == key: return v
            x = find(v, key)
            if x is not None: return x
    elif isinstance(d, list):
        for v in d:
            x = find(v, key)
            if x is not None: return x
res["machine"] = {"cpus": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0],
                  "note": "2-core machine shared with other engineers' builds; absolute numbers are noisy, ratios were measured interleaved"}
if ours_steps:
    ref = json.load(open(ref_path)) if ref_path else {}
    steps = find(ref, "train_step_s")
    probe = statistics.median(steps) if isinstance(steps, list) else (steps.get("median") if isinstance(steps, dict) else steps)
    res["train_step_cpu"] = {"plan": "ISBI 2012 full size: patch 512x512, batch 2, 8 stages 32..512, C=1, K=2, fp32",
        "ours_seconds": min(ours_steps), "reference_seconds": min(ref_steps), "ours_rounds": ours_steps, "reference_rounds": ref_steps,
        "speedup": min(ref_steps) / min(ours_steps), "threads": os.cpu_count(),
        "ours_median_seconds": statistics.median(ours_steps), "reference_median_seconds": statistics.median(ref_steps),
        "reference_harness_probe_seconds_median": probe, "reference_harness_probe_source": ref_path or None}
for ch, r in sorted(aug.items()):
    key = "augmentation_per_core" if ch == 1 else f"augmentation_per_core_{ch}ch"
    o_med, r_med = statistics.median(r["O"]), statistics.median(r["R"])
    res[key] = {"patch": 512, "crop": 602, "channels": ch, "threads": 1,
        "ours_patches_per_second": o_med, "reference_patches_per_second": r_med, "ratio": o_med / r_med,
        "ratio_best_over_best": max(r["O"]) / max(r["R"]), "ours_runs": r["O"], "reference_runs": r["R"],
        "ours": "nnunet-worker bench-aug (common/src/augment, AVX2 kernels when the CPU has them)",
        "reference": "nnUNetTrainer.get_training_transforms (batchgeneratorsv2), torch.set_num_threads(1)"}
if gpu_path:
    res["gpu_check"] = json.load(open(gpu_path))
json.dump(res, open(out_path, "w"), indent=1)
print("| metric | ours | reference nnU-Net v2 | ratio |")
print("|---|---|---|---|")
if "train_step_cpu" in res:
    t = res["train_step_cpu"]
    print(f"| CPU s/training step (512², batch 2, 8 stages; best of {len(t['ours_rounds'])} interleaved rounds, median in brackets) | {t['ours_seconds']:.2f} ({statistics.median(t['ours_rounds']):.2f}) | {t['reference_seconds']:.2f} ({statistics.median(t['reference_rounds']):.2f}) | {t['speedup']:.2f}x |")
for key in sorted(k for k in res if k.startswith("augmentation_per_core")):
    g = res[key]
    print(f"| augmented patches/s per core, {g['channels']} channel(s), 602²->512² (median of {len(g['ours_runs'])} interleaved rounds) | {g['ours_patches_per_second']:.0f} | {g['reference_patches_per_second']:.0f} | {g['ratio']:.2f}x |")
gpu = res.get("gpu_check")
if gpu:
    for k, v in gpu["runs"].items():
        print(f"| {gpu['gpu']}: s/iteration, {k} (batch 12, 512², 8 stages, fp16) | {v['seconds_per_iteration_incl_wait']:.3f} | | peak {v['peak_device_memory_mib']:.0f} MiB |")
PY
