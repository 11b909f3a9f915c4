"""Helpers of scripts/gpu_bench.sh and scripts/gpu_bench_prepare.sh (standard library + numpy + Pillow).

  gpu_bench.py shrink SRC DST QUALITY        images as JPEG (RGB) or PNG (gray), masks as PNG: a small copy to carry
  gpu_bench.py to-raw SRC RAW ID NAME        an nnU-Net v2 raw dataset (PNG, labels 0/1) for the reference
  gpu_bench.py sample OUT WATCH [WATCH...]   samples nvidia-smi every 100 ms (time, GPU %, MiB used) and the line
                                             counts of the WATCHed JSON-lines epoch logs, until SIGTERM
  gpu_bench.py summarize WORK JSON           the side-by-side table (stdout) and JSON from WORK/runs/*
"""
import glob
import json
import os
import signal
import subprocess
import sys
import time


def shrink(src, dst, quality):
    from PIL import Image

    for sub in ("images", "masks"):
        os.makedirs(os.path.join(dst, sub), exist_ok=True)
    for f in sorted(glob.glob(os.path.join(src, "images", "*"))):
        stem = os.path.splitext(os.path.basename(f))[0]
        im = Image.open(f)
        if im.mode == "RGB":
            im.save(os.path.join(dst, "images", stem + ".jpg"), quality=int(quality))
        else:
            im.save(os.path.join(dst, "images", stem + ".png"), optimize=True)
    for f in sorted(glob.glob(os.path.join(src, "masks", "*"))):
        stem = os.path.splitext(os.path.basename(f))[0]
        Image.open(f).save(os.path.join(dst, "masks", stem + ".png"), optimize=True)


