//! Per-run options beyond the budget: the pretrained weights training starts from, and the
//! submitter's nnU-Net roots the finished run publishes to. Stored with the run (absent in runs
//! stored before they existed).
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where a run's pretrained weights live inside its run directory (one file, copied there at
/// submit; nnU-Net's `-pretrained_weights`, `nnunetv2/run/load_pretrained_weights.py`).
pub const PRETRAINED_DIR: &str = "inputs";
/// Extensions accepted for pretrained weights: ours and nnU-Net's checkpoints.
pub const PRETRAINED_EXTENSIONS: [&str; 2] = ["safetensors", "pth"];

/// Pretrained weights of a run, as copied into it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PretrainedWeights {
    /// Relative to the run directory (`inputs/pretrained_weights.<ext>`).
    pub path: String,
    pub sha256: String,
    pub size: u64,
    /// The file the user named (canonical, as the coordinator saw it), for messages.
    pub source: String,
}

/// Options of a run (see the module docs).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunOptions {
    #[serde(default)]
    pub pretrained: Option<PretrainedWeights>,
    /// The submitter's `$nnUNet_results` / `--results` (validated at submit), over the coordinator's.
    #[serde(default)]
    pub results_root: Option<PathBuf>,
    /// The submitter's `$nnUNet_preprocessed` (validated at submit), over the coordinator's.
    #[serde(default)]
    pub preprocessed_root: Option<PathBuf>,
}
