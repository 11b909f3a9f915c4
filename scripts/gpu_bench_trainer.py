"""nnUNetTrainer_GpuBench: nnU-Net v2's default trainer (nnUNetTrainer, unchanged step, loss, loader and
augmentation) with a fixed budget from the environment, for scripts/gpu_bench.sh.

- GPU_BENCH_EPOCHS / GPU_BENCH_ITERS / GPU_BENCH_VAL_ITERS: epochs, training and validation iterations per epoch;
- GPU_BENCH_LOG: a JSON-lines file, one line per finished epoch: epoch wall time (the same span as ours: from
  the epoch's start to its end, validation included), time inside train_step, time waiting for batches
  (between one step's end and the next step's start: the `next(dataloader)` of `nnUNetTrainer.run_training`),
  torch's peak allocated device memory.
The final sliding-window validation is skipped (not part of the step benchmark). Copied into
nnunetv2/training/nnUNetTrainer/ so that `-tr nnUNetTrainer_GpuBench` finds it.
"""
import json
import os
import time

import torch
from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer


class nnUNetTrainer_GpuBench(nnUNetTrainer):
    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict, device: torch.device = torch.device("cuda")):
        super().__init__(plans, configuration, fold, dataset_json, device)
        self.num_epochs = int(os.environ.get("GPU_BENCH_EPOCHS", "2"))
        self.num_iterations_per_epoch = int(os.environ["GPU_BENCH_ITERS"])
        self.num_val_iterations_per_epoch = int(os.environ.get("GPU_BENCH_VAL_ITERS", "2"))
        self._bench_log = os.environ["GPU_BENCH_LOG"]

    def on_epoch_start(self):
        super().on_epoch_start()
        self._t_epoch = time.perf_counter()
        self._wait = 0.0
        self._step = 0.0
        self._t_last = self._t_epoch

    def on_train_epoch_start(self):
        super().on_train_epoch_start()
        self._t_last = time.perf_counter()

    def train_step(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        self._wait += t0 - self._t_last
        out = super().train_step(batch)  # ends with loss.detach().cpu(): synchronous, like ours
        t1 = time.perf_counter()
        self._step += t1 - t0
        self._t_last = t1
        return out

    def on_validation_epoch_start(self):
        super().on_validation_epoch_start()
        self._t_last = time.perf_counter()

    def validation_step(self, batch: dict) -> dict:
        t0 = time.perf_counter()
        self._wait += t0 - self._t_last
        out = super().validation_step(batch)
        self._t_last = time.perf_counter()
        return out

    def on_epoch_end(self):
        epoch = self.current_epoch
        super().on_epoch_end()
        cuda = self.device.type == "cuda"
        rec = {
            "epoch": epoch,
            "epoch_seconds": time.perf_counter() - self._t_epoch,
            "dataloader_wait_seconds": self._wait,
            "step_seconds": self._step / max(1, self.num_iterations_per_epoch),
            "batch_size": self.batch_size,
            "patch_size": list(self.configuration_manager.patch_size),
            "torch_peak_allocated_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
            "compiled": bool(self._do_i_compile()),
        }
        with open(self._bench_log, "a") as f:
            f.write(json.dumps(rec) + "\n")

    def perform_actual_validation(self, save_probabilities: bool = False):
        self.print_to_log_file("GpuBench: final validation skipped")
