//! Training one fold exactly as nnU-Net v2's `nnUNetTrainer` does for the 2D configuration
//! (`nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py::nnUNetTrainer`), with libtorch through tch.
//!
//! - [`run`]: the epoch loop ([`train_fold`]), [`TrainingConfig`], [`FoldSpec`], the [`Progress`] trait.
//! - [`loss`]: Dice + cross-entropy with deep supervision (`nnunetv2/training/loss/compound_losses.py`);
//!   [`region_loss`]: region targets and Dice + BCE for region-based training.
//! - [`optim`]: SGD with Nesterov momentum, weight decay and gradient clipping, with our own momentum
//!   buffers so the optimizer state is part of the checkpoint; [`amp`]: the fp16 gradient scaler.
//! - [`schedule`]: the poly learning-rate schedule.
//! - [`loader`]: the batch loader (foreground oversampling, enlarged initial patch, augmentation on a
//!   thread pool, prefetching into a bounded channel); [`gpu_aug`]: the optional batched GPU augmentation.
//! - `crate::checkpoint`: safetensors weights + momentum buffers with a JSON sidecar, written atomically,
//!   verified by hash on load; `crate::checkpoint::load_network` for inference.
//! - [`ema`]: the online pseudo-Dice and its exponential moving average (`nnUNetTrainer.on_validation_epoch_end`).
//! - [`report`]: the training log files, the console progress and `progress.png`.

pub mod amp;
pub mod config;
pub mod ema;
pub mod gpu_aug;
pub mod loader;
pub mod loss;
pub mod optim;
pub mod region_loss;
pub mod report;
pub mod run;
pub mod schedule;
pub mod setup;
pub mod step;
pub mod synth;

pub use crate::checkpoint::{load_network, CheckpointMeta};
pub use config::{fold_seed, CheckpointKind, FoldSpec, Progress, TrainOutcome, TrainingConfig};
pub use run::train_fold;
