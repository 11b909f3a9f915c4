"""Single-process throughput of the reference nnU-Net v2 training augmentation (batchgeneratorsv2 pipeline
from nnUNetTrainer.get_training_transforms) for a 2D plan: one sample = enlarged crop (602^2 for a 512 patch)
-> spatial/intensity/mirror transforms -> deep-supervision targets. torch threads = 1 (per core), as nnU-Net's
augmentation workers run. Usage: python bench_train_ref_aug.py PATCH CHANNELS STAGES SAMPLES. Prints JSON."""
import json, sys, time
import numpy as np
import torch

torch.set_num_threads(1)
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from batchgenerators.augmentations.utils import rotate_coords_2d  # noqa: F401  (same helper nnU-Net uses)
from nnunetv2.training.data_augmentation.compute_initial_patch_size import get_patch_size

patch, channels, stages, samples = (int(a) for a in sys.argv[1:5])
rot = (-np.pi, np.pi)
crop = [int(i) for i in get_patch_size((patch, patch), rot, (0, 0), (0, 0), (0.85, 1.25))]
scales = [[1 / 2 ** i] * 2 for i in range(stages - 1)]
tr = nnUNetTrainer.get_training_transforms((patch, patch), rot, scales, (0, 1), False, use_mask_for_norm=[False] * channels)
rng = np.random.default_rng(0)
img = torch.from_numpy(rng.uniform(-1, 1, (channels, *crop)).astype(np.float32))
seg = torch.zeros((1, *crop), dtype=torch.int16)
seg[0, (np.arange(crop[0]) % 50) < 20, :] = 1
for _ in range(3):
    tr(image=img.clone(), segmentation=seg.clone())
t = time.perf_counter()
for _ in range(samples):
    tr(image=img.clone(), segmentation=seg.clone())
s = time.perf_counter() - t
print(json.dumps({"patch": patch, "crop": crop, "channels": channels, "samples": samples, "threads": 1, "patches_per_second": samples / s}))
