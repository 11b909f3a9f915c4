//! Training one fold exactly as nnU-Net v2's `nnUNetTrainer` does for the 2D configuration
//! (`nnunetv2/training/nnUNetTrainer/nnUNetTrainer.py`), with libtorch through tch.
//!
//! - [`config`]: [`TrainingConfig`] (defaults from `nnunet_common::defaults`), [`FoldSpec`], the [`Progress`] trait.
//! - [`setup`]: plans, dataset.json and the fold's cases ([`setup::fold_split`], fold `all` included).
//! - [`step`]: the one training step, shared by the epoch loop and `bench-step`.
//! - [`run`]: the epoch loop ([`train_fold`]).
//! - [`loss`]: Dice + cross-entropy with deep supervision.
//! - [`optim`]: SGD with Nesterov momentum, weight decay and gradient clipping, with our own momentum
//!   buffers so the optimizer state is part of the checkpoint; [`amp`]: the fp16 gradient scaler.
//! - [`schedule`]: the poly learning-rate schedule.
//! - [`loader`]: the batch loader (foreground oversampling, enlarged initial patch, augmentation on a
//!   thread pool, prefetching into a bounded channel); [`gpu_aug`]: the optional batched GPU augmentation.
//! - [`checkpoint`]: safetensors weights + momentum buffers with a JSON sidecar, written atomically,
//!   verified by hash on load; [`checkpoint::load_network`] for inference.
//! - [`ema`]: the online pseudo-Dice and its exponential moving average.
//! - [`report`]: the training log files, the console progress and `progress.png`.

pub mod amp;
pub mod checkpoint;
pub mod config;
pub mod ema;
pub mod gpu_aug;
pub mod loader;
pub mod loss;
pub mod optim;
pub mod report;
pub mod run;
pub mod schedule;
pub mod setup;
pub mod step;
pub mod synth;

pub use checkpoint::{load_network, CheckpointMeta};
pub use config::{fold_seed, CheckpointKind, FoldSpec, Progress, TrainOutcome, TrainingConfig};
pub use run::train_fold;
