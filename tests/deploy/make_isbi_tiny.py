"""Writes a tiny image/mask PNG folder pair from the real ISBI 2012 EM data for the deploy tests.

The first N slices (numeric order) are downscaled IN THE TEST to SIZE x SIZE: images with a box
filter, masks by majority (box filter + threshold 0.5) and mapped to labels 0/1 with the cell
interior (255 in the source, ~80 % of pixels) as label 1 and membrane as 0 (PROVENANCE.md: masks
hold only 0 and 255). `nnunet convert --images OUT/images --masks OUT/masks` turns the result into a
raw nnU-Net dataset.

usage: make_isbi_tiny.py SRC_DIR OUT_DIR N SIZE
"""
import sys
from pathlib import Path

from PIL import Image


def main() -> int:
    src, out, n, size = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    names = sorted((p.name for p in (src / "images").glob("*.png")), key=lambda s: int(Path(s).stem))
    if len(names) < n:
        print(f"make_isbi_tiny: {src}/images has {len(names)} PNGs, need {n}", file=sys.stderr)
        return 1
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    for name in names[:n]:
        img = Image.open(src / "images" / name).convert("L")
        img.resize((size, size), Image.Resampling.BOX).save(out / "images" / f"isbi_{Path(name).stem:>03}.png")
        mask = Image.open(src / "masks" / name).convert("L").resize((size, size), Image.Resampling.BOX)
        mask.point(lambda v: 1 if v >= 128 else 0).save(out / "masks" / f"isbi_{Path(name).stem:>03}.png")
    print(f"make_isbi_tiny: wrote {n} cases of {size}x{size} to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
