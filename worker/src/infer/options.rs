//! How to predict ([`PredictOptions`]) and what a folder prediction did ([`PredictReport`]).
use std::path::PathBuf;
use tch::Device;

/// How to predict.
#[derive(Debug, Clone)]
pub struct PredictOptions {
    /// Test-time mirroring over the checkpoint's allowed axes (4 passes in 2D).
    pub use_mirroring: bool,
    /// Tile step as a fraction of the patch (nnU-Net default 0.5).
    pub step_size: f64,
    /// Also write `{case}.npz` (`probabilities`, float32 (K, Z, X, Y)) and its `{case}.json` sidecar.
    pub save_probabilities: bool,
    pub device: Device,
    /// Checkpoint stem inside each fold folder, e.g. `checkpoint_final`.
    pub checkpoint_name: String,
}

impl Default for PredictOptions {
    fn default() -> Self {
        PredictOptions {
            use_mirroring: true,
            step_size: 0.5,
            save_probabilities: false,
            device: Device::Cpu,
            checkpoint_name: "checkpoint_final".into(),
        }
    }
}

/// What [`predict_folder`] did.
#[derive(Debug, Clone)]
pub struct PredictReport {
    pub folds: Vec<nnunet_common::Fold>,
    /// Case ids in the order they were predicted.
    pub cases: Vec<String>,
    /// Mask files written.
    pub outputs: Vec<PathBuf>,
    /// Postprocessing steps applied (empty when the model has no `postprocessing.json`).
    pub postprocessing: Vec<String>,
    /// Wall time of the whole call, model loading included.
    pub seconds: f64,
}
