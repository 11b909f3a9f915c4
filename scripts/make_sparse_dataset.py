#!/usr/bin/env python3
"""Makes a partially annotated copy of an images/ + masks/ dataset: in every mask, a seeded random ~FRACTION of
BLOCK x BLOCK tiles is set to IGNORE (unannotated pixels, nnU-Net's ignore label after `nnunet convert
--ignore-value IGNORE` or the peer harness's `-x IGNORE`). Images are linked unchanged.

usage: make_sparse_dataset.py SRC DST [--ignore 127] [--fraction 0.7] [--block 32] [--seed 0]
"""
import argparse
import os
import random

import numpy as np
from PIL import Image


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("src")
    ap.add_argument("dst")
    ap.add_argument("--ignore", type=int, default=127)
    ap.add_argument("--fraction", type=float, default=0.7)
    ap.add_argument("--block", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(os.path.join(a.dst, "images"), exist_ok=True)
    os.makedirs(os.path.join(a.dst, "masks"), exist_ok=True)
    erased = total = 0
    for i, name in enumerate(sorted(os.listdir(os.path.join(a.src, "masks")))):
        m = np.array(Image.open(os.path.join(a.src, "masks", name)))
        if m.ndim != 2:
            raise SystemExit(f"{name}: masks must be single channel")
        if (m == a.ignore).any():
            raise SystemExit(f"{name}: the mask already holds the ignore value {a.ignore}; pick another --ignore")
        rng = random.Random(a.seed * 100003 + i)
        h, w = m.shape
        tiles = [(y, x) for y in range(0, h, a.block) for x in range(0, w, a.block)]
        for y, x in rng.sample(tiles, round(a.fraction * len(tiles))):
            m[y:y + a.block, x:x + a.block] = a.ignore
        erased += int((m == a.ignore).sum())
        total += m.size
        Image.fromarray(m).save(os.path.join(a.dst, "masks", os.path.splitext(name)[0] + ".png"))
    for name in sorted(os.listdir(os.path.join(a.src, "images"))):
        link = os.path.join(a.dst, "images", name)
        if not os.path.exists(link):
            os.symlink(os.path.realpath(os.path.join(a.src, "images", name)), link)
    print(f"{a.dst}: {erased / max(total, 1):.1%} of the mask pixels set to the ignore value {a.ignore}")


if __name__ == "__main__":
    main()
