//! Per-epoch training metrics, the JSON-lines training log and the `progress.png` plot.
use serde::{Deserialize, Serialize};

/// What one finished epoch reports (mirrors `EpochMetrics` in the proto).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct EpochMetrics {
    /// 0-based index of the epoch that just finished.
    pub epoch: u32,
    /// Total number of epochs of the run.
    pub epochs: u32,
    pub train_loss: f64,
    pub val_loss: f64,
    /// Pseudo-Dice per foreground class, accumulated over the validation iterations.
    pub pseudo_dice: Vec<f64>,
    pub mean_fg_dice: f64,
    pub ema_fg_dice: f64,
    pub lr: f64,
    pub epoch_seconds: f64,
    /// Time the training loop waited for batches (data-pipeline starvation).
    pub dataloader_wait_seconds: f64,
    /// Mean forward + backward + optimizer step time per iteration.
    pub step_seconds: f64,
    pub device_memory_peak_bytes: u64,
    pub new_best: bool,
}