def to_raw(src, raw, ds_id, name):
    import numpy as np
    from PIL import Image

    ds = os.path.join(raw, "Dataset%03d_%s" % (int(ds_id), name))
    for sub in ("imagesTr", "labelsTr"):
        os.makedirs(os.path.join(ds, sub), exist_ok=True)
    n, rgb = 0, False
    for f in sorted(glob.glob(os.path.join(src, "images", "*"))):
        stem = os.path.splitext(os.path.basename(f))[0]
        im = Image.open(f)
        rgb = im.mode == "RGB"
        im.save(os.path.join(ds, "imagesTr", stem + "_0000.png"))
        m = np.array(Image.open(os.path.join(src, "masks", stem + ".png")).convert("L"))
        Image.fromarray((m > 0).astype(np.uint8)).save(os.path.join(ds, "labelsTr", stem + ".png"))
        n += 1
    channels = {"0": "R", "1": "G", "2": "B"} if rgb else {"0": "gray"}
    meta = {"channel_names": channels, "labels": {"background": 0, "foreground": 1}, "numTraining": n, "file_ending": ".png"}
    with open(os.path.join(ds, "dataset.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(ds)


def sample(out, watches):
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    cmd = ["nvidia-smi", "--query-gpu=utilization.gpu,memory.used", "--format=csv,noheader,nounits", "-lms", "100"]
    try:
        smi = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, bufsize=1)
    except FileNotFoundError:
        smi = None

    def lines(p):
        try:
            with open(p) as f:
                return sum(1 for l in f if l.strip())
        except OSError:
            return 0

    with open(out, "w") as o:
        while not stop:
            if smi is not None:
                row = smi.stdout.readline().strip()
                if not row:
                    break
                util, mem = (x.strip() for x in row.split(",")[:2])
            else:
                time.sleep(0.1)
                util, mem = "", ""
            o.write(json.dumps({"t": time.time(), "util": util, "mib": mem, "epochs": [lines(w) for w in watches]}) + "\n")
            o.flush()
    if smi is not None:
        smi.terminate()


def window_stats(samples, base_mib):
    """GPU % over the last epoch (between the epoch log reaching n-1 and n lines) and peak memory over the run."""
    num = lambda v: float(v) if v not in ("", None) and v.replace(".", "", 1).isdigit() else None
    mems = [num(s["mib"]) for s in samples if num(s["mib"]) is not None]
    peak = (max(mems) - base_mib) if mems and base_mib is not None else None
    counts = [max(s["epochs"]) if s["epochs"] else 0 for s in samples]
    n = max(counts) if counts else 0
    win = [s for s, c in zip(samples, counts) if c == n - 1] if n >= 1 else []
    utils = [num(s["util"]) for s in win if num(s["util"]) is not None]
    return (sum(utils) / len(utils) if utils else None), peak, len(utils)


def summarize(work, out_json):
    rows = []
    for meta_path in sorted(glob.glob(os.path.join(work, "runs", "*", "meta.json"))):
        d = os.path.dirname(meta_path)
        meta = json.load(open(meta_path))
        log = os.path.join(d, "epochs.jsonl")
        epochs = [json.loads(l) for l in open(log) if l.strip()] if os.path.exists(log) else []
        samples = [json.loads(l) for l in open(os.path.join(d, "samples.jsonl")) if l.strip()] if os.path.exists(os.path.join(d, "samples.jsonl")) else []
        util, peak, n_util = window_stats(samples, meta.get("base_mib"))
        row = dict(meta)
        if epochs:
            last = epochs[-1]
            iters = meta["iters"]
            row.update({
                "epochs_logged": len(epochs),
                "s_per_iteration": last["epoch_seconds"] / iters,
                "step_seconds": last["step_seconds"],
                "loader_wait_seconds": last["dataloader_wait_seconds"],
                "gpu_util_percent_last_epoch": util,
                "gpu_util_samples": n_util,
                "peak_device_mib_over_base": peak,
                "torch_peak_allocated_mib": last.get("torch_peak_allocated_mib"),
                "compiled": last.get("compiled"),
            })
        rows.append(row)
    fmt = lambda v, p=3: "-" if v is None else (f"{v:.{p}f}" if isinstance(v, float) else str(v))
    print("\n| dataset | loader threads | who | augmentation | s/iteration | step s | loader wait s | GPU % (last epoch) | peak MiB | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in [r for r in rows if r.get("kind") == "train"]:
        print(f"| {r['dataset']} | {r['threads']} | {r['who']} | {r.get('augmentation', '-')} | {fmt(r.get('s_per_iteration'), 4)} | {fmt(r.get('step_seconds'), 4)} | "
              f"{fmt(r.get('loader_wait_seconds'), 2)} | {fmt(r.get('gpu_util_percent_last_epoch'), 1)} | "
              f"{fmt(r.get('peak_device_mib_over_base'), 0)} | {fmt(r.get('wall_seconds'), 1)} |")
    ratios = {}
    for r in rows:
        if r.get("kind") == "train" and r["who"].startswith("ours"):
            ref = next((x for x in rows if x.get("kind") == "train" and x["who"] == "reference" and x["dataset"] == r["dataset"] and x["threads"] == r["threads"]), None)
            if ref and ref.get("s_per_iteration") and r.get("s_per_iteration"):
                ratios[f"{r['who']} {r['dataset']} {r['threads']}"] = r["s_per_iteration"] / ref["s_per_iteration"]
    for k, v in ratios.items():
        print(f"s/iteration over the reference's, {k} loader threads: {v:.2f} (target <= 0.7)")
    packs = {r["who"]: r for r in rows if r.get("kind") == "packing"}
    if "packed" in packs and "sequential" in packs:
        p, s = packs["packed"]["wall_seconds"], packs["sequential"]["wall_seconds"]
        print(f"\nfold packing, {packs['packed']['folds']} folds on one device: packed {p:.1f} s, one after another {s:.1f} s, ratio {p / s:.2f} (target <= 0.5)")
    res = {"rows": rows, "ours_over_reference": ratios}
    env = os.path.join(work, "env.json")
    if os.path.exists(env):
        res["env"] = json.load(open(env))
    json.dump(res, open(out_json, "w"), indent=1)
    print(f"\nJSON: {out_json}")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "shrink":
        shrink(*args)
    elif cmd == "to-raw":
        to_raw(*args)
    elif cmd == "sample":
        sample(args[0], args[1:])
    elif cmd == "summarize":
        summarize(*args)
    else:
        sys.exit(__doc__)
