//! What a training run is told: [`TrainingConfig`] (hyper-parameters, nnU-Net v2's defaults from
//! `nnunet_common::defaults`), [`FoldSpec`] (which fold, where), and what it tells back: the
//! [`Progress`] callbacks, [`CheckpointKind`], [`TrainOutcome`].
use nnunet_common::{defaults, Fold};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;
use tch::Device;

/// Training hyper-parameters. [`TrainingConfig::nnunet_v2`] gives nnU-Net v2's defaults.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TrainingConfig {
    /// Number of epochs.
    pub epochs: usize,
    /// Training iterations per epoch.
    pub iterations_per_epoch: usize,
    /// Validation iterations per epoch.
    pub val_iterations_per_epoch: usize,
    /// `checkpoint_latest` every this many epochs (never at the last epoch).
    pub save_every: usize,
    /// Initial learning rate of the poly schedule.
    pub initial_lr: f64,
    /// L2 weight decay, torch semantics.
    pub weight_decay: f64,
    /// Nesterov momentum.
    pub momentum: f64,
    /// Fraction of each batch forced to contain foreground.
    pub oversample_foreground_percent: f64,
    /// Max total L2 norm of the gradients.
    pub grad_clip: f64,
    /// Seed of the network initialization and of every batch.
    pub seed: u64,
    /// Data-loader threads for training batches (validation gets half, at least 1). 0 = all cores, at most 12
    /// (nnU-Net's `nnUNet_n_proc_DA` default).
    pub loader_threads: usize,
    /// libtorch intra-op threads. 0 = automatic: 1 on CUDA (as nnU-Net), all cores on CPU.
    pub torch_threads: usize,
    /// On CUDA: run the spatial and intensity augmentations batched on the GPU instead of on the loader threads.
    pub gpu_augmentation: bool,
    /// Initialize from these weights (ours `.safetensors` or nnU-Net `.pth`) instead of He init, except the
    /// segmentation heads (`interop::pretrained`). Ignored when continuing from a checkpoint.
    #[serde(default)]
    pub pretrained_weights: Option<std::path::PathBuf>,
}

impl TrainingConfig {
    /// nnU-Net v2's defaults (`nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py::__init__`), read
    /// from `nnunet_common::defaults`.
    pub fn nnunet_v2() -> Self {
        TrainingConfig {
            epochs: defaults::EPOCHS as usize,
            iterations_per_epoch: defaults::ITERATIONS_PER_EPOCH as usize,
            val_iterations_per_epoch: defaults::VAL_ITERATIONS_PER_EPOCH as usize,
            save_every: defaults::SAVE_EVERY as usize,
            initial_lr: defaults::INITIAL_LR,
            weight_decay: defaults::WEIGHT_DECAY,
            momentum: defaults::MOMENTUM,
            oversample_foreground_percent: defaults::OVERSAMPLE_FOREGROUND_PERCENT,
            grad_clip: defaults::GRAD_CLIP,
            seed: defaults::SEED,
            loader_threads: 0,
            torch_threads: 0,
            gpu_augmentation: false,
            pretrained_weights: None,
        }
    }
}

/// Below this many CPU cores per GPU the batched GPU augmentation is the default: nnU-Net's CPU
/// augmentation needs about 12 data workers per GPU to keep a fast GPU busy (`nnUNet_n_proc_DA`,
/// `nnunetv2/utilities/default_n_proc_DA.py::get_allowed_n_proc_DA`), and many clusters give 4-8.
pub const GPU_AUGMENTATION_BELOW_CORES: usize = 8;

/// Whether training on `device` with `cores` CPU cores for its data loading augments on the GPU
/// by default.
pub fn gpu_augmentation_by_default(device: Device, cores: usize) -> bool {
    device.is_cuda() && cores < GPU_AUGMENTATION_BELOW_CORES
}

/// The seed of one fold of a run: the run's seed plus the fold's wire number (so fold k of a run
/// seeded s trains with s + k, and `all` with s - 1).
pub fn fold_seed(run_seed: u64, fold: Fold) -> u64 {
    run_seed.wrapping_add(fold.to_wire() as i64 as u64)
}

/// Which fold to train, where, and how.
#[derive(Debug, Clone)]
pub struct FoldSpec {
    /// `$nnUNet_preprocessed/DatasetXXX_Name` (plans, dataset.json, splits, `nnUNetPlans_2d/`).
    pub preprocessed_dir: PathBuf,
    /// The plans file in `preprocessed_dir` (`<plans_name>.json`; nnU-Net's `-p`).
    pub plans_name: String,
    pub fold: Fold,
    /// Output folder (`.../nnUNetTrainer__<plans_name>__2d/fold_K`).
    pub fold_dir: PathBuf,
    pub device: Device,
    pub config: TrainingConfig,
    /// Continue from `checkpoint_latest` (or `best`) in `fold_dir` if present; report done if `final` exists.
    pub resume: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckpointKind {
    Latest,
    Best,
    Final,
}

impl CheckpointKind {
    pub fn file_stem(self) -> &'static str {
        match self {
            CheckpointKind::Latest => "checkpoint_latest",
            CheckpointKind::Best => "checkpoint_best",
            CheckpointKind::Final => "checkpoint_final",
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            CheckpointKind::Latest => "latest",
            CheckpointKind::Best => "best",
            CheckpointKind::Final => "final",
        }
    }
}

/// Callbacks of the training loop (the gRPC reporter, the console, a test recorder).
pub trait Progress {
    /// After every epoch; an error stops training now (e.g. the lease was lost or the task cancelled).
    fn on_epoch(&mut self, m: &nnunet_common::train_log::EpochMetrics) -> anyhow::Result<()>;
    /// After a checkpoint's files were written (weights first, sidecar last in `files`).
    fn on_checkpoint(&mut self, kind: CheckpointKind, files: &[PathBuf]) -> anyhow::Result<()>;
    /// Free-form progress messages.
    fn log(&mut self, line: &str);
    /// Polled every iteration (e.g. SIGTERM): when true, training stops at once (no checkpoint is written).
    fn should_stop(&self) -> bool {
        false
    }
}

#[derive(Debug, Clone)]
pub struct TrainOutcome {
    /// `checkpoint_final.safetensors` (or the latest checkpoint when stopped early).
    pub final_checkpoint: PathBuf,
    /// Epochs run by this call (0 when the fold was already finished).
    pub epochs_run: usize,
    /// Best EMA pseudo-Dice of the run (NaN if none).
    pub best_ema: f64,
    pub stopped_early: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_come_from_common_and_fold_seeds_are_stable() {
        let c = TrainingConfig::nnunet_v2();
        assert_eq!((c.epochs, c.iterations_per_epoch, c.val_iterations_per_epoch, c.save_every), (1000, 250, 50, 50));
        assert_eq!((c.initial_lr, c.momentum, c.weight_decay, c.grad_clip), (1e-2, 0.99, 3e-5, 12.0));
        assert_eq!(fold_seed(100, Fold::Index(3)), 103);
        assert_eq!(fold_seed(100, Fold::All), 99);
    }
}
